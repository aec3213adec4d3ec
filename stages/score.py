"""score: rank classes by Clever Hans score and score every sample (the method: pipeline.scores).

Reads the transfer stage's per-class transfers (no model: rerunning this stage with other
`score` settings costs seconds) and the cluster stage's clusterings. Writes tables class_scores
(one row per analysed class, ranked; p_value and q_value of the score; group_probe: which probe
carries the chosen group's transfer; label_issue_fraction) and sample_scores (one row per analysed
sample: cluster, in_group, clever_hans_score = the transfer relative to the sample's
self-confidence, spread over the class's explanation graph, is_clever_hans, stands_out, transfer =
max(evidence_transfer, global_transfer); and, apart from shortcuts, label issues: self_confidence =
p(label), label_issue_score = 1 - p(label), is_label_issue), cleanlab-style. A backdoor the model
did not learn leaves mislabelled images, not a Clever Hans: they show up as label issues.

A sample is flagged (is_clever_hans) when its class is flagged and it stands out: its score lies
`flag_threshold` spreads above the usual score of its class (the median of the members outside
the chosen group; the spread is their scaled median absolute deviation, at least `min_spread`),
the class score's own criterion at the level of one sample. Measured on the harness against
flagging the chosen group (benchmarks/flags.py): the group leaves out artifact samples that the
clustering put elsewhere and takes in clean ones that look alike.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from pipeline.runner import Context, stage
from pipeline.scores import benjamini_hochberg, relative_transfer, score_class, spread, stands_out
from pipeline.spectral import knn_affinity
from pipeline.store import Store
from stages.transfer import stored_transfers


def class_clusters(store, c: int):
    """Class c's members, kNN affinity, k-means labels for each k and the ks."""
    members = store.array(f"classes/{c}/members")[:]
    W = knn_affinity(store.array(f"classes/{c}/knn_idx")[:], store.array(f"classes/{c}/knn_dist")[:])
    lab_arr = store.array(f"classes/{c}/labels")
    return members, W, lab_arr[:], lab_arr.attrs["k"], lab_arr.attrs["n_clusters"]


ScoreItem = tuple[int, str, str]


def score_one(cfg, url: str, item: ScoreItem) -> tuple[dict, pd.DataFrame]:
    """One class (id, key, name): its row of class_scores and its rows of sample_scores."""
    c, key, name = item
    store = Store(url)
    scfg = cfg.score
    samples = store.read_table("samples")
    members, W, labels, ks, n_clusters = class_clusters(store, c)
    tr = stored_transfers(store, c)
    t, conf = tr.combined, tr.confidence
    # label issues, cleanlab-style: predicted as another class and less sure of the label than the
    # class's average member (the per-class threshold of confident learning)
    predicted_other = store.array("attribution/prediction").get_orthogonal_selection((members,)) != c
    label_issue = predicted_other & (conf < conf.mean())
    s = score_class(
        W, labels, ks, t, scfg.max_group_fraction, scfg.min_group, scfg.permutations, [cfg.seed, c], scfg.min_spread
    )
    sample_score = spread(W, relative_transfer(t, conf, scfg.confidence_floor), scfg.smoothing)
    outstanding = stands_out(sample_score, ~s.group, scfg.flag_threshold, scfg.min_spread)
    lam = store.array(f"classes/{c}/eigenvalues")[:]
    g_over_e = (tr.global_[s.group] - tr.evidence[s.group]).mean() if s.group.any() else 0.0
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
        "group_transfer": s.group_transfer,
        "group_probe": "global" if s.group.any() and g_over_e > 0 else "evidence",
        "rest_transfer": s.rest_transfer,
        "clever_hans_score": s.score,
        "p_value": s.p_value,
        "label_issue_fraction": float(label_issue.mean()),
    }
    sample_rows = pd.DataFrame(
        {
            "index": members,
            "class_id": c,
            "cluster": labels[ks.index(n_clusters)],
            "in_group": s.group,
            "clever_hans_score": sample_score,
            "stands_out": outstanding,
            "transfer": t,
            "evidence_transfer": tr.evidence,
            "global_transfer": tr.global_,
            "self_confidence": conf,
            "label_issue_score": 1.0 - conf,
            "is_label_issue": label_issue,
        }
    )
    if "artifact" in samples:  # a poisoned run knows the truth: record how well the scores find it
        truth = samples["artifact"].to_numpy(bool)[members]
        row["n_artifact"] = int(truth.sum())
        row["artifact_auroc"] = float(roc_auc_score(truth, sample_score)) if 0 < truth.sum() < len(truth) else np.nan
    return row, sample_rows


@stage("score", sections=["score"], inputs=["cluster", "transfer"])
def run(ctx: Context) -> dict:
    """Class ranking and per-sample artifact scores."""
    ids = list(ctx.store.group["classes"].attrs["ids"])
    classes = ctx.store.read_table("classes").set_index("class_id")
    items = [(c, classes.at[c, "class_key"], classes.at[c, "class_name"]) for c in ids]
    results = ctx.tasks.map(score_one, items, "score", ctx.cfg, ctx.url)
    class_scores = pd.DataFrame([r for r, _ in results]).sort_values(
        "clever_hans_score", ascending=False, kind="stable"
    )
    class_scores.insert(0, "rank", np.arange(1, len(class_scores) + 1))
    # flagged: a large score that is also significant over all classes (pipeline.scores, Significance)
    p = class_scores["p_value"].to_numpy(np.float64)
    q = benjamini_hochberg(p) if ctx.cfg.score.permutations else np.full(len(p), np.nan)
    significant = (q <= ctx.cfg.score.fdr) | np.isnan(q)
    flagged = (class_scores["clever_hans_score"].to_numpy() >= ctx.cfg.score.flag_threshold) & significant
    at = class_scores.columns.get_loc("p_value") + 1
    class_scores.insert(at, "q_value", q)
    class_scores.insert(at + 1, "is_clever_hans", flagged)
    sample_scores = pd.concat([s for _, s in results], ignore_index=True).sort_values("index", kind="stable")
    flagged_ids = class_scores.loc[class_scores["is_clever_hans"], "class_id"].to_numpy()
    at = sample_scores.columns.get_loc("clever_hans_score") + 1
    in_flagged = sample_scores["class_id"].isin(flagged_ids)
    sample_scores.insert(at, "is_clever_hans", sample_scores["stands_out"] & in_flagged)
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
