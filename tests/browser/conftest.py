"""Headless Chromium for the report's browser tests, driven through selenium and chromedriver.

`make test` installs the Debian packages chromium and chromium-driver when they are missing;
without them these tests are skipped with the reason. Nothing is downloaded at test time: the
browser and driver are taken from PATH (selenium's own driver download is never asked for)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.browser.chromium import find_chromium, start_chromium


@pytest.fixture(scope="session")
def chromium_available() -> None:
    try:
        import selenium  # noqa: F401
    except ImportError:
        pytest.skip("selenium is not installed: run `make test` (requirements.lock pins it)")
    if find_chromium() is None:
        pytest.skip("Chromium or chromedriver not found: run `make chromium` (Debian chromium, chromium-driver)")


@pytest.fixture(scope="module")
def browser(chromium_available, tmp_path_factory) -> Iterator:
    """One headless Chromium per test module; `browser.downloads` is its download folder."""
    downloads = tmp_path_factory.mktemp("downloads")
    drv = start_chromium(downloads)
    drv.downloads = downloads
    try:
        yield drv
    finally:
        drv.quit()
