"""clean: the manifest (one row per sample: cluster, score, flag, decision, reason) and the
cleaned-dataset list a training script can consume directly.
"""

from __future__ import annotations

from pipeline.runner import Context, stage


@stage("clean", sections=["clean"], inputs=["score"])
def run(ctx: Context) -> dict:
    """Decide keep / drop / review per sample from the flags; write manifest and cleaned list."""
    store = ctx.store
    samples = store.read_table("samples")
    scores = store.read_table("sample_scores")
    classes = store.read_table("class_scores").set_index("class_id")
    m = samples[["index", "source", "label", "class_key", "class_name", "status"]].merge(
        scores[["index", "cluster", "clever_hans_score", "is_clever_hans"]], on="index", how="left"
    )
    m["cluster"] = m["cluster"].fillna(-1).astype(int)
    m["clever_hans_score"] = m["clever_hans_score"].fillna(0.0)
    m["is_clever_hans"] = m["is_clever_hans"].fillna(False).astype(bool)
    m["decision"] = "keep"
    m["reason"] = ""
    unusable = m["status"] != "ok"
    m.loc[unusable, "decision"] = "drop"
    m.loc[unusable, "reason"] = "unreadable: " + samples.loc[unusable, "reason"].astype(str)
    flagged = m["is_clever_hans"]
    m.loc[flagged, "decision"] = ctx.cfg.clean.flagged
    m.loc[flagged, "reason"] = [
        f"auto: in isolated group of class {c} (class score {classes.at[c, 'clever_hans_score']:.2f})"
        for c in m.loc[flagged, "label"]
    ]
    manifest = m.drop(columns=["status"])
    store.write_table("manifest", manifest)
    kept = manifest.loc[manifest["decision"] == "keep", ["index", "source", "label"]]
    store.write_table("cleaned", kept)
    counts = manifest["decision"].value_counts()
    return {d: int(counts.get(d, 0)) for d in ("keep", "drop", "review", "relabel")}
