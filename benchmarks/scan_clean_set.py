"""What SCAn owes to its clean set: SCAn as `unhans validate` runs it (the within-class covariance from
100 clean held-out images per class, the suspect class's own included) against SCAn without clean
data (the within-class covariance from the run's training features of the other classes, leave one
class out; then the same untangling and anomaly index).

Reads finished `unhans validate` runs (their stored features and validation.csv; nothing is trained)
and prints per run the target's rank and per-sample AUROC both ways, then the counts over the runs
the model follows.

    python benchmarks/scan_clean_set.py --spec demo
    python benchmarks/scan_clean_set.py --spec fashion-mnist
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from unhans.pipeline.core.store import Store
from unhans.pipeline.data.artifacts import PoisonConfig
from unhans.pipeline.harness.detectors import RunView
from unhans.pipeline.harness.detectors.scan import scan_classes, within_class_whitener
from unhans.pipeline.harness.validate import FOLLOWED, detection, rank_of, runs_from_argv


def without_clean_set(run: RunView, target: int, truth: np.ndarray) -> tuple[int, float]:
    feats = {c: run.features(c).astype(np.float64) for c in run.class_ids}
    x = np.concatenate(list(feats.values()))
    y = np.concatenate([np.full(len(f), c) for c, f in feats.items()])
    per_class, index = scan_classes(run, lambda c: within_class_whitener(x[y != c], y[y != c]))
    return rank_of(pd.Series(index), target), detection(truth[run.members(target)], per_class[target][2])[0]


def main() -> None:
    spec, root, runs = runs_from_argv(__doc__)
    rows = []
    for sc, seed, path in runs:
        if sc.control:
            continue
        done = pd.read_csv(path / "validation.csv").set_index("method")
        if "scan" not in done.index:
            continue
        store = Store(str(path))
        samples = store.read_table("samples")
        target = PoisonConfig.model_validate(sc.poison).target
        rank, auroc = without_clean_set(RunView(store, seed), target, samples["artifact"].to_numpy(bool))
        rows.append({"scenario": sc.name, "seed": seed, "flip_rate": done.at["scan", "flip_rate"],
                     "rank clean set": int(done.at["scan", "rank"]), "AUROC clean set": done.at["scan", "auroc"],
                     "rank without": rank, "AUROC without": auroc})  # fmt: skip
    df = pd.DataFrame(rows)
    print(df.round(3).to_string(index=False))
    f = df[df["flip_rate"] >= FOLLOWED]
    print(
        f"\nfollowed runs ({len(f)}): target first with the clean set {int((f['rank clean set'] == 1).sum())}, "
        f"without {int((f['rank without'] == 1).sum())}; median AUROC {f['AUROC clean set'].median():.3f} "
        f"vs {f['AUROC without'].median():.3f}"
    )


if __name__ == "__main__":
    main()
