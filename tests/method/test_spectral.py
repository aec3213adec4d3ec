"""Spectral clustering kernels: the right end of the spectrum, eigengap, conductance."""

import numpy as np
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from unhans.pipeline.method.metrics.euclidean import exact_knn
from unhans.pipeline.method.spectral import conductance, eigengap, knn_affinity, spectral_labels, spectrum


def blobs(sizes, dim=5, spread=0.05, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(len(sizes), dim)) * 3
    x = np.concatenate([c + spread * rng.normal(size=(n, dim)) for c, n in zip(centres, sizes)])
    y = np.repeat(np.arange(len(sizes)), sizes)
    return x.astype(np.float32), y


def test_sparse_solver_returns_the_smallest_laplacian_eigenvalues():
    x, _ = blobs([300, 200, 100])  # n > 400: the sparse (eigsh) path
    idx, dist = exact_knn(x, 10)
    W = knn_affinity(idx, dist)
    lam, vec = spectrum(W, 8)
    deg = np.asarray(W.sum(1)).ravel()
    L = np.eye(len(x)) - W.toarray() / np.sqrt(np.outer(deg, deg))
    dense = np.linalg.eigvalsh(L)[:8]
    np.testing.assert_allclose(lam, dense, atol=1e-6)
    assert lam[0] < 1e-8 and (np.diff(lam) >= -1e-9).all()


def test_eigengap_counts_planted_clusters_and_kmeans_recovers_them():
    x, y = blobs([120, 60, 20], seed=1)
    idx, dist = exact_knn(x, 10)
    W = knn_affinity(idx, dist)
    lam, vec = spectrum(W, 10)
    k = eigengap(lam, 8)
    assert k == 3
    labels = spectral_labels(vec, k)
    # each planted cluster maps to one label
    assert all(len(set(labels[y == c])) == 1 for c in range(3))


def test_affinity_is_symmetric_nonnegative_without_self_loops():
    x, _ = blobs([50, 50])
    W = knn_affinity(*exact_knn(x, 7))
    assert abs(W - W.T).max() < 1e-12 and W.min() >= 0 and W.diagonal().sum() == 0


@settings(max_examples=30, deadline=None)
@given(st.integers(2, 6), st.integers(0, 10_000))
def test_conductance_of_a_disconnected_component_is_zero(k, seed):
    rng = np.random.default_rng(seed)
    n = 40
    A = sp.random(n, n, density=0.3, random_state=seed, format="csr")
    A = A + A.T
    members = np.zeros(n, bool)
    members[: n // k] = True
    # cut every edge between members and the rest
    A = A.tolil()
    for i in np.flatnonzero(members):
        for j in np.flatnonzero(~members):
            A[i, j] = A[j, i] = 0
    A = A.tocsr()
    if A[members][:, members].sum() == 0 or A[~members][:, ~members].sum() == 0:
        return
    assert conductance(A, members) < 1e-12
    whole = rng.random(n) < 0.5
    assert 0.0 <= conductance(A, whole) <= 1.0 + 1e-12
