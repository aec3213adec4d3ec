"""IDX files (MNIST format): Fashion-MNIST from Debian's dataset-fashion-mnist, or any path."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from unhans.pipeline.core.errors import UserError
from unhans.pipeline.data.arrays import ArrayDataset
from unhans.pipeline.data.datasets import DATASETS

PREFIX = {"train": "train", "test": "t10k"}


def read_idx(path: Path) -> np.ndarray:
    """Parse one IDX file (optionally gzipped) into an array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            data = fh.read()
    except (OSError, EOFError) as exc:
        raise UserError(f"{path}: cannot read IDX file ({exc})") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise UserError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(shape)):
        raise UserError(f"{path}: truncated IDX file ({body.size} bytes for shape {shape})")
    return body.reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for name in (stem, stem + ".gz"):
        if (root / name).exists():
            return root / name
    raise UserError(f"{root}: no {stem}[.gz]; point dataset.path at a folder of IDX files")


@DATASETS.register("idx")
class IdxDataset(ArrayDataset):
    def __init__(self, cfg) -> None:
        if not cfg.path:
            raise UserError("dataset.path is required for kind 'idx' (a folder of IDX files)")
        root = Path(cfg.path)
        if not root.is_dir():
            hint = " (Fashion-MNIST: apt-get install dataset-fashion-mnist)" if "fashion" in str(root) else ""
            raise UserError(f"dataset.path {root} is not a folder{hint}")
        images = read_idx(_find(root, f"{PREFIX[cfg.split]}-images-idx3-ubyte"))
        labels = read_idx(_find(root, f"{PREFIX[cfg.split]}-labels-idx1-ubyte")).astype(np.int64)
        if len(images) != len(labels):
            raise UserError(f"{root}: {len(images)} images but {len(labels)} labels")
        n_classes = int(labels.max()) + 1
        names = cfg.class_names or [str(i) for i in range(n_classes)]
        if len(names) != n_classes:
            raise UserError(f"dataset.class_names has {len(names)} names for {n_classes} classes")
        super().__init__(images, labels, names, cfg.split, cfg.image_size, cfg.limit_per_class)
