"""Training the models the audit explains when a dataset comes without one (the train stage).

The model is trained on the data as given, artifacts and all: the audit asks what a model trained on
these data learned. A share of each class is held out (`train.holdout`): the model never sees it, its
accuracy there is the model's quality, and training stops when that accuracy has not improved for
`train.patience` epochs (at most `train.epochs`, never while the learning rate still rises), keeping the
best epoch's weights. A model barely above
chance, or far better on its training data than on the held-out images, explains noise: the audit
warns (`quality_warnings`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from unhans.pipeline.core.compute import progress
from unhans.pipeline.core.config import Section
from unhans.pipeline.data import iter_batches
from unhans.pipeline.data.models import model_spec

WARMUP = 0.3  # share of the epochs over which the one-cycle schedule raises the learning rate (its pct_start)
# a model is weak when its held-out accuracy closes less than this share of the gap from chance to 1 ...
NEAR_CHANCE = 0.25
# ... or lies this far below its accuracy on the images it was trained on
OVERFIT = 0.2


class TrainConfig(Section):
    """Training of a model the train stage fits (pipeline/method/training.py): Adam, one-cycle schedule,
    a held-out share of each class, early stopping on its accuracy."""

    enabled: bool = Field(
        True, description="train the model when its architecture is trainable and no weights are given"
    )
    epochs: int = Field(30, ge=1, description="the most passes over the training images")
    patience: int | None = Field(
        5, ge=1, description="stop when held-out accuracy has not improved for this many epochs (None: all epochs)"
    )
    holdout: float = Field(
        0.1, ge=0, lt=1, description="share of each class held out to measure the model (0: none, no early stop)"
    )
    batch_size: int = Field(128, ge=1, description="images per step")
    lr: float = Field(2e-3, gt=0, description="peak learning rate of the one-cycle schedule")
    weight_decay: float = Field(1e-4, ge=0, description="Adam's weight decay")


@dataclass
class Fit:
    """A trained model and how it got there."""

    model: nn.Module  # the weights of the best held-out epoch (the last without a held-out share), eval mode
    loss: float  # mean training loss of the last epoch trained
    epochs: int  # epochs trained
    best_epoch: int  # the epoch whose weights were kept (1-based)
    train_accuracy: float  # accuracy of the kept model on its training images
    heldout_accuracy: float  # ... and on the held-out ones (NaN without any)
    trained_on: int  # training images
    heldout: np.ndarray  # (h,) sample indices held out
    history: list[dict] = field(default_factory=list)  # per epoch: loss, held-out accuracy


def holdout_split(labels: np.ndarray, usable: np.ndarray, share: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(training, held-out) sample indices: `share` of each class's usable samples held out (at least one of
    a class with two or more), seeded; both sorted."""
    if share <= 0:
        return np.sort(usable), np.zeros(0, np.int64)
    rng = np.random.default_rng([seed, 7])
    held = []
    for c in np.unique(labels[usable]):
        members = usable[labels[usable] == c]
        k = min(len(members) - 1, max(1, round(share * len(members))))
        if k > 0:
            held.append(rng.choice(members, size=k, replace=False))
    heldout = np.sort(np.concatenate(held)) if held else np.zeros(0, np.int64)
    return np.setdiff1d(usable, heldout), heldout


def evaluate(model: nn.Module, normalise, ds, samples: pd.DataFrame, idx: np.ndarray, labels: torch.Tensor,
             device: torch.device, decode_threads: int = 0) -> tuple[float, float]:  # fmt: skip
    """(accuracy, mean cross-entropy) of the model on the samples `idx` (readable ones); NaN for none."""
    if not len(idx):
        return float("nan"), float("nan")
    was_training = model.training
    model.eval()
    correct = seen = 0
    loss = 0.0
    batches = [idx[i : i + 512] for i in range(0, len(idx), 512)]
    with torch.no_grad():
        for b, x, ok, _ in iter_batches(ds, samples, batches, decode_threads):
            keep = torch.as_tensor(ok)
            logits = model(normalise(x.to(device)))[keep.to(device)].cpu()
            y = labels[b][keep]
            correct += int((logits.argmax(1) == y).sum())
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            seen += int(keep.sum())
    model.train(was_training)
    return (correct / seen, loss / seen) if seen else (float("nan"), float("nan"))


