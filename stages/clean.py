"""clean: the manifest (one row per sample: keep / drop / relabel / review, and why) and the
cleaned-dataset list a training script can consume (the rules: pipeline/method/curation.py)."""

from __future__ import annotations

import pandas as pd
from unhans.pipeline.core import layout
from unhans.pipeline.core.runner import Context, stage
from unhans.pipeline.method.curation import manifest, read_decisions


@stage("clean", sections=["clean"], inputs=["score"])
def run(ctx: Context) -> dict:
    """Manifest (keep / drop / relabel / review per sample, curator decisions on top) and cleaned list."""
    cfg, store = ctx.cfg, ctx.store
    samples = store.read_table(layout.SAMPLES.name)
    scores = store.read_table(layout.SAMPLE_SCORES.name)
    classes = store.read_table(layout.CLASS_SCORES.name).set_index("class_id")
    curator = None
    if cfg.clean.decisions:  # checked whole before anything is written
        score_fp = (store.read_json("stages/score.json") or {}).get("fingerprint")
        groups = scores.groupby("class_id")["in_group"].any() if "in_group" in scores else pd.Series(dtype=bool)
        clusters = {int(c): int(k) for c, k in classes["n_clusters"].items()}
        has_group = {c: bool(groups.get(c, False)) for c in clusters}
        class_ids = set(store.read_table(layout.CLASSES.name)["class_id"].astype(int))
        curator = read_decisions(cfg.clean.decisions, cfg.name, score_fp, clusters, has_group, class_ids)
    table, cleaned, applied = manifest(samples, scores, classes, cfg.clean.flagged, curator)
    store.write_table(layout.MANIFEST.name, table)
    store.write_table(layout.CLEANED.name, cleaned)
    counts = table["decision"].value_counts()
    out = {d: int(counts.get(d, 0)) for d in ("keep", "drop", "review", "relabel")}
    if curator is not None:
        out["curator_decisions"] = applied
    return out
