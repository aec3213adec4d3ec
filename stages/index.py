"""index: list the dataset's samples (source, label, class, status) and plan any poisoning.

With a `poison` section, pipeline.poison.plan picks the poisoned samples from (poison.seed, labels),
relabels them (backdoor regime) and adds original_label, artifact, art_y, art_x, art_h, art_w,
art_angle and art_size; later loads paint exactly those boxes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.datasets import build_dataset
from pipeline.poison import plan
from pipeline.runner import Context, stage


@stage("index", sections=["dataset", "poison"])
def run(ctx: Context) -> dict:
    """List every sample with its label; unreadable files are recorded as skipped, not fatal."""
    cfg = ctx.cfg.dataset
    ds = build_dataset(cfg)
    samples = ds.index()
    samples.insert(0, "index", np.arange(len(samples), dtype=np.int64))
    poison = ctx.cfg.poison
    if poison is not None:  # relabels first (backdoor), so classes follow the labels the model sees
        eligible = samples["status"].to_numpy() == "ok"
        planned = plan(samples["label"].to_numpy(), poison, cfg.image_size, [c.id for c in ds.classes], eligible)
        samples["label"] = planned.pop("label").to_numpy()
    by_id = {c.id: c for c in ds.classes}
    samples["class_key"] = [by_id[int(y)].key for y in samples["label"]]
    samples["class_name"] = [by_id[int(y)].name for y in samples["label"]]
    if poison is not None:
        samples = pd.concat([samples, planned], axis=1)
    counts = samples["label"].value_counts()
    classes = pd.DataFrame(
        {
            "class_id": [c.id for c in ds.classes],
            "class_key": [c.key for c in ds.classes],
            "class_name": [c.name for c in ds.classes],
            "n_samples": [int(counts.get(c.id, 0)) for c in ds.classes],
        }
    )
    ctx.store.write_table("samples", samples)
    ctx.store.write_table("classes", classes)
    ok = int((samples["status"] == "ok").sum())
    return {
        "samples": len(samples),
        "ok": ok,
        "skipped": len(samples) - ok,
        "classes_with_samples": int((classes["n_samples"] > 0).sum()),
        "with_artifact": int(samples["artifact"].sum()) if "artifact" in samples else 0,
        "relabelled": int((samples["label"] != samples["original_label"]).sum()) if poison is not None else 0,
    }