def accuracy(*args, **kwargs) -> float:
    """Share of the samples the model classifies as their label (evaluate's first value)."""
    return evaluate(*args, **kwargs)[0]


def fit(cfg, ds, samples: pd.DataFrame, usable: np.ndarray, labels: torch.Tensor, device: torch.device) -> Fit:
    """Train a fresh model with Adam (cfg.train, seeded by cfg.seed) on the samples `usable` (indices into
    `samples`) under `labels` (indexed by sample index), less the held-out share. The images are the
    dataset's as loaded (a planted shortcut painted in)."""
    torch.manual_seed(cfg.seed)
    tcfg, threads = cfg.train, cfg.compute.decode_threads
    spec = model_spec(cfg.model)
    model = spec.build(len(ds.classes), ds.channels, cfg.dataset.image_size, None).to(device)
    normalise = spec.normaliser(ds.channels, device)
    train_idx, heldout = holdout_split(labels.numpy(), np.asarray(usable), tcfg.holdout, cfg.seed)
    opt = torch.optim.Adam(model.parameters(), lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    bs = tcfg.batch_size
    n_steps = tcfg.epochs * -(-len(train_idx) // bs)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=tcfg.lr, total_steps=n_steps, pct_start=WARMUP)
    gen = np.random.default_rng(cfg.seed)
    early = tcfg.patience is not None and len(heldout) > 0
    warmup = math.ceil(WARMUP * tcfg.epochs)  # the schedule's rising learning rate: no stop before its peak
    history: list[dict] = []
    best: tuple[float, float] = (-1.0, 0.0)
    best_epoch, best_state, loss_sum = 0, None, 0.0
    for epoch in range(1, tcfg.epochs + 1):
        order = gen.permutation(train_idx)
        batches = [order[i : i + bs] for i in range(0, len(order), bs)]
        model.train()
        loss_sum, seen = 0.0, 0
        for idx, x, ok, _ in progress(
            iter_batches(ds, samples, batches, threads), f"train epoch {epoch}", total=len(batches), unit="batch"
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
        held_acc, held_loss = evaluate(model, normalise, ds, samples, heldout, labels, device, threads)
        history.append({"epoch": epoch, "loss": round(loss_sum, 5), "heldout_accuracy": held_acc,
                        "heldout_loss": held_loss})  # fmt: skip
        if early and (held_acc, -held_loss) > best:  # accuracy first; on a small held-out share, loss breaks ties
            best, best_epoch, best_state = (held_acc, -held_loss), epoch, copy.deepcopy(model.state_dict())
        if early and epoch >= warmup and epoch - best_epoch >= tcfg.patience:
            break
    if early and best_state is not None:
        model.load_state_dict(best_state)
    else:
        best_epoch = len(history)
    model.eval()
    return Fit(
        model=model,
        loss=loss_sum,
        epochs=len(history),
        best_epoch=best_epoch,
        train_accuracy=accuracy(model, normalise, ds, samples, train_idx, labels, device, threads),
        heldout_accuracy=accuracy(model, normalise, ds, samples, heldout, labels, device, threads),
        trained_on=len(train_idx),
        heldout=heldout,
        history=history,
    )


def chance(labels: np.ndarray) -> float:
    """Accuracy of always guessing the most common label."""
    return float(np.bincount(labels).max() / len(labels)) if len(labels) else float("nan")


def quality_warnings(
    accuracy_held: float,
    accuracy_train: float,
    chance_level: float,
    what: str,
    where: str = "on images it did not learn from",
) -> list[str]:
    """Why a model is too weak to audit, if it is: held-out accuracy near chance or far below train accuracy."""
    out = []
    if np.isfinite(accuracy_held) and accuracy_held < chance_level + NEAR_CHANCE * (1 - chance_level):
        out.append(
            f"{what} is weak: accuracy {accuracy_held:.2f} {where}, where guessing the "
            f"commonest class gives {chance_level:.2f}; its explanations may show noise rather than what the data "
            "teach (train longer with train.epochs, give it more images, or check the labels)"
        )
    if np.isfinite(accuracy_held) and np.isfinite(accuracy_train) and accuracy_train - accuracy_held > OVERFIT:
        out.append(
            f"{what} has learned its training images by heart: accuracy {accuracy_train:.2f} there, "
            f"{accuracy_held:.2f} on held-out ones; shortcuts it found may not generalise (more images, "
            "fewer epochs)"
        )
    return out
