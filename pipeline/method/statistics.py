"""The Clever Hans statistics: class scores, their p- and q-values, and per-sample scores and flags.

Numpy and scipy only: these read the transfers the probes measured (pipeline/method/probes.py) and
the spectral clusterings (pipeline/method/spectral.py). The formulas, why they are what they are and
their measurements on the poisoning harness are in docs/methods.md; in short:

- class score: over the candidate groups G (spectral clusters no larger than `max_group_fraction` of
  the class), the largest (mean t in G - mean t of the rest) / max(sd of the rest, min_spread) x
  (1 - conductance(G)), t optionally spread over the class's explanation graph first (`group_smoothing`,
  for transfers measured on few hosts);
- p-value: against the run's own classes. A class score is the best of many groups, so the scores of
  classes without a shortcut follow one extreme-value (Gumbel) law; it is fitted by L-moments to the
  other classes' scores, and the class's standardised distance above the fit is referred to its exact
  distribution for that number of classes (simulated once per run: the statistic does not depend on
  the law's location and scale). The clustering and the choice of the best group happen in every
  class alike, so the null accounts for the selection; q-values: Benjamini-Hochberg over the classes;
  a class is flagged at score >= flag_threshold and K p <= 1, or at score >= min_score and q <= fdr;
- sample score: the transfer relative to the sample's own confidence, t / max(p, confidence_floor),
  spread over the class's explanation graph (label spreading); a sample is flagged when its class is
  and its score stands out (sample_threshold robust spreads above the rest of its class).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd
import scipy.sparse as sp
from pydantic import Field

from unhans.pipeline.core import layout
from unhans.pipeline.core.config import Section
from unhans.pipeline.method.spectral import conductance, knn_affinity


class ScoreConfig(Section):
    """The Clever Hans score (pipeline/method/statistics.py, stages/score.py): excess transfer of a separate group."""

    flag_threshold: float = Field(
        1.5,
        ge=0,
        description="class score from which a class is flagged (unless the run's classes often score so high)",
    )
    min_score: float = Field(1.0, ge=0, description="least class score of a class flagged by its q-value (at most fdr)")
    fdr: float = Field(
        0.05, gt=0, le=1, description="false discovery rate of the flags, against the run's other classes"
    )
    sample_threshold: float = Field(
        1.5, ge=0, description="robust spreads above the rest of its class from which a sample stands out"
    )
    min_spread: float = Field(
        0.1, gt=0, le=1, description="least spread of a class's usual transfer (probability) the excess is counted in"
    )
    max_group_fraction: float = Field(0.5, gt=0, le=1, description="largest suspicious group, share of the class")
    min_group: int = Field(3, ge=1, description="smallest suspicious group, samples")
    smoothing: float = Field(
        0.75, ge=0, lt=1, description="weight of a sample's explanation neighbours in its score (0: its own transfer)"
    )
    group_smoothing: float = Field(
        0.0,
        ge=0,
        lt=1,
        description="weight of a sample's explanation neighbours in the transfers the class score compares "
        "(0: its own; for transfer.probes below transfer.hosts)",
    )
    confidence_floor: float = Field(
        0.5,
        gt=0,
        le=1,
        description="a sample's transfer is divided by its self-confidence, at least this (1: its plain transfer)",
    )
    max_place_usage: float = Field(
        1.2,
        ge=0,
        description="a place flags or ranks a class only where the images that do not carry the class from there "
        "give it at most this much relevance, relative to an even spread (more: the place is the class's own)",
    )


def combined(evidence: np.ndarray, global_: np.ndarray) -> np.ndarray:
    """The transfer a class is scored on: max(t, g) of its members' evidence and global probes."""
    return np.maximum(evidence, global_)


@dataclass
class ClassScore:
    score: float  # standardised excess transfer x separation of the chosen group (0 when none qualifies)
    k: int  # the clustering the group comes from
    cluster: int  # the group's label in that clustering
    group_size: int
    conductance: float
    group_transfer: float  # mean transfer inside the group
    rest_transfer: float  # mean transfer in the rest of the class
    group: np.ndarray  # (n,) bool


def class_clusters(store, c: int):
    """Class c's members (n,), kNN affinity (n, n) sparse, k-means labels (K, n) for each k, the ks and
    the eigengap's k, as the distances and cluster stages stored them."""
    members = store.read(layout.MEMBERS(c=c))
    W = knn_affinity(store.read(layout.KNN_IDX(c=c)), store.read(layout.KNN_DIST(c=c)))
    labels, attrs = store.read_with_attrs(layout.LABELS(c=c))
    return members, W, labels, attrs["k"], attrs["n_clusters"]


