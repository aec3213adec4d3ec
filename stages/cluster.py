"""cluster: per class, spectrum of the kNN graph, eigengap, k-means clusters for k = 2..k_max, and a
2-D embedding (the kernels: pipeline/method/spectral.py); labels carries the eigengap's choice of k.
"""

from __future__ import annotations

import numpy as np

from unhans.pipeline.core import layout
from unhans.pipeline.core.runner import Context, stage
from unhans.pipeline.core.store import Store
from unhans.pipeline.method.spectral import cluster


def cluster_class(cfg, url: str, c: int) -> int:
    """One class: spectrum, eigengap, k-means for every k, 2-D embedding; returns the chosen k."""
    store = Store(url)
    idx, dist = store.read(layout.KNN_IDX(c=c)), store.read(layout.KNN_DIST(c=c))
    lam, vec, labels, ks, k, emb = cluster(idx, dist, cfg.cluster, cfg.seed)
    store.write_array(layout.EIGENVALUES(c=c), lam.astype(np.float32))
    store.write_array(layout.EIGENVECTORS(c=c), vec.astype(np.float32))
    store.write_array(layout.LABELS(c=c), labels, {"k": ks, "n_clusters": k})
    store.write_array(layout.EMBEDDING(c=c), np.asarray(emb, np.float32), {"method": cfg.cluster.embedding})
    return k


@stage("cluster", sections=["cluster"], inputs=["distances"])
def run(ctx: Context) -> dict:
    """Spectral clustering of every analysed class (SpRAy)."""
    ids = ctx.store.group["classes"].attrs["ids"]
    chosen = ctx.tasks.map(cluster_class, list(ids), "cluster", ctx.cfg, ctx.url)
    return {"classes": len(ids), "median_clusters": float(np.median(chosen)) if chosen else 0.0}
