"""Compute resources: torch device selection, CPU threads, progress bars."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Iterator
from typing import TypeVar

import torch
from tqdm import tqdm

from pipeline.errors import UserError

T = TypeVar("T")


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, else CPU; an unavailable device is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"compute.device = {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("compute.device asks for CUDA but no GPU is visible; use compute.device=auto or cpu")
    return dev


def set_threads(threads: int | None) -> None:
    torch.set_num_threads(threads or os.cpu_count() or 1)


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """A progress bar on stderr (hidden when stderr is not a terminal unless UNHANS_PROGRESS=1)."""
    show = sys.stderr.isatty() or os.environ.get("UNHANS_PROGRESS") == "1"
    yield from tqdm(items, desc=desc, total=total, unit=unit, disable=not show, mininterval=1.0, dynamic_ncols=True)