def relative_transfer(t: np.ndarray, confidence: np.ndarray, floor: float) -> np.ndarray:
    """Transfers t (n,) over the samples' own p(class) (n,), each at least `floor` (1: t unchanged):
    how much of class c a sample's evidence carries into foreign images for each unit of class c
    the whole sample carries for the model."""
    return np.asarray(t, np.float64) / np.maximum(np.asarray(confidence, np.float64), floor)


def spread(W: sp.csr_matrix, t: np.ndarray, alpha: float, tol: float = 1e-10, max_iter: int = 1000) -> np.ndarray:
    """Label spreading of t (n,) over the affinity W (n, n): the fixed point s = (1 - alpha) t + alpha P s,
    P = D^-1 W (a sample without edges keeps its own value). alpha = 0 returns t. O(nnz(W)) a step,
    converging as alpha^steps."""
    t = np.asarray(t, np.float64)
    if alpha == 0 or W.shape[0] == 0:
        return t.copy()
    deg = np.asarray(W.sum(1)).ravel()
    lonely = deg <= 0
    P = sp.diags(np.where(lonely, 0.0, 1.0 / np.where(lonely, 1.0, deg))) @ W + sp.diags(lonely.astype(np.float64))
    s = t.copy()
    for _ in range(max_iter):
        nxt = (1 - alpha) * t + alpha * (P @ s)
        if np.max(np.abs(nxt - s)) <= tol:
            return nxt
        s = nxt
    return s


def stands_out(s: np.ndarray, reference: np.ndarray, threshold: float, min_spread: float) -> np.ndarray:
    """(n,) bool: scores s (n,) at least `threshold` spreads above the median of the `reference`
    members (n,) bool (all when none), the spread being their median absolute deviation scaled to
    a normal's sd (1.4826), at least min_spread: robust to the artifact samples among them."""
    s = np.asarray(s, np.float64)
    ref = s[reference] if np.any(reference) else s
    if not len(ref):
        return np.zeros(len(s), bool)
    med = float(np.median(ref))
    sd = max(1.4826 * float(np.median(np.abs(ref - med))), min_spread)
    return s >= med + threshold * sd


def candidate_groups(
    W: sp.csr_matrix, labels: np.ndarray, ks: list[int], max_group_fraction: float, min_group: int = 3
) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray, np.ndarray]:
    """The clusters that may be a Clever Hans group: (k, cluster) ids, member masks G (n, m) bool, their
    separation 1 - conductance (m,) and conductance (m,). In clustering order (k, then cluster)."""
    n = W.shape[0]
    ids, cols, phis = [], [], []
    for k, lab in zip(ks, labels):
        for c in range(k):
            g = lab == c
            if min_group <= g.sum() <= max_group_fraction * n:
                ids.append((k, c))
                cols.append(g)
                phis.append(conductance(W, g))
    G = np.stack(cols, 1) if cols else np.zeros((n, 0), bool)
    phi = np.asarray(phis, np.float64)
    return ids, G, 1.0 - phi, phi


def group_scores(T: np.ndarray, G: np.ndarray, separation: np.ndarray, min_spread: float) -> np.ndarray:
    """Scores (B, m) of the m candidate groups for B transfer vectors T (B, n): (mean inside - mean of
    the rest) / max(sd of the rest, min_spread) x separation."""
    Gf = G.astype(np.float64)
    size = Gf.sum(0)
    rest = G.shape[0] - size
    inside, inside_sq = T @ Gf, (T * T) @ Gf
    total, total_sq = T.sum(1, keepdims=True), (T * T).sum(1, keepdims=True)
    mean_g, mean_r = inside / size, (total - inside) / rest
    sd_r = np.sqrt(np.maximum((total_sq - inside_sq) / rest - mean_r**2, 0.0))
    return (mean_g - mean_r) / np.maximum(sd_r, min_spread) * separation


