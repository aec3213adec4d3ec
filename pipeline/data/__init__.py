"""The data layer: datasets by name, batched loading, planted shortcuts, and the models that explain them.

`build_dataset(cfg.dataset)` is the one way to the data: the kind named by `dataset.kind`
(DATASETS: digits, idx, folder), wrapped in a PoisonedDataset when `dataset.poison` is set.
"""

from __future__ import annotations

from unhans.pipeline.data.datasets import DATASETS, ClassInfo, DatasetConfig, ImageDataset
from unhans.pipeline.data.loading import iter_batches
from unhans.pipeline.data.poisoned import PoisonedDataset


def build_dataset(cfg: DatasetConfig) -> ImageDataset:
    """The dataset a DatasetConfig names, with its planted shortcut if it has one."""
    ds = DATASETS.get(cfg.kind)(cfg)
    return PoisonedDataset(ds, cfg.poison) if cfg.poison is not None else ds


# register the built-in dataset kinds
import unhans.pipeline.data.digits  # noqa: E402,F401
import unhans.pipeline.data.folder  # noqa: E402,F401
import unhans.pipeline.data.idx  # noqa: E402,F401

__all__ = ["DATASETS", "ClassInfo", "DatasetConfig", "ImageDataset", "PoisonedDataset", "build_dataset", "iter_batches"]
