"""Which per-sample signal finds the planted images, run by run: a diagnosis for a scenario where
unhans' per-sample AUROC is low.

Reads finished `unhans validate` runs (their tables, models and planted images; nothing is written) and
prints, per run of a poisoned scenario, inside the target class: the flip rate, the chosen group's size,
its purity (the share of planted images among its members) and recall (the share of the planted images
in it), the per-sample AUROC of each signal of `tables/sample_scores` (the Clever Hans score, the
evidence and global transfers, the self-confidence, the label-issue score) and of the *fragility* of the
label: the drop of the model's log-probability of the target when the image is re-sampled benignly (a
3 x 3 blur, a random smooth re-warp of about 1 px, a 2x down-up sampling; content should survive them, a
fragile trigger may not). An AUROC well below 0.5 says the signal ranks the planted images *last*.

    python benchmarks/signals.py --spec demo
    python benchmarks/signals.py --spec fashion-mnist
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

from unhans.pipeline.data import build_dataset, iter_batches
from unhans.pipeline.data.artifacts import warp_grid
from unhans.pipeline.harness.validate import _run_model, markdown_table, runs_from_argv, scenario_config

SIGNALS = ["clever_hans_score", "evidence_transfer", "global_transfer", "self_confidence", "label_issue_score"]


def _blur(x: torch.Tensor) -> torch.Tensor:
    k = torch.tensor([1.0, 2.0, 1.0])
    k = (k[:, None] * k[None]) / 16
    return F.conv2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), k.expand(x.shape[1], 1, 3, 3), groups=x.shape[1])


def _rewarp(x: torch.Tensor, strength: float = 2.0, seed: int = 0) -> torch.Tensor:
    """A random smooth warp of its own (WaNet's recipe, 4 x 4 offsets, about strength / 2 px) per image."""
    g = torch.Generator().manual_seed(seed)
    grid = warp_grid(torch.rand(len(x), 2, 4, 4, generator=g) * 2 - 1, x.shape[-1], strength)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=True)


def _down_up(x: torch.Tensor) -> torch.Tensor:
    s = x.shape[-1]
    return F.interpolate(F.avg_pool2d(x, 2), size=(s, s), mode="bilinear", align_corners=False)


PERTURBATIONS = {"blur": _blur, "re-warp": _rewarp, "down-up": _down_up}


def fragility(spec, sc, seed: int, root, samples: pd.DataFrame, index: np.ndarray) -> dict[str, np.ndarray]:
    """Per perturbation, the drop of log p(target) of the samples `index` under the run's model."""
    cfg, poison = scenario_config(spec, sc, root, [], seed)
    ds = build_dataset(cfg.dataset)
    model, normalise = _run_model(cfg, len(ds.classes), ds.channels, torch.device("cpu"))
    t, drops = poison.target, {name: np.full(len(index), np.nan) for name in PERTURBATIONS}
    batches = [index[i : i + 256] for i in range(0, len(index), 256)]
    with torch.no_grad():
        for b, (_, x, ok, _) in enumerate(iter_batches(ds, samples, batches)):
            p = model(normalise(x)).log_softmax(1)[:, t]
            for name, f in PERTURBATIONS.items():
                drop = (p - model(normalise(f(x).clamp(0, 1))).log_softmax(1)[:, t]).numpy()
                drops[name][b * 256 : b * 256 + len(x)] = np.where(ok, drop, np.nan)
    return drops


def main() -> None:
    spec, root, runs = runs_from_argv(__doc__)
    rows = []
    for sc, seed, run in runs:
        if sc.control:
            continue
        scores = pd.read_parquet(run / "tables" / "sample_scores.parquet")
        samples = pd.read_parquet(run / "tables" / "samples.parquet")
        d = scores[scores["class_id"] == sc.poison["target"]].copy()
        d["planted"] = samples.set_index("index")["artifact"].reindex(d["index"]).to_numpy(bool)
        for name, drop in fragility(spec, sc, seed, root, samples, d["index"].to_numpy()).items():
            d[f"fragility: {name}"] = drop
        d = d.dropna(subset=[c for c in d if c.startswith("fragility")])
        group = d[d["in_group"]]
        row = {
            "scenario": sc.name,
            "seed": seed,
            "flip rate": float(pd.read_csv(run / "validation.csv")["flip_rate"].iloc[0]),
            "group": len(group),
            "purity": group["planted"].mean() if len(group) else float("nan"),
            "recall": group["planted"].sum() / max(int(d["planted"].sum()), 1),
        }
        row.update({s: roc_auc_score(d["planted"], d[s]) for s in SIGNALS + [c for c in d if c.startswith("frag")]})
        rows.append(row)
    table = pd.DataFrame(rows)
    print(markdown_table(table))


if __name__ == "__main__":
    main()
