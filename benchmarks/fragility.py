"""A lead for triggers that no probe can paste (WaNet's warp, sample-specific noise): does the model's
belief in a member's label survive benign re-sampling of the image?

Reads finished `unhans validate` runs (their models and planted images; nothing is written) and prints,
per run of a poisoned scenario, inside the target class: the per-sample AUROC of the *drop* in the
model's log-probability of the target class when the image is re-sampled, for each of a few benign
perturbations (a content-keeping change should not move a class the image shows; a fragile trigger
does). High AUROC: the planted images lose the label more than the clean members.

    python benchmarks/fragility.py --spec demo
    python benchmarks/fragility.py --spec fashion-mnist
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from unhans.pipeline.data import build_dataset, iter_batches
from unhans.pipeline.harness.validate import _run_model, runs_from_argv, scenario_config


def _blur(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None]) / 16
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k.expand(x.shape[1], 1, 3, 3), groups=x.shape[1])


def _rewarp(x: torch.Tensor, strength: float = 2.0, seed: int = 0) -> torch.Tensor:
    """A random smooth warp of its own (4 x 4 offsets, about strength / 2 px) per image."""
    g = torch.Generator().manual_seed(seed)
    b, _, s, _ = x.shape
    off = torch.rand(b, 2, 4, 4, generator=g) * 2 - 1
    off = off / off.abs().mean((1, 2, 3), keepdim=True)
    field = F.interpolate(off, size=(s, s), mode="bicubic", align_corners=True).permute(0, 2, 3, 1)
    axis = torch.linspace(-1, 1, s)
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    grid = (torch.stack([gx, gy], -1)[None] + strength * field / s).clamp(-1, 1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _down_up(x: torch.Tensor) -> torch.Tensor:
    s = x.shape[-1]
    return F.interpolate(F.avg_pool2d(x, 2), size=(s, s), mode="bilinear", align_corners=False)


PERTURBATIONS = {"blur 3x3": _blur, "re-warp s=2": _rewarp, "down-up x2": _down_up}


def main() -> None:
    spec, root, runs = runs_from_argv(__doc__)
    rows = []
    for sc, seed, run in runs:
        if sc.control:
            continue
        cfg, poison = scenario_config(spec, sc, root, [], seed)
        samples = pd.read_parquet(run / "tables" / "samples.parquet")
        ds = build_dataset(cfg.dataset)
        model, normalise = _run_model(cfg, len(ds.classes), ds.channels, torch.device("cpu"))
        t = poison.target
        members = np.flatnonzero((samples["label"].to_numpy() == t) & (samples["status"].to_numpy() == "ok"))
        drops = {name: [] for name in PERTURBATIONS}
        planted = []
        with torch.no_grad():
            for idx, x, ok, _ in iter_batches(ds, samples, [members[i : i + 256] for i in range(0, len(members), 256)]):
                p = model(normalise(x)).log_softmax(1)[:, t]
                for name, f in PERTURBATIONS.items():
                    drops[name].append((p - model(normalise(f(x).clamp(0, 1))).log_softmax(1)[:, t]).numpy()[ok])
                planted.append(samples["artifact"].to_numpy(bool)[idx[ok]])
        y = np.concatenate(planted)
        row = {"scenario": sc.name, "seed": seed}
        row.update({name: roc_auc_score(y, np.concatenate(d)) for name, d in drops.items()})
        rows.append(row)
    table = pd.DataFrame(rows)
    print("| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns))
    for r in table.itertuples(index=False):
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |")


if __name__ == "__main__":
    main()
