"""Headless Chromium driven through selenium and the Debian chromedriver (no driver download).

Used by the browser tests (conftest.py) and by `python -m tests.browser.screenshots`."""

from __future__ import annotations

import shutil
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> tuple[str, str] | None:
    """(browser, chromedriver) executables, or None."""
    browser = next((p for p in map(shutil.which, BROWSERS) if p), None)
    driver = shutil.which("chromedriver") or next(
        (p for p in ("/usr/bin/chromedriver", "/usr/lib/chromium/chromedriver") if Path(p).exists()), None
    )
    return (browser, driver) if browser and driver else None


def start_chromium(downloads: Path, width: int = 1280, height: int = 1000):
    """A headless Chromium that logs the console and saves downloads into `downloads`."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    found = find_chromium()
    if found is None:
        raise RuntimeError("Chromium or chromedriver not found: run `make chromium` (Debian chromium, chromium-driver)")
    browser, driver_path = found
    opts = webdriver.ChromeOptions()
    opts.binary_location = browser
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                f"--window-size={width},{height}", "--allow-file-access-from-files"):  # fmt: skip
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    opts.add_experimental_option(
        "prefs",
        {
            "download.default_directory": str(downloads),
            "download.prompt_for_download": False,
            "safebrowsing.enabled": False,
        },  # fmt: skip
    )
    drv = webdriver.Chrome(options=opts, service=Service(executable_path=driver_path))
    drv.execute_cdp_cmd("Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(downloads)})
    # record alert() calls instead of blocking on them, before any page script runs
    drv.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument",
        {"source": "window.__alerts = []; window.alert = (m) => { window.__alerts.push(String(m)); };"},
    )
    drv.set_page_load_timeout(30)
    return drv


def console_problems(drv) -> list[str]:
    """Console messages at warning level or above since the last call (the log is drained)."""
    return [f"{e['level']}: {e['message']}" for e in drv.get_log("browser") if e["level"] in ("SEVERE", "WARNING")]
