"""score: rank classes by Clever Hans score and score every sample (see pipeline.scores).

Writes tables class_scores (one row per analysed class, ranked) and sample_scores (one row
per analysed sample: cluster, clever_hans_score, is_clever_hans), cleanlab-style.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from pipeline.runner import Context, stage
from pipeline.scores import score_class
from pipeline.spectral import knn_affinity
from pipeline.store import Store


def score_one(cfg, url: str, item: tuple[int, str, str, np.ndarray | None]) -> tuple[dict, pd.DataFrame]:
    """One class (id, key, name, planted-artifact truth of its members or None): row and sample scores."""
    c, key, name, truth = item
    store = Store(url)
    members = store.array(f"classes/{c}/members")[:]
    W = knn_affinity(store.array(f"classes/{c}/knn_idx")[:], store.array(f"classes/{c}/knn_dist")[:])
    lab_arr = store.array(f"classes/{c}/labels")
    ks, n_clusters = lab_arr.attrs["k"], lab_arr.attrs["n_clusters"]
    labels = lab_arr[:]
    s = score_class(W, labels, ks, cfg.score.max_group_fraction)
    lam = store.array(f"classes/{c}/eigenvalues")[:]
    flagged = s.score >= cfg.score.flag_threshold
    row = {
        "class_id": c,
        "class_key": key,
        "class_name": name,
        "n_samples": len(members),
        "n_clusters": n_clusters,
        "eigengap": float(lam[n_clusters] - lam[n_clusters - 1]) if len(lam) > n_clusters else 0.0,
        "group_k": s.k,
        "group_cluster": s.cluster,
        "group_size": s.group_size,
        "group_fraction": s.group_size / len(members),
        "conductance": s.conductance,
        "clever_hans_score": s.score,
        "is_clever_hans": flagged,
    }
    if truth is not None:
        row["n_artifact"] = int(truth.sum())
        row["artifact_auroc"] = float(roc_auc_score(truth, s.sample_scores)) if 0 < truth.sum() < len(truth) else np.nan
    sample_rows = pd.DataFrame(
        {
            "index": members,
            "class_id": c,
            "cluster": labels[ks.index(n_clusters)],
            "in_group": s.group,
            "clever_hans_score": s.sample_scores,
            "is_clever_hans": s.group & flagged,
        }
    )
    return row, sample_rows


@stage("score", sections=["score"], inputs=["cluster"])
def run(ctx: Context) -> dict:
    """Class ranking and per-sample artifact scores."""
    ids = list(ctx.store.group["classes"].attrs["ids"])
    samples = ctx.store.read_table("samples")
    classes = ctx.store.read_table("classes").set_index("class_id")
    truth = samples["artifact"].to_numpy() if "artifact" in samples else None
    items = [
        (c, classes.at[c, "class_key"], classes.at[c, "class_name"],
         None if truth is None else truth[ctx.store.array(f"classes/{c}/members")[:]])
        for c in ids
    ]  # fmt: skip
    results = ctx.tasks.map(score_one, items, "score", ctx.cfg, ctx.url)
    class_scores = pd.DataFrame([r for r, _ in results]).sort_values(
        "clever_hans_score", ascending=False, kind="stable"
    )
    class_scores.insert(0, "rank", np.arange(1, len(class_scores) + 1))
    sample_scores = pd.concat([s for _, s in results], ignore_index=True).sort_values("index", kind="stable")
    ctx.store.write_table("class_scores", class_scores)
    ctx.store.write_table("sample_scores", sample_scores)
    top = class_scores.iloc[0] if len(class_scores) else None
    return {
        "classes": len(class_scores),
        "flagged_classes": int(class_scores["is_clever_hans"].sum()),
        "flagged_samples": int(sample_scores["is_clever_hans"].sum()),
        "top_class": None if top is None else str(top["class_name"]),
        "top_score": None if top is None else round(float(top["clever_hans_score"]), 4),
    }
