"""Which maps the explanation graph should compare where the artifact moves: each relevance map as stored, or
what sets it apart from its class (issue 19's metric ablation).

The per-sample score spreads each sample's relative transfer over its class's kNN graph (`score.smoothing`,
0.75 of a score from the neighbours), and the class score's groups are clusters of that graph. A stamp at a
random place, size and angle is a small part of a map that the object dominates: under either distance a
stamped sample's neighbours are samples of the same shape, stamped or not, so the spreading mixes them. The
residual map, each map's share of its positive relevance less the class's mean share (its positive part),
keeps what the class does not share: the stamp, wherever it is. Translation, scale and rotation invariance
can then bring stamped samples together, which the Euclidean distance cannot where the stamps sit apart.

Reads finished `unhans validate` runs (their maps and stored transfers; nothing is written there) and, for every
class of each run, rebuilds the graph under each metric (euclidean, wasserstein with the run's settings) on the
maps and on the residual maps, reclusters it (`spectral.cluster`) and rescores the class with the score stage's
`statistics.class_findings` on the run's own transfers. Prints per run the target's per-sample AUROC without
any graph (the relative transfer alone) and its AUROC and rank under each variant (the stored run's first, as
a check: the same variant rebuilt must give the stored figure), then the medians over the runs whose model
follows the artifact (flip rate >= 0.2, from the run's validation.csv) and over the randomised scenarios among
them.

With --no-rebuild only the stored graph's AUROC and that of the relative transfer alone (`score.smoothing` 0,
no graph), in seconds.

    python benchmarks/residual_graph.py --spec demo --root runs/validate/demo
    python benchmarks/residual_graph.py --spec fashion-mnist --no-rebuild
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from unhans.pipeline.core import layout  # noqa: E402
from unhans.pipeline.core.store import Store  # noqa: E402
from unhans.pipeline.harness.validate import finished_runs, load_spec, scenario_config  # noqa: E402
from unhans.pipeline.method.metrics import knn_graph  # noqa: E402
from unhans.pipeline.method.metrics.euclidean import EuclideanParams  # noqa: E402
from unhans.pipeline.method.metrics.wasserstein import WassersteinParams  # noqa: E402
from unhans.pipeline.method.probes import stored_place, stored_transfers  # noqa: E402
from unhans.pipeline.method.spectral import cluster, knn_affinity  # noqa: E402
from unhans.pipeline.method.statistics import class_clusters, class_findings  # noqa: E402

FOLLOWED = 0.2


def residual(maps: np.ndarray) -> np.ndarray:
    """Each map's share of its positive relevance less the class's mean share, its positive part (n, r, r)."""
    pos = np.maximum(np.asarray(maps, np.float64), 0.0)
    total = pos.reshape(len(pos), -1).sum(1)
    share = pos / np.where(total > 0, total, 1.0)[:, None, None]
    return np.maximum(share - share.mean(0), 0.0).astype(np.float32)


def rescored(store: Store, c: int, members, W, labels, ks, k: int, lam, params) -> tuple[float, np.ndarray]:
    """Class c's class score and per-sample scores on a given graph and clustering, with the run's stored
    transfers and place probe (the score stage's statistics.class_findings under score settings `params`)."""
    predicted = store.array(layout.PREDICTION()).get_orthogonal_selection((members,))
    transfers, place = stored_transfers(store, c), stored_place(store, c)
    row, samples = class_findings(members, W, labels, list(ks), k, lam, transfers, predicted, c, params, place)
    return float(row["clever_hans_score"]), samples["clever_hans_score"].to_numpy()


def variant_scores(cfg, store: Store, c: int, params, on_residual: bool) -> tuple[float, np.ndarray]:
    """Class c's scores with its graph rebuilt under `params` on its maps (or their residuals), reclustered."""
    members = store.read(layout.MEMBERS(c=c))
    maps = store.relevance(members)
    idx, dist, _ = knn_graph(residual(maps) if on_residual else maps, params, cfg.seed, None)
    lam, _, labels, ks, k, _ = cluster(idx, dist, cfg.cluster, cfg.seed)
    return rescored(store, c, members, knn_affinity(idx, dist), labels, ks, k, lam, cfg.score)


def auroc(inside: np.ndarray, score: np.ndarray) -> float:
    """Per-sample AUROC of the planted samples (inside) by score; NaN where the class has none or only them."""
    return float(roc_auc_score(inside, score)) if 0 < inside.sum() < len(inside) else float("nan")


def unspread_auroc(cfg, store: Store, c: int, truth: np.ndarray) -> float:
    """The per-sample AUROC of class c's relative transfer alone (`score.smoothing` 0: no graph)."""
    members, W, labels, ks, k = class_clusters(store, c)
    params = cfg.score.model_copy(update={"smoothing": 0.0})
    _, score = rescored(store, c, members, W, labels, ks, k, store.read(layout.EIGENVALUES(c=c)), params)
    return auroc(truth[members], score)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="demo")
    ap.add_argument("--root", default=None, help="folder of the scenario runs (default runs/validate/<spec>)")
    ap.add_argument("--scenario", action="append", default=[], help="only these scenarios (repeatable)")
    ap.add_argument("--no-rebuild", action="store_true", help="only the stored graph with and without spreading")
    args = ap.parse_args()
    spec = load_spec(args.spec)
    root = Path(args.root or f"runs/validate/{spec.name}")
    rows = []
    for sc, seed, run in finished_runs(spec, root):
        if sc.control or (args.scenario and sc.name not in args.scenario):
            continue
        cfg, poison = scenario_config(spec, sc, root, [], seed)
        store = Store(str(run))
        ours = pd.read_csv(run / "validation.csv").set_index("method").loc["unhans"]
        samples = store.read_table(layout.SAMPLES.name)
        truth = samples["artifact"].to_numpy(bool)
        ids = [int(c) for c in store.group["classes"].attrs["ids"]]
        k = cfg.distances.k
        metrics = {"euclidean": EuclideanParams(metric="euclidean", k=k),
                   "wasserstein": cfg.distances if cfg.distances.metric == "wasserstein"
                   else WassersteinParams(metric="wasserstein", k=k)}  # fmt: skip
        row = {"scenario": sc.name, "seed": seed, "flip_rate": float(ours["flip_rate"]),
               "randomised": bool(poison.position == "random" or poison.size_jitter > 0),
               "stored AUROC": float(ours["auroc"]), "stored rank": int(ours["rank"])}  # fmt: skip
        row["no spreading AUROC"] = unspread_auroc(cfg, store, poison.target, truth)
        inside = truth[store.read(layout.MEMBERS(c=poison.target))]
        for name, params in {} if args.no_rebuild else metrics.items():
            for on_residual in (False, True):
                label = f"{name}{' residual' if on_residual else ''}"
                found = {c: variant_scores(cfg, store, c, params, on_residual) for c in ids}
                scores = pd.Series({c: s for c, (s, _) in found.items()})
                row[f"{label} rank"] = int((scores > scores[poison.target]).sum() + 1)
                row[f"{label} AUROC"] = auroc(inside, found[poison.target][1])
        rows.append(row)
        print(" | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()), flush=True)
    df = pd.DataFrame(rows)
    print("\n| " + " | ".join(df.columns) + " |\n|" + "---|" * len(df.columns))
    for r in df.itertuples(index=False):
        print("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |")
    cols = [c for c in df.columns if c.endswith("AUROC") or c.endswith("rank")]
    for what, sel in (("followed", df["flip_rate"] >= FOLLOWED),
                      ("followed, randomised", (df["flip_rate"] >= FOLLOWED) & df["randomised"])):  # fmt: skip
        part = df[sel]
        print(
            f"\n{what} ({len(part)} runs): median "
            + ", ".join(f"{c} {part[c].median():.3f}" for c in cols)
            + "; ranked first: "
            + ", ".join(f"{c[:-5]} {(part[c] == 1).sum()}" for c in cols if c.endswith("rank"))
        )


if __name__ == "__main__":
    main()
