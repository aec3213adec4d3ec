"""score: rank classes by Clever Hans score and score every sample (the method: pipeline.scores).

Writes tables class_scores (one row per analysed class, ranked; p_value and q_value of the score;
group_probe: which probe carries the chosen group's transfer; label_issue_fraction) and
sample_scores (one row per analysed sample: cluster, in_group, transfer = max(evidence_transfer,
global_transfer), clever_hans_score = the transfer spread over the class's explanation graph,
is_clever_hans; and, apart from shortcuts,
label issues: self_confidence = p(label), label_issue_score = 1 - p(label), is_label_issue),
cleanlab-style. A backdoor the model did not learn leaves mislabelled images, not a Clever Hans:
they show up as label issues.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from pipeline.compute import resolve_device, worker_device
from pipeline.datasets import build_dataset, iter_batches
from pipeline.models import MODELS, model_for_run
from pipeline.runner import Context, stage
from pipeline.scores import benjamini_hochberg, evidence_masks, host_probability, score_class, spread, transfer
from pipeline.spectral import knn_affinity
from pipeline.store import Store

_CACHE: dict = {}  # per process: the run's model and dataset, built once for all its classes


def _model_and_data(cfg, url: str):
    key = (url, cfg.model.model_dump_json(), cfg.dataset.model_dump_json())
    if key not in _CACHE:
        _CACHE.clear()
        store = Store(url)
        ds = build_dataset(cfg.dataset)
        device = worker_device(resolve_device(cfg.compute.device))
        model = model_for_run(cfg, store, len(ds.classes), ds.channels).to(device)
        mean, std = (t.to(device) for t in MODELS.get(cfg.model.arch).norm(ds.channels))
        _CACHE[key] = (model, ds, lambda x: (x - mean) / std)
    return _CACHE[key]


DONOR_CHUNK = 256  # donor images (and their masks) held in memory at a time: bounded for 224-px classes


def _images(cfg, ds, samples: pd.DataFrame, idx: np.ndarray) -> torch.Tensor:
    batches = [idx[s : s + DONOR_CHUNK] for s in range(0, len(idx), DONOR_CHUNK)]
    parts = [x for _, x, _, _ in iter_batches(ds, samples, batches, cfg.poison, cfg.attribute.num_workers)]
    return torch.cat(parts) if parts else torch.zeros(0)


class Transfers(NamedTuple):
    evidence: np.ndarray  # (n,) pasted evidence (pipeline.scores, evidence probe)
    global_: np.ndarray  # (n,) per-channel statistics (global probe; zeros when score.global_hosts = 0)
    confidence: np.ndarray  # (n,) p(label | member)

    @property
    def combined(self) -> np.ndarray:
        """The transfer the class is scored on."""
        return np.maximum(self.evidence, self.global_)


def class_transfer(
    cfg, store, samples, model, normalise, ds, c: int, members: np.ndarray, hosts: np.ndarray
) -> Transfers:
    """Class c's members' transfers under `model` (pipeline.scores.transfer: each member's evidence,
    from its stored relevance map, pasted into the hosts; its global look imposed on the first
    `score.global_hosts` hosts) and their self-confidence p(c | member), one more forward pass each."""
    host_images = _images(cfg, ds, samples, hosts)
    n_global = min(cfg.score.global_hosts, len(host_images))
    base = host_probability(model, normalise, host_images, c)  # once per class, for both probes
    t, g, conf = (np.zeros(len(members)) for _ in range(3))
    dev = next(model.parameters()).device
    for start in range(0, len(members), DONOR_CHUNK):  # donors in chunks: memory independent of class size
        part, at = members[start : start + DONOR_CHUNK], slice(start, start + DONOR_CHUNK)
        masks = evidence_masks(torch.as_tensor(store.relevance(part)), cfg.score.transfer_top, cfg.dataset.image_size)
        donors = _images(cfg, ds, samples, part)
        t[at] = transfer(model, normalise, donors, host_images, c, masks, base)
        if n_global:
            g[at] = transfer(model, normalise, donors, host_images[:n_global], c, None, base[:n_global])
        with torch.no_grad():
            conf[at] = torch.softmax(model(normalise(donors.to(dev))), 1)[:, c].cpu().numpy()
    return Transfers(t, g, conf)


def class_clusters(store, c: int):
    """Class c's members, kNN affinity, k-means labels for each k and the ks."""
    members = store.array(f"classes/{c}/members")[:]
    W = knn_affinity(store.array(f"classes/{c}/knn_idx")[:], store.array(f"classes/{c}/knn_dist")[:])
    lab_arr = store.array(f"classes/{c}/labels")
    return members, W, lab_arr[:], lab_arr.attrs["k"], lab_arr.attrs["n_clusters"]


