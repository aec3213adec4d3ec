"""score: rank classes by Clever Hans score and score every sample (the statistics:
pipeline/method/statistics.py; what the columns mean: docs/methods.md).

Reads the transfer stage's per-class transfers (no model: rerunning this stage with other `score`
settings costs seconds) and the cluster stage's clusterings. Writes class_scores (one row per
analysed class, ranked, with p- and q-values against the run's own classes and the flag) and
sample_scores (one row per analysed sample: its score, whether it stands out and is flagged, its
transfers and label-issue columns). In a screened run (transfer.candidates) the p-values are taken on
every class's screening score (class_scores.screening_score), the thresholds on its class score.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from unhans.pipeline.core import layout
from unhans.pipeline.core.runner import Context, stage
from unhans.pipeline.core.store import Store
from unhans.pipeline.method.probes import probed_in_full, stored_place, stored_screening, stored_transfers
from unhans.pipeline.method.statistics import class_clusters, class_findings, flag_classes, transfer_score

ScoreItem = tuple[int, str, str]


def score_one(cfg, url: str, item: ScoreItem) -> tuple[dict, pd.DataFrame]:
    """One class (id, key, name): its row of class_scores and its rows of sample_scores."""
    c, key, name = item
    store = Store(url)
    members, W, labels, ks, n_clusters = class_clusters(store, c)
    predicted = store.array(layout.PREDICTION()).get_orthogonal_selection((members,))
    lam = store.read(layout.EIGENVALUES(c=c))
    row, samples = class_findings(
        members, W, labels, ks, n_clusters, lam, stored_transfers(store, c), predicted, c, cfg.score,
        stored_place(store, c),
    )  # fmt: skip
    screening = stored_screening(store, c)
    if screening is None:  # not a screened run
        row["screening_score"] = float("nan")
    elif probed_in_full(store, c):  # a candidate: its score on the screening's transfers
        row["screening_score"] = transfer_score(W, labels, list(ks), screening, cfg.score).score
    else:  # scored on its screening transfers already
        row["screening_score"] = row["clever_hans_score"]
    return {"class_id": c, "class_key": key, "class_name": name} | row, samples


@stage("score", sections=["score"], inputs=["cluster", "transfer"])
def run(ctx: Context) -> dict:
    """Class ranking and per-sample artifact scores."""
    ids = list(ctx.store.group["classes"].attrs["ids"])
    classes = ctx.store.read_table(layout.CLASSES.name).set_index("class_id")
    items = [(c, classes.at[c, "class_key"], classes.at[c, "class_name"]) for c in ids]
    results = ctx.tasks.map(score_one, items, "score", ctx.cfg, ctx.url)
    class_scores = pd.DataFrame([r for r, _ in results]).sort_values(
        "clever_hans_score", ascending=False, kind="stable"
    )
    class_scores.insert(0, "rank", np.arange(1, len(class_scores) + 1))
    scores, place = class_scores["clever_hans_score"].to_numpy(), class_scores["place_score"].to_numpy()
    screening = class_scores.pop("screening_score").to_numpy()
    reference = screening if np.isfinite(screening).all() and len(screening) else None  # a screened run
    foreign = class_scores["place_foreign"].to_numpy()
    p, q, flagged = flag_classes(scores, ctx.cfg.score, ctx.cfg.seed, place, foreign, reference)
    at = class_scores.columns.get_loc("clever_hans_score") + 1
    class_scores.insert(at, "p_value", p)
    class_scores.insert(at + 1, "q_value", q)
    class_scores.insert(at + 2, "is_clever_hans", flagged)
    class_scores.insert(at + 3, "screening_score", screening)
    sample_scores = pd.concat([s for _, s in results], ignore_index=True).sort_values("index", kind="stable")
    flagged_ids = class_scores.loc[class_scores["is_clever_hans"], "class_id"].to_numpy()
    at = sample_scores.columns.get_loc("clever_hans_score") + 1
    in_flagged = sample_scores["class_id"].isin(flagged_ids)
    sample_scores.insert(at, "is_clever_hans", sample_scores["stands_out"] & in_flagged)
    ctx.store.write_table(layout.CLASS_SCORES.name, class_scores)
    ctx.store.write_table(layout.SAMPLE_SCORES.name, sample_scores)
    top = class_scores.iloc[0] if len(class_scores) else None
    return {
        "classes": len(class_scores),
        "flagged_classes": int(class_scores["is_clever_hans"].sum()),
        "flagged_samples": int(sample_scores["is_clever_hans"].sum()),
        "top_class": None if top is None else str(top["class_name"]),
        "top_score": None if top is None else round(float(top["clever_hans_score"]), 4),
    }
