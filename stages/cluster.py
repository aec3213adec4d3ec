"""cluster: per class, spectrum of the kNN graph, eigengap, k-means clusters, 2-D embedding.

Writes classes/<id>/{eigenvalues (m,), eigenvectors (n, m), labels (k_max - 1, n) for
k = 2..k_max, embedding (n, 2)} and the attribute n_clusters (the eigengap's choice).
"""

from __future__ import annotations

import numpy as np

from pipeline.runner import Context, stage
from pipeline.spectral import eigengap, knn_affinity, spectral_labels, spectrum
from pipeline.store import Store


def cluster_class(cfg, url: str, c: int) -> int:
    """One class: spectrum, eigengap, k-means for every k, 2-D embedding; returns the chosen k."""
    store, ccfg = Store(url), cfg.cluster
    idx, dist = store.array(f"classes/{c}/knn_idx")[:], store.array(f"classes/{c}/knn_dist")[:]
    lam, vec = spectrum(knn_affinity(idx, dist), ccfg.n_eigenvectors, cfg.seed)
    k_max = max(2, min(ccfg.k_max, len(idx) - 1, len(lam)))
    k = eigengap(lam, k_max)
    labels = np.stack([spectral_labels(vec, j, cfg.seed) for j in range(2, k_max + 1)])
    if ccfg.embedding == "tsne" and len(idx) > 5:
        from sklearn.manifold import TSNE

        tsne = TSNE(2, perplexity=min(30, len(idx) - 1), init="pca", random_state=cfg.seed)
        emb = tsne.fit_transform(vec[:, : k_max + 1])
    else:
        emb = vec[:, 1:3] if vec.shape[1] >= 3 else np.c_[vec[:, :1], np.zeros(len(vec))]
    store.write_array(f"classes/{c}/eigenvalues", lam.astype(np.float32))
    store.write_array(f"classes/{c}/eigenvectors", vec.astype(np.float32))
    store.write_array(f"classes/{c}/labels", labels, {"k": list(range(2, k_max + 1)), "n_clusters": k})
    store.write_array(f"classes/{c}/embedding", np.asarray(emb, np.float32), {"method": ccfg.embedding})
    return k


@stage("cluster", sections=["cluster"], inputs=["distances"])
def run(ctx: Context) -> dict:
    """Spectral clustering of every analysed class (SpRAy)."""
    ids = ctx.store.group["classes"].attrs["ids"]
    chosen = ctx.tasks.map(cluster_class, list(ids), "cluster", ctx.cfg, ctx.url)
    return {"classes": len(ids), "median_clusters": float(np.median(chosen)) if chosen else 0.0}
