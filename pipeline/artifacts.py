"""Artifact generators: deterministic, seeded insertion of shortcuts with a ground-truth box.

Each generator paints into a float image (C, H, W) in [0, 1] inside a square box (y, x, side)
and returns the painted image; the box is the ground-truth mask. Which samples get an artifact
and where is decided once, at index time, from (seed, sample index), and stored in the samples
table, so every later load paints the same pixels.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import torch

from pipeline.registry import Registry

Painter = Callable[[torch.Tensor, int, int, int], torch.Tensor]
ARTIFACTS: Registry[Painter] = Registry("artifact")


@ARTIFACTS.register("patch")
def patch(img: torch.Tensor, y: int, x: int, s: int) -> torch.Tensor:
    """A high-contrast checkerboard square (2-pixel cells)."""
    yy, xx = torch.meshgrid(torch.arange(s), torch.arange(s), indexing="ij")
    checker = (((yy // 2) + (xx // 2)) % 2).to(img.dtype)
    img[:, y : y + s, x : x + s] = checker
    return img


@ARTIFACTS.register("square")
def square(img: torch.Tensor, y: int, x: int, s: int) -> torch.Tensor:
    """A solid white square."""
    img[:, y : y + s, x : x + s] = 1.0
    return img


@ARTIFACTS.register("frame")
def frame(img: torch.Tensor, y: int, x: int, s: int) -> torch.Tensor:
    """The outline of a square, two pixels wide (a thin frame around the box)."""
    w = max(1, min(2, s // 4))
    img[:, y : y + s, x : x + w] = 1.0
    img[:, y : y + s, x + s - w : x + s] = 1.0
    img[:, y : y + w, x : x + s] = 1.0
    img[:, y + s - w : y + s, x : x + s] = 1.0
    return img


def plan_artifacts(labels: np.ndarray, image_size: int, cfg) -> pd.DataFrame:
    """Choose which samples get the artifact and where: columns artifact, art_y, art_x, art_size.

    `cfg` is an ArtifactConfig; `labels` (N,) int. Deterministic in (cfg.seed, labels).
    """
    n = len(labels)
    out = pd.DataFrame({"artifact": np.zeros(n, bool), "art_y": -np.ones(n, np.int32), "art_x": -np.ones(n, np.int32)})
    side = max(2, round(cfg.size * image_size))
    rng = np.random.default_rng(cfg.seed)
    margin = max(1, image_size // 16)
    for c in cfg.classes:
        members = np.flatnonzero(labels == c)
        take = rng.choice(members, size=round(cfg.fraction * len(members)), replace=False)
        for i in np.sort(take):
            if cfg.position == "fixed":
                y = x = image_size - side - margin
            else:
                y, x = rng.integers(0, image_size - side + 1, size=2)
            out.loc[i, ["artifact", "art_y", "art_x"]] = (True, int(y), int(x))
    out["art_size"] = np.where(out["artifact"], side, -1).astype(np.int32)
    return out


def paint(x: torch.Tensor, rows: pd.DataFrame, kind: str) -> torch.Tensor:
    """Paint the planned artifact into the batch `x` (B, C, H, W) for rows with artifact=True."""
    painter = ARTIFACTS.get(kind)
    ys, xs, sides = (rows[c].to_numpy() for c in ("art_y", "art_x", "art_size"))
    for b in np.flatnonzero(rows["artifact"].to_numpy()):
        painter(x[b], int(ys[b]), int(xs[b]), int(sides[b]))
    return x
