"""`unhans init PATH`: look at a folder of class sub-folders and write a commented config for its audit.

Every choice is written down with its reason, so a first audit needs no guess: the input size and how
images get there without losing their borders (corner stamps, frames and watermarks live there), the
model (a small pooling CNN trained here, or the user's own weights) and how long to train it.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from unhans.pipeline.core.errors import UserError
from unhans.pipeline.data.survey import FolderSurvey, survey
from unhans.stages import load_config

MIN_CLASS = 4  # smaller classes are not analysed (stages/distances.py)


@dataclass
class Plan:
    """What init decided and why, and the config text it writes."""

    name: str
    text: str
    summary: list[str]


def _name(root: Path) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", root.resolve().name).strip("-.") or "my-data"


SMALL_FOLDER = 5_000  # up to this many images the model trains its whole schedule (no early stop)


def _side(s: FolderSurvey) -> int:
    """Input side of the model trained here: 32 px for images up to 96 px, else 64."""
    return 32 if s.median_long_side <= 96 else 64


def _batch(n: int) -> int:
    """Images per step: a power of two from 16 to 128, about a tenth of the images, so an epoch takes steps."""
    b = 16
    while b < 128 and b * 2 <= n / 10:
        b *= 2
    return b


def _epochs(n: int) -> int:
    """Most epochs: many for a few hundred images, fewer for large folders (early stopping ends sooner)."""
    return 60 if n <= SMALL_FOLDER else 30 if n <= 50_000 else 15


def plan(
    path: str | Path,
    name: str | None = None,
    arch: str | None = None,
    weights: str | None = None,
    image_size: int | None = None,
    fit: str | None = None,
) -> Plan:
    """The config for auditing the folder `path` (and, with `arch` and `weights`, the user's own model)."""
    root = Path(path)
    s = survey(root)
    name = name or _name(root)
    own = weights is not None
    if own and arch is None:
        raise UserError("--weights needs --arch: the architecture the weights belong to (e.g. resnet50)")
    arch = arch or "small_gap_cnn"
    counts = sorted(s.counts.values())
    small = [k for k, v in s.counts.items() if v < MIN_CLASS]
    lines = [f"# unhans config for {root.resolve()}, written by `unhans init` (docs/configuration.md: every key)."]
    lines += [f"# It looked at {s.sampled} of {s.n_files} images in {len(s.counts)} classes "
              f"({counts[0]}-{counts[-1]} per class)."]  # fmt: skip
    if small:
        lines.append(f"# Classes with fewer than {MIN_CLASS} images are not analysed: {', '.join(small[:10])}.")
    if s.unreadable:
        lines.append(f"# {len(s.unreadable)} of the images looked at do not decode (e.g. {s.unreadable[0][0]}: "
                     f"{s.unreadable[0][1]}); the audit drops every such file and lists it.")  # fmt: skip
    lines += [f"name: {name}", "", "dataset:", "  kind: folder", f"  path: {root.resolve()}"]
    if s.imagenet:
        lines.append("  class_index: imagenet   # the folders are ImageNet WordNet ids: the model's 1,000 outputs")
    imagenet_style = own and not arch.startswith("python:")
    if image_size is None:
        image_size = 224 if imagenet_style else _side(s)
    square = s.square_share >= 0.95
    if fit is None:
        fit = "crop" if imagenet_style else "squash" if square else "pad"
    sides = f"{s.median_side} x {s.median_side}" if square else f"{s.median_side} to {s.median_long_side}"
    size_note = f"images are {sides} px (median), {'square' if square else f'{s.square_share:.0%} square'}"
    lines.append(f"  image_size: {image_size}   # the model's input side; {size_note}")
    if fit == "crop":
        resize = round(image_size * 256 / 224)
        lines += [
            "  fit: crop   # ImageNet-style models are trained on centre crops, so the audit shows yours the same;",
            "              # the borders of each image are cut (a corner stamp there is not seen). If your model was",
            "              # trained on whole images, write fit: pad (or squash) instead.",
            f"  resize: {resize}   # shorter side before the centre crop",
        ]
    elif fit == "squash":
        lines.append("  fit: squash   # every image scaled to image_size x image_size: nothing is cut; square images "
                     "keep their shape")  # fmt: skip
    else:
        lines.append("  fit: pad   # the longer side scaled to image_size, the rest padded black: nothing is cut, "
                     "shapes kept")  # fmt: skip
    lines.append("")
    lines += ["compute:", f"  decode_threads: {min(8, os.cpu_count() or 1)}   # image decoding threads", ""]
    if own:
        lines += ["model:", f"  arch: {arch}", f"  weights: {Path(weights).resolve()}   # your model, as trained",
                  "  # mean: [0.485, 0.456, 0.406]   # its input normalisation, if not the architecture's",
                  "  # std: [0.229, 0.224, 0.225]", "", "train:", "  enabled: false   # the audit explains your model",
                  ""]  # fmt: skip
    else:
        epochs = _epochs(s.n_files)
        stop = (
            ["  patience: null   # the whole schedule: on a few hundred held-out images accuracy is too coarse",
             "                   # to stop on (the audit still measures it and warns if the model is weak)"]
            if s.n_files <= SMALL_FOLDER
            else ["  patience: 8   # stop when held-out accuracy has not improved for this many epochs, keeping the",
                  "                # best epoch (the audit warns if the model stays weak)"]
        )  # fmt: skip
        pooling = arch == "small_gap_cnn"
        lines += [
            "model:",
            f"  arch: {arch}   # trained on these images by the train stage"
            + ("; convolutions and a pooling head, so" if pooling else ""),
            *(["                  # no weight belongs to one place of the image."] if pooling else []),
            "                  # To audit your own model instead:",
            "                  # `unhans init PATH --arch resnet50 --weights model.pt` (docs/configuration.md)",
            "",
            "train:",
            f"  epochs: {epochs}   # at most",
            *stop,
            "  holdout: 0.1   # share of each class the model never sees: its accuracy there is the model's quality",
            f"  batch_size: {_batch(s.n_files)}   # about ten or more steps per epoch",
            "",
        ]
    resolution = 32  # the largest power of two up to 32 that divides the input side
    while image_size % resolution:
        resolution //= 2
    lines += ["attribute:", f"  resolution: {resolution}   # side of the stored relevance maps", ""]
    lines += [
        "distances:",
        "  metric: euclidean   # compares the relevance maps place by place: images whose evidence sits at one",
        "                      # place (a corner stamp, a frame, a watermark) group together. For artifacts that",
        "                      # move, grow or turn, try metric: wasserstein, invariant to all three (slower;",
        "                      # docs/methods.md). benchmarks/user_folder.py measures both on stamped folders.",
        "",
    ]
    text = "\n".join(lines) + "\n"
    summary = [
        f"looked at {s.sampled} of {s.n_files} images in {len(s.counts)} classes under {root}: {size_note}; "
        f"modes {', '.join(sorted(s.modes))}; {len(s.unreadable)} unreadable among them",
        f"input: {image_size} px, fit {fit}; model: {arch}" + (" (your weights)" if own else ", trained here"),
    ]
    return Plan(name, text, summary)


def write(plan_: Plan, out: str | Path | None, force: bool = False) -> Path:
    """Write the config (checked by loading it) to `out` (default <name>.yaml here); never over a file
    unless `force`."""
    target = Path(out or f"{plan_.name}.yaml")
    if target.exists() and not force:
        raise UserError(f"{target} exists; choose another --out or pass --force to replace it")
    target.write_text(plan_.text)
    try:
        load_config(str(target))
    except UserError:
        target.unlink()
        raise
    return target
