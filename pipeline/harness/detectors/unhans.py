"""unhans itself, read from the score stage's tables: the Clever Hans score with its class and sample
flags, and the label issues (ranked by each class's share of them; no class alarm)."""

from __future__ import annotations

from unhans.pipeline.harness.detectors.base import Detection, RunView, detector


@detector("unhans", "scores")
def clever_hans(run: RunView, c: int) -> Detection:
    s = run.sample_scores[c].reindex(run.members(c))
    row = run.class_scores.loc[c]
    return Detection(
        float(row["clever_hans_score"]),
        s["clever_hans_score"].to_numpy(),
        bool(row["is_clever_hans"]),
        s["is_clever_hans"].to_numpy(bool),
    )


@detector("unhans_label_issues", "scores")
def label_issues(run: RunView, c: int) -> Detection:
    s = run.sample_scores[c].reindex(run.members(c))
    return Detection(
        float(run.class_scores.at[c, "label_issue_fraction"]),
        s["label_issue_score"].to_numpy(),
        None,
        s["is_label_issue"].to_numpy(bool),
    )
