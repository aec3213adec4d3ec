"""Datasets by name: an index of samples plus batched loading of model-ready images.

A dataset lists its samples once (`index`, run by the index stage) as a table of string
`source`s (a file path, or `split:i` for in-memory sets) with labels and a status. Every
later stage loads images by source, in batches, through `iter_batches`, so nothing has to
list or scan the dataset again.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import torch

from pipeline.registry import Registry

if TYPE_CHECKING:
    from pipeline.config import PoisonConfig


@dataclass(frozen=True)
class ClassInfo:
    id: int  # the model's output index for this class
    key: str  # folder name / WordNet id / digit
    name: str  # human-readable name


class ImageDataset:
    """Base class. Subclasses set `classes`, `channels`, and implement `index` and `load`."""

    classes: list[ClassInfo]
    channels: int
    image_size: int
    in_memory: bool = True

    def index(self) -> pd.DataFrame:
        """Columns: source (str), label (int), status ('ok' | 'skipped'), reason (str)."""
        raise NotImplementedError

    def load(self, sources: Sequence[str]) -> tuple[torch.Tensor, np.ndarray, list[str]]:
        """Images (B, C, S, S) float in [0, 1], ok (B,) bool, and a reason for each failure."""
        raise NotImplementedError

    def load_one(self, source: str) -> tuple[torch.Tensor | None, str]:
        """One image (C, S, S), or None and the reason it could not be read."""
        x, ok, reasons = self.load([source])
        return (x[0], "") if ok[0] else (None, reasons[0])


DATASETS: Registry[type[ImageDataset]] = Registry("dataset")


def build_dataset(cfg) -> ImageDataset:
    """Instantiate the dataset of a DatasetConfig."""
    return DATASETS.get(cfg.kind)(cfg)


class _SourceList(torch.utils.data.Dataset):
    def __init__(self, ds: ImageDataset, sources: Sequence[str]) -> None:
        self.ds, self.sources = ds, list(sources)

    def __len__(self) -> int:
        return len(self.sources)

    def __getitem__(self, i: int):
        x, reason = self.ds.load_one(self.sources[i])
        if x is None:
            x = torch.zeros(self.ds.channels, self.ds.image_size, self.ds.image_size)
        return x, reason


def _collate(items):
    xs, reasons = zip(*items)
    ok = np.array([r == "" for r in reasons])
    return torch.stack(xs), ok, list(reasons)


def iter_batches(
    ds: ImageDataset,
    samples: pd.DataFrame,
    batches: Sequence[np.ndarray],
    poison: PoisonConfig | None,
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[tuple[np.ndarray, torch.Tensor, np.ndarray, list[str]]]:
    """Yield (sample indices, images, ok, reasons) for each index array in `batches`, in order.

    Artifacts planned in `samples` by the index stage (columns artifact, art_*) are painted in with
    `poison` (the config's poison section; None paints nothing), see pipeline.poison.paint.
    File-backed datasets decode in `num_workers` processes; in-memory ones slice directly.
    """
    if ds.in_memory or num_workers == 0:
        loaded = (ds.load(samples["source"].to_numpy()[idx]) for idx in batches)
    else:
        flat = np.concatenate(batches) if len(batches) else np.zeros(0, int)
        loader = torch.utils.data.DataLoader(
            _SourceList(ds, samples["source"].to_numpy()[flat]),
            batch_sampler=_fixed_batches([len(b) for b in batches]),
            num_workers=num_workers,
            collate_fn=_collate,
            pin_memory=pin_memory,
            persistent_workers=False,
        )
        loaded = iter(loader)
    for idx, (x, ok, reasons) in zip(batches, loaded):
        if poison is not None and "artifact" in samples:
            from pipeline.poison import paint

            paint(x, samples.iloc[idx], poison)
        yield idx, x, ok, reasons


def _fixed_batches(sizes: list[int]) -> list[list[int]]:
    out, start = [], 0
    for s in sizes:
        out.append(list(range(start, start + s)))
        start += s
    return out


# register the built-in datasets
import pipeline.datasets.digits  # noqa: E402,F401
import pipeline.datasets.folder  # noqa: E402,F401
import pipeline.datasets.idx  # noqa: E402,F401
