"""Helpers shared by the tests: runners on temporary stores, the quick demo, an ImageNet-layout folder."""

from __future__ import annotations

from pathlib import Path

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
