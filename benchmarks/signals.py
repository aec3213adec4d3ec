"""Which stored per-sample signal finds the planted images, run by run: a diagnosis for a scenario where
unhans' per-sample AUROC is low.

Reads finished `unhans validate` runs (nothing is recomputed) and prints, per run of a poisoned
scenario, inside the target class: the flip rate, the chosen group's size, its purity (the share of
planted images among its members) and recall (the share of the planted images in it), and the
per-sample AUROC of each signal of `tables/sample_scores` (the Clever Hans score, the evidence and
global transfers, the self-confidence, the label-issue score). An AUROC well below 0.5 says the
signal ranks the planted images *last*.

    python benchmarks/signals.py --spec demo
    python benchmarks/signals.py --spec fashion-mnist
"""

from __future__ import annotations

import pandas as pd
from sklearn.metrics import roc_auc_score

from unhans.pipeline.harness.validate import runs_from_argv

SIGNALS = ["clever_hans_score", "evidence_transfer", "global_transfer", "self_confidence", "label_issue_score"]


def main() -> None:
    _, _, runs = runs_from_argv(__doc__)
    rows = []
    for sc, seed, run in runs:
        if sc.control:
            continue
        scores = pd.read_parquet(run / "tables" / "sample_scores.parquet")
        planted = pd.read_parquet(run / "tables" / "samples.parquet").set_index("index")["artifact"]
        d = scores[scores["class_id"] == sc.poison["target"]].copy()
        d["planted"] = planted.reindex(d["index"]).to_numpy(bool)
        group = d[d["in_group"]]
        row = {
            "scenario": sc.name,
            "seed": seed,
            "flip rate": float(pd.read_csv(run / "validation.csv")["flip_rate"].iloc[0]),
            "group": len(group),
            "purity": group["planted"].mean() if len(group) else float("nan"),
            "recall": group["planted"].sum() / max(int(d["planted"].sum()), 1),
        }
        row.update({s: roc_auc_score(d["planted"], d[s]) for s in SIGNALS})
        rows.append(row)
    table = pd.DataFrame(rows)
    print("| " + " | ".join(table.columns) + " |\n|" + "---|" * len(table.columns))
    for r in table.itertuples(index=False):
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |")


if __name__ == "__main__":
    main()
