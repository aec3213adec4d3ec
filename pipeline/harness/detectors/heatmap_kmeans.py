"""Heatmap clustering, the closest published relative of SpRAy (Lapuschkin et al., 2019, cluster the
relevance maps of a class; k-means is the clustering CoRelAy offers beside the spectral one): maps
made non-negative and normalised to unit sum, flattened; k-means for k = 2..5 (3 restarts), the k
with the best silhouette kept; class score = that silhouette. Per sample: how much closer it is to
the nearest other cluster's centre than to the centre of the class's largest cluster (zero or below
for the largest cluster's members, positive for the minorities').
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans
from sklearn.metrics import silhouette_score

from unhans.pipeline.harness.detectors.base import Detection, RunView, detector, unit_mass

KS = range(2, 6)


def heatmap_kmeans(maps: np.ndarray, seed: int = 0) -> tuple[float, np.ndarray]:
    n = len(maps)
    x = unit_mass(maps)
    best = (-1.0, None)
    for k in KS:
        if k >= n:
            break
        km = KMeans(n_clusters=k, n_init=3, random_state=seed).fit(x)
        if len(np.unique(km.labels_)) < 2:
            continue
        sil = float(silhouette_score(x, km.labels_, sample_size=min(n, 2000), random_state=seed))
        if sil > best[0]:
            best = (sil, km)
    sil, km = best
    if km is None:
        return 0.0, np.zeros(n)
    d = np.linalg.norm(x[:, None, :] - km.cluster_centers_[None], axis=2)  # (n, k)
    large = int(np.argmax(np.bincount(km.labels_, minlength=km.n_clusters)))
    others = np.delete(d, large, axis=1).min(1)
    return sil, d[:, large] - others


@detector("heatmap_kmeans", "relevance")
def _detect(run: RunView, c: int) -> Detection:
    score, samples = heatmap_kmeans(run.relevance(c), run.seed)
    return Detection(score, samples)
