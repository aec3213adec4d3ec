"""distances: per class, a kNN graph of the relevance maps under the configured distance
(pipeline/method/metrics/). Never builds an n x n matrix; the cost per class is the metric's kNN cost.
"""

from __future__ import annotations

import numpy as np

from unhans.pipeline.core import layout
from unhans.pipeline.core.compute import resolve_device
from unhans.pipeline.core.runner import Context, stage
from unhans.pipeline.core.store import Store
from unhans.pipeline.method.metrics import knn_graph

MIN_CLASS_SIZE = 4


def class_members(ctx: Context) -> dict[int, np.ndarray]:
    """Sample indices per class id, attributed samples only, for classes big enough to analyse."""
    samples = ctx.store.read_table(layout.SAMPLES.name)
    status = ctx.store.array(layout.STATUS())[:]
    labels = samples["label"].to_numpy()
    out = {}
    for c in np.unique(labels):
        members = np.flatnonzero((labels == c) & (status == 0))
        if len(members) >= MIN_CLASS_SIZE:
            out[int(c)] = members
    return out


def knn_class(cfg, url: str, fingerprint: str, item: tuple[int, np.ndarray]) -> tuple[int, int]:
    """One class: read its maps, build the kNN graph, write it (knn_dist last, stamped with the stage
    fingerprint: a resumed run skips the classes that carry it). Runs in-process or on a worker."""
    c, members = item
    store = Store(url)
    device = resolve_device(cfg.compute.device)
    idx, dist, empty = knn_graph(store.relevance(members), cfg.distances, cfg.seed, device)
    metric = {"metric": cfg.distances.metric}
    store.write_array(layout.MEMBERS(c=c), members)
    store.write_array(layout.EMPTY(c=c), empty)
    store.write_array(layout.KNN_IDX(c=c), idx, metric)
    store.write_array(layout.KNN_DIST(c=c), dist, metric | {"fingerprint": fingerprint})
    return len(members), int(empty.sum())


@stage("distances", sections=["distances"], inputs=["attribute"])
def run(ctx: Context) -> dict:
    """kNN indices and distances between the relevance maps of each class."""
    members_by_class = class_members(ctx)
    ctx.prepare_class_groups(members_by_class)
    done = ctx.finished_classes(members_by_class, layout.KNN_DIST)
    todo = [(c, m) for c, m in members_by_class.items() if c not in done]
    sizes = ctx.tasks.map(knn_class, todo, "distances", ctx.cfg, ctx.url, ctx.fingerprint)
    sizes += [(len(members_by_class[c]), int(ctx.store.read(layout.EMPTY(c=c)).sum())) for c in sorted(done)]
    attrs = {"ids": sorted(members_by_class), "metric": ctx.cfg.distances.metric}
    ctx.store.group.require_group("classes").attrs.update(attrs)
    return {"classes": len(members_by_class), "samples": int(sum(n for n, _ in sizes)),
            "empty_maps": int(sum(e for _, e in sizes)), "classes_resumed": len(done)}  # fmt: skip
