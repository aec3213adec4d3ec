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


@stage("score", sections=["score"], inputs=["cluster"])
def run(ctx: Context) -> dict:
    """Class ranking and per-sample artifact scores."""
    cfg, store = ctx.cfg.score, ctx.store
    samples = store.read_table("samples")
    classes = store.read_table("classes").set_index("class_id")
    has_truth = "artifact" in samples
    class_rows, sample_rows = [], []
    for c in store.group["classes"].attrs["ids"]:
        members = store.array(f"classes/{c}/members")[:]
        W = knn_affinity(store.array(f"classes/{c}/knn_idx")[:], store.array(f"classes/{c}/knn_dist")[:])
        lab_arr = store.array(f"classes/{c}/labels")
        ks, n_clusters = lab_arr.attrs["k"], lab_arr.attrs["n_clusters"]
        labels = lab_arr[:]
        s = score_class(W, labels, ks, cfg.max_group_fraction)
        lam = store.array(f"classes/{c}/eigenvalues")[:]
        flagged = s.score >= cfg.flag_threshold
        row = {
            "class_id": c,
            "class_key": classes.at[c, "class_key"],
            "class_name": classes.at[c, "class_name"],
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
        if has_truth:
            truth = samples["artifact"].to_numpy()[members]
            row["n_artifact"] = int(truth.sum())
            row["artifact_auroc"] = (
                float(roc_auc_score(truth, s.sample_scores)) if 0 < truth.sum() < len(truth) else np.nan
            )
        class_rows.append(row)
        sample_rows.append(
            pd.DataFrame(
                {
                    "index": members,
                    "class_id": c,
                    "cluster": labels[ks.index(n_clusters)],
                    "in_group": s.group,
                    "clever_hans_score": s.sample_scores,
                    "is_clever_hans": s.group & flagged,
                }
            )
        )
    class_scores = pd.DataFrame(class_rows).sort_values("clever_hans_score", ascending=False, kind="stable")
    class_scores.insert(0, "rank", np.arange(1, len(class_scores) + 1))
    sample_scores = pd.concat(sample_rows, ignore_index=True).sort_values("index", kind="stable")
    store.write_table("class_scores", class_scores)
    store.write_table("sample_scores", sample_scores)
    top = class_scores.iloc[0] if len(class_scores) else None
    return {
        "classes": len(class_scores),
        "flagged_classes": int(class_scores["is_clever_hans"].sum()),
        "flagged_samples": int(sample_scores["is_clever_hans"].sum()),
        "top_class": None if top is None else str(top["class_name"]),
        "top_score": None if top is None else round(float(top["clever_hans_score"]), 4),
    }
