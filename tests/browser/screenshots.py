"""Screenshots of a report for the README (docs/img/): `python -m tests.browser.screenshots REPORT_DIR OUT_DIR`.

Writes OUT_DIR/report-overview.png (the class ranking), OUT_DIR/report-class.png (the top-ranked class
page: a box selected in the embedding and decided, the group and the cluster overlapping it decided
differently) and OUT_DIR/report-members.png (its member grid filtered to the group), palette-quantised
to stay small."""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

from PIL import Image
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from tests.browser.chromium import start_chromium


def page_data(path: Path) -> dict:
    return json.loads(re.search(r'id="unhans-data">(.*?)</script>', path.read_text(), re.S).group(1))


def shoot(report: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    index = page_data(report / "index.html")
    top = index["rows"][0][index["columns"].index("class_id")]  # rank 1
    data = page_data(report / f"class-{top}.html")
    group = [dict(zip(data["fields"], m)) for m in data["members"] if m[data["fields"].index("group")]]
    overlap = max({m["cluster"] for m in group}, key=lambda j: sum(m["cluster"] == j for m in group))
    with tempfile.TemporaryDirectory() as tmp:
        drv = start_chromium(Path(tmp), width=1200, height=900)
        try:
            drv.get((report / f"class-{top}.html").resolve().as_uri())
            drv.execute_script("localStorage.clear(); localStorage.setItem('unhans.decided_by', '\"alice\"')")
            drv.refresh()
            drv.execute_script(
                "window.unhans.setDecision({class_id: arguments[0], class_name: '', cluster: 'group',"
                " decision: 'drop', relabel_to: null, note: 'stamp in the corner'});"
                "window.unhans.setDecision({class_id: arguments[0], class_name: '', cluster: arguments[1],"
                " decision: 'keep', relabel_to: null, note: ''});",
                top,
                overlap,
            )
            drv.get((report / "index.html").resolve().as_uri())
            paths = [out / "report-overview.png"]
            drv.save_screenshot(str(paths[0]))
            drv.set_window_size(1200, 1100)
            drv.get((report / f"class-{top}.html").resolve().as_uri())
            svg = drv.find_element(By.CSS_SELECTOR, "#embedding svg")
            ActionChains(drv).move_to_element_with_offset(svg, 40, -160).click_and_hold().move_by_offset(
                120, 100
            ).release().perform()  # a box over the upper right of the embedding
            Select(drv.find_element(By.ID, "selection-decision")).select_by_value("review")
            drv.find_element(By.ID, "selection-apply").click()
            drv.execute_script("window.scrollTo(0, 0)")
            paths.append(out / "report-class.png")
            drv.save_screenshot(str(paths[1]))
            Select(drv.find_element(By.ID, "filter-block")).select_by_value("group")
            drv.execute_script("document.getElementById('members').scrollIntoView()")
            paths.append(out / "report-members.png")
            drv.save_screenshot(str(paths[2]))
            drv.execute_script("localStorage.clear()")
        finally:
            drv.quit()
    for p in paths:
        Image.open(p).convert("RGB").quantize(colors=128).save(p, optimize=True)
    return paths


if __name__ == "__main__":
    for p in shoot(Path(sys.argv[1]), Path(sys.argv[2])):
        print(p, p.stat().st_size // 1024, "KiB")
