"""Distances between relevance maps, by name. Each entry builds a kNN graph for one class.

An entry is `knn(maps, cfg, seed, device) -> (indices, distances, empty)`: maps (n, H, W) float32,
cfg the DistancesConfig, indices (n, k) int64 of each sample's nearest other samples, distances
(n, k) float32 ascending, empty (n,) bool for maps that carry no mass. No entry may build an
n x n matrix.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from pipeline.registry import Registry

KnnFn = Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]
DISTANCES: Registry[KnnFn] = Registry("distance")

from pipeline.metrics import euclidean, wasserstein  # noqa: E402,F401
