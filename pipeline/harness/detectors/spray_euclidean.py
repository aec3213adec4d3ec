"""Euclidean SpRAy as CoRelAy runs it: relevance maps made non-negative and normalised to unit sum,
flattened; a symmetric binary 10-NN graph (Euclidean); the normalised Laplacian's eigenpairs as CoRelAy
asks ARPACK for them (32 of them, which='LM' on the normalised affinity); k-means with 2 clusters on
the eigenvectors; the class ranked by its largest eigengap, the smaller cluster suspicious. Per
sample: how much closer it is to the smaller cluster's centre than to the larger's, in the spectral
embedding.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import eigsh

from unhans.pipeline.harness.detectors.base import Detection, RunView, closer_to_small, detector, two_means, unit_mass
from unhans.pipeline.method.metrics.euclidean import exact_knn


def spray_euclidean(maps: np.ndarray, seed: int = 0) -> tuple[float, np.ndarray]:
    n = len(maps)
    x = unit_mass(maps)
    k = min(10, n - 1)
    idx, _ = exact_knn(x, k)
    rows = np.repeat(np.arange(n), k)
    W = sp.csr_matrix((np.ones(n * k), (rows, idx.ravel())), shape=(n, n))
    W = W.maximum(W.T).tocsr()
    deg = np.asarray(W.sum(1)).ravel()
    inv = sp.diags(1.0 / np.sqrt(np.maximum(deg, 1e-12)))
    A = inv @ W @ inv
    m = min(32, n - 2)
    v0 = np.random.default_rng(seed).uniform(0.5, 1.5, n)
    mu, vec = eigsh(A, k=m, which="LM", v0=v0, maxiter=20 * n)
    order = np.argsort(-mu)
    lam = 1.0 - mu[order]
    vec = vec[:, order]
    gaps = np.diff(lam)
    labels = two_means(vec, seed)
    return float(gaps.max()) if len(gaps) else 0.0, closer_to_small(vec, labels)


@detector("spray_euclidean", "relevance")
def _detect(run: RunView, c: int) -> Detection:
    score, samples = spray_euclidean(run.relevance(c), run.seed)
    return Detection(score, samples)
