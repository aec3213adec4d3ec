"""index: list the dataset's samples (source, label, class, status) once; later stages load by source.

A dataset with a planted shortcut (dataset.poison) returns its plan with its index
(pipeline/data/poisoned.py); this stage writes what the dataset indexed, whatever it is.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from unhans.pipeline.core import layout
from unhans.pipeline.core.runner import Context, stage
from unhans.pipeline.data import build_dataset


@stage("index", sections=["dataset"])
def run(ctx: Context) -> dict:
    """List every sample with its label; unreadable files are recorded as skipped, not fatal."""
    ds = build_dataset(ctx.cfg.dataset)
    samples = ds.index()
    samples.insert(0, "index", np.arange(len(samples), dtype=np.int64))
    by_id = {c.id: c for c in ds.classes}
    at = samples.columns.get_loc("reason") + 1  # the class columns follow the core columns
    samples.insert(at, "class_key", [by_id[int(y)].key for y in samples["label"]])
    samples.insert(at + 1, "class_name", [by_id[int(y)].name for y in samples["label"]])
    counts = samples["label"].value_counts()
    classes = pd.DataFrame(
        {
            "class_id": [c.id for c in ds.classes],
            "class_key": [c.key for c in ds.classes],
            "class_name": [c.name for c in ds.classes],
            "n_samples": [int(counts.get(c.id, 0)) for c in ds.classes],
        }
    )
    ctx.store.write_table(layout.SAMPLES.name, samples)
    ctx.store.write_table(layout.CLASSES.name, classes)
    ok = int((samples["status"] == "ok").sum())
    if ok < len(samples):
        ctx.warn(f"{len(samples) - ok} files could not be read; they are dropped (their reasons: tables/samples)")
    return {
        "samples": len(samples),
        "ok": ok,
        "skipped": len(samples) - ok,
        "classes_with_samples": int((classes["n_samples"] > 0).sum()),
        **ds.counts(samples),
    }
