"""`unhans poison`: write a dataset with its planted shortcut as a plain folder of PNGs, with its truth.

The copy is a `folder` dataset a user can audit like their own data (its config.yaml reads it at the
same size, no resize); ground_truth.csv holds the plan (pipeline/data/artifacts.py) per file.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import yaml
from PIL import Image

from unhans.pipeline.core.compute import progress
from unhans.pipeline.core.errors import UserError
from unhans.pipeline.data import build_dataset, iter_batches
from unhans.pipeline.data.artifacts import PLAN_COLUMNS


def check_out(out: str | Path) -> Path:
    """The folder for a poisoned copy: new or empty, so that no stale file can mix in."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"--out {out} is not an empty folder; choose a new one (a stale copy would mix labels)")
    return out


def write_folder(cfg, samples: pd.DataFrame, out: Path, batch_size: int = 256) -> pd.DataFrame:
    """Write the usable samples, poisoned as planned, to out/<class_key>/<index>.png (the `folder` layout).

    Also writes out/ground_truth.csv (index, source, file, label, class_key, original_label, artifact,
    art_y, art_x, art_h, art_w, art_angle, art_size, art_key) and out/config.yaml, a config that audits the copy
    (dataset kind folder, same image size, no resize). Returns the ground-truth table.
    """
    out = check_out(out)
    ds = build_dataset(cfg.dataset)
    for c in ds.classes:  # every class folder, even empty ones, so sorted folders keep the class ids
        (out / c.key).mkdir(parents=True, exist_ok=True)
    usable = np.flatnonzero(samples["status"].to_numpy() == "ok")
    batches = [usable[i : i + batch_size] for i in range(0, len(usable), batch_size)]
    width = len(str(max(len(samples) - 1, 0)))
    keys = samples["class_key"].to_numpy()
    files = np.array([f"{keys[i]}/{i:0{width}d}.png" for i in range(len(samples))], dtype=object)
    written = []
    with ThreadPoolExecutor(4) as pool:
        for idx, x, ok, _ in progress(
            iter_batches(ds, samples, batches, cfg.compute.decode_threads),
            "poison",
            total=len(batches),
            unit="batch",
        ):
            a = (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
            keep = idx[ok]
            list(pool.map(lambda i, im: Image.fromarray(im.squeeze(-1)).save(out / files[i]), keep, a[ok]))
            written.append(keep)
    done = np.concatenate(written) if written else np.zeros(0, np.int64)
    cols = ["index", "source", "label", "class_key"] + [c for c in PLAN_COLUMNS if c in samples]
    truth = samples.iloc[done][cols].copy()
    truth.insert(2, "file", files[done])
    truth.to_csv(out / "ground_truth.csv", index=False)
    copy = cfg.model_dump(
        mode="json", round_trip=True, exclude_defaults=True, exclude={"dataset", "run_dir", "report_dir"}
    )
    copy["name"] = f"{cfg.name}-poisoned"
    copy["dataset"] = {
        "kind": "folder",
        "path": str(out.resolve()),
        "image_size": cfg.dataset.image_size,
        "fit": "squash",  # the copy's images are square at image_size already: nothing changes
        "class_names": [c.name for c in ds.classes],
    }
    (out / "config.yaml").write_text(yaml.safe_dump(copy, sort_keys=False, allow_unicode=True))
    return truth
