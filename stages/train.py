"""train (optional): train the configured model on the dataset as given, artifacts and all, with a held-out
share of each class that measures it (the training loop and its quality gate: pipeline/method/training.py)."""

from __future__ import annotations

import io
import json

import numpy as np
import torch

from unhans.pipeline.core import layout
from unhans.pipeline.core.runner import Context, stage
from unhans.pipeline.data import build_dataset
from unhans.pipeline.data.models import trained_by_run
from unhans.pipeline.method.training import chance, fit, quality_warnings


@stage("train", sections=["model", "train"], inputs=["index"], enabled=trained_by_run)
def run(ctx: Context) -> dict:
    """Train the model with Adam, stopping when held-out accuracy stops improving; checkpoint to files/model.pt."""
    cfg = ctx.cfg
    samples = ctx.store.read_table(layout.SAMPLES.name)
    ds = build_dataset(cfg.dataset)
    usable = np.flatnonzero(samples["status"].to_numpy() == "ok")
    labels = torch.from_numpy(samples["label"].to_numpy(np.int64, copy=True))
    result = fit(cfg, ds, samples, usable, labels, ctx.device)
    level = chance(labels.numpy()[result.heldout]) if len(result.heldout) else chance(labels.numpy()[usable])
    for w in quality_warnings(result.heldout_accuracy, result.train_accuracy, level, "the trained model"):
        ctx.warn(w)
    buf = io.BytesIO()
    torch.save(result.model.cpu().state_dict(), buf)
    ctx.store.write_bytes(layout.MODEL(), buf.getvalue())
    record = {"history": result.history, "heldout": result.heldout.tolist(), "best_epoch": result.best_epoch}
    ctx.store.write_bytes(layout.TRAINING(), json.dumps(record, default=float).encode())
    return {
        "epochs": result.epochs,
        "best_epoch": result.best_epoch,
        "final_loss": round(result.loss, 4),
        "train_accuracy": round(result.train_accuracy, 4),
        "heldout_accuracy": round(result.heldout_accuracy, 4) if np.isfinite(result.heldout_accuracy) else None,
        "chance": round(level, 4),
        "trained_on": result.trained_on,
        "held_out": len(result.heldout),
    }
