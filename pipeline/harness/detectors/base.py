"""The detector contract: a class score, a per-sample score and flags, so `unhans validate` treats
unhans and every peer alike. A detector is one module in this package that registers itself with
`@detector(name, reads)`; the package imports every module in it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import pandas as pd
from sklearn.cluster import KMeans

from unhans.pipeline.core import layout
from unhans.pipeline.core.registry import Registry
from unhans.pipeline.core.store import Store

Reads = Literal["relevance", "features", "scores", "clean features"]


@dataclass(frozen=True)
class Detection:
    """What a detector says about one class of n analysed samples."""

    score: float  # the class score: higher = more suspicious (ranks the classes)
    sample_scores: np.ndarray  # (n,) over the class's members: higher = more likely a shortcut sample
    flag: bool | None = None  # the detector's own class alarm (None: it has no decision rule)
    sample_flags: np.ndarray | None = None  # (n,) bool, the samples it would remove (None: no rule)


class RunView:
    """One finished run's store, read once for every detector: members, maps, features, score tables."""

    def __init__(self, store: Store, seed: int, clean: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        self.store, self.seed = store, seed
        self.clean = clean  # (features, labels) of a clean held-out set, for detectors that need one
        self._cache: dict[str, object] = {}

    def cached(self, key: str, make: Callable[[], object]):
        """A value computed once per run and shared by a detector's calls (e.g. statistics over classes)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @cached_property
    def class_ids(self) -> list[int]:
        return [int(c) for c in self.store.group["classes"].attrs["ids"]]

    def members(self, c: int) -> np.ndarray:
        return self.store.read(layout.MEMBERS(c=c))

    def relevance(self, c: int) -> np.ndarray:
        return self.store.relevance(self.members(c))

    @cached_property
    def has_features(self) -> bool:
        return self.store.has_array(layout.FEATURES())

    def features(self, c: int) -> np.ndarray:
        x = self.store.array(layout.FEATURES()).get_orthogonal_selection((self.members(c), slice(None)))
        return x.astype(np.float32)

    @cached_property
    def class_scores(self) -> pd.DataFrame:
        return self.store.read_table(layout.CLASS_SCORES.name).set_index("class_id")

    @cached_property
    def sample_scores(self) -> dict[int, pd.DataFrame]:
        ss = self.store.read_table(layout.SAMPLE_SCORES.name)
        return {int(c): g.set_index("index") for c, g in ss.groupby("class_id")}


@dataclass(frozen=True)
class Detector:
    reads: Reads  # what it needs: from the store, or features with a clean held-out set
    detect: Callable[[RunView, int], Detection]

    def usable(self, run: RunView) -> bool:
        if self.reads == "clean features":
            return run.has_features and run.clean is not None
        return self.reads != "features" or run.has_features


DETECTORS: Registry[Detector] = Registry("detector")


def detector(name: str, reads: Reads):
    """Register `detect(run, class_id) -> Detection` under `name`."""

    def deco(fn: Callable[[RunView, int], Detection]) -> Callable[[RunView, int], Detection]:
        DETECTORS.register(name)(Detector(reads, fn))
        return fn

    return deco


# ---- helpers of the clustering baselines ------------------------------------------------------------
def unit_mass(maps: np.ndarray) -> np.ndarray:
    """Relevance maps (n, ...) flattened, made non-negative and normalised to unit sum: (n, d) float32."""
    x = np.maximum(np.asarray(maps, np.float32).reshape(len(maps), -1), 0.0)
    return x / np.maximum(x.sum(1, keepdims=True), 1e-12)


def closer_to_small(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """d(x, centre of the larger cluster) - d(x, centre of the smaller one), per row."""
    sizes = np.bincount(labels, minlength=2)
    small, large = int(np.argmin(sizes)), int(np.argmax(sizes))
    if small == large:
        return np.zeros(len(x))
    c_small, c_large = x[labels == small].mean(0), x[labels == large].mean(0)
    return np.linalg.norm(x - c_large, axis=1) - np.linalg.norm(x - c_small, axis=1)


def two_means(x: np.ndarray, seed: int) -> np.ndarray:
    return KMeans(n_clusters=2, n_init=10, random_state=seed).fit_predict(x).astype(np.int64)
