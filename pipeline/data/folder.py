"""Any folder of class sub-folders, the ImageNet train layout included (WordNet ids -> names)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image, UnidentifiedImageError

from unhans.pipeline.core.errors import UserError
from unhans.pipeline.data.datasets import DATASETS, ClassInfo, ImageDataset

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
IMAGENET_TABLE = Path(__file__).with_name("imagenet_classes.tsv")
Image.MAX_IMAGE_PIXELS = 20_000 * 20_000  # refuse decompression bombs beyond 400 MP


@cache
def imagenet_classes() -> list[ClassInfo]:
    """The 1000 ImageNet-1k classes in model output order: (index, WordNet id, name)."""
    with open(IMAGENET_TABLE, newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t"))
    return [ClassInfo(int(r["index"]), r["wnid"], r["name"]) for r in rows]


def probe(path: str) -> str:
    """Cheap header check: '' if PIL can identify the file, else the reason to skip it."""
    try:
        if os.path.getsize(path) == 0:
            return "empty file"
        with Image.open(path) as im:
            w, h = im.size
            if w < 1 or h < 1:
                return "image has no pixels"
            limit = Image.MAX_IMAGE_PIXELS
            if limit and w * h > limit:  # PIL itself only warns up to twice the limit
                return f"too large: {w}x{h} pixels exceed the limit of {limit} (a decompression bomb?)"
    except UnidentifiedImageError:
        return "not an image PIL can read"
    except Image.DecompressionBombError as exc:
        return f"too large: {exc}"
    except OSError as exc:
        return f"unreadable: {exc}"
    return ""


def to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode -> 8-bit RGB (16-bit and float images are rescaled, CMYK converted)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        a = np.asarray(im, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(a)
        im = Image.fromarray(a.astype(np.uint8), mode="L")
    return im.convert("RGB")


@DATASETS.register("folder")
class FolderDataset(ImageDataset):
    """Class sub-folders of images; sources are file paths."""

    in_memory = False
    channels = 3

    def __init__(self, cfg) -> None:
        if not cfg.path:
            raise UserError("dataset.path is required for kind 'folder' (a folder of class sub-folders)")
        self.root = Path(cfg.path)
        if not self.root.is_dir():
            raise UserError(f"dataset.path {self.root} is not a folder; point it at the train/ folder")
        self.folders = sorted(p.name for p in self.root.iterdir() if p.is_dir() and not p.name.startswith("."))
        if not self.folders:
            raise UserError(f"{self.root} has no class sub-folders")
        self.image_size = cfg.image_size
        self.fit = cfg.fit
        self.resize = cfg.resize or round(cfg.image_size * 256 / 224)
        self.limit_per_class = cfg.limit_per_class
        table = {c.key: c for c in imagenet_classes()}
        mode = cfg.class_index
        if mode == "auto":
            mode = "imagenet" if all(f in table for f in self.folders) else "sorted"
        if mode == "imagenet":
            unknown = [f for f in self.folders if f not in table]
            if unknown:
                raise UserError(f"class_index=imagenet but {unknown[:3]} are not ImageNet WordNet ids")
            self.classes = imagenet_classes()
            self.label_of = {f: table[f].id for f in self.folders}
        else:
            names = cfg.class_names or self.folders
            self.classes = [ClassInfo(i, f, n) for i, (f, n) in enumerate(zip(self.folders, names))]
            self.label_of = {f: i for i, f in enumerate(self.folders)}
        self.class_index = mode

    def index(self) -> pd.DataFrame:
        paths, labels = [], []
        for f in self.folders:
            files = sorted(
                e.path
                for e in os.scandir(self.root / f)
                if e.is_file() and Path(e.name).suffix.lower() in IMAGE_EXTENSIONS
            )
            if self.limit_per_class:
                files = files[: self.limit_per_class]
            paths += files
            labels += [self.label_of[f]] * len(files)
        if not paths:
            raise UserError(
                f"no images found under {self.root}: its {len(self.folders)} class folders hold no files ending in "
                f"{' '.join(sorted(IMAGE_EXTENSIONS))}"
            )
        with ThreadPoolExecutor(max_workers=8) as pool:
            reasons = list(pool.map(probe, paths, chunksize=64))
        return pd.DataFrame(
            {
                "source": paths,
                "label": np.asarray(labels, dtype=np.int64),
                "status": ["skipped" if r else "ok" for r in reasons],
                "reason": reasons,
            }
        )

    def decode(self, path: str) -> torch.Tensor:
        """Decode and bring to `image_size` as `fit` says (pad, squash or crop): (3, S, S) in [0, 1]."""
        S = self.image_size
        with Image.open(path) as im:
            if im.format == "JPEG":  # reduced-size DCT decoding, never below the size needed
                im.draft("RGB", (self.resize, self.resize) if self.fit == "crop" else (S, S))
            im = to_rgb(im)
            w, h = im.size
            if self.fit == "squash":
                im = im.resize((S, S), Image.BILINEAR)
            elif self.fit == "pad":
                scale = S / max(w, h)
                nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
                canvas = Image.new("RGB", (S, S))
                canvas.paste(im.resize((nw, nh), Image.BILINEAR), ((S - nw) // 2, (S - nh) // 2))
                im = canvas
            else:  # crop: the shorter side to `resize`, then the centre
                scale = self.resize / min(w, h)
                nw, nh = max(S, round(w * scale)), max(S, round(h * scale))
                im = im.resize((nw, nh), Image.BILINEAR)
                left, top = (nw - S) // 2, (nh - S) // 2
                im = im.crop((left, top, left + S, top + S))
            a = np.asarray(im, dtype=np.uint8)
        return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(255.0)

    def load_one(self, source: str) -> tuple[torch.Tensor | None, str]:
        try:
            return self.decode(source), ""
        except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as exc:
            return None, f"decode failed: {exc}"

    def load(self, sources: Sequence[str]) -> tuple[torch.Tensor, np.ndarray, list[str]]:
        xs, ok, reasons = [], [], []
        for s in sources:
            x, r = self.load_one(s)
            xs.append(x if x is not None else torch.zeros(3, self.image_size, self.image_size))
            ok.append(x is not None)
            reasons.append(r)
        return torch.stack(xs), np.array(ok), reasons