def score_class(W: sp.csr_matrix, labels: np.ndarray, ks: list[int], t: np.ndarray, params: ScoreConfig) -> ClassScore:
    """W (n, n) sparse affinity; labels (len(ks), n) cluster labels for each k; t (n,) transfer."""
    n = W.shape[0]
    best = ClassScore(0.0, ks[0], -1, 0, 1.0, float("nan"), float(np.mean(t)) if n else 0.0, np.zeros(n, bool))
    ids, G, sep, phi = candidate_groups(W, labels, ks, params.max_group_fraction, params.min_group)
    if not ids:
        return best
    scores = group_scores(np.asarray(t, np.float64)[None], G, sep, params.min_spread)[0]
    j = int(np.argmax(scores))
    if scores[j] > 0:
        g = G[:, j]
        k, c = ids[j]
        best = ClassScore(
            float(scores[j]), k, c, int(g.sum()), float(phi[j]), float(t[g].mean()), float(t[~g].mean()), g
        )
    return best


def transfer_score(
    W: sp.csr_matrix, labels: np.ndarray, ks: list[int], t: np.ndarray, params: ScoreConfig
) -> ClassScore:
    """The class score of transfers t (n,) as the score stage takes it: score_class on t spread over the
    class's explanation graph with weight `group_smoothing` first, where that is set."""
    return score_class(W, labels, ks, spread(W, t, params.group_smoothing) if params.group_smoothing else t, params)


def place_usage(usage: np.ndarray, carried: np.ndarray) -> float:
    """How much the class's images that do not carry it from a place read it there: the mean relevance along the
    place relative to an even spread (probes.PlaceProbe.reach_usage, (n,)) of the members that do not stand out
    by the place probe (carried (n,) bool). About 1 or less where the place is background for them (a stamp's
    place in the images without it); above where the class's own evidence lies there. NaN when all carry."""
    rest = np.asarray(usage, np.float64)[~np.asarray(carried, bool)]
    return float(rest.mean()) if len(rest) else float("nan")


def place_score(place: np.ndarray, groups: list, W: sp.csr_matrix, labels: np.ndarray, ks: list[int],
                min_spread: float) -> dict:  # fmt: skip
    """The class's place score from its place probe (probes.class_place): for each probed group,
    (mean transfer of its drawn members' pixels at its place - mean of the rest's drawn members there)
    / max(sd of the rest's, min_spread) x (1 - conductance), and the best group's figures."""
    best = {"place_score": 0.0, "place_group_size": 0, "place_cells": 0,
            "place_group_transfer": float("nan"), "place_rest_transfer": float("nan")}  # fmt: skip
    for row, (k, cluster, cells) in zip(place, groups):
        g = labels[list(ks).index(k)] == cluster
        drawn = np.isfinite(row)
        inside, rest = row[drawn & g], row[drawn & ~g]
        if not len(inside) or len(rest) < 2:
            continue
        s = (inside.mean() - rest.mean()) / max(float(rest.std()), min_spread) * (1.0 - conductance(W, g))
        if s > best["place_score"]:
            best = {
                "place_score": float(s), "place_group_size": int(g.sum()), "place_cells": int(cells),
                "place_group_transfer": float(inside.mean()), "place_rest_transfer": float(rest.mean()),
            }  # fmt: skip
    return best


MIN_CLASSES = 3  # a p-value needs at least two other classes to fit the law to
NULL_DRAWS = 200_000  # simulated standardised scores per run (p-values resolve down to about 1e-4 directly)
TAIL_DRAWS = 50  # below this many simulated scores at or above the observed one, the tail is extrapolated