ScoreItem = tuple[int, str, str, np.ndarray, bool]
_TRANSFER_ARRAYS = ("transfer_evidence", "transfer_global", "self_confidence")  # Transfers' fields, in order


def score_one(cfg, url: str, fingerprint: str, item: ScoreItem) -> tuple[dict, pd.DataFrame]:
    """One class (id, key, name, host sample indices, transfer already stored): its row and its sample
    scores. The transfers (the costly part) are stored in classes/<id>/transfer, stamped with the stage
    fingerprint, so a resumed run reuses them and only redoes the cheap group choice."""
    c, key, name, hosts, stored = item
    store = Store(url)
    scfg = cfg.score
    samples = store.read_table("samples")
    members, W, labels, ks, n_clusters = class_clusters(store, c)
    if stored:
        tr = Transfers(*(store.array(f"classes/{c}/{a}")[:].astype(np.float64) for a in _TRANSFER_ARRAYS))
    else:
        model, ds, normalise = _model_and_data(cfg, url)
        tr = class_transfer(cfg, store, samples, model, normalise, ds, c, members, hosts)
        for array, values in zip(_TRANSFER_ARRAYS, tr):
            store.write_array(f"classes/{c}/{array}", values)
        store.write_array(f"classes/{c}/transfer", tr.combined, {"fingerprint": fingerprint})  # last: marks done
    t, conf = tr.combined, tr.confidence
    # label issues, cleanlab-style: predicted as another class and less sure of the label than the
    # class's average member (the per-class threshold of confident learning)
    predicted_other = store.array("attribution/prediction").get_orthogonal_selection((members,)) != c
    label_issue = predicted_other & (conf < conf.mean())
    s = score_class(
        W, labels, ks, t, scfg.max_group_fraction, scfg.min_group, scfg.permutations, [cfg.seed, c], scfg.min_spread
    )
    sample_score = spread(W, t, scfg.smoothing)
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


def host_pool(cfg, store, ids: list[int]) -> dict[int, np.ndarray]:
    """Per class, `transfer_hosts` seeded images of the other classes that the model gets right."""
    samples = store.read_table("samples")
    pred = store.array("attribution/prediction")[:]
    status = store.array("attribution/status")[:]
    labels = samples["label"].to_numpy()
    right = (status == 0) & (pred == labels)
    if "artifact" in samples:  # hosts are clean images (in a poisoned run the truth is known)
        right &= ~samples["artifact"].to_numpy(bool)
    m = cfg.score.transfer_hosts
    out = {}
    for c in ids:
        ok = right & (labels != c)
        if not ok.any():
            ok = labels != c
        rng = np.random.default_rng([cfg.seed, c])
        # stratified over the other classes (round robin in a seeded order), so no single class that
        # looks like c can dominate the hosts; kept in that order, so the first few (the global
        # probe's) come from different classes too
        by_class = [rng.permutation(np.flatnonzero(ok & (labels == o))) for o in rng.permutation(np.unique(labels[ok]))]
        picks = [p[r] for r in range(max(map(len, by_class), default=0)) for p in by_class if r < len(p)][:m]
        out[c] = np.array(picks, dtype=np.int64)
    return out


@stage("score", sections=["score"], inputs=["cluster", "attribute"])
def run(ctx: Context) -> dict:
    """Class ranking and per-sample artifact scores."""
    ids = list(ctx.store.group["classes"].attrs["ids"])
    classes = ctx.store.read_table("classes").set_index("class_id")
    hosts = host_pool(ctx.cfg, ctx.store, ids)
    stored = ctx.finished_classes(ids, "transfer")
    items = [(c, classes.at[c, "class_key"], classes.at[c, "class_name"], hosts[c], c in stored) for c in ids]
    results = ctx.tasks.map(score_one, items, "score", ctx.cfg, ctx.url, ctx.fingerprint)
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
    sample_scores.insert(at, "is_clever_hans", sample_scores["in_group"] & in_flagged)
    ctx.store.write_table("class_scores", class_scores)
    ctx.store.write_table("sample_scores", sample_scores)
    top = class_scores.iloc[0] if len(class_scores) else None
    return {
        "classes": len(class_scores),
        "flagged_classes": int(class_scores["is_clever_hans"].sum()),
        "flagged_samples": int(sample_scores["is_clever_hans"].sum()),
        "top_class": None if top is None else str(top["class_name"]),
        "top_score": None if top is None else round(float(top["clever_hans_score"]), 4),
        "classes_resumed": len(stored),
    }
