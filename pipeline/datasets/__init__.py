"""Datasets by name: an index of samples plus batched loading of model-ready images.

A dataset lists its samples once (`index`, run by the index stage) as a table of string
`source`s (a file path, or `split:i` for in-memory sets) with labels and a status. Every
later stage loads images by source, in batches, through `iter_batches`, so nothing has to
list or scan the dataset again.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from itertools import islice
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
    File-backed datasets decode in `num_workers` threads, two batches ahead of the consumer (PIL
    decodes and resizes with the GIL released: threads scale like processes, start at once, and
    work inside daemonic Dask workers); in-memory ones slice directly. `pin_memory` pins each batch
    for non-blocking copies to the GPU.
    """
    sources = samples["source"].to_numpy()
    if ds.in_memory or num_workers == 0:
        loaded = (ds.load(sources[idx]) for idx in batches)
    else:
        loaded = _decoded_in_threads(ds, sources, batches, num_workers)
    for idx, (x, ok, reasons) in zip(batches, loaded):
        if poison is not None and "artifact" in samples:
            from pipeline.poison import paint

            paint(x, samples.iloc[idx], poison)
        yield idx, (x.pin_memory() if pin_memory else x), ok, reasons


def _decoded_in_threads(
    ds: ImageDataset, sources: np.ndarray, batches: Sequence[np.ndarray], workers: int, ahead: int = 2
) -> Iterator[tuple[torch.Tensor, np.ndarray, list[str]]]:
    blank = torch.zeros(ds.channels, ds.image_size, ds.image_size)
    with ThreadPoolExecutor(workers, thread_name_prefix="decode") as pool:
        todo = iter(batches)
        queued = deque([pool.submit(ds.load_one, s) for s in sources[idx]] for idx in islice(todo, ahead))
        try:
            while queued:
                futures = queued.popleft()
                nxt = next(todo, None)
                if nxt is not None:
                    queued.append([pool.submit(ds.load_one, s) for s in sources[nxt]])
                items = [f.result() for f in futures]
                x = torch.stack([blank if img is None else img for img, _ in items])
                yield x, np.array([img is not None for img, _ in items]), [r for _, r in items]
        finally:  # stopped early: drop what is queued
            for futures in queued:
                for f in futures:
                    f.cancel()


# register the built-in datasets
import pipeline.datasets.digits  # noqa: E402,F401
import pipeline.datasets.folder  # noqa: E402,F401
import pipeline.datasets.idx  # noqa: E402,F401
