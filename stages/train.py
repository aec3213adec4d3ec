"""train (optional): train the configured small model on the dataset as given, artifacts and all."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.compute import progress
from pipeline.datasets import build_dataset, iter_batches
from pipeline.models import MODELS
from pipeline.runner import Context, stage


def _enabled(cfg) -> bool:
    return cfg.train.enabled and MODELS.get(cfg.model.arch).trainable and not cfg.model.weights


def fit(
    cfg, ds, samples: pd.DataFrame, usable: np.ndarray, labels: torch.Tensor, device: torch.device
) -> tuple[nn.Module, float]:
    """Train a fresh model with Adam (cfg.train, seeded by cfg.seed) on the samples `usable` (indices
    into `samples`) under `labels` (indexed by sample index); returns the model (train mode) and the
    last epoch's mean loss. Artifacts planned in `samples` are painted in, as for the audit."""
    torch.manual_seed(cfg.seed)
    spec = MODELS.get(cfg.model.arch)
    model = spec.build(len(ds.classes), ds.channels, cfg.dataset.image_size, None).to(device)
    mean, std = (t.to(device) for t in spec.norm(ds.channels))
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
            iter_batches(ds, samples, batches, cfg.poison, cfg.attribute.num_workers),
            f"train epoch {epoch + 1}",
            total=len(batches),
            unit="batch",
        ):
            x = ((x.to(device) - mean) / std)[ok]
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


@stage("train", sections=["model", "train"], inputs=["index"], enabled=_enabled)
def run(ctx: Context) -> dict:
    """Train the model with Adam; the checkpoint goes to files/model.pt in the run store."""
    cfg = ctx.cfg
    samples = ctx.store.read_table("samples")
    ds = build_dataset(cfg.dataset)
    usable = np.flatnonzero(samples["status"].to_numpy() == "ok")
    spec = MODELS.get(cfg.model.arch)
    mean, std = (t.to(ctx.device) for t in spec.norm(ds.channels))
    labels = torch.from_numpy(samples["label"].to_numpy(np.int64, copy=True))
    model, loss_sum = fit(cfg, ds, samples, usable, labels, ctx.device)
    model.eval()
    correct = 0
    batches = [usable[i : i + 512] for i in range(0, len(usable), 512)]
    with torch.no_grad():
        for idx, x, ok, _ in iter_batches(ds, samples, batches, cfg.poison, cfg.attribute.num_workers):
            pred = model((x.to(ctx.device) - mean) / std).argmax(1).cpu()
            correct += int((pred == labels[idx])[torch.as_tensor(ok)].sum())
    buf = io.BytesIO()
    torch.save(model.cpu().state_dict(), buf)
    ctx.store.write_bytes("files/model.pt", buf.getvalue())
    return {
        "epochs": cfg.train.epochs,
        "final_loss": round(loss_sum, 4),
        "train_accuracy": round(correct / max(len(usable), 1), 4),
    }
