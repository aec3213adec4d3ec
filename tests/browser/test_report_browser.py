"""The report in a real browser (headless Chromium): pages open from disk without console errors,
sprites load, the overview sorts and filters 1,000 classes, a curator's decisions go from clicks on
class pages through the exported file into `unhans clean --decisions`, and HTML in class and file
names shows as text without running."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.browser.chromium import console_problems
from tests.helpers import FAST_DEMO
from tests.stages.test_report import EVIL, make_evil_run
from unhans.pipeline.cli import app
from unhans.pipeline.report import ASSET_DIR, ASSETS
from unhans.pipeline.report.pages import index_page

pytest.importorskip("selenium")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select, WebDriverWait  # noqa: E402


def open_page(drv, path: Path) -> None:
    drv.get(path.resolve().as_uri())
    WebDriverWait(drv, 10).until(lambda d: d.execute_script("return document.readyState") == "complete")


def table(drv, selector: str = "#classes") -> list[list[str]]:
    """The visible rows of a table as text."""
    return drv.execute_script(
        "const rows = document.querySelectorAll(arguments[0] + ' tbody tr');"
        "return [...rows].map(r => [...r.cells].map(c => c.textContent))",
        selector,
    )


def broken_sprites(drv) -> list[str]:
    """Background images of the member tiles on the page that fail to load."""
    return drv.execute_async_script(
        """const done = arguments[arguments.length - 1];
        const urls = [...new Set([...document.querySelectorAll('.member .tile')]
          .map(e => e.style.backgroundImage.slice(5, -2)).filter(u => u))];
        const bad = []; let left = urls.length; if (!left) done(bad);
        for (const u of urls) { const i = new Image();
          i.onload = () => { if (--left === 0) done(bad); };
          i.onerror = () => { bad.push(u); if (--left === 0) done(bad); }; i.src = u; }"""
    )


def test_report_pages_open_without_console_errors(demo_run, browser):
    out = demo_run.cfg.report_path
    cs = demo_run.store.read_table("class_scores")
    open_page(browser, out / "index.html")
    rows = table(browser)
    assert len(rows) == 10
    cols = [th.get_attribute("data-col") for th in browser.find_elements(By.CSS_SELECTOR, "#classes thead th")]
    score = cols.index("clever_hans_score")
    browser.find_element(By.CSS_SELECTOR, 'th[data-col="clever_hans_score"] button').click()
    values = [float(r[score]) for r in table(browser)]
    assert values == sorted(values)  # ascending after the first click
    browser.find_element(By.CSS_SELECTOR, 'th[data-col="clever_hans_score"] button').click()
    assert [float(r[score]) for r in table(browser)] == sorted(values, reverse=True)
    name = str(cs["class_name"].iat[-1])
    browser.find_element(By.ID, "search").send_keys(name)
    assert [r[cols.index("class_name")] for r in table(browser)] == [name]
    browser.find_element(By.ID, "search").clear()
    browser.execute_script("document.getElementById('search').dispatchEvent(new Event('input'))")
    browser.find_element(By.ID, "flagged").click()
    assert len(table(browser)) == int(cs["is_clever_hans"].sum())
    assert console_problems(browser) == []

    P = demo_run.cfg.report.page_size
    for c in range(10):
        open_page(browser, out / f"class-{c}.html")
        for section in browser.find_elements(By.CSS_SELECTOR, "section.cluster"):
            size = int(section.find_element(By.TAG_NAME, "h3").text.split(": ")[1].split()[0])
            shown = section.find_elements(By.CSS_SELECTOR, ".members figure.member")
            assert len(shown) == min(size, P)
            if size > P:  # page through to the last page
                pages = -(-size // P)
                for _ in range(pages - 1):
                    browser.execute_script("arguments[0].click()", section.find_element(By.CSS_SELECTOR, "button.next"))
                assert len(section.find_elements(By.CSS_SELECTOR, ".members figure.member")) == size - (pages - 1) * P
                assert section.find_element(By.CSS_SELECTOR, ".page-info").text.startswith(f"page {pages} of {pages}")
        assert broken_sprites(browser) == []
        assert console_problems(browser) == [], f"class-{c}.html"
    assert browser.execute_script("return window.__alerts") == []


def test_decisions_round_trip_from_clicks_to_the_manifest(demo_run, browser, tmp_path):
    out = demo_run.cfg.report_path
    open_page(browser, out / "class-3.html")
    browser.execute_script("localStorage.clear()")
    browser.refresh()
    who = browser.find_element(By.ID, "decided-by")
    who.send_keys("alice")

    def decide(c: int, cluster: str | int, decision: str, note: str = "", relabel_to: int | None = None) -> None:
        open_page(browser, out / f"class-{c}.html")
        block = browser.find_element(By.ID, f"block-{cluster}")
        Select(block.find_element(By.CSS_SELECTOR, "select.decision")).select_by_value(decision)
        if relabel_to is not None:
            Select(block.find_element(By.CSS_SELECTOR, "select.relabel-to")).select_by_value(str(relabel_to))
        if note:
            block.find_element(By.CSS_SELECTOR, "input.note").send_keys(note)

    decide(3, "group", "drop", note="checkerboard patch")
    decide(0, 0, "relabel", relabel_to=6)
    decide(1, 0, "keep", note="fine")
    decide(1, 0, "keep")  # back on the page: the stored choice is shown, not reset
    assert (
        Select(browser.find_element(By.CSS_SELECTOR, "#block-0 select.decision")).first_selected_option.text == "keep"
    )
    assert browser.find_element(By.CSS_SELECTOR, "#block-0 input.note").get_attribute("value") == "fine"

    open_page(browser, out / "index.html")  # decisions made on three pages, exported once
    assert len(table(browser, "#decisions")) == 3
    for f in browser.downloads.glob("*"):
        f.unlink()
    browser.find_element(By.ID, "export").click()
    path = browser.downloads / "decisions-demo.json"
    deadline = time.monotonic() + 10
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    doc = json.loads(path.read_text())
    assert doc["decided_by"] == "alice" and doc["run"] == "demo"
    assert [(d["class_id"], d["cluster"], d["decision"], d["relabel_to"], d["note"]) for d in doc["decisions"]] == [
        (0, 0, "relabel", 6, ""), (1, 0, "keep", None, "fine"), (3, "group", "drop", None, "checkerboard patch")
    ]  # fmt: skip
    assert console_problems(browser) == []

    run = Path(shutil.copytree(demo_run.store.url, tmp_path / "run"))
    args = ["clean", "-c", "demo", "--run-dir", str(run), "--decisions", str(path)]
    res = CliRunner().invoke(app, args + [x for s in FAST_DEMO for x in ("--set", s)])
    assert res.exit_code == 0, res.output
    m = pd.read_csv(run / "tables" / "manifest.csv")
    scores = demo_run.store.read_table("sample_scores").set_index("index")
    in_group = scores["in_group"].reindex(m["index"]).fillna(False).to_numpy(bool)
    group3 = (m["label"] == 3).to_numpy() & in_group
    assert (m.loc[group3, "reason"] == "curator alice: drop the isolated group of class 3 (checkerboard patch)").all()
    assert (m.loc[group3, "decision"] == "drop").all()
    moved = (m["label"] == 0) & (m["cluster"] == 0)
    assert moved.any() and (m.loc[moved, "decision"] == "relabel").all() and (m.loc[moved, "relabel_to"] == 6).all()
    cleaned = pd.read_csv(run / "tables" / "cleaned.csv").set_index("index")
    assert (cleaned.loc[m.loc[moved, "index"], "label"] == 6).all()
    assert ((m["label"] == 1) & (m["cluster"] == 0) & (m["decision"] == "keep")).sum() == (
        (m["label"] == 1) & (m["cluster"] == 0)
    ).sum()


def test_html_in_class_and_file_names_shows_as_text(browser, tmp_path):
    classes = make_evil_run(tmp_path).store.read_table("classes")
    evil = int(classes.loc[classes["class_name"] == EVIL, "class_id"].iat[0])
    out = tmp_path / "report"
    open_page(browser, out / "index.html")
    assert EVIL in browser.find_element(By.ID, "classes").text
    evil_page = out / f"class-{evil}.html"
    open_page(browser, evil_page)
    assert EVIL in browser.find_element(By.TAG_NAME, "h1").text
    captions = [e.text for e in browser.find_elements(By.CSS_SELECTOR, "figcaption")]
    assert any(f"{EVIL}<b>" in t for t in captions)  # the file names, prototypes and members alike
    relabel = [
        o.get_attribute("textContent") for o in browser.find_elements(By.CSS_SELECTOR, "select.relabel-to option")
    ]
    assert relabel and not any(EVIL in t for t in relabel)  # its own class is no relabel target ...
    open_page(browser, next(p for p in out.glob("class-*.html") if p != evil_page))
    relabel = [
        o.get_attribute("textContent") for o in browser.find_elements(By.CSS_SELECTOR, "select.relabel-to option")
    ]
    assert any(EVIL in t for t in relabel)  # ... the other class's is, as text
    assert browser.execute_script("return document.querySelectorAll('img[src=\"x\"], [onerror]').length") == 0
    assert browser.execute_script("return window.__alerts") == []
    assert console_problems(browser) == []


def test_the_overview_sorts_and_filters_a_thousand_classes(browser, tmp_path):
    n = 1000
    rng = np.random.default_rng(0)
    score = rng.random(n)
    cs = pd.DataFrame({"class_id": np.arange(n), "class_key": [f"n{i:08d}" for i in range(n)],
                       "class_name": [f"class {i}" for i in range(n)], "n_samples": rng.integers(500, 1300, n),
                       "n_clusters": rng.integers(2, 9, n), "eigengap": rng.random(n),
                       "group_size": rng.integers(2, 99, n), "group_fraction": rng.random(n) / 2,
                       "clever_hans_score": score, "is_clever_hans": score > 0.9,
                       "poison_auroc": rng.random(n)})  # fmt: skip
    cs = cs.sort_values("clever_hans_score", ascending=False)
    cs.insert(0, "rank", np.arange(1, n + 1))
    common = {"run": "big", "report_id": "big/0", "score_fingerprint": "0", "provenance": ""}
    (tmp_path / "assets").mkdir()
    for a in ASSETS:
        shutil.copyfile(ASSET_DIR / a, tmp_path / "assets" / a)
    (tmp_path / "classes.js").write_text("window.UNHANS_CLASSES = [];")
    (tmp_path / "index.html").write_text(index_page(common, cs, set()))
    open_page(browser, tmp_path / "index.html")
    assert len(table(browser)) == n
    cols = [th.get_attribute("data-col") for th in browser.find_elements(By.CSS_SELECTOR, "#classes thead th")]
    assert "poison_auroc" in cols  # a column the report does not know, shown as a number
    browser.find_element(By.CSS_SELECTOR, 'th[data-col="poison_auroc"] button').click()
    shown = [float(r[cols.index("poison_auroc")]) for r in table(browser)]
    assert shown == sorted(shown) and shown[0] == pytest.approx(cs["poison_auroc"].min(), abs=1e-3)
    browser.find_element(By.ID, "search").send_keys("class 99")
    assert sorted(r[cols.index("class_name")] for r in table(browser)) == ["class 99"] + [
        f"class 99{i}" for i in range(10)
    ]
    browser.find_element(By.ID, "flagged").click()
    assert all(r[cols.index("is_clever_hans")] == "yes" for r in table(browser))
    assert console_problems(browser) == []
