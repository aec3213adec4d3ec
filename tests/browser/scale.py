"""Report folders at ImageNet size for the browser tests and benchmarks/report_scale.py.

- `thousand_class_overview`: the overview (index.html) of a 1,000-class run; the rows are drawn at
  random (no run of that size is made), each class with a group thumbnail strip cut from a real class's.
- `large_class_page`: a real class page of a written report grown to n members: its members repeated
  under new sample indices (scores, clusters and positions kept, jittered in the embedding) and its
  sprite sheets copied round-robin so that every member has a tile on the sheet its position names.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from unhans.pipeline.report import ASSET_DIR, ASSETS
from unhans.pipeline.report.pages import index_page
from unhans.pipeline.report.render import safe_json

DATA = re.compile(r'(<script type="application/json" id="unhans-data">)(.*?)(</script>)', re.S)


def _assets(dest: Path) -> None:
    (dest / "assets").mkdir(parents=True, exist_ok=True)
    for a in ASSETS:
        shutil.copyfile(ASSET_DIR / a, dest / "assets" / a)


def thousand_class_overview(dest: Path, n: int = 1000, strip: Path | None = None) -> pd.DataFrame:
    """Write dest/index.html for n classes (and classes.js); returns the class table it shows."""
    rng = np.random.default_rng(0)
    score = rng.gamma(1.0, 0.4, n)
    cs = pd.DataFrame({"class_id": np.arange(n), "class_key": [f"n{i:08d}" for i in range(n)],
                       "class_name": [f"class {i}" for i in range(n)], "n_samples": rng.integers(500, 1300, n),
                       "n_clusters": rng.integers(2, 9, n), "eigengap": rng.random(n),
                       "group_size": rng.integers(2, 99, n), "group_fraction": rng.random(n) / 2,
                       "clever_hans_score": score, "p_value": rng.random(n) / 10, "q_value": rng.random(n) / 5,
                       "is_clever_hans": score > 1.5, "poison_auroc": rng.random(n)})  # fmt: skip
    cs = cs.sort_values("clever_hans_score", ascending=False)
    cs.insert(0, "rank", np.arange(1, n + 1))
    common = {"run": "big", "report_id": "big/0", "score_fingerprint": "0", "provenance": "",
              "model_line": "Model: efficientnet_lite0 (packaged weights).", "warnings": ["a warning"],
              "flag_threshold": 1.5, "min_score": 1.0, "fdr": 0.05,
              "unreadable": [(f"n{i:08d}/broken.JPEG", "cannot identify image file") for i in range(3)]}  # fmt: skip
    _assets(dest)
    strips = set()
    if strip is not None:
        for c in range(n):
            (dest / f"class-{c}").mkdir(exist_ok=True)
            shutil.copyfile(strip, dest / f"class-{c}" / "group.png")
        strips = set(range(n))
    (dest / "classes.js").write_text("window.UNHANS_CLASSES = [];")
    (dest / "index.html").write_text(index_page(common, cs, set(range(n)), strips))
    return cs


def large_class_page(report: Path, c: int, n: int, dest: Path) -> dict:
    """Copy report's class-<c>.html to dest grown to n members; returns the page's data."""
    _assets(dest)
    shutil.copyfile(report / "classes.js", dest / "classes.js")
    html = (report / f"class-{c}.html").read_text()
    data = json.loads(DATA.search(html).group(2))
    base, P = data["members"], data["page_size"]
    at = {f: i for i, f in enumerate(data["fields"])}
    rng = np.random.default_rng(0)
    members = []
    for p in range(n):
        m = list(base[p % len(base)])
        m[at["index"]] = 10_000_000 + p
        for f in ("x", "y"):
            m[at[f]] = round(float(np.clip(m[at[f]] + rng.normal(0, 0.01), 0, 1)), 4)
        members.append(m)
    members.sort(key=lambda m: -m[at["score"]])  # sprite order: falling score
    data["members"] = members
    data["blocks"] = [{**b, "size": b["size"] * n // len(base)} for b in data["blocks"]]
    sheets = sorted((report / f"class-{c}").glob("s*.png"), key=lambda p: int(p.stem[1:]))
    full = [s for s in sheets if Image.open(s).size[1] == P * data["tile"]]  # the last may be short
    sheets = full or sheets
    (dest / f"class-{c}").mkdir(parents=True, exist_ok=True)
    for j in range(-(-n // P)):
        shutil.copyfile(sheets[j % len(sheets)], dest / f"class-{c}" / f"s{j}.png")
    shutil.copyfile(report / f"class-{c}" / "prototypes.png", dest / f"class-{c}" / "prototypes.png")
    page = DATA.sub(lambda mt: mt.group(1) + safe_json(data) + mt.group(3), html)
    (dest / f"class-{c}.html").write_text(page)
    return data
