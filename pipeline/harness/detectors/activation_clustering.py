"""Activation clustering (Chen et al., 2018): penultimate features of the class reduced to 10
dimensions (PCA), k-means with 2 clusters; class score = silhouette of that split; per sample:
closeness to the smaller cluster.
"""

from __future__ import annotations

import numpy as np
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score

from unhans.pipeline.harness.detectors.base import Detection, RunView, closer_to_small, detector, two_means


def activation_clustering(features: np.ndarray, seed: int = 0) -> tuple[float, np.ndarray]:
    x = np.asarray(features, np.float64)
    dims = min(10, x.shape[0] - 1, x.shape[1])
    z = PCA(dims, random_state=seed).fit_transform(x) if dims >= 1 else x
    labels = two_means(z, seed)
    if len(np.unique(labels)) < 2:
        return 0.0, np.zeros(len(x))
    return float(silhouette_score(z, labels, random_state=seed, sample_size=min(len(z), 4000))), closer_to_small(
        z, labels
    )


@detector("activation_clustering", "features")
def _detect(run: RunView, c: int) -> Detection:
    score, samples = activation_clustering(run.features(c), run.seed)
    return Detection(score, samples)
