"""distances: per class, a kNN graph of the relevance maps under the configured distance.

Writes classes/<class id>/{members (n,) i64, knn_idx (n, k) i64 (positions in members),
knn_dist (n, k) f32}. Never builds an n x n matrix; cost per class is the metric's kNN cost.
"""

from __future__ import annotations

import numpy as np

from pipeline.compute import progress
from pipeline.metrics import DISTANCES
from pipeline.runner import Context, stage

MIN_CLASS_SIZE = 4


def class_members(ctx: Context) -> dict[int, np.ndarray]:
    """Sample indices per class id, attributed samples only, for classes big enough to analyse."""
    samples = ctx.store.read_table("samples")
    status = ctx.store.array("attribution/status")[:]
    labels = samples["label"].to_numpy()
    out = {}
    for c in np.unique(labels):
        members = np.flatnonzero((labels == c) & (status == 0))
        if len(members) >= MIN_CLASS_SIZE:
            out[int(c)] = members
    return out


@stage("distances", sections=["distances"], inputs=["attribute"])
def run(ctx: Context) -> dict:
    """kNN indices and distances between the relevance maps of each class."""
    cfg = ctx.cfg.distances
    knn = DISTANCES.get(cfg.metric)
    members_by_class = class_members(ctx)
    for c, members in progress(members_by_class.items(), "distances", total=len(members_by_class), unit="class"):
        maps = ctx.store.relevance(members)
        idx, dist = knn(maps, cfg.k, ctx.cfg.seed)
        ctx.store.write_array(f"classes/{c}/members", members)
        ctx.store.write_array(f"classes/{c}/knn_idx", idx, {"metric": cfg.metric})
        ctx.store.write_array(f"classes/{c}/knn_dist", dist, {"metric": cfg.metric})
    ctx.store.group.require_group("classes").attrs.update({"ids": sorted(members_by_class), "metric": cfg.metric})
    return {"classes": len(members_by_class), "samples": int(sum(len(m) for m in members_by_class.values()))}
