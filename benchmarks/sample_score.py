"""How the per-sample score's two choices, spreading and the confidence floor, find the planted images.

Reads finished `unhans validate` runs (their stored transfers, self-confidences and kNN graphs;
nothing is recomputed but the score) and prints, per run of a poisoned scenario, the per-sample
AUROC inside the target class (pipeline/method/statistics.py: s = spread of t / max(p, f); with the median
transfer t and self-confidence p of its planted and its clean members) for each weight a of
`score.smoothing` at the configured floor, then for each floor f of `score.confidence_floor` at
the configured a (f = 1 is the plain transfer), then the medians over all runs, over the runs whose
model follows the artifact and over those of them with a random position or size. Both defaults
were chosen on the digits spec (`--spec demo`); see pipeline/scores.py for what Fashion-MNIST saw.

    python benchmarks/sample_score.py --spec demo
    python benchmarks/sample_score.py --spec fashion-mnist
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from unhans.pipeline.core import layout
from unhans.pipeline.core.store import Store
from unhans.pipeline.data.artifacts import PoisonConfig
from unhans.pipeline.harness.validate import FOLLOWED, detection, randomised, runs_from_argv
from unhans.pipeline.method.probes import stored_transfers
from unhans.pipeline.method.statistics import ScoreConfig, class_clusters, combined, relative_transfer, spread

ALPHAS = (0.0, 0.5, 0.75, 0.9)
FLOORS = (0.1, 0.25, 0.5, 1.0)


def main() -> None:
    spec, root, runs = runs_from_argv(__doc__)
    default = ScoreConfig()
    rows = []
    for sc, seed, run in runs:
        if sc.control:
            continue
        flip = pd.read_csv(run / "validation.csv")["flip_rate"].iloc[0]
        store = Store(str(run))
        c = int(sc.poison["target"])
        members, W, _, _, _ = class_clusters(store, c)
        tr = stored_transfers(store, c)
        t, p = combined(tr.evidence, tr.global_), tr.confidence
        truth = store.read_table(layout.SAMPLES.name)["artifact"].to_numpy(bool)[members]
        row = {"scenario": sc.name, "seed": seed, "flip_rate": flip}
        row["random"] = randomised(PoisonConfig.model_validate(sc.poison))
        # what the relative transfer works on: median transfer and self-confidence, planted vs clean
        row.update({"t planted": np.median(t[truth]), "t clean": np.median(t[~truth])})
        row.update({"p planted": np.median(p[truth]), "p clean": np.median(p[~truth])})
        r = relative_transfer(t, p, default.confidence_floor)
        row.update({f"a={a}": detection(truth, spread(W, r, a))[0] for a in ALPHAS})
        for f in FLOORS:
            row[f"f={f}"] = detection(truth, spread(W, relative_transfer(t, p, f), default.smoothing))[0]
        rows.append(row)
    if not rows:
        raise SystemExit(f"no finished runs under {root}: run `unhans validate --spec {spec.name}` first")
    df = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(f"AUROC per run; a at f = {default.confidence_floor}, f at a = {default.smoothing}")
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    followed = df[df["flip_rate"] >= FOLLOWED]
    cols = [k for k in df.columns if k[:2] in ("a=", "f=")]
    parts = (
        ("all runs", df),
        (f"followed (flip rate >= {FOLLOWED})", followed),
        ("followed, random position or size", followed[followed["random"]]),
    )
    for name, part in parts:
        print(f"median AUROC, {name} ({len(part)}): " + "  ".join(f"{k}: {np.nanmedian(part[k]):.3f}" for k in cols))


if __name__ == "__main__":
    main()
