"""How fast the report opens at ImageNet size, in headless Chromium (the limits of issue 18: the overview
of 1,000 classes in under 2 s, a class page of 1,300 members in under 3 s).

Audits the demo (or reuses --run), builds the 1,000-class overview and a 1,300-member copy of the
top class's page from it (tests/browser/scale.py), and opens each `--repeats` times in a fresh tab:
the time from navigation to the page's table or member grid being drawn (the load event, every
script run). The demo's own overview (10 classes) and class page (its members) are the baseline
measured in the same run; the ratios say what the size costs.

    python benchmarks/report_scale.py                 # about 2 minutes, most of it the demo audit
    python benchmarks/report_scale.py --run runs/demo --report reports/demo
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.browser.chromium import start_chromium  # noqa: E402
from tests.browser.scale import large_class_page, thousand_class_overview  # noqa: E402

UNHANS = str(Path(sys.executable).with_name("unhans"))
LIMITS = {"overview": 2.0, "class page": 3.0}


def page_data(path: Path) -> dict:
    return json.loads(re.search(r'id="unhans-data">(.*?)</script>', path.read_text(), re.S).group(1))


def opened(drv, path: Path, ready: str) -> float:
    """Seconds from navigation start to the end of the load event, once `ready` (JS) holds."""
    drv.get(path.resolve().as_uri())
    drv.execute_script("return 1")
    assert drv.execute_script(f"return {ready}"), f"{path} did not render"
    t = drv.execute_script("const n = performance.getEntriesByType('navigation')[0]; return n.loadEventEnd;")
    return float(t) / 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run", type=Path, help="an audited demo run (default: audit one into a temporary folder)")
    ap.add_argument("--report", type=Path, help="its report folder")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp_:
        tmp = Path(tmp_)
        report = args.report
        if report is None:
            report = tmp / "report"
            cmd = [UNHANS, "audit", "-c", "demo", "--run-dir", str(tmp / "run"), "--set", f"report_dir={report}"]
            subprocess.run(cmd, check=True, capture_output=True)
        index = page_data(report / "index.html")
        top = index["rows"][0][index["columns"].index("class_id")]
        big = tmp / "big"
        thousand_class_overview(big, strip=report / f"class-{top}" / "group.png")
        page = large_class_page(report, top, 1300, big)
        n_demo = len(page_data(report / f"class-{top}.html")["members"])
        cases = {
            "overview": (report / "index.html", big / "index.html", "document.querySelectorAll('#classes tbody tr')"
                         ".length > 0"),
            "class page": (report / f"class-{top}.html", big / f"class-{top}.html",
                           "document.querySelectorAll('#members figure.member').length > 0"),
        }  # fmt: skip
        sizes = {"overview": ("10 classes", "1,000 classes"), "class page": (f"{n_demo} members", "1,300 members")}
        drv = start_chromium(tmp / "downloads")
        try:
            print(f"{'page':<11} {'baseline':>16} {'ImageNet size':>18} {'ratio':>6} {'limit':>6}  verdict")
            for name, (small, large, ready) in cases.items():
                base = [opened(drv, small, ready) for _ in range(args.repeats)]
                size = [opened(drv, large, ready) for _ in range(args.repeats)]
                b, s = statistics.median(base), statistics.median(size)
                verdict = "within" if s < LIMITS[name] else "OVER"
                print(
                    f"{name:<11} {b:6.3f} s ({sizes[name][0]:>9}) {s:6.3f} s ({sizes[name][1]:>13}) {s / b:5.1f}x "
                    f"{LIMITS[name]:5.1f}s  {verdict}"
                )
        finally:
            drv.quit()
        print(f"medians of {args.repeats} opens each; class page members: {len(page['members'])}")


if __name__ == "__main__":
    main()
