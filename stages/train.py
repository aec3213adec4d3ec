"""train (optional): train the configured small model on the dataset as given, artifacts and all
(the training loop: pipeline/method/training.py)."""

from __future__ import annotations

import io

import numpy as np
import torch
from unhans.pipeline.core import layout
from unhans.pipeline.core.runner import Context, stage
from unhans.pipeline.data import build_dataset, iter_batches
from unhans.pipeline.data.models import MODELS, trained_by_run
from unhans.pipeline.method.training import fit


@stage("train", sections=["model", "train"], inputs=["index"], enabled=trained_by_run)
def run(ctx: Context) -> dict:
    """Train the model with Adam; the checkpoint goes to files/model.pt in the run store."""
    cfg = ctx.cfg
    samples = ctx.store.read_table(layout.SAMPLES.name)
    ds = build_dataset(cfg.dataset)
    usable = np.flatnonzero(samples["status"].to_numpy() == "ok")
    normalise = MODELS.get(cfg.model.arch).normaliser(ds.channels, ctx.device)
    labels = torch.from_numpy(samples["label"].to_numpy(np.int64, copy=True))
    model, loss_sum = fit(cfg, ds, samples, usable, labels, ctx.device)
    model.eval()
    correct = 0
    batches = [usable[i : i + 512] for i in range(0, len(usable), 512)]
    with torch.no_grad():
        for idx, x, ok, _ in iter_batches(ds, samples, batches, cfg.compute.decode_threads):
            pred = model(normalise(x.to(ctx.device))).argmax(1).cpu()
            correct += int((pred == labels[idx])[torch.as_tensor(ok)].sum())
    buf = io.BytesIO()
    torch.save(model.cpu().state_dict(), buf)
    ctx.store.write_bytes(layout.MODEL(), buf.getvalue())
    return {
        "epochs": cfg.train.epochs,
        "final_loss": round(loss_sum, 4),
        "train_accuracy": round(correct / max(len(usable), 1), 4),
    }
