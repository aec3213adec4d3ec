"""The report in a real browser (headless Chromium): pages open from disk without console errors,
sprites load, the overview sorts and filters 1,000 classes, a curator's decisions go from clicks on
class pages through the exported file into `unhans clean --decisions`, and HTML in class and file
names shows as text without running."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.browser.chromium import console_problems
from tests.browser.scale import large_class_page, thousand_class_overview
from tests.helpers import FAST_DEMO
from tests.stages.test_report import EVIL, make_evil_run
from unhans.pipeline.cli import app
from unhans.pipeline.method.statistics import ScoreConfig

pytest.importorskip("selenium")
from selenium.webdriver.common.action_chains import ActionChains  # noqa: E402
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
        size = len(demo_run.store.array(f"classes/{c}/members")[:])
        assert len(grid(browser)) == min(size, P)
        pages = -(-size // P)
        for _ in range(pages - 1):  # page through to the last page
            browser.execute_script("arguments[0].click()", browser.find_element(By.CSS_SELECTOR, "#members .next"))
        assert len(grid(browser)) == size - (pages - 1) * P
        assert browser.find_element(By.CSS_SELECTOR, "#members .page-info").text.startswith(f"page {pages} of {pages}")
        assert broken_sprites(browser) == []
        assert len(browser.find_elements(By.CSS_SELECTOR, "#embedding circle")) == size
        assert console_problems(browser) == [], f"class-{c}.html"
    assert browser.execute_script("return window.__alerts") == []


def grid(drv) -> list[dict]:
    """The member tiles shown: index, score, flagged, in the group, decision badge, selected."""
    return drv.execute_script(
        """return [...document.querySelectorAll('#members figure.member')].map(f => ({
          index: +f.dataset.index, score: +f.querySelector('.score').textContent,
          flagged: !!f.querySelector('.badge.flag'), group: !!f.querySelector('.badge.group'),
          decision: f.querySelector('.badge.decision').textContent, selected: f.classList.contains('selected')}))"""
    )


def click(drv, element) -> None:
    """Scroll an element to the middle of the window (clear of the sticky toolbar) and click it."""
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    element.click()


def choose(drv, select_id: str, value: str) -> None:
    Select(drv.find_element(By.ID, select_id)).select_by_value(value)


def test_members_sort_and_filter_by_score_cluster_and_flag(demo_run, browser):
    out = demo_run.cfg.report_path
    scores = demo_run.store.read_table("sample_scores").query("class_id == 3")
    P = demo_run.cfg.report.page_size
    open_page(browser, out / "class-3.html")
    shown = grid(browser)
    assert [t["score"] for t in shown] == sorted((t["score"] for t in shown), reverse=True)
    assert shown[0]["score"] == pytest.approx(scores["clever_hans_score"].max(), abs=0.01)
    assert all(t["flagged"] for t in shown[:5])  # the flagged stamps come first
    choose(browser, "filter-flag", "1")
    flagged = scores.loc[scores["is_clever_hans"]].sort_values("clever_hans_score", ascending=False, kind="stable")
    assert 0 < len(flagged) <= P  # all on one page
    assert {t["index"] for t in grid(browser)} == set(flagged["index"])
    choose(browser, "filter-flag", "")
    choose(browser, "filter-block", "group")
    assert {t["index"] for t in grid(browser)} == set(scores.loc[scores["in_group"], "index"])
    choose(browser, "filter-block", "1")
    choose(browser, "sort", "score-asc")
    cluster1 = scores[scores["cluster"] == 1].sort_values("clever_hans_score")
    assert [t["index"] for t in grid(browser)][:5] == cluster1["index"].tolist()[:5]
    browser.find_element(By.ID, "filter-score").send_keys("0.2")
    assert all(t["score"] >= 0.2 for t in grid(browser))
    assert len(grid(browser)) == min(P, int((cluster1["clever_hans_score"] >= 0.2).sum()))
    choose(browser, "filter-block", "")
    browser.find_element(By.ID, "filter-score").clear()
    browser.execute_script("document.getElementById('filter-score').dispatchEvent(new Event('input'))")
    choose(browser, "sort", "index")
    assert [t["index"] for t in grid(browser)] == sorted(scores["index"])[:P]
    assert console_problems(browser) == []


def export(drv) -> dict:
    """Click "export decisions" and read the downloaded file."""
    for f in drv.downloads.glob("*"):
        f.unlink()
    drv.find_element(By.ID, "export").click()
    path = drv.downloads / "decisions-demo.json"
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:  # Chromium may show the file before its bytes: wait for a whole document
        try:
            return json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            time.sleep(0.1)
    assert path.exists(), drv.find_element(By.ID, "message").text
    return json.loads(path.read_text())


def clean_with(demo_run, doc: dict, tmp_path: Path) -> pd.DataFrame:
    """`unhans clean --decisions` on a copy of the demo run; its manifest, indexed by sample."""
    path = tmp_path / "decisions.json"
    path.write_text(json.dumps(doc))
    run = Path(shutil.copytree(demo_run.store.url, tmp_path / "run"))
    args = ["clean", "-c", "demo", "--run-dir", str(run), "--decisions", str(path)]
    res = CliRunner().invoke(app, args + [x for s in FAST_DEMO for x in ("--set", s)])
    assert res.exit_code == 0, res.output
    return pd.read_parquet(run / "tables" / "manifest.parquet").set_index("index")


def drag(drv, element, start: tuple[int, int], end: tuple[int, int]) -> None:
    """Press at `start`, move to `end` and release, in pixels from the element's top left corner."""
    drv.execute_script("arguments[0].scrollIntoView({block: 'center'})", element)
    w, h = element.size["width"], element.size["height"]
    ActionChains(drv).move_to_element_with_offset(
        element, start[0] - w // 2, start[1] - h // 2
    ).click_and_hold().move_by_offset(end[0] - start[0], end[1] - start[1]).release().perform()


