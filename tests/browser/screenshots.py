"""Screenshots of a report for the README (docs/img/): `python -m tests.browser.screenshots REPORT_DIR OUT_DIR`.

Writes OUT_DIR/report-overview.png (the class ranking) and OUT_DIR/report-class.png (the
top-ranked class page with a decision made), palette-quantised to stay small."""

from __future__ import annotations

import json
import re
import sys
import tempfile
from pathlib import Path

from PIL import Image

from tests.browser.chromium import start_chromium


def shoot(report: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    data = re.search(r'id="unhans-data">(.*?)</script>', (report / "index.html").read_text(), re.S)
    top = json.loads(data.group(1))["rows"][0][1]  # class_id of rank 1
    with tempfile.TemporaryDirectory() as tmp:
        drv = start_chromium(Path(tmp), width=1200, height=900)
        try:
            drv.get((report / f"class-{top}.html").resolve().as_uri())
            drv.execute_script("localStorage.clear()")
            drv.execute_script(
                "localStorage.setItem('unhans.decided_by', JSON.stringify('alice'));"
                "window.unhans.setDecision({class_id: arguments[0], class_name: '', cluster: 'group',"
                " decision: 'drop', relabel_to: null, note: 'stamp in the corner'});",
                top,
            )
            drv.get((report / "index.html").resolve().as_uri())
            paths = [out / "report-overview.png"]
            drv.save_screenshot(str(paths[0]))
            drv.set_window_size(1200, 1250)
            drv.get((report / f"class-{top}.html").resolve().as_uri())
            paths.append(out / "report-class.png")
            drv.save_screenshot(str(paths[1]))
            drv.execute_script("localStorage.clear()")
        finally:
            drv.quit()
    for p in paths:
        Image.open(p).convert("RGB").quantize(colors=128).save(p, optimize=True)
    return paths


if __name__ == "__main__":
    for p in shoot(Path(sys.argv[1]), Path(sys.argv[2])):
        print(p, p.stat().st_size // 1024, "KiB")
