"""Clever Hans scores: per class, how cut off its most isolated small group is; per sample,
how strongly it is tied to that group.

Class score = 1 - conductance of the best candidate group, over the clusterings for every k,
among groups no larger than `max_group_fraction` of the class. Conductance is the share of a
group's affinity that leaves it: 0 for a group cut off from the rest of the class, whatever
its size, so the score is comparable across class sizes. Sample score = class score x the
share of the sample's affinity that lands inside the group (its own membership counts too).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from pipeline.spectral import conductance


@dataclass
class ClassScore:
    score: float  # in [0, 1]
    k: int  # the clustering the group comes from
    cluster: int  # the group's label in that clustering
    group_size: int
    conductance: float
    group: np.ndarray  # (n,) bool
    sample_scores: np.ndarray  # (n,) float in [0, 1]


def score_class(W: sp.csr_matrix, labels: np.ndarray, ks: list[int], max_group_fraction: float) -> ClassScore:
    """W (n, n) sparse affinity; labels (len(ks), n) cluster labels for each k in ks."""
    n = W.shape[0]
    best = (1.0, ks[0], -1, np.zeros(n, bool))
    for k, lab in zip(ks, labels):
        for c in range(k):
            members = lab == c
            size = int(members.sum())
            if size < 2 or size > max_group_fraction * n:
                continue
            phi = conductance(W, members)
            if phi < best[0]:
                best = (phi, k, c, members)
    phi, k, c, group = best
    score = 1.0 - phi
    deg = np.asarray(W.sum(1)).ravel()
    into = np.asarray(W[:, group].sum(1)).ravel()
    share = np.where(deg > 0, (into + group) / (deg + 1.0), group.astype(float))
    return ClassScore(score, k, c, int(group.sum()), phi, group, score * share)
