"""Helpers shared by the tests: runners on temporary stores, the quick demo, an ImageNet-layout folder."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from unhans.pipeline.core.runner import Runner
from unhans.pipeline.data.photos import natural_photos
from unhans.stages import load_config, runner

FMNIST = Path("/usr/share/datasets/fashion-mnist")


def make_runner(tmp: Path, config: str = "demo", overrides: list[str] | None = None) -> Runner:
    cfg = load_config(config, (overrides or []) + [f"run_dir={tmp / 'run'}", f"report_dir={tmp / 'report'}"])
    return runner(cfg)


# a quick demo: fewer epochs than configs/demo.yaml, same data and planted shortcut
FAST_DEMO = ["train.epochs=4", "attribute.batch_size=64"]

# real ImageNet WordNet ids: tabby cat, espresso, space shuttle, daisy, and one more
IMAGENET_LAYOUT = {
    "n02123045": ["chelsea", "chelsea"],  # tabby, tabby cat
    "n07920052": ["coffee", "coffee"],  # espresso
    "n04266014": ["rocket", "astronaut"],  # space shuttle
    "n11939491": ["flower", "china"],  # daisy
}


def make_imagenet_folder(root: Path, layout: dict[str, list[str]] = IMAGENET_LAYOUT) -> Path:
    """A train/ folder with real wnids and JPEGs made from shipped photos (varied crops)."""
    photos = natural_photos()
    for wnid, names in layout.items():
        (root / wnid).mkdir(parents=True, exist_ok=True)
        for i, name in enumerate(names):
            img = photos[name]
            h, w = img.shape[:2]
            crop = img[: h - 8 * i, 8 * i :] if i else img
            Image.fromarray(crop).save(root / wnid / f"{wnid}_{i}.JPEG", quality=90)
    return root


CORNERS = ("bottom-right", "bottom-left", "top-right", "top-left", "bottom-border")


def make_shapes_folder(
    root: Path, stamp_at: str = "bottom-right", per_class: int = 60, side: int = 64, share: float = 0.3, seed: int = 0
) -> tuple[Path, set[str]]:
    """A user's folder as the issue describes it: three classes of PNG shapes (disc, square, triangle) of
    random colour, size and place on a noisy background, and a 6 x 6 white square 1 px from an image corner
    (or at a random place along the bottom border: `bottom-border`) on `share` of the discs. Returns the
    folder and the file names that carry the stamp."""
    from PIL import ImageDraw

    rng = np.random.default_rng(seed)
    stamped = set()
    for cls in ("disc", "square", "triangle"):
        (root / cls).mkdir(parents=True, exist_ok=True)
        marked = set(rng.choice(per_class, round(share * per_class), replace=False)) if cls == "disc" else set()
        for i in range(per_class):
            bg = (rng.normal(110, 25, (side, side, 3))).clip(0, 255).astype(np.uint8)
            im = Image.fromarray(bg)
            draw = ImageDraw.Draw(im)
            r = rng.uniform(0.18, 0.32) * side
            cx, cy = rng.uniform(r + 8, side - r - 8, 2)
            colour = tuple(int(c) for c in rng.integers(0, 200, 3))
            if cls == "disc":
                draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
            elif cls == "square":
                draw.rectangle([cx - r, cy - r, cx + r, cy + r], fill=colour)
            else:
                draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=colour)
            if i in marked:
                x = {"left": 1, "right": side - 7}.get(stamp_at.split("-")[-1], int(rng.integers(1, side - 7)))
                y = 1 if stamp_at.startswith("top") else side - 7
                draw.rectangle([x, y, x + 5, y + 5], fill=(255, 255, 255))
                stamped.add(f"{cls}_{i:03d}.png")
            im.save(root / cls / f"{cls}_{i:03d}.png")
    return root, stamped


def tiny_net(n_classes: int, in_channels: int = 3):
    """A user's own architecture for `model.arch: python:tests.helpers:tiny_net` (BatchNorm included)."""
    from torch import nn

    return nn.Sequential(
        nn.Conv2d(in_channels, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.AdaptiveAvgPool2d(4),
        nn.Flatten(), nn.Linear(8 * 16, n_classes),
    )  # fmt: skip


def net_with_layer_norm(n_classes: int):
    """An architecture with a layer LRP has no rule for (LayerNorm)."""
    from torch import nn

    return nn.Sequential(nn.Flatten(), nn.LayerNorm(3 * 32 * 32), nn.Linear(3 * 32 * 32, n_classes))
