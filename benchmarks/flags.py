"""Which samples of a flagged class to flag: the chosen group, or the samples whose score stands out.

Reads finished `unhans validate` runs (their sample_scores; nothing is recomputed) and prints, over
the flagged classes of every run, how many planted artifact samples each rule flags (recall) and
how many of its flags are artifact samples (precision):

- group: the members of the class's chosen spectral cluster (`in_group`);
- stands out: the samples whose score lies `score.sample_threshold` spreads above the median of the
  members outside the group (`stands_out`, what `is_clever_hans` uses: stages/score.py).

    python benchmarks/flags.py --spec demo
    python benchmarks/flags.py --spec fashion-mnist
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from unhans.pipeline.core.store import Store
from unhans.pipeline.harness.validate import runs_from_argv

RULES = {"group": "in_group", "stands out": "stands_out"}


def main() -> None:
    spec, root, runs = runs_from_argv(__doc__)
    rows, false_flags = [], []
    for sc, seed, run in runs:
        store = Store(str(run))
        samples, ss = store.read_table("samples"), store.read_table("sample_scores")
        cs = store.read_table("class_scores")
        truth = samples["artifact"].to_numpy(bool) if "artifact" in samples else np.zeros(len(samples), bool)
        for c in cs.loc[cs["is_clever_hans"].astype(bool), "class_id"]:
            g = ss[ss["class_id"] == c]
            art = truth[g["index"].to_numpy()]
            for rule, col in RULES.items():
                f = g[col].to_numpy(bool)
                rows.append({"scenario": sc.name, "seed": seed, "class": int(c), "rule": rule,
                             "artifact": int(art.sum()), "flagged": int(f.sum()),
                             "hits": int((f & art).sum())})  # fmt: skip
            out, conf = g["stands_out"].to_numpy(bool), g["self_confidence"]
            false_flags.append({"scenario": sc.name, "seed": seed, "class": int(c),
                                "false flags": int((out & ~art).sum()), "their p(label)": conf[out & ~art].median(),
                                "clean unflagged p(label)": conf[~out & ~art].median()})  # fmt: skip
    if not rows:
        raise SystemExit(f"no flagged class in the finished runs under {root}")
    df = pd.DataFrame(rows)
    per = df.pivot_table(index=["scenario", "seed", "class", "artifact"], columns="rule", values=["flagged", "hits"])
    print(per.to_string())
    tot = df.groupby("rule")[["artifact", "flagged", "hits"]].sum()
    tot["recall"] = tot["hits"] / tot["artifact"]
    tot["precision"] = tot["hits"] / tot["flagged"]
    runs = df[["scenario", "seed"]].drop_duplicates()
    print(f"\nover {len(df) // len(RULES)} flagged classes in {len(runs)} runs:")
    print(tot.to_string(float_format=lambda v: f"{v:.3f}"))
    print("\nclean samples flagged by the stands-out rule, and the median self-confidence of them and of the")
    print("class's clean samples it leaves:")
    print(pd.DataFrame(false_flags).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
