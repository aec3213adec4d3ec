"""Training the small models the audit explains when a dataset comes without one (the train stage).

The model is trained on the data as given, artifacts and all: the audit asks what a model trained on
these data learned.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from unhans.pipeline.core.compute import progress
from unhans.pipeline.core.config import Section
from unhans.pipeline.data import iter_batches
from unhans.pipeline.data.models import MODELS


class TrainConfig(Section):
    """Training of a model the train stage fits (pipeline/method/training.py): Adam, one-cycle schedule."""

    enabled: bool = Field(
        True, description="train the model when its architecture is trainable and no weights are given"
    )
    epochs: int = Field(4, ge=1, description="passes over the data")
    batch_size: int = Field(128, ge=1, description="images per step")
    lr: float = Field(2e-3, gt=0, description="peak learning rate of the one-cycle schedule")
    weight_decay: float = Field(1e-4, ge=0, description="Adam's weight decay")


def fit(
    cfg, ds, samples: pd.DataFrame, usable: np.ndarray, labels: torch.Tensor, device: torch.device
) -> tuple[nn.Module, float]:
    """Train a fresh model with Adam (cfg.train, seeded by cfg.seed) on the samples `usable` (indices
    into `samples`) under `labels` (indexed by sample index); returns the model (train mode) and the
    last epoch's mean loss. The images are the dataset's as loaded (a planted shortcut painted in)."""
    torch.manual_seed(cfg.seed)
    spec = MODELS.get(cfg.model.arch)
    model = spec.build(len(ds.classes), ds.channels, cfg.dataset.image_size, None).to(device)
    normalise = spec.normaliser(ds.channels, device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    bs = cfg.train.batch_size
    n_steps = cfg.train.epochs * -(-len(usable) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.train.lr, total_steps=n_steps)
    gen = np.random.default_rng(cfg.seed)
    loss_sum = 0.0
    for epoch in range(cfg.train.epochs):
        order = gen.permutation(usable)
        batches = [order[i : i + bs] for i in range(0, len(order), bs)]
        model.train()
        loss_sum, seen = 0.0, 0
        for idx, x, ok, _ in progress(
            iter_batches(ds, samples, batches, cfg.compute.decode_threads),
            f"train epoch {epoch + 1}",
            total=len(batches),
            unit="batch",
        ):
            x = normalise(x.to(device))[ok]
            y = labels[idx][ok].to(device)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            loss_sum += loss.item() * len(y)
            seen += len(y)
        loss_sum /= max(seen, 1)
    return model, loss_sum
