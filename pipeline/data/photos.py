"""Real photos shipped inside installed packages, and ImageNet train-layout folders made of them.

For smoke and scale tests of the ImageNet path on machines with no ImageNet: the photos are
real (scikit-image, scikit-learn, matplotlib sample data); each written file is a seeded
random crop, flip and resize of one, saved as JPEG under a real WordNet id.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import numpy as np
from PIL import Image

from unhans.pipeline.data.folder import imagenet_classes


@cache
def natural_photos() -> dict[str, np.ndarray]:
    """Name -> RGB uint8 (H, W, 3) photo, from packages that ship them."""
    import matplotlib.cbook
    import skimage.data
    from sklearn.datasets import load_sample_images

    photos = {
        "chelsea": skimage.data.chelsea(),
        "coffee": skimage.data.coffee(),
        "astronaut": skimage.data.astronaut(),
        "rocket": skimage.data.rocket(),
        "motorcycle": skimage.data.stereo_motorcycle()[0],
    }
    for name, img in zip(("china", "flower"), load_sample_images().images):
        photos[name] = img
    with Image.open(matplotlib.cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)) as im:
        photos["hopper"] = np.asarray(im.convert("RGB"))
    return photos


def write_imagenet_folder(root: Path, n_classes: int = 1000, per_class: int = 2, side: int = 96, seed: int = 0) -> Path:
    """Write root/<wnid>/<wnid>_<i>.JPEG for the first n_classes real wnids: random crops of photos."""
    rng = np.random.default_rng(seed)
    photos = list(natural_photos().values())
    for c in imagenet_classes()[:n_classes]:
        d = root / c.key
        d.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = photos[rng.integers(len(photos))]
            h, w = img.shape[:2]
            s = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
            y, x = rng.integers(0, h - s + 1), rng.integers(0, w - s + 1)
            crop = img[y : y + s, x : x + s]
            if rng.random() < 0.5:
                crop = crop[:, ::-1]
            Image.fromarray(np.ascontiguousarray(crop)).resize((side, side), Image.BILINEAR).save(
                d / f"{c.key}_{i}.JPEG", quality=90
            )
    return root
