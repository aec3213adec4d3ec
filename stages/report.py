"""report: static HTML for curators under reports/<run>/ (the pages: pipeline/report/pages.py).

Cost: one pass over every analysed sample (its stored thumbnail and heatmap into a PNG sprite sheet), O(N) in
time and disk (about 2 x attribute.thumbnail^2 x 3 bytes per sample before PNG compression); images are
decoded only for the prototypes and the group's strip (a few dozen a class); classes are mapped over Dask
workers like the other per-class stages (the report folder must then be shared).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

from unhans.pipeline.core import layout
from unhans.pipeline.core.runner import Context, stage
from unhans.pipeline.method.curation import overlaps
from unhans.pipeline.report import ASSET_DIR, ASSETS, assets_hash
from unhans.pipeline.report.pages import index_page, member_score_arrays, plain, render_class
from unhans.pipeline.report.provenance import model_line, provenance, provenance_html, unreadable
from unhans.pipeline.report.render import safe_json


def _report_current(cfg) -> bool:
    stamp = cfg.report_path / "report.json"
    if not (cfg.report_path / "index.html").exists() or not stamp.exists():
        return False
    try:
        return json.loads(stamp.read_text()).get("assets") == assets_hash()
    except (OSError, ValueError):
        return False


@stage("report", sections=["report"], inputs=["score"], outputs_exist=_report_current)
def run(ctx: Context) -> dict:
    """Write index.html, one page (and its sprite sheets) per class, and the shared assets."""
    cfg, store = ctx.cfg, ctx.store
    out = cfg.report_path
    out.mkdir(parents=True, exist_ok=True)
    _clear(out)
    class_scores = store.read_table(layout.CLASS_SCORES.name)
    samples = store.read_table(layout.SAMPLES.name)
    sample_scores = store.read_table(layout.SAMPLE_SCORES.name)
    classes = store.read_table(layout.CLASSES.name)
    score_fp = (store.read_json("stages/score.json") or {}).get("fingerprint", "")
    shown = class_scores if cfg.report.top_classes is None else class_scores.head(cfg.report.top_classes)
    prov = provenance(cfg, store)
    common = {
        "run": cfg.name,
        "report_id": f"{cfg.name}/{score_fp}",
        "score_fingerprint": score_fp,
        "provenance": provenance_html(prov),
        "model_line": model_line(cfg, store),
        "warnings": ctx.notes,
        "unreadable": unreadable(samples, store.read_table(layout.ATTRIBUTE_FAILURES.name)),
        "flag_threshold": cfg.score.flag_threshold,
        "min_score": cfg.score.min_score,
        "fdr": cfg.score.fdr,
        "calibrated": bool(class_scores["p_value"].notna().any()) or class_scores.empty,  # no p: < 3 classes
        "out": str(out.resolve()),
    }
    (out / "assets").mkdir(exist_ok=True)
    for a in ASSETS:
        shutil.copyfile(ASSET_DIR / a, out / "assets" / a)
    rows = [[int(r.class_id), str(r.class_key), str(r.class_name)] for r in classes.itertuples()]
    shared = {str(c): [[j, n] for j, n in by.items()] for c, by in overlaps(sample_scores).items()}
    (out / "classes.js").write_text(
        f"window.UNHANS_CLASSES = {safe_json(rows)};\nwindow.UNHANS_OVERLAPS = {safe_json(shared)};\n",
        encoding="utf-8",
    )

    by_class = member_score_arrays(sample_scores)
    ids = shown["class_id"].astype(int).tolist()
    items = []  # every class's members read in one concurrent round trip
    for row, (members, _) in zip(shown.to_dict("records"), store.read_many([layout.MEMBERS(c=c) for c in ids])):
        c = int(row["class_id"])
        items.append((plain(row), members, samples.iloc[members].reset_index(drop=True), by_class.get(c)))
    counts = ctx.tasks.map(render_class, items, "report", cfg, ctx.url, common)

    strips = {int(c) for c, (_, _, strip) in zip(shown["class_id"], counts) if strip}
    index = index_page(common, class_scores, set(shown["class_id"].astype(int)), strips)
    (out / "index.html").write_text(index, "utf-8")
    stamp = {"assets": assets_hash(), "run": cfg.name, "score_fingerprint": score_fp, "made": prov["made"]}
    (out / "report.json").write_text(safe_json(stamp) + "\n", encoding="utf-8")
    return {
        "class_pages": len(items),
        "members": int(sum(n for n, _, _ in counts)),
        "sprites": int(sum(s for _, s, _ in counts)),
        "path": str(out),
    }


def _clear(out: Path) -> None:
    """Remove what an earlier report wrote here (class pages, sprite folders, the stamp), nothing else."""
    (out / "report.json").unlink(missing_ok=True)
    for p in out.glob("class-*"):
        if p.is_dir() and re.fullmatch(r"class-\d+", p.name):
            shutil.rmtree(p)
        elif p.is_file() and re.fullmatch(r"class-\d+\.html", p.name):
            p.unlink()