def test_image_decisions_from_tiles_and_a_box_reach_the_manifest(demo_run, browser, tmp_path):
    out = demo_run.cfg.report_path
    open_page(browser, out / "class-3.html")
    browser.execute_script("localStorage.clear()")
    browser.refresh()
    browser.find_element(By.ID, "decided-by").send_keys("bob")
    # a box over the upper half of the embedding, decided: relabel to class 8
    drag(browser, browser.find_element(By.CSS_SELECTOR, "#embedding svg"), (5, 5), (335, 170))
    boxed = browser.execute_script("return window.unhans.selected()")
    assert len(boxed) > 5 and browser.find_element(By.ID, "selected-count").text == f"{len(boxed)} images selected"
    choose(browser, "selection-decision", "relabel")
    choose(browser, "selection-relabel", "8")
    browser.find_element(By.ID, "selection-apply").click()
    expected = {i: ("relabel", 8) for i in boxed}
    browser.find_element(By.ID, "select-none").click()
    # two tiles clicked, decided: keep (they may have been in the box: the later decision wins)
    tiles = browser.find_elements(By.CSS_SELECTOR, "#members figure.member")
    picked = [int(t.get_attribute("data-index")) for t in tiles[:2]]
    for i in picked:
        browser.find_element(By.CSS_SELECTOR, f'#members figure[data-index="{i}"]').click()
    assert [t["index"] for t in grid(browser) if t["selected"]] == picked
    choose(browser, "selection-decision", "keep")
    browser.find_element(By.ID, "selection-note").send_keys("no patch")
    browser.find_element(By.ID, "selection-apply").click()
    expected.update({i: ("keep", None) for i in picked})
    open_page(browser, out / "index.html")  # away and back: the decisions are still there
    assert [r[1] for r in table(browser, "#decisions")].count("image #" + str(picked[0])) == 1
    open_page(browser, out / "class-3.html")
    shown = {t["index"]: t["decision"] for t in grid(browser)}
    assert shown[picked[0]] == "keep · image"
    doc = export(browser)
    assert doc["version"] == 2 and all("index" in d for d in doc["decisions"])
    assert {d["index"]: (d["decision"], d["relabel_to"]) for d in doc["decisions"]} == expected
    assert console_problems(browser) == []

    m = clean_with(demo_run, doc, tmp_path)
    for i, (decision, target) in expected.items():
        assert m.at[i, "decision"] == decision, i
        if target is not None:
            assert (
                m.at[i, "relabel_to"] == target
                and m.at[i, "reason"] == f"curator bob: relabel sample {i} of class 3 to class 8"
            )
    assert m.at[picked[0], "reason"] == f"curator bob: keep sample {picked[0]} of class 3 (no patch)"
    assert m["reason"].str.startswith("curator bob").sum() == len(expected)


def test_a_conflict_of_group_and_cluster_is_shown_and_resolved(demo_run, browser, tmp_path):
    out = demo_run.cfg.report_path
    scores = demo_run.store.read_table("sample_scores").query("class_id == 3")
    group = scores[scores["in_group"]]
    cluster = int(group["cluster"].mode().iat[0])
    open_page(browser, out / "class-3.html")
    browser.execute_script("localStorage.clear()")
    browser.refresh()
    browser.find_element(By.ID, "decided-by").send_keys("carol")
    Select(browser.find_element(By.CSS_SELECTOR, "#block-group select.decision")).select_by_value("drop")
    assert not browser.find_element(By.ID, "conflicts").is_displayed()
    Select(browser.find_element(By.CSS_SELECTOR, f"#block-{cluster} select.decision")).select_by_value("keep")
    panel = browser.find_element(By.ID, "conflicts")
    shared = int((group["cluster"] == cluster).sum())
    assert panel.is_displayed() and f"cluster {cluster} keep: {shared} images are in both" in panel.text
    assert "conflict to resolve" in browser.find_element(By.ID, "decision-count").text
    assert {t["decision"] for t in grid(browser) if t["group"]} >= {"? · conflict"}
    for f in browser.downloads.glob("*"):
        f.unlink()
    browser.find_element(By.ID, "export").click()  # refused while the conflict is open
    assert "choose which wins" in browser.find_element(By.ID, "message").text
    assert not list(browser.downloads.glob("decisions-demo.json"))
    click(browser, browser.find_element(By.CSS_SELECTOR, '#conflicts button[data-prefer="group"]'))
    assert "Overlap resolved" in browser.find_element(By.ID, "conflicts").text
    assert {t["decision"] for t in grid(browser) if t["group"]} == {"drop · group"}
    doc = export(browser)
    assert {"class_id": 3, "prefer": "group"} in doc["decisions"]
    assert console_problems(browser) == []

    m = clean_with(demo_run, doc, tmp_path)
    assert (m.loc[group["index"], "decision"] == "drop").all()  # the group wins where they overlap
    rest = scores.loc[(scores["cluster"] == cluster) & ~scores["in_group"], "index"]
    assert (m.loc[rest, "decision"] == "keep").all()


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
    doc = export(browser)
    path = browser.downloads / "decisions-demo.json"
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


