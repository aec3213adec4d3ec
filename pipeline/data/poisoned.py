"""A dataset with a planted shortcut: wraps any other dataset (`dataset.poison`, pipeline/data/artifacts.py).

It plans at index time (which samples carry the artifact, where, and the backdoor's relabelling:
`artifacts.plan`, deterministic in the poison seed and the labels) and paints at every load
(`artifacts.paint`), so no stage knows that the data are poisoned: they index and load a dataset
like any other. The plan's columns travel in the samples table (they say what to paint); only the
validation harness (pipeline/harness/) reads them as the truth to measure detection against.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch

from unhans.pipeline.data.artifacts import PoisonConfig, paint, plan
from unhans.pipeline.data.datasets import ImageDataset


class PoisonedDataset(ImageDataset):
    """`base` with `poison` planted: same classes, images and sources; labels after poisoning."""

    def __init__(self, base: ImageDataset, poison: PoisonConfig) -> None:
        self.base = base
        self.poison = poison
        self.classes = base.classes
        self.channels = base.channels
        self.image_size = base.image_size
        self.in_memory = base.in_memory

    def index(self) -> pd.DataFrame:
        """The base's index with the plan: label after poisoning, then the PLAN_COLUMNS."""
        samples = self.base.index()
        eligible = samples["status"].to_numpy() == "ok"  # unreadable samples are never poisoned
        planned = plan(
            samples["label"].to_numpy(), self.poison, self.image_size, [c.id for c in self.classes], eligible
        )
        samples["label"] = planned.pop("label").to_numpy()
        return pd.concat([samples, planned], axis=1)

    def load(self, sources: Sequence[str]) -> tuple[torch.Tensor, np.ndarray, list[str]]:
        return self.base.load(sources)

    def load_one(self, source: str) -> tuple[torch.Tensor | None, str]:
        return self.base.load_one(source)

    def after_load(self, x: torch.Tensor, rows: pd.DataFrame) -> torch.Tensor:
        """Paint the planned artifacts of `rows` into the batch, in place."""
        return paint(self.base.after_load(x, rows), rows, self.poison)

    def counts(self, samples: pd.DataFrame) -> dict[str, int]:
        return {
            "with_artifact": int(samples["artifact"].sum()),
            "relabelled": int((samples["label"] != samples["original_label"]).sum()),
        }
