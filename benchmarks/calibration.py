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

import numpy as np
import pandas as pd
from scipy import stats

from unhans.pipeline.core import layout
from unhans.pipeline.core.store import Store
from unhans.pipeline.harness.validate import runs_from_argv
from unhans.pipeline.method.statistics import ScoreConfig, flag_classes

# (name, rule): the rule before (the score alone: the permutation q-values it also asked for were always
# small), the two ways of flag_classes at several floors and rates, and discoveries alone
BEFORE = 1.5  # the threshold that alone decided before
RULES = (
    [(f"score >= {BEFORE:g} alone (before)", None)]
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


def flags(scores: np.ndarray, update: dict | None, seed: int = 0, reference: np.ndarray | None = None) -> np.ndarray:
    """The classes a rule of RULES flags among one run's class scores (reference: a screened run's screening
    scores, on which the score stage takes the p-values)."""
    if update is None:
        return scores >= BEFORE
    return flag_classes(scores, ScoreConfig().model_copy(update=update), seed, reference=reference)[2]


def screening(cs: pd.DataFrame) -> np.ndarray | None:
    """A screened run's screening scores (class_scores.screening_score), else None."""
    ref = cs["screening_score"].to_numpy(np.float64) if "screening_score" in cs else None
    return ref if ref is not None and len(ref) and np.isfinite(ref).all() else None


def one_run(path: str) -> None:
    cs = Store(path).read_table(layout.CLASS_SCORES.name)
    s, ref = cs["clever_hans_score"].to_numpy(np.float64), screening(cs)
    print(f"{path}: {uniformity(flag_classes(s, ScoreConfig(), reference=ref)[0])}"
          + (" (screened: p-values on the screening scores)" if ref is not None else ""))  # fmt: skip
    print(f"scores: median {np.median(s):.3g}, 90th percentile {np.percentile(s, 90):.3g}, largest {s.max():.3g}")
    for name, update in RULES:
        print(f"  {name}: {int(flags(s, update, reference=ref).sum())} classes flagged")


def main() -> None:
    ap = argparse.ArgumentParser(add_help=False)
    ap.add_argument("--run", default=None)
    args, rest = ap.parse_known_args()
    if args.run:
        return one_run(args.run)
    spec, _, runs = runs_from_argv(__doc__, rest)
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
        flagged = pd.concat(
            [
                g.assign(f=flags(g["clever_hans_score"].to_numpy(), update, seed, screening(g)))
                for (_, seed), g in df.groupby(["scenario", "seed"], sort=False)
            ]  # fmt: skip
        )
        false = int(flagged.loc[~flagged["target"], "f"].sum())
        parts = []
        for band, lo, hi in BANDS:
            t = flagged[flagged["target"] & (flagged["flip"] >= lo) & (flagged["flip"] < hi)]
            parts.append(f"{band}: {int(t['f'].sum())}/{len(t)}")
        print(f"  {name}: {false}/{int((~flagged['target']).sum())} | " + ", ".join(parts))
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
