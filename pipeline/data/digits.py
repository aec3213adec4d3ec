"""scikit-learn's bundled handwritten digits (1,797 8x8 images): the embedded demo."""

from __future__ import annotations

import numpy as np
from sklearn.datasets import load_digits

from unhans.pipeline.data.arrays import ArrayDataset
from unhans.pipeline.data.datasets import DATASETS


@DATASETS.register("digits")
class Digits(ArrayDataset):
    def __init__(self, cfg) -> None:
        d = load_digits()
        images = np.round(d.images * (255.0 / 16.0)).astype(np.uint8)
        names = cfg.class_names or [f"digit {i}" for i in range(10)]
        super().__init__(images, d.target, names, "train", cfg.image_size, cfg.limit_per_class)
