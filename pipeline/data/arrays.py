"""Datasets held in memory as one uint8 array (digits, IDX files)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from unhans.pipeline.data.datasets import ClassInfo, ImageDataset


class ArrayDataset(ImageDataset):
    """Images (N, H, W) uint8 and labels (N,) in memory; sources are `<split>:<i>`."""

    in_memory = True
    channels = 1

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        names: Sequence[str],
        split: str,
        image_size: int,
        limit_per_class: int | None = None,
    ) -> None:
        keep = np.arange(len(labels))
        if limit_per_class:
            keep = np.concatenate([np.flatnonzero(labels == c)[:limit_per_class] for c in np.unique(labels)])
            keep.sort()
        self._keep = keep
        self.images = torch.from_numpy(np.array(images, dtype=np.uint8))  # a writable copy
        self.labels = np.asarray(labels, dtype=np.int64)
        self.split = split
        self.image_size = image_size
        self.classes = [ClassInfo(i, str(i), n) for i, n in enumerate(names)]

    def index(self) -> pd.DataFrame:
        return pd.DataFrame(
            {
                "source": [f"{self.split}:{i}" for i in self._keep],
                "label": self.labels[self._keep],
                "status": "ok",
                "reason": "",
            }
        )

    def load(self, sources: Sequence[str]) -> tuple[torch.Tensor, np.ndarray, list[str]]:
        rows = torch.as_tensor([int(s.rsplit(":", 1)[1]) for s in sources], dtype=torch.long)
        x = self.images[rows].unsqueeze(1).float().div_(255.0)
        if x.shape[-1] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False)
            x.clamp_(0.0, 1.0)
        return x, np.ones(len(sources), bool), [""] * len(sources)
