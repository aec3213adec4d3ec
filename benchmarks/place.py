"""The place probe on finished validation runs: which classes it would flag, measured without rerunning them.

The place probe (pipeline/method/probes.py, `class_place`) adds a third way to the class flag: a group of
a class whose evidence sits at a place of its own (a stamp, a frame, a watermark), whose members' pixels
there carry the class into other classes' images while the rest's pixels at the same place do not. The
transfer stage computes it beside the evidence and global probes, which it leaves unchanged; so on a run
made before the probe existed, running the probe on the stored model, maps and clusterings gives the
same class flags a rerun of `unhans validate` would (the class scores, ranks and per-sample scores do
not change). A run made since the place probe ranks samples along its reach (its store holds
`place_reach`) is read as stored instead: the same probe, no forward pass. For every run this prints, with
the place way off, ungated (any confirmed place, as before 2026-12-07's gate) and as configured now (only a
place foreign to its class, `score.max_place_usage`): whether the target is flagged, how many other classes
are flagged, and the target's per-sample AUROC and its images that stand out (planted/clean), ranked by the
transfer, or by the place probe where its place score is flag-strong and its class score is not
(`statistics.class_findings`, sample_probe 'place'); and the target's place score and usage, the largest
place score of the other classes (of a foreign place too), the usage of the other classes the ungated way
flags, and the forward passes the reach cost (an image of the run).

    python benchmarks/place.py --spec demo
    python benchmarks/place.py --spec fashion-mnist --limit 1.0 --limit 1.5   # also at other usage limits
    python benchmarks/place.py --spec demo --set transfer.place_hosts=4       # the probe again, on 4 hosts
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd
import torch

from unhans.pipeline.core import layout
from unhans.pipeline.core.store import Store
from unhans.pipeline.data import build_dataset
from unhans.pipeline.harness.validate import _run_model, detection, markdown_table, runs_from_argv, scenario_config
from unhans.pipeline.method.probes import class_place, host_pool, stored_place, stored_transfers
from unhans.pipeline.method.statistics import class_clusters, class_findings, flag_classes

TOP, TOP_FOREIGN = "others' top place", "others' top foreign place"


def place_probes(cfg, store: Store, classes: np.ndarray, reprobe: bool = False) -> list[tuple]:
    """Per class, the arguments of statistics.class_findings less the score settings and its place probe, under
    the run's stored model, maps and clusterings. The probe is read from the store where the run has its
    reach (and not `reprobe`), else run under cfg."""
    stored = store.has_array(layout.PLACE_REACH(c=int(classes[0]))) and not reprobe
    if not stored:
        samples = store.read_table(layout.SAMPLES.name)
        ds = build_dataset(cfg.dataset)
        model, normalise = _run_model(cfg, len(ds.classes), ds.channels, torch.device("cpu"))
        hosts = host_pool(cfg, store, [int(c) for c in classes])
    predicted = store.array(layout.PREDICTION())[:]
    out = []
    for c in map(int, classes):
        members, W, labels, ks, n_clusters = class_clusters(store, c)
        place = (stored_place(store, c) if stored
                 else class_place(cfg, store, samples, model, normalise, ds, c, members, hosts[c]))  # fmt: skip
        args = (members, W, labels, ks, n_clusters, store.read(layout.EIGENVALUES(c=c)), stored_transfers(store, c),
                predicted[members], c)  # fmt: skip
        out.append((args, place))
    return out


def place_findings(probes: list[tuple], classes: np.ndarray, target: int | None, params) -> tuple:
    """Each class's place score, whether its place is foreign and its place usage under the score settings
    `params`; the target's (class row, sample rows, sample rows ranked by the transfer alone), None without a
    target; and the number of images probed along a confirmed place (the reach)."""
    out, found, reached = [], None, 0
    for c, (args, place) in zip(map(int, classes), probes):
        row, rows = class_findings(*args, params, place)
        out.append((row["place_score"], row["place_foreign"], row["place_usage"]))
        reached += len(args[0]) if place is not None and place.reach_group >= 0 else 0
        if c == target:
            found = (row, rows, class_findings(*args, params)[1])
    score, foreign, usage = (np.asarray(x) for x in zip(*out))
    return score, foreign, usage, found, reached


RULES = {"before": None, "any place": float("inf"), "now": None}  # the place way off, ungated, as configured


def main() -> None:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--limit", type=float, action="append", default=[], help="also with this score.max_place_usage")
    ap.add_argument("--set", action="append", default=[],
                    help="transfer.KEY=VALUE: the place probe run again under it (not the stored one)")  # fmt: skip
    known, rest = ap.parse_known_args()
    spec, root, runs = runs_from_argv(__doc__, rest)
    rules = RULES | {f"usage <= {x:g}": x for x in known.limit}
    torch.set_num_threads(1)
    rows = []
    for sc, seed, run in runs:
        cfg, poison = scenario_config(spec, sc, root, known.set, seed)
        store = Store(cfg.run_url)
        cs = store.read_table(layout.CLASS_SCORES.name).sort_values("class_id")
        classes, scores = cs["class_id"].to_numpy(), cs["clever_hans_score"].to_numpy()
        samples = store.read_table(layout.SAMPLES.name).set_index("index")
        target_id = None if sc.control else int(poison.target)
        target = np.zeros(len(classes), bool) if sc.control else classes == int(poison.target)
        validation = pd.read_csv(run / "validation.csv").set_index("method")
        row = {"scenario": sc.name, "seed": seed, "flip rate": float(validation["flip_rate"].iloc[0]),
               "target score": float(scores[target][0]) if target.any() else float("nan")}  # fmt: skip
        probes = place_probes(cfg, store, classes, reprobe=bool(known.set))
        before = np.zeros(len(classes), bool)
        for rule, limit in rules.items():
            params = cfg.score if limit is None else cfg.score.model_copy(update={"max_place_usage": limit})
            place, foreign, usage, found, reached = place_findings(probes, classes, target_id, params)
            flags = (flag_classes(scores, params, cfg.seed) if rule == "before"
                     else flag_classes(scores, params, cfg.seed, place, foreign))[2]  # fmt: skip
            before = flags if rule == "before" else before
            if rule == "now":
                row |= {"target place": float(place[target][0]) if target.any() else float("nan"),
                        "target usage": float(usage[target][0]) if target.any() else float("nan"),
                        "samples by": found[0]["sample_probe"] if found is not None else ""}  # fmt: skip
                row |= {TOP: float(place[~target].max()),
                        TOP_FOREIGN: float(np.max(place[~target] * foreign[~target], initial=0.0)),
                        "reach passes an image": min(cfg.transfer.place_hosts, cfg.transfer.hosts) * reached
                        / len(samples)}  # fmt: skip
            row[f"flagged {rule}"] = bool(flags[target].any())
            row[f"others flagged {rule}"] = int(flags[~target].sum())
            if rule == "any place":  # the place usage of the other classes this rule flags
                row["their usage"] = " ".join(f"{u:.2f}" for u in usage[~target & flags & ~before])
            auroc, out = float("nan"), ""
            if found is not None:
                planted = samples["artifact"].loc[found[1]["index"]].to_numpy(bool)
                ranked = found[2] if rule == "before" else found[1]
                auroc = detection(planted, ranked["clever_hans_score"].to_numpy())[0]
                o = ranked["stands_out"].to_numpy(bool)
                out = f"{int(o[planted].sum())}/{int(o[~planted].sum())}"
            row[f"AUROC {rule}"], row[f"stand out {rule}"] = auroc, out
        rows.append(row)
        print(pd.DataFrame(rows[-1:]).round(3).to_string(index=False, header=len(rows) == 1), flush=True)
    table = pd.DataFrame(rows)
    print()
    print(markdown_table(table))
    followed = table[table["flip rate"] >= 0.2].dropna(subset=["target score"])
    for rule in rules:
        print(f"{rule}: followed >= 20% flagged {int(followed[f'flagged {rule}'].sum())} of {len(followed)}, "
              f"other classes flagged {int(table[f'others flagged {rule}'].sum())}, followed runs' median per-sample "
              f"AUROC {followed[f'AUROC {rule}'].median():.3f}")  # fmt: skip
    print(f"top place score of a class without the artifact: {table[TOP].max():.3f}, of a foreign place: "
          f"{table[TOP_FOREIGN].max():.3f}; runs whose target's images are ranked by their place: "
          f"{int((followed['samples by'] == 'place').sum())} of {len(followed)} followed")  # fmt: skip


if __name__ == "__main__":
    main()
