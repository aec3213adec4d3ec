"""The place probe on finished validation runs: which classes it would flag, measured without rerunning them.

The place probe (pipeline/method/probes.py, `class_place`) adds a third way to the class flag: a group of
a class whose evidence sits at a place of its own (a stamp, a frame, a watermark), whose members' pixels
there carry the class into other classes' images while the rest's pixels at the same place do not. The
transfer stage computes it beside the evidence and global probes, which it leaves unchanged; so on a run
made before the probe existed, running the probe on the stored model, maps and clusterings gives the
same class flags a rerun of `unhans validate` would (the class scores, ranks and per-sample scores do
not change). For every run this prints the target's class score and place score, whether it is flagged
without and with the place way, and the largest place score of the other classes and their flags.

    python benchmarks/place.py --spec demo
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from unhans.pipeline.core import layout
from unhans.pipeline.core.store import Store
from unhans.pipeline.data import build_dataset
from unhans.pipeline.harness.validate import _run_model, markdown_table, runs_from_argv, scenario_config
from unhans.pipeline.method.probes import class_place, host_pool
from unhans.pipeline.method.statistics import class_clusters, flag_classes, place_score

TOP = "others' top place"


def place_scores(cfg, store: Store, classes: np.ndarray) -> np.ndarray:
    """Each class's place score under the run's stored model, maps and clusterings."""
    samples = store.read_table(layout.SAMPLES.name)
    ds = build_dataset(cfg.dataset)
    model, normalise = _run_model(cfg, len(ds.classes), ds.channels, torch.device("cpu"))
    hosts = host_pool(cfg, store, [int(c) for c in classes])
    out = []
    for c in classes:
        members, W, labels, ks, _ = class_clusters(store, int(c))
        place, groups = class_place(cfg, store, samples, model, normalise, ds, int(c), members, hosts[int(c)])
        out.append(place_score(place, groups, W, labels, ks, cfg.score.min_spread)["place_score"])
    return np.asarray(out)


def main() -> None:
    spec, root, runs = runs_from_argv(__doc__)
    torch.set_num_threads(1)
    rows = []
    for sc, seed, run in runs:
        cfg, poison = scenario_config(spec, sc, root, [], seed)
        store = Store(cfg.run_url)
        cs = store.read_table(layout.CLASS_SCORES.name).sort_values("class_id")
        classes, scores = cs["class_id"].to_numpy(), cs["clever_hans_score"].to_numpy()
        place = place_scores(cfg, store, classes)
        _, _, before = flag_classes(scores, cfg.score, cfg.seed)
        _, _, after = flag_classes(scores, cfg.score, cfg.seed, place)
        target = np.zeros(len(classes), bool) if sc.control else classes == int(poison.target)
        flip = float(pd.read_csv(run / "validation.csv")["flip_rate"].iloc[0])
        rows.append({
            "scenario": sc.name, "seed": seed, "flip rate": flip,
            "target score": float(scores[target][0]) if target.any() else float("nan"),
            "target place": float(place[target][0]) if target.any() else float("nan"),
            "flagged before": bool(before[target].any()), "flagged with place": bool(after[target].any()),
            TOP: float(place[~target].max()),
            "others flagged before": int(before[~target].sum()), "others flagged with place": int(after[~target].sum()),
        })  # fmt: skip
        print(pd.DataFrame(rows[-1:]).round(3).to_string(index=False, header=len(rows) == 1), flush=True)
    table = pd.DataFrame(rows)
    print()
    print(markdown_table(table))
    followed = table[table["flip rate"] >= 0.2]
    before, after = int(table["others flagged before"].sum()), int(table["others flagged with place"].sum())
    print(f"\nfollowed >= 20%: flagged {int(followed['flagged before'].sum())} of {len(followed)} before, "
          f"{int(followed['flagged with place'].sum())} with the place way; other classes flagged: {before} before, "
          f"{after} with it; top place score of a class without the artifact: {table[TOP].max():.3f}")  # fmt: skip


if __name__ == "__main__":
    main()
