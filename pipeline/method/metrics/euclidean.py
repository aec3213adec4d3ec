"""Euclidean distance on L2-normalised maps: the CoRelAy / SpRAy baseline."""

from __future__ import annotations

from typing import Literal

import faiss
import numpy as np
from pydantic import Field

from unhans.pipeline.core.config import Section


class EuclideanParams(Section):
    """`distances` with metric euclidean: L2 distance of L2-normalised maps (CoRelAy / SpRAy)."""

    metric: Literal["euclidean"] = "euclidean"
    k: int = Field(10, ge=2, description="neighbours per sample in the kNN graph")


def flat_index(dim: int) -> faiss.Index:
    """An exact L2 index, on the GPU when this faiss build has one and a GPU is visible."""
    index: faiss.Index = faiss.IndexFlatL2(dim)
    if hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0:
        index = faiss.index_cpu_to_all_gpus(index)
    return index


def exact_knn(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """k nearest other rows of x (n, d) by L2: indices (n, k) int64, distances (n, k) float32."""
    n = len(x)
    k = min(k, n - 1)
    index = flat_index(x.shape[1])
    index.add(np.ascontiguousarray(x, dtype=np.float32))
    d2, idx = index.search(np.ascontiguousarray(x, dtype=np.float32), k + 1)
    # drop each row's own entry (not always first when maps are duplicates)
    own = idx == np.arange(n)[:, None]
    own[~own.any(1), -1] = True
    keep = ~own
    idx = idx[keep].reshape(n, k)
    dist = np.sqrt(np.maximum(d2[keep].reshape(n, k), 0.0)).astype(np.float32)
    return idx.astype(np.int64), dist


def normalise(maps: np.ndarray) -> np.ndarray:
    """(n, H, W) -> (n, H*W) rows of unit L2 norm (all-zero maps stay zero)."""
    x = maps.reshape(len(maps), -1).astype(np.float32)
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norm > 0, norm, 1.0)


def knn_euclidean(maps: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Exact kNN of L2-normalised maps (n, H, W): indices (n, k), distances (n, k)."""
    return exact_knn(normalise(maps), k)


def knn(maps: np.ndarray, params: EuclideanParams, seed: int = 0, device=None):
    """The registry's entry point: kNN indices (n, k), distances (n, k) and maps without mass (n,)."""
    idx, dist = knn_euclidean(maps, params.k)
    return idx, dist, ~np.abs(maps).reshape(len(maps), -1).any(1)
