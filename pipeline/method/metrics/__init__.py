"""Distances between relevance maps, by name (`distances.metric`): each builds one class's kNN graph.

A metric is one module that declares its parameters (a Section with `metric` and `k`, which is the
`distances` config section when that metric is chosen) and `knn(maps, params, seed, device) ->
(indices, distances, empty)`: maps (n, H, W) float32, indices (n, k) int64 of each sample's nearest
other samples, distances (n, k) float32 ascending, empty (n,) bool for maps that carry no mass. No
metric may build an n x n matrix. docs/howto.md says how to add one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import Discriminator, Tag

from unhans.pipeline.core.registry import Registry
from unhans.pipeline.method.metrics import euclidean, wasserstein
from unhans.pipeline.method.metrics.euclidean import EuclideanParams
from unhans.pipeline.method.metrics.wasserstein import WassersteinParams

DEFAULT_METRIC = "wasserstein"


@dataclass(frozen=True)
class Metric:
    params: type  # its config section
    knn: Callable[..., tuple[np.ndarray, np.ndarray, np.ndarray]]


DISTANCES: Registry[Metric] = Registry("distance")
DISTANCES.register("euclidean")(Metric(EuclideanParams, euclidean.knn))
DISTANCES.register("wasserstein")(Metric(WassersteinParams, wasserstein.knn))


def _metric_of(v: Any) -> str:
    return v.get("metric", DEFAULT_METRIC) if isinstance(v, dict) else getattr(v, "metric", DEFAULT_METRIC)


# the `distances` section: the chosen metric's parameters, and only those (a Euclidean run's fingerprint
# does not move with Wasserstein settings)
DistancesConfig = Annotated[
    Annotated[EuclideanParams, Tag("euclidean")] | Annotated[WassersteinParams, Tag("wasserstein")],
    Discriminator(_metric_of),
]


def knn_graph(maps: np.ndarray, params: Any, seed: int = 0, device: Any = None):
    """The kNN graph of one class's maps under the metric `params` (a DistancesConfig) names."""
    return DISTANCES.get(params.metric).knn(maps, params, seed, device)