def gumbel_fits_without_each(scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Location mu (K,) and scale beta (K,) of the Gumbel law fitted by L-moments (l1 = mean, l2 = the
    half mean absolute difference; beta = l2 / ln 2, mu = l1 - Euler's gamma x beta) to the K scores of
    each row of `scores` (..., K) less the one at each position: K leave-one-out fits in O(K log K).
    L-moments, linear in the ordered values, are less pulled by a few large scores than moments."""
    x = np.sort(np.asarray(scores, np.float64), axis=-1)
    order = np.argsort(np.argsort(np.asarray(scores, np.float64), axis=-1, kind="stable"), axis=-1, kind="stable")
    k = x.shape[-1]
    n = k - 1  # the size of each leave-one-out sample
    r = np.arange(k, dtype=np.float64)
    total = x.sum(-1, keepdims=True)
    weighted = (r * x).sum(-1, keepdims=True)  # sum of rank x value over the whole sample
    above = total - np.cumsum(x, -1)  # sum of the values above each rank
    # leaving out the value at rank j: ranks below keep theirs, those above move down by one
    wsum = weighted - r * x - above
    l1 = (total - x) / n
    b1 = wsum / (n - 1) / n
    l2 = 2 * b1 - l1
    beta = np.maximum(l2, 1e-12) / np.log(2)
    mu = l1 - np.euler_gamma * beta
    return np.take_along_axis(mu, order, -1), np.take_along_axis(beta, order, -1)


def standardised(scores: np.ndarray) -> np.ndarray:
    """(scores - mu) / beta with each score's leave-one-out Gumbel fit (gumbel_fits_without_each)."""
    mu, beta = gumbel_fits_without_each(scores)
    return (np.asarray(scores, np.float64) - mu) / beta


def class_p_values(scores: np.ndarray, seed: int = 0) -> np.ndarray:
    """p-values (K,) of K class scores against the run's own classes: P(z >= z_c) for the class's
    standardised score z_c (`standardised`) when all K scores are drawn from one Gumbel law. z does not
    depend on the law's location and scale, so its distribution for K classes is simulated from the
    standard Gumbel (NULL_DRAWS values, seeded) and the p-values are exact when the clean classes'
    scores follow a Gumbel law, at any K >= 3 (NaN below: no reference). Beyond the simulated range
    the tail is extrapolated as a Gumbel tail of z, matched where TAIL_DRAWS draws remain."""
    s = np.asarray(scores, np.float64)
    k = len(s)
    if k < MIN_CLASSES:
        return np.full(k, np.nan)
    rng = np.random.default_rng(seed)
    null = np.sort(standardised(rng.gumbel(size=(max(NULL_DRAWS // k, 1), k))).ravel())
    z = standardised(s)
    m = len(null)
    exceed = m - np.searchsorted(null, z, side="left")  # draws at or above each z
    p = (exceed + 1) / (m + 1)
    z_tail = null[m - TAIL_DRAWS]  # the tail: P(z >= x) = P(z >= z_tail) x sf_G(x) / sf_G(z_tail)
    far = exceed < TAIL_DRAWS
    p[far] = (TAIL_DRAWS + 1) / (m + 1) * np.exp(_log_gumbel_sf(z[far]) - _log_gumbel_sf(z_tail))
    return np.clip(p, 0.0, 1.0)


def _log_gumbel_sf(x: np.ndarray) -> np.ndarray:
    """log P(G >= x), G standard Gumbel, without underflow in the far tail."""
    x = np.asarray(x, np.float64)
    return np.log(-np.expm1(-np.exp(-np.minimum(x, 700.0))))


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """q-values: the smallest false discovery rate at which each p-value would be called significant."""
    p = np.asarray(p, np.float64)
    m = len(p)
    if not m:
        return p
    order = np.argsort(p)
    q = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(q[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out


def class_findings(
    members: np.ndarray,
    W: sp.csr_matrix,
    labels: np.ndarray,
    ks: list[int],
    n_clusters: int,
    eigenvalues: np.ndarray,
    transfers,
    predicted: np.ndarray,
    c: int,
    params: ScoreConfig,
    place=None,
) -> tuple[dict, pd.DataFrame]:
    """One class's row of class_scores (less its key and name) and its rows of sample_scores, from its
    members (n,), graph, clusterings, eigenvalues, transfers (probes.Transfers), the model's
    predictions (n,) and its place probe (probes.PlaceProbe; None: not probed). Flags and q-values
    need every class: the score stage adds them."""
    t, conf = combined(transfers.evidence, transfers.global_), transfers.confidence
    # label issues, cleanlab-style: predicted as another class and less sure of the label than the
    # class's average member (the per-class threshold of confident learning)
    label_issue = (predicted != c) & (conf < conf.mean())
    s = transfer_score(W, labels, ks, t, params)
    probed, groups = (place.transfers, place.groups) if place is not None else (np.zeros((0, len(members))), [])
    at_place = place_score(probed, groups, W, labels, ks, params.min_spread)
    if place is None:  # not probed: no place score (0 would be a probed class whose groups have no place)
        at_place["place_score"] = float("nan")
    usage, by_reach, carried = float("nan"), np.full(len(members), np.nan), np.zeros(len(members), bool)
    if place is not None and place.reach_group >= 0:
        # every member's pixels along the confirmed group's place (probes.class_place), relative like the
        # transfer and not spread over the explanation graph: every member was probed on every host, and a
        # stamp that moves along the border does not bring its images together in the graph
        k, cluster, _ = groups[place.reach_group]
        by_reach = relative_transfer(place.reach, conf, params.confidence_floor)
        # the sample flag's rule along the reach, against the rest of the confirmed group's class
        carried = stands_out(by_reach, labels[list(ks).index(k)] != cluster, params.sample_threshold, params.min_spread)
        usage = place_usage(place.reach_usage, carried)
    # a place is the class's own (a part of the object that some of the class show there) where the images it
    # does not carry the class from still read the class there; only a foreign place (a stamp on background)
    # is a finding
    foreign = bool(usage <= params.max_place_usage)
    # the samples are ranked by the probe that found the class: the reach where the place is foreign and its
    # score flag-strong and the class score is not, else the transfer
    by_place = foreign and at_place["place_score"] >= params.flag_threshold > s.score
    if by_place:
        sample_score, outstanding = by_reach, carried
    else:
        sample_score = spread(W, relative_transfer(t, conf, params.confidence_floor), params.smoothing)
        outstanding = stands_out(sample_score, ~s.group, params.sample_threshold, params.min_spread)
    lam = eigenvalues
    g_over_e = (transfers.global_[s.group] - transfers.evidence[s.group]).mean() if s.group.any() else 0.0
    row = {
        "class_id": c,
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
        **at_place,
        "place_usage": usage,
        "place_foreign": foreign,
        "sample_probe": "place" if by_place else "transfer",
        "label_issue_fraction": float(label_issue.mean()),
    }
    samples = pd.DataFrame(
        {
            "index": members,
            "class_id": c,
            "cluster": labels[ks.index(n_clusters)],
            "in_group": s.group,
            "clever_hans_score": sample_score,
            "stands_out": outstanding,
            "transfer": t,
            "evidence_transfer": transfers.evidence,
            "global_transfer": transfers.global_,
            "self_confidence": conf,
            "label_issue_score": 1.0 - conf,
            "is_label_issue": label_issue,
        }
    )
    return row, samples


def flag_classes(
    scores: np.ndarray,
    params: ScoreConfig,
    seed: int = 0,
    place: np.ndarray | None = None,
    foreign: np.ndarray | None = None,
    reference: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(p-values, q-values, flags) of the K class scores (K,) of a run: p against the run's own classes
    (class_p_values), q by Benjamini-Hochberg over them. A class is flagged when its score reaches
    flag_threshold and K p <= 1 (a strong score that at most one class of a clean run of K would reach
    by chance), or when its score reaches min_score and its q-value is at most fdr (a false discovery
    rate over the classes). A run of one or two classes has no p-values: the score alone decides, at
    flag_threshold. With the classes' place scores (K,) and whether their places are foreign (K,) bool
    (class_findings' place_foreign) a third way: a foreign place whose score is strong in the first way's
    sense against all the run's place scores. `reference` (K,): the scores the p- and q-values are taken on
    instead of `scores` (a screened transfer's screening scores, of one fidelity for every class, where
    `scores` holds the candidates' full ones); the thresholds stay on `scores`. A NaN place score: a class whose
    place was not probed; the place way's p-values are taken among the probed classes."""
    s = np.asarray(scores, np.float64)
    p = class_p_values(s if reference is None else np.asarray(reference, np.float64), seed)
    q = benjamini_hochberg(p) if len(s) >= MIN_CLASSES else p.copy()
    strong = (s >= params.flag_threshold) & ~(p * len(s) > 1)  # NaN p (no reference): the score decides
    discovered = (s >= params.min_score) & (q <= params.fdr)
    flagged = strong | discovered
    if place is not None:
        at = np.asarray(place, np.float64)
        if foreign is None:
            raise ValueError("flag_classes: place scores need their places' foreign flags")
        # against the probed classes' place scores (a screened run probes the candidates' and a random
        # reference's places only; the others' are NaN and not flagged this way)
        probed = np.isfinite(at)
        p_place = np.full(len(at), np.nan)
        p_place[probed] = class_p_values(at[probed], seed)
        strong_place = probed & (at >= params.flag_threshold) & ~(p_place * probed.sum() > 1)
        if probed.sum() < MIN_CLASSES <= len(at):  # too few probed classes for a law: no flag this way
            strong_place[:] = False
        flagged |= np.asarray(foreign, bool) & strong_place
    return p, q, flagged
