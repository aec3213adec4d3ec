"""Are the class p-values calibrated, and which classes does the flag raise an alarm for?

Reads finished `unhans validate` runs (their stored class scores; nothing but the p-values and flags
is recomputed, with pipeline/method/statistics.py's flag_classes) and prints:

- the p-values of the control runs' classes (no shortcut anywhere): the share below 0.05 and 0.01
  (uniform: 0.05 and 0.01) and a Kolmogorov-Smirnov test against the uniform law; and the same for
  the classes of the poisoned runs that the artifact is not tied to;
- for the rule before and for several `score.min_score` and `score.fdr` (`score.flag_threshold` at
  its default): the alarms on classes without a planted shortcut (controls and the other classes of
  poisoned runs) and on the target, in the runs whose model follows the artifact at least 20% of the
  time, 10-20%, and less;
- per poisoned run: flip rate, the target's score, the largest score of the other classes, the
  target's rank, p- and q-value and whether it is flagged under the configured settings.

`--run DIR` reads one run instead (e.g. the 1,000-class folder of benchmarks/imagenet_scale.py,
where no class has a planted shortcut) and prints the p-value shares and alarms of its classes.

    python benchmarks/calibration.py --spec demo
    python benchmarks/calibration.py --spec fashion-mnist
    python benchmarks/calibration.py --run /tmp/unhans-imagenet-scale/run
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats

from unhans.pipeline.core import layout
from unhans.pipeline.core.store import Store
from unhans.pipeline.harness.validate import finished_runs, load_spec
from unhans.pipeline.method.statistics import ScoreConfig, flag_classes

# (name, rule): the rule before (the score alone: the permutation q-values it also asked for were always
# small), the two ways of flag_classes at several floors and rates, and discoveries alone
RULES = (
    [("score >= 1.5 alone (before)", None)]
    + [
        (f"strong or discovery at min_score {m:g}, fdr {f:g}", {"min_score": m, "fdr": f})
        for m in (0.5, 0.75, 1.0)
        for f in (0.05, 0.1)
    ]
    + [("discoveries only (min_score 0.75, fdr 0.05)", {"min_score": 0.75, "fdr": 0.05, "flag_threshold": np.inf})]
)
BANDS = (("followed >= 0.2", 0.2, 1.01), ("followed 0.1-0.2", 0.1, 0.2), ("followed < 0.1", -1.0, 0.1))


def uniformity(p: np.ndarray) -> str:
    p = p[~np.isnan(p)]
    if not len(p):
        return "no p-values"
    ks = stats.kstest(p, "uniform").pvalue
    return f"{len(p)} classes: p < 0.05 in {np.mean(p < 0.05):.3f}, p < 0.01 in {np.mean(p < 0.01):.3f}; KS p {ks:.2g}"


def one_run(path: str, cfg: ScoreConfig) -> None:
    cs = Store(path).read_table(layout.CLASS_SCORES.name)
    s = cs["clever_hans_score"].to_numpy(np.float64)
    p, q, flagged = flag_classes(s, cfg)
    print(f"{path}: {uniformity(p)}")
    print(f"scores: median {np.median(s):.3g}, 90th percentile {np.percentile(s, 90):.3g}, largest {s.max():.3g}")
    for name, update in RULES:
        f = s >= 1.5 if update is None else flag_classes(s, cfg.model_copy(update=update))[2]
        print(f"  {name}: {int(f.sum())} classes flagged")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="demo")
    ap.add_argument("--root", default=None, help="folder of the scenario runs (default runs/validate/<spec>)")
    ap.add_argument("--run", default=None, help="one run folder instead of a spec's validation runs")
    args = ap.parse_args()
    cfg = ScoreConfig()
    if args.run:
        return one_run(args.run, cfg)
    spec = load_spec(args.spec)
    runs = finished_runs(spec, Path(args.root or f"runs/validate/{spec.name}"))
    if not runs:
        raise SystemExit(f"no finished runs of {spec.name}: run `unhans validate --spec {spec.name}` first")
    rows = []
    for sc, seed, run in runs:
        cs = Store(str(run)).read_table(layout.CLASS_SCORES.name)
        flip = float(pd.read_csv(run / "validation.csv")["flip_rate"].iloc[0])
        target = None if sc.control else int(sc.poison["target"])
        rows.append(cs.assign(scenario=sc.name, seed=seed, control=sc.control, flip=flip,
                              target=cs["class_id"] == target))  # fmt: skip
    df = pd.concat(rows, ignore_index=True)
    print(f"{spec.name}, {len(runs)} runs")
    p = df["p_value"].to_numpy(np.float64)
    print(f"controls' classes: {uniformity(p[df['control'].to_numpy()])}")
    print(f"poisoned runs' other classes: {uniformity(p[(~df['control'] & ~df['target']).to_numpy()])}")
    print("\nalarms under each rule: on classes without a planted shortcut | on the target, by flip rate")
    for name, update in RULES:
        flags = pd.concat(
            [
                g.assign(
                    f=g["clever_hans_score"] >= 1.5
                    if update is None
                    else flag_classes(g["clever_hans_score"].to_numpy(), cfg.model_copy(update=update), seed)[2]
                )
                for (_, seed), g in df.groupby(["scenario", "seed"], sort=False)
            ]  # fmt: skip
        )
        false = int(flags.loc[~flags["target"], "f"].sum())
        parts = []
        for band, lo, hi in BANDS:
            t = flags[flags["target"] & (flags["flip"] >= lo) & (flags["flip"] < hi)]
            parts.append(f"{band}: {int(t['f'].sum())}/{len(t)}")
        print(f"  {name}: {false}/{int((~flags['target']).sum())} | " + ", ".join(parts))
    print("\ntargets (stored p, q and flag: the run's settings; best other: the largest score of the other classes)")
    others = df[~df["target"]].groupby(["scenario", "seed"])["clever_hans_score"].max().rename("best other")
    t = df[df["target"]].join(others, on=["scenario", "seed"])
    t = t[
        ["scenario", "seed", "flip", "clever_hans_score", "best other", "rank", "p_value", "q_value", "is_clever_hans"]
    ]
    pd.set_option("display.width", 200)
    print(t.to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()
