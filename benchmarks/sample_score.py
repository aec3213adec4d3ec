"""How much spreading the transfer over the explanation graph helps the per-sample score.

Reads finished `unhans validate` runs (their stored transfers and kNN graphs; nothing is recomputed
but the spreading) and prints, per run of a poisoned scenario, the per-sample AUROC inside the
target class for each weight a of `score.smoothing` (pipeline.scores.spread; a = 0 is the raw
transfer), then the medians over all runs and over the runs whose model follows the artifact.
The default a = 0.75 was chosen on the digits spec (`--spec demo`); Fashion-MNIST took no part.

    python benchmarks/smoothing.py --spec demo
    python benchmarks/smoothing.py --spec fashion-mnist --root runs/validate/fashion-mnist
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.scores import spread
from pipeline.spectral import knn_affinity
from pipeline.store import Store
from pipeline.validate import FOLLOWED, detection, finished_runs, load_spec

ALPHAS = (0.0, 0.25, 0.5, 0.75, 0.9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="demo")
    ap.add_argument("--root", default=None, help="folder of the scenario runs (default runs/validate/<spec>)")
    args = ap.parse_args()
    spec = load_spec(args.spec)
    root = Path(args.root or f"runs/validate/{spec.name}")
    rows = []
    for sc, seed, run in finished_runs(spec, root):
        if sc.control:
            continue
        flip = pd.read_csv(run / "validation.csv")["flip_rate"].iloc[0]
        store = Store(str(run))
        c = int(sc.poison["target"])
        members = store.array(f"classes/{c}/members")[:]
        W = knn_affinity(store.array(f"classes/{c}/knn_idx")[:], store.array(f"classes/{c}/knn_dist")[:])
        t = store.array(f"classes/{c}/transfer")[:].astype(np.float64)
        truth = store.read_table("samples")["artifact"].to_numpy(bool)[members]
        row = {"scenario": sc.name, "seed": seed, "flip_rate": flip}
        row.update({a: detection(truth, spread(W, t, a))[0] for a in ALPHAS})
        rows.append(row)
    if not rows:
        raise SystemExit(f"no finished runs under {root}: run `unhans validate --spec {spec.name}` first")
    df = pd.DataFrame(rows)
    pd.set_option("display.width", 200)
    print(df.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    followed = df[df["flip_rate"] >= FOLLOWED]
    for name, part in (("all runs", df), (f"followed (flip rate >= {FOLLOWED})", followed)):
        med = "  ".join(f"a={a}: {np.nanmedian(part[a]):.3f}" for a in ALPHAS)
        print(f"median AUROC, {name} ({len(part)}): {med}")
    for a in ALPHAS[1:]:
        d = followed[a] - followed[0.0]
        print(f"a={a} vs raw transfer, followed runs: better in {int((d > 0).sum())}, worse in {int((d < 0).sum())}")


if __name__ == "__main__":
    main()
