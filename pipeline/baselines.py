"""Baseline detectors that `unhans validate` runs beside unhans on the same store.

Each takes one class's data and returns a class score (higher = more suspicious; ranks the
classes) and per-sample scores (higher = more likely in the suspicious group):

- `spray_euclidean`: SpRAy as CoRelAy runs it: relevance maps made non-negative and normalised
  to unit sum, flattened; a symmetric binary 10-NN graph (Euclidean); the normalised Laplacian's
  eigenpairs as CoRelAy asks ARPACK for them (32 of them, which='LM' on the normalised affinity);
  k-means with 2 clusters on the eigenvectors; the class ranked by its largest eigengap, the
  smaller cluster suspicious. Per sample: how much closer it is to the smaller cluster's centre
  than to the larger's, in the spectral embedding.
- `activation_clustering` (Chen et al., 2018): penultimate features of the class reduced to 10
  dimensions (PCA), k-means with 2 clusters; class score = silhouette of that split; per sample:
  closeness to the smaller cluster as above.
- `spectral_signature` (Tran et al., 2018): centred penultimate features, the top right singular
  vector; per sample the squared projection on it (the outlier score); class score = the share
  of the variance along that direction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import eigsh
from sklearn.cluster import KMeans
from sklearn.decomposition import PCA
from sklearn.metrics import silhouette_score

from pipeline.metrics.euclidean import exact_knn
from pipeline.registry import Registry


@dataclass(frozen=True)
class Baseline:
    reads: Literal["relevance", "features"]  # the stored per-sample array it needs
    score: Callable[[np.ndarray, int], tuple[float, np.ndarray]]  # (class data, seed) -> class, samples


BASELINES: Registry[Baseline] = Registry("baseline")


def _register(name: str, reads: Literal["relevance", "features"]):
    def deco(fn):
        BASELINES.register(name)(Baseline(reads, fn))
        return fn

    return deco


def _closer_to_small(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """d(x, centre of the larger cluster) - d(x, centre of the smaller one), per row."""
    sizes = np.bincount(labels, minlength=2)
    small, large = int(np.argmin(sizes)), int(np.argmax(sizes))
    if small == large:
        return np.zeros(len(x))
    c_small, c_large = x[labels == small].mean(0), x[labels == large].mean(0)
    return np.linalg.norm(x - c_large, axis=1) - np.linalg.norm(x - c_small, axis=1)


def _two_means(x: np.ndarray, seed: int) -> np.ndarray:
    return KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(x).astype(np.int64)


@_register("spray_euclidean", "relevance")
def spray_euclidean(maps: np.ndarray, seed: int = 0) -> tuple[float, np.ndarray]:
    n = len(maps)
    x = np.maximum(np.asarray(maps, np.float32).reshape(n, -1), 0.0)
    x = x / np.maximum(x.sum(1, keepdims=True), 1e-12)
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
    labels = _two_means(vec, seed)
    return float(gaps.max()) if len(gaps) else 0.0, _closer_to_small(vec, labels)


@_register("activation_clustering", "features")
def activation_clustering(features: np.ndarray, seed: int = 0) -> tuple[float, np.ndarray]:
    x = np.asarray(features, np.float64)
    dims = min(10, x.shape[0] - 1, x.shape[1])
    z = PCA(dims, random_state=seed).fit_transform(x) if dims >= 1 else x
    labels = _two_means(z, seed)
    if len(np.unique(labels)) < 2:
        return 0.0, np.zeros(len(x))
    return float(silhouette_score(z, labels, random_state=seed, sample_size=min(len(z), 4000))), _closer_to_small(
        z, labels
    )


@_register("spectral_signature", "features")
def spectral_signature(features: np.ndarray, seed: int = 0) -> tuple[float, np.ndarray]:
    x = np.asarray(features, np.float64)
    x = x - x.mean(0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    proj = x @ vt[0]
    total = float((s**2).sum())
    return (float(s[0] ** 2) / total if total > 0 else 0.0), proj**2
