"""Spectral clustering of one class from its kNN graph (SpRAy), never an n x n dense matrix.

Affinity: w_ij = exp(-d_ij^2 / (s_i s_j)), s_i the distance to the i-th sample's 7th neighbour
(self-tuning), symmetrised with max. Normalised affinity A = D^-1/2 W D^-1/2; the smallest
eigenvalues of L = I - A are 1 - the largest (algebraic) of A, so we ask eigsh for which='LA'
(CoRelAy asks for 'LM', which on real graphs returns eigenvalues near -1: the wrong end).
Cost: O(n k) memory, O(n k m) per Lanczos iteration for m eigenpairs.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import scipy.sparse as sp
from pydantic import Field
from scipy.sparse.linalg import eigsh
from sklearn.cluster import KMeans

from unhans.pipeline.core.config import Section


class ClusterConfig(Section):
    """Spectral clustering of each class (pipeline/method/spectral.py, stages/cluster.py)."""

    n_eigenvectors: int = Field(32, ge=2, description="eigenpairs of the normalised Laplacian kept per class")
    k_max: int = Field(8, ge=2, description="largest number of clusters considered")
    embedding: Literal["spectral", "tsne"] = Field(
        "spectral", description="the 2-D display embedding: eigenvectors 2 and 3, or t-SNE of the spectral embedding"
    )


def knn_affinity(idx: np.ndarray, dist: np.ndarray) -> sp.csr_matrix:
    """kNN indices/distances (n, k) -> symmetric sparse affinity (n, n), zero diagonal."""
    n, k = idx.shape
    sigma = dist[:, min(6, k - 1)].astype(np.float64)
    pos = sigma[sigma > 0]
    sigma = np.where(sigma > 0, sigma, pos.mean() if pos.size else 1.0)
    rows = np.repeat(np.arange(n), k)
    cols = idx.ravel()
    w = np.exp(-(dist.ravel().astype(np.float64) ** 2) / (sigma[rows] * sigma[cols]))
    W = sp.csr_matrix((w, (rows, cols)), shape=(n, n))
    W = W.maximum(W.T).tocsr()
    W.setdiag(0)
    W.eliminate_zeros()
    return W


def spectrum(W: sp.csr_matrix, m: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smallest m eigenvalues of the normalised Laplacian (ascending) and their eigenvectors (n, m)."""
    n = W.shape[0]
    deg = np.asarray(W.sum(1)).ravel()
    inv_sqrt = 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0))
    A = sp.diags(inv_sqrt) @ W @ sp.diags(inv_sqrt)
    m = max(1, min(m, n - 1))
    if n <= 400:
        mu, vec = np.linalg.eigh(A.toarray())
        mu, vec = mu[::-1][:m], vec[:, ::-1][:, :m]
    else:
        v0 = np.random.default_rng(seed).uniform(0.5, 1.5, n)
        mu, vec = eigsh(A, k=m, which="LA", v0=v0, tol=1e-8, maxiter=20 * n)
        order = np.argsort(-mu)
        mu, vec = mu[order], vec[:, order]
    lam = np.clip(1.0 - mu, 0.0, 2.0)
    # fix each eigenvector's sign for reproducibility: largest |entry| positive
    signs = np.sign(vec[np.abs(vec).argmax(0), np.arange(vec.shape[1])])
    return lam, vec * np.where(signs == 0, 1.0, signs)


def eigengap(lam: np.ndarray, k_max: int) -> int:
    """Number of clusters k in [2, k_max] with the largest gap lam[k] - lam[k-1]."""
    k_max = min(k_max, len(lam) - 1)
    if k_max < 2:
        return min(2, len(lam))
    gaps = lam[2 : k_max + 1] - lam[1:k_max]
    return int(np.argmax(gaps)) + 2


def spectral_labels(vec: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """k-means on the first k eigenvectors, rows normalised (Ng, Jordan, Weiss): labels (n,)."""
    U = vec[:, :k]
    U = U / np.maximum(np.linalg.norm(U, axis=1, keepdims=True), 1e-12)
    return KMeans(n_clusters=k, n_init=10, random_state=seed).fit_predict(U).astype(np.int32)


def conductance(W: sp.csr_matrix, members: np.ndarray) -> float:
    """cut(S, V\\S) / min(vol S, vol V\\S) for a boolean member mask; 0 = cut off from the rest."""
    deg = np.asarray(W.sum(1)).ravel()
    vol_s, vol_rest = deg[members].sum(), deg[~members].sum()
    if vol_s <= 0 or vol_rest <= 0:
        return 1.0
    inside = W[members][:, members].sum()
    return float((vol_s - inside) / min(vol_s, vol_rest))


def cluster(idx: np.ndarray, dist: np.ndarray, params: ClusterConfig, seed: int = 0):
    """One class's kNN graph (n, k) -> (eigenvalues (m,), eigenvectors (n, m), k-means labels (K, n) for
    k = 2..k_max, the ks, the eigengap's k, 2-D embedding (n, 2))."""
    lam, vec = spectrum(knn_affinity(idx, dist), params.n_eigenvectors, seed)
    k_max = max(2, min(params.k_max, len(idx) - 1, len(lam)))
    k = eigengap(lam, k_max)
    ks = list(range(2, k_max + 1))
    labels = np.stack([spectral_labels(vec, j, seed) for j in ks])
    if params.embedding == "tsne" and len(idx) > 5:
        from sklearn.manifold import TSNE

        tsne = TSNE(2, perplexity=min(30, len(idx) - 1), init="pca", random_state=seed)
        emb = tsne.fit_transform(vec[:, : k_max + 1])
    else:
        emb = vec[:, 1:3] if vec.shape[1] >= 3 else np.c_[vec[:, :1], np.zeros(len(vec))]
    return lam, vec, labels, ks, k, emb