def test_the_overview_of_a_thousand_classes_sorts_filters_and_loads_thumbnails_lazily(demo_run, browser, tmp_path):
    """Functional at ImageNet size; how fast it opens is measured by benchmarks/report_scale.py."""
    cs = thousand_class_overview(tmp_path, strip=demo_run.cfg.report_path / "class-3" / "group.png")
    n = len(cs)
    open_page(browser, tmp_path / "index.html")
    assert len(table(browser)) == n
    cols = [th.get_attribute("data-col") for th in browser.find_elements(By.CSS_SELECTOR, "#classes thead th")]
    assert "poison_auroc" in cols and "p_value" not in cols  # unknown columns shown, technical ones hidden
    assert all(th.get_attribute("title") for th in browser.find_elements(By.CSS_SELECTOR, "#classes thead th"))
    q = [r[cols.index("q_value")] for r in table(browser)]
    shown = cs["clever_hans_score"] >= ScoreConfig().min_score
    assert all(v != "" for v in q[: shown.sum()]) and all(v == "" for v in q[shown.sum() :])  # q only where it decides
    browser.find_element(By.ID, "technical").click()
    cols = [th.get_attribute("data-col") for th in browser.find_elements(By.CSS_SELECTOR, "#classes thead th")]
    assert "p_value" in cols and "eigengap" in cols
    browser.find_element(By.CSS_SELECTOR, 'th[data-col="poison_auroc"] button').click()
    values = [float(r[cols.index("poison_auroc")]) for r in table(browser)]
    assert values == sorted(values) and values[0] == pytest.approx(cs["poison_auroc"].min(), abs=1e-3)
    browser.find_element(By.ID, "search").send_keys("class 99")
    assert sorted(r[cols.index("class_name")] for r in table(browser)) == ["class 99"] + [
        f"class 99{i}" for i in range(10)
    ]
    browser.find_element(By.ID, "flagged").click()
    assert all(r[cols.index("is_clever_hans")] == "yes" for r in table(browser))
    browser.find_element(By.ID, "search").clear()
    browser.execute_script("document.getElementById('search').dispatchEvent(new Event('input'))")
    browser.find_element(By.ID, "flagged").click()
    strips = "return [...document.querySelectorAll('img.strip')].filter(i => i.complete && i.naturalWidth).length"
    WebDriverWait(browser, 10).until(lambda d: d.execute_script(strips) > 0)
    time.sleep(0.5)
    assert browser.execute_script(strips) < n / 4  # the strips of the rows in view, not all 1,000
    assert "3 unreadable files" in browser.find_element(By.TAG_NAME, "body").text
    assert console_problems(browser) == []


def test_a_class_page_of_1300_members_loads_one_page_of_sprites(demo_run, browser, tmp_path):
    """Functional at ImageNet size; how fast it opens is measured by benchmarks/report_scale.py."""
    data = large_class_page(demo_run.cfg.report_path, 3, 1300, tmp_path)
    P = data["page_size"]
    open_page(browser, tmp_path / "class-3.html")

    def sheets() -> set[str]:
        """The sprite sheets the page refers to (only these are fetched)."""
        urls = browser.execute_script(
            "return [...document.querySelectorAll('.tile, .tile > div')].map(e => e.style.backgroundImage)"
        )
        return {u.rsplit("/", 1)[1].rstrip('")') for u in urls if u}

    assert len(grid(browser)) == P and sheets() == {"s0.png"}  # the first page: one sheet
    assert broken_sprites(browser) == []
    assert len(browser.find_elements(By.CSS_SELECTOR, "#embedding circle")) == 1300
    browser.execute_script("arguments[0].click()", browser.find_element(By.CSS_SELECTOR, "#members .next"))
    assert sheets() == {"s1.png"}  # the second page: the next sheet only
    assert "page 2 of 28 (1300 members)" in browser.find_element(By.CSS_SELECTOR, "#members .page-info").text
    browser.find_element(By.ID, "select-shown").click()
    assert browser.find_element(By.ID, "selected-count").text == "1300 images selected"
    assert console_problems(browser) == []
