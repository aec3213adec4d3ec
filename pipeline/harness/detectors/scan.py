"""SCAn, statistical contamination analysis (Tang et al., USENIX Security 2021), written from the
paper. A penultimate feature is modelled as r = mu_identity + eps, eps ~ N(0, S_eps) shared by all
identities. From a small clean set (the held-out split, `unhans validate` hands it over): S_eps, the
pooled within-class covariance (ridge 1e-3 of its mean variance). Per class, the untangling model: the
class is two identities with means u1, u2 and the shared S_eps, fitted by alternating assignment and
means in the S_eps metric from a split along the class's top whitened direction; the class statistic
J = the log-likelihood ratio of two identities against one, per sample (so class size does not drive
it). Class ranking and alarm by the paper's anomaly index: J* = (J - median) / (1.4826 MAD) over the
run's classes, flagged when J* > e^2; the samples of the smaller identity of a flagged class are
flagged. Per sample: the log-likelihood ratio of the smaller identity against the larger.

The paper estimates S_eps with the EM of the joint Bayesian model; the pooled within-class covariance
of the clean set is that EM's starting point and what it converges near when the clean classes are
well separated, as here.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from scipy.linalg import eigh

from unhans.pipeline.harness.detectors.base import Detection, RunView, detector

RIDGE = 1e-3
THRESHOLD = float(np.exp(2.0))  # the paper's anomaly-index bound
ITERATIONS = 100


def within_class_whitener(features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """W with (r - r') W white under the clean set's pooled within-class covariance S_eps."""
    x = np.asarray(features, np.float64)
    y = np.asarray(labels)
    resid = np.concatenate([x[y == c] - x[y == c].mean(0) for c in np.unique(y)])
    cov = resid.T @ resid / max(len(resid) - len(np.unique(y)), 1)
    cov += RIDGE * float(np.trace(cov)) / len(cov) * np.eye(len(cov))
    lam, vec = eigh(cov)
    return vec / np.sqrt(np.maximum(lam, 1e-12))


def untangle(z: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Two identities in whitened features z (n, d): (J per sample, labels with 1 = the smaller
    identity, per-sample log-likelihood ratio smaller vs larger)."""
    n = len(z)
    zc = z - z.mean(0)
    _, _, vt = np.linalg.svd(zc, full_matrices=False)
    labels = (zc @ vt[0] > 0).astype(np.int64)
    for _ in range(ITERATIONS):
        if labels.min() == labels.max():
            return 0.0, np.zeros(n, np.int64), np.zeros(n)
        u = np.stack([z[labels == k].mean(0) for k in (0, 1)])
        d = ((z[:, None, :] - u[None]) ** 2).sum(2)  # squared S_eps distances to u1, u2
        new = np.argmin(d, axis=1)
        if np.array_equal(new, labels):
            break
        labels = new
    if labels.min() == labels.max():
        return 0.0, np.zeros(n, np.int64), np.zeros(n)
    u = np.stack([z[labels == k].mean(0) for k in (0, 1)])
    d = ((z[:, None, :] - u[None]) ** 2).sum(2)
    one = (zc**2).sum(1)
    j = 0.5 * float((one - d[np.arange(n), labels]).mean())
    small = int(np.argmin(np.bincount(labels, minlength=2)))
    llr = 0.5 * (d[:, 1 - small] - d[:, small])
    return j, (labels == small).astype(np.int64), llr


def anomaly_index(j: np.ndarray) -> np.ndarray:
    """(J - median) / (1.4826 MAD) over the classes; 0 where the MAD vanishes."""
    med = np.median(j)
    mad = 1.4826 * np.median(np.abs(j - med))
    return (j - med) / mad if mad > 0 else np.zeros_like(j)


def scan_classes(run: RunView, whitener: Callable[[int], np.ndarray]) -> tuple[dict, dict]:
    """SCAn over every class of a run (the anomaly index needs them all), with `whitener(c)` the S_eps
    whitening used for class c: ({class: untangle(...)}, {class: anomaly index})."""
    per_class = {c: untangle(run.features(c).astype(np.float64) @ whitener(c)) for c in run.class_ids}
    index = anomaly_index(np.array([per_class[c][0] for c in run.class_ids]))
    return per_class, dict(zip(run.class_ids, index))


def _with_clean_set(run: RunView) -> tuple[dict, dict]:
    w = within_class_whitener(*run.clean)
    return scan_classes(run, lambda _c: w)


@detector("scan", "clean features")
def _detect(run: RunView, c: int) -> Detection:
    per_class, index = run.cached("scan", lambda: _with_clean_set(run))
    _, small, llr = per_class[c]
    flag = bool(index[c] > THRESHOLD)
    return Detection(float(index[c]), llr, flag, small.astype(bool) & flag)
