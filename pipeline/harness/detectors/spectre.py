"""SPECTRE (Hayase et al., ICML 2021), written from the paper: per class, the centred penultimate
features projected on their top k = 32 principal directions; a robust mean and covariance of the
projection by the minimum covariance determinant (its core: the most central 80% of the class, so up
to a fifth may be poisoned; then reweighted), in place of the paper's filter estimator that removes
the 1.5 eps n most outlying samples; a ridge of a tenth of the mean variance keeps the near-empty
directions of ReLU features from dominating; whitening with them, so the clean majority becomes
isotropic and a poisoned minority stands out as excess variance along a few directions; per sample
the quantum entropy (QUE) outlier score tau_i = z_i' Q z_i / tr(Q), Q = exp(alpha (S - I) / (|S|_2 - 1)),
alpha = 4, where S is the covariance of the whitened class. The paper has no class ranking (it removes
the 1.5 eps n highest scores of a class named by the defender); the class score here is |S|_2, the
largest eigenvalue of the robustly whitened covariance, which a poisoned group raises above 1.
"""

from __future__ import annotations

import numpy as np
from scipy.linalg import eigh, expm
from sklearn.covariance import MinCovDet

from unhans.pipeline.harness.detectors.base import Detection, RunView, detector

DIMS = 32  # the principal directions kept before the robust estimate
ALPHA = 4.0  # the QUE exponent's scale (the paper's default)
CORE = 0.8  # share of a class the robust estimate rests on
RIDGE = 0.1  # added to the robust covariance, relative to its mean variance


def spectre(features: np.ndarray, seed: int = 0) -> tuple[float, np.ndarray]:
    x = np.asarray(features, np.float64)
    n = len(x)
    x = x - x.mean(0)
    k = min(DIMS, x.shape[1], n // 4)
    if k < 1:
        return 0.0, np.zeros(n)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    z = x @ vt[:k].T
    mcd = MinCovDet(support_fraction=CORE, random_state=seed).fit(z)
    cov = mcd.covariance_ + RIDGE * float(np.trace(mcd.covariance_)) / k * np.eye(k)
    lam, vec = eigh(cov)
    lam = np.maximum(lam, 1e-12)
    w = vec / np.sqrt(lam)  # z -> (z - mu) w is white for the robust core
    zw = (z - mcd.location_) @ w
    s = zw.T @ zw / n
    top = float(np.linalg.eigvalsh(s)[-1])
    q = expm(ALPHA * (s - np.eye(k)) / max(top - 1.0, 1e-6))
    tau = np.einsum("ij,jk,ik->i", zw, q, zw) / np.trace(q)
    return top, tau


@detector("spectre", "features")
def _detect(run: RunView, c: int) -> Detection:
    score, samples = spectre(run.features(c), run.seed)
    return Detection(score, samples)
