"""Batched loading of a dataset's samples: decoding threads, the dataset's finishing touch, pinning."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from itertools import islice

import numpy as np
import pandas as pd
import torch

from unhans.pipeline.data.datasets import ImageDataset


def iter_batches(
    ds: ImageDataset,
    samples: pd.DataFrame,
    batches: Sequence[np.ndarray],
    num_workers: int = 0,
    pin_memory: bool = False,
) -> Iterator[tuple[np.ndarray, torch.Tensor, np.ndarray, list[str]]]:
    """Yield (sample indices, images, ok, reasons) for each index array in `batches`, in order.

    Each batch is finished by the dataset with its rows of `samples` (`ImageDataset.after_load`: a
    PoisonedDataset paints its planted artifacts there). File-backed datasets decode in
    `num_workers` threads (`compute.decode_threads`), two batches ahead of the consumer (PIL
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
        x = ds.after_load(x, samples.iloc[idx])
        yield idx, (x.pin_memory() if pin_memory else x), ok, reasons


def _decoded_in_threads(
    ds: ImageDataset, sources: np.ndarray, batches: Sequence[np.ndarray], workers: int, ahead: int = 2
) -> Iterator[tuple[torch.Tensor, np.ndarray, list[str]]]:
    blank = torch.zeros(ds.channels, ds.image_size, ds.image_size)
    pool = _decode_pool(workers)
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


_POOLS: dict[tuple[int, int], ThreadPoolExecutor] = {}


def _decode_pool(workers: int) -> ThreadPoolExecutor:
    """One decoding pool per thread count and process, kept between calls: the per-class stages load a
    few batches per class, and starting the threads for each call can cost more than decoding a small
    class. Loads from several callers at once share its threads; a forked child (whose copy of a
    parent's pool has no threads) makes its own."""
    key = (os.getpid(), workers)
    if key not in _POOLS:
        _POOLS[key] = ThreadPoolExecutor(workers, thread_name_prefix="decode")
    return _POOLS[key]
