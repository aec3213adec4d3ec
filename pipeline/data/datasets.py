"""Datasets by name: an index of samples plus the loading of model-ready images.

A dataset lists its samples once (`index`, run by the index stage) as a table of string
`source`s (a file path, or `split:i` for in-memory sets) with labels and a status. Every
later stage loads images by source, in batches, through pipeline.data.loading.iter_batches,
so nothing has to list or scan the dataset again. `dataset.kind` names the class in DATASETS;
`dataset.poison` wraps it in a PoisonedDataset (pipeline/data/poisoned.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator

from unhans.pipeline.core.config import Section
from unhans.pipeline.core.registry import Registry
from unhans.pipeline.data.artifacts import PoisonConfig


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

    def after_load(self, x: torch.Tensor, rows: pd.DataFrame) -> torch.Tensor:
        """Finish a loaded batch x (B, C, S, S), given its rows of the samples table (a wrapper paints here)."""
        return x

    def counts(self, samples: pd.DataFrame) -> dict[str, int]:
        """Counts the index stage records beside its own, from the samples this dataset indexed."""
        return {}


DATASETS: Registry[type[ImageDataset]] = Registry("dataset")


class DatasetConfig(Section):
    """What the run audits (pipeline/data/): a dataset kind, its place and size, and any planted shortcut."""

    choices = {"kind": DATASETS}  # filled by pipeline/data/__init__.py, which any import of this module runs first

    kind: str = Field("digits", description="the dataset's kind: how its samples are listed and loaded")
    path: str | None = Field(None, description="dataset root (IDX folder or class-folder tree)")
    split: Literal["train", "test"] = Field("train", description="which split of a dataset that has several")
    image_size: int = Field(32, ge=8, le=1024, description="side of the model input, pixels")
    fit: Literal["pad", "squash", "crop"] = Field(
        "pad",
        description="how a folder's image becomes image_size x image_size: pad (scale the longer side to it, "
        "pad the shorter with black: the whole image, its shape kept), squash (scale each side to it: the whole "
        "image), crop (scale the shorter side to resize, cut the centre: as ImageNet models were trained, the "
        "borders lost)",
    )
    resize: int | None = Field(
        None, description="fit crop only: shorter side before the centre crop (None: image_size x 256 / 224)"
    )
    limit_per_class: int | None = Field(None, ge=1, description="take at most this many per class")
    class_index: Literal["auto", "imagenet", "sorted"] = Field(
        "auto",
        description="folders: class ids from ImageNet's WordNet ids, sorted folder names, or auto (the first "
        "when every folder is a WordNet id)",
    )
    class_names: list[str] | None = Field(None, description="names for classes 0..C-1")
    poison: PoisonConfig | None = Field(
        None, description="a planted shortcut, for validating the audit (None: the data as they are)"
    )

    @model_validator(mode="after")
    def _resize_crops(self) -> DatasetConfig:
        if self.resize is not None and self.fit != "crop":
            raise ValueError(f"resize is for fit crop (it sets the side before the crop); fit is {self.fit}")
        return self
