"""The place probe on finished validation runs: which classes it would flag, measured without rerunning them.

The place probe (pipeline/method/probes.py, `class_place`) adds a third way to the class flag: a group of
a class whose evidence sits at a place of its own (a stamp, a frame, a watermark), whose members' pixels
there carry the class into other classes' images while the rest's pixels at the same place do not. The
transfer stage computes it beside the evidence and global probes, which it leaves unchanged; so on a run
made before the probe existed, running the probe on the stored model, maps and clusterings gives the
same class flags a rerun of `unhans validate` would (the class scores, ranks and per-sample scores do
not change). A run made since the place probe ranks samples along its reach (its store holds
`place_reach`) is read as stored instead: the same probe, no forward pass. For every run this prints the
target's class score and place score, whether it is flagged without and with the place way, the largest
place score of the other classes and their flags, the forward passes the reach cost (an image of the
run), and the target's per-sample AUROC and its images that stand out (planted/clean) ranked by the
transfer alone and by the current rule, the place probe ranking its samples where its place score is
flag-strong and its class score is not (`statistics.class_findings`, sample_probe 'place').

    python benchmarks/place.py --spec demo
    python benchmarks/place.py --spec fashion-mnist
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from unhans.pipeline.core import layout
from unhans.pipeline.core.store import Store
from unhans.pipeline.data import build_dataset
from unhans.pipeline.harness.validate import _run_model, detection, markdown_table, runs_from_argv, scenario_config
from unhans.pipeline.method.probes import class_place, host_pool, stored_place, stored_transfers
from unhans.pipeline.method.statistics import class_clusters, class_findings, flag_classes

TOP = "others' top place"


def place_findings(cfg, store: Store, classes: np.ndarray, target: int | None) -> tuple[np.ndarray, tuple | None, int]:
    """Each class's place score under the run's stored model, maps and clusterings, the target's
    (class row, sample rows) with that place probe and its sample rows ranked by the transfer alone
    (None without a target), and the number of images probed along a confirmed place (the reach). The
    probe is read from the store where the run has its reach, else run."""
    stored = store.has_array(layout.PLACE_REACH(c=int(classes[0])))
    if not stored:
        samples = store.read_table(layout.SAMPLES.name)
        ds = build_dataset(cfg.dataset)
        model, normalise = _run_model(cfg, len(ds.classes), ds.channels, torch.device("cpu"))
        hosts = host_pool(cfg, store, [int(c) for c in classes])
    predicted = store.array(layout.PREDICTION())[:]
    out, found, reached = [], None, 0
    for c in map(int, classes):
        members, W, labels, ks, n_clusters = class_clusters(store, c)
        place = (stored_place(store, c) if stored
                 else class_place(cfg, store, samples, model, normalise, ds, c, members, hosts[c]))  # fmt: skip
        args = (members, W, labels, ks, n_clusters, store.read(layout.EIGENVALUES(c=c)), stored_transfers(store, c),
                predicted[members], c, cfg.score)  # fmt: skip
        row, rows = class_findings(*args, place)
        out.append(row["place_score"])
        reached += len(members) if place.reach_group >= 0 else 0
        if c == target:
            found = (row, rows, class_findings(*args)[1])
    return np.asarray(out), found, reached


def main() -> None:
    spec, root, runs = runs_from_argv(__doc__)
    torch.set_num_threads(1)
    rows = []
    for sc, seed, run in runs:
        cfg, poison = scenario_config(spec, sc, root, [], seed)
        store = Store(cfg.run_url)
        cs = store.read_table(layout.CLASS_SCORES.name).sort_values("class_id")
        classes, scores = cs["class_id"].to_numpy(), cs["clever_hans_score"].to_numpy()
        samples = store.read_table(layout.SAMPLES.name).set_index("index")
        target_id = None if sc.control else int(poison.target)
        place, found, reached = place_findings(cfg, store, classes, target_id)
        _, _, before = flag_classes(scores, cfg.score, cfg.seed)
        _, _, after = flag_classes(scores, cfg.score, cfg.seed, place)
        target = np.zeros(len(classes), bool) if sc.control else classes == int(poison.target)
        validation = pd.read_csv(run / "validation.csv").set_index("method")
        flip = float(validation["flip_rate"].iloc[0])
        auroc, by_transfer, out_before, out_now = float("nan"), float("nan"), "", ""
        if found is not None:
            planted = samples["artifact"].loc[found[1]["index"]].to_numpy(bool)
            auroc, by_transfer = (detection(planted, r["clever_hans_score"].to_numpy())[0] for r in found[1:])
            out_now, out_before = (f"{int(o[planted].sum())}/{int(o[~planted].sum())}"
                                   for o in (r["stands_out"].to_numpy(bool) for r in found[1:]))  # fmt: skip
        rows.append({
            "scenario": sc.name, "seed": seed, "flip rate": flip,
            "target score": float(scores[target][0]) if target.any() else float("nan"),
            "target place": float(place[target][0]) if target.any() else float("nan"),
            "flagged before": bool(before[target].any()), "flagged with place": bool(after[target].any()),
            "AUROC by transfer": by_transfer, "AUROC": auroc,
            "samples by": found[0]["sample_probe"] if found is not None else "",
            "stand out by transfer": out_before, "stand out": out_now,
            TOP: float(place[~target].max()),
            "others flagged before": int(before[~target].sum()), "others flagged with place": int(after[~target].sum()),
            "reach passes an image": cfg.transfer.hosts * reached / len(samples),
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
    f = followed.dropna(subset=["AUROC"])
    print(f"followed runs' median per-sample AUROC: {f['AUROC by transfer'].median():.3f} by the transfer alone, "
          f"{f['AUROC'].median():.3f} "
          f"with the place probe ranking where the place alone is flag-strong "
          f"({int((f['samples by'] == 'place').sum())} of {len(f)} runs)")  # fmt: skip


if __name__ == "__main__":
    main()
