"""Spectral signatures (Tran et al., 2018): centred penultimate features, the top right singular
vector; per sample the squared projection on it (the outlier score); class score = the share of the
variance along that direction.
"""

from __future__ import annotations

import numpy as np

from unhans.pipeline.harness.detectors.base import Detection, RunView, detector


def spectral_signature(features: np.ndarray, seed: int = 0) -> tuple[float, np.ndarray]:
    x = np.asarray(features, np.float64)
    x = x - x.mean(0)
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    proj = x @ vt[0]
    total = float((s**2).sum())
    return (float(s[0] ** 2) / total if total > 0 else 0.0), proj**2


@detector("spectral_signature", "features")
def _detect(run: RunView, c: int) -> Detection:
    score, samples = spectral_signature(run.features(c), run.seed)
    return Detection(score, samples)
