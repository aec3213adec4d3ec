"""A user's first audit of their own folder, measured: `unhans init` and `unhans audit` with no manual choice.

The folder is the one of issue 15 (tests/helpers.py, make_shapes_folder): three classes of 64-px PNG shapes,
60 each, and a 6 x 6 white square 1 px from an image corner (or at a random place along the bottom border)
on 30% of the discs. For each placement this prints the trained model's held-out accuracy, the flip rate
(the share of correctly classified squares and triangles the model calls a disc once the stamp is on
them: how strongly the model follows it), the disc class's score, place score, place usage (the relevance
its images that the place does not carry the class from give to it, 1: an even spread), rank and flag, the
per-sample AUROC of the stamped discs, the disc images flagged (stamped/clean), the probe that ranks
them, and the share of the stamped maps' kNN neighbours that are stamped (how well the distance groups
them), with the distance `init` writes and with the alternative.

    python benchmarks/user_folder.py                    # all five placements, both distances (about 10 min)
    python benchmarks/user_folder.py --placement bottom-right --metric euclidean
    python benchmarks/user_folder.py --metric euclidean --set model.arch=small_cnn \
        --set train.patience=8                          # the small CNN with its flattening head, as init chose it
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import CORNERS, make_shapes_folder  # noqa: E402
from unhans.pipeline.core.store import Store  # noqa: E402
from unhans.pipeline.data import build_dataset, iter_batches  # noqa: E402
from unhans.pipeline.data.models import model_for_run, model_spec  # noqa: E402
from unhans.pipeline.method.probes import evidence_masks  # noqa: E402
from unhans.stages import load_config  # noqa: E402

UNHANS = str(Path(sys.executable).with_name("unhans"))


def flip_rate(config: Path, stamp_at: str, extra: list[str]) -> float:
    """Share of the correctly classified squares and triangles called discs once the stamp is painted on them."""
    cfg = load_config(str(config), extra)
    store = Store(cfg.run_url)
    samples = store.read_table("samples")
    ds = build_dataset(cfg.dataset)
    model = model_for_run(cfg, store, len(ds.classes), ds.channels).eval()
    normalise = model_spec(cfg.model).normaliser(ds.channels)
    disc = [c.id for c in ds.classes if c.key == "disc"][0]
    idx = np.flatnonzero(samples["label"].to_numpy() != disc)
    [(_, x, _, _)] = list(iter_batches(ds, samples, [idx]))
    side, f = x.shape[-1], x.shape[-1] / 64
    w, at = max(1, round(6 * f)), max(1, round(1 * f))
    y0 = at if stamp_at.startswith("top") else side - at - w
    x0 = at if stamp_at.endswith("left") else side - at - w if stamp_at.endswith("right") else side // 2
    stamped = x.clone()
    stamped[:, :, y0 : y0 + w, x0 : x0 + w] = 1.0
    with torch.no_grad():
        clean, dirty = model(normalise(x)).argmax(1), model(normalise(stamped)).argmax(1)
    right = clean == torch.as_tensor(samples["label"].to_numpy()[idx])
    return float((dirty[right] == disc).float().mean())


def audit(placement: str, metric: str | None, work: Path, extra: list[str]) -> dict:
    data, truth = make_shapes_folder(work / "data", placement)
    config = work / "shapes.yaml"
    subprocess.run([UNHANS, "init", str(data), "--out", str(config), "--name", "shapes", "--force"], check=True,
                   capture_output=True, cwd=work)  # fmt: skip
    sets = (["--set", f"distances.metric={metric}"] if metric else []) + [a for x in extra for a in ("--set", x)]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}  # python:tests.helpers:...
    subprocess.run([UNHANS, "audit", "-c", str(config), *sets], check=True, capture_output=True, cwd=work, env=env)
    run = work / "runs" / "shapes"
    cs = pd.read_parquet(run / "tables" / "class_scores.parquet").set_index("class_name")
    ss = pd.read_parquet(run / "tables" / "sample_scores.parquet")
    samples = pd.read_parquet(run / "tables" / "samples.parquet")
    disc = int(cs.at["disc", "class_id"])
    d = ss[ss["class_id"] == disc].merge(samples[["index", "source"]], on="index")
    stamped = d["source"].str.rsplit("/", n=1).str[-1].isin(truth)
    train = pd.read_json(run / "stages" / "train.json", typ="series")["counts"]
    store = Store(str(run))
    members = store.read(f"classes/{disc}/members")
    knn = store.read(f"classes/{disc}/knn_idx")
    marked = pd.Series(members).map(samples.set_index("index")["source"]).str.rsplit("/", n=1).str[-1].isin(truth)
    marked = marked.to_numpy()
    cwd = os.getcwd()
    os.chdir(work)
    try:
        flips = flip_rate(config, placement, extra)
    finally:
        os.chdir(cwd)
    return {
        "placement": placement,
        "metric": metric or "(init's)",
        "heldout accuracy": train["heldout_accuracy"],
        "flip rate": round(flips, 3),
        "disc score": round(float(cs.at["disc", "clever_hans_score"]), 3),
        "disc place score": round(float(cs.at["disc", "place_score"]), 3),
        "disc place usage": round(float(cs.at["disc", "place_usage"]), 3),
        "disc rank": int(cs.at["disc", "rank"]),
        "flagged": bool(cs.at["disc", "is_clever_hans"]),
        "other classes flagged": int(cs["is_clever_hans"].sum() - cs.at["disc", "is_clever_hans"]),
        "AUROC": round(float(roc_auc_score(stamped, d["clever_hans_score"])), 3),
        "flagged stamped/clean": f"{int((d['is_clever_hans'] & stamped).sum())}/"
        f"{int((d['is_clever_hans'] & ~stamped).sum())}",
        "samples by": str(cs.at["disc", "sample_probe"]),
        # how well the distance groups the stamped maps: the share of their kNN neighbours that are stamped
        "stamped neighbours": round(float(marked[knn[marked]].mean()), 3),
        # whether the model reads each class at fixed places: the share of the image's cells that at least half
        # of an unstamped class's maps have in their evidence (the probes' top cells), the larger of the two
        "fixed evidence": round(max(fixed_evidence(store, int(c)) for c in cs["class_id"] if c != disc), 3),
    }


def fixed_evidence(store: Store, c: int, top: float = 0.03) -> float:
    """Share of the map's cells in the evidence mask (the transfer probe's top `top` relevance cells, dilated)
    of at least half of class c's members: near 0 where the evidence moves with the object."""
    maps = torch.as_tensor(store.relevance(store.read(f"classes/{c}/members")))
    masks = evidence_masks(maps, top, maps.shape[-1])
    return float((masks.float().mean(0) >= 0.5).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--placement", choices=CORNERS, action="append")
    ap.add_argument("--metric", choices=["euclidean", "wasserstein"], action="append")
    ap.add_argument("--set", action="append", default=[], help="config override section.key=value for every audit")
    args = ap.parse_args()
    rows = []
    for placement in args.placement or CORNERS:
        for metric in args.metric or [None, "wasserstein"]:
            with tempfile.TemporaryDirectory() as tmp:
                rows.append(audit(placement, metric, Path(tmp), args.set))
            print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1), flush=True)


if __name__ == "__main__":
    main()
