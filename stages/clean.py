"""clean: the manifest (one row per sample: keep / drop / relabel / review, and why) and the
cleaned-dataset list a training script can consume (the rules: pipeline/method/curation.py).

A curator's decisions file given with `unhans clean --decisions FILE` is checked whole, applied, and kept
in the run (files/decisions.json): later audits apply it again until another file replaces it (or
`unhans clean --clear-decisions` removes it). Kept decisions that no longer fit the run (a new
clustering) are not applied, and the audit says so.
"""

from __future__ import annotations

import fsspec

from unhans.pipeline.core import layout
from unhans.pipeline.core.errors import UserError
from unhans.pipeline.core.runner import Context, stage
from unhans.pipeline.method.curation import manifest, read_decisions


@stage("clean", sections=["clean"], inputs=["score"])
def run(ctx: Context) -> dict:
    """Manifest (keep / drop / relabel / review per sample, curator decisions on top) and cleaned list."""
    cfg, store = ctx.cfg, ctx.store
    samples = store.read_table(layout.SAMPLES.name)
    scores = store.read_table(layout.SAMPLE_SCORES.name)
    classes = store.read_table(layout.CLASS_SCORES.name).set_index("class_id")
    curator, kept = None, f"{store.url}/{layout.DECISIONS()}"
    source = cfg.clean.decisions or (kept if store.exists(layout.DECISIONS()) else None)
    if source:  # checked whole before anything is written
        score_fp = (store.read_json("stages/score.json") or {}).get("fingerprint")
        clusters = {int(c): int(k) for c, k in classes["n_clusters"].items()}
        class_ids = set(store.read_table(layout.CLASSES.name)["class_id"].astype(int))
        try:
            curator = read_decisions(source, cfg.name, score_fp, scores, clusters, class_ids)
        except UserError as exc:
            if cfg.clean.decisions:  # a new file: refused, nothing changes
                raise
            ctx.warn(
                f"the curator decisions kept with this run ({kept}) no longer apply, so only the automatic "
                f"decisions are in the manifest: {exc}"
            )
        if cfg.clean.decisions:
            with fsspec.open(cfg.clean.decisions, "rb") as fh:
                store.write_bytes(layout.DECISIONS(), fh.read())
    failures = store.read_table(layout.ATTRIBUTE_FAILURES.name)
    table, cleaned, applied = manifest(samples, scores, classes, cfg.clean.flagged, curator, failures)
    store.write_table(layout.MANIFEST.name, table)
    store.write_table(layout.CLEANED.name, cleaned)
    counts = table["decision"].value_counts()
    out = {d: int(counts.get(d, 0)) for d in ("keep", "drop", "review", "relabel")}
    out["unreadable"] = int(table["reason"].str.startswith("unreadable").sum())
    if curator is not None:
        out["curator_decisions"] = applied
        out["decided_by"] = curator.who
    return out
