"""A look at a folder of class sub-folders before its first audit (`unhans init`): classes and their
counts, image sizes and modes, unreadable files."""

from __future__ import annotations

import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from unhans.pipeline.core.errors import UserError
from unhans.pipeline.data.folder import IMAGE_EXTENSIONS, imagenet_classes, probe


@dataclass
class FolderSurvey:
    root: Path
    counts: dict[str, int]  # class folder -> image files
    sizes: list[tuple[int, int]] = field(default_factory=list)  # (width, height) of the readable sampled images
    modes: Counter = field(default_factory=Counter)  # PIL modes of the sampled images
    unreadable: list[tuple[str, str]] = field(default_factory=list)  # (file, reason) among the sampled ones
    sampled: int = 0

    @property
    def n_files(self) -> int:
        return sum(self.counts.values())

    @property
    def imagenet(self) -> bool:
        """Every class folder is an ImageNet WordNet id."""
        wnids = {c.key for c in imagenet_classes()}
        return bool(self.counts) and all(k in wnids for k in self.counts)

    @property
    def square_share(self) -> float:
        return float(np.mean([w == h for w, h in self.sizes])) if self.sizes else 1.0

    @property
    def median_side(self) -> int:
        """Median of the images' shorter sides."""
        return int(np.median([min(s) for s in self.sizes])) if self.sizes else 0

    @property
    def median_long_side(self) -> int:
        return int(np.median([max(s) for s in self.sizes])) if self.sizes else 0


def _look(path: str) -> tuple[tuple[int, int] | None, str, str]:
    """((width, height) or None, mode, reason it cannot be read) of one file: header and full decode."""
    reason = probe(path)
    if reason:
        return None, "", reason
    try:
        with Image.open(path) as im:
            mode, size = im.mode, im.size
            im.load()  # a truncated file fails here, not at the header
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
        return None, "", f"decode failed: {exc}"
    return size, mode, ""


def survey(root: str | Path, per_class: int = 200, seed: int = 0) -> FolderSurvey:
    """Count every class folder's images and look closely at up to `per_class` of each (seeded sample)."""
    root = Path(root)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder; give the folder that holds one sub-folder per class")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not folders:
        raise UserError(f"{root} has no class sub-folders; put each class's images in a folder of its own")
    files: dict[str, list[str]] = {}
    for f in folders:
        files[f] = sorted(
            e.path for e in os.scandir(root / f) if e.is_file() and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS
        )
    out = FolderSurvey(root, {f: len(v) for f, v in files.items()})
    if not out.n_files:
        raise UserError(
            f"no images under {root}: its class folders hold no files ending in {' '.join(IMAGE_EXTENSIONS)}"
        )
    rng = np.random.default_rng(seed)
    sample = [p for v in files.values() for p in (rng.choice(v, per_class, replace=False) if len(v) > per_class else v)]
    with ThreadPoolExecutor(8) as pool:
        looks = list(pool.map(_look, sample))
    for path, (size, mode, reason) in zip(sample, looks):
        if size is None:
            out.unreadable.append((str(path), reason))
        else:
            out.sizes.append(size)
            out.modes[mode] += 1
    out.sampled = len(sample)
    return out
