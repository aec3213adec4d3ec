"""distances resumes by class: a run stopped after some classes recomputes only the others."""

from __future__ import annotations

import numpy as np
import pytest

import stages.distances as distances_stage
from tests.conftest import make_runner

SMALL = ["train.epochs=1", "dataset.limit_per_class=20", "distances.metric=euclidean"]


def test_interrupted_distances_resume_by_class_to_the_same_store(tmp_path, monkeypatch):
    full = make_runner(tmp_path / "full", overrides=SMALL)
    full.run_all(until="distances")

    part = make_runner(tmp_path / "part", overrides=SMALL)
    part.run_all(until="attribute")
    real = distances_stage.knn_class
    calls = []

    def dying(cfg, url, fingerprint, item):
        if len(calls) == 4:
            raise KeyboardInterrupt  # stopped after four classes
        calls.append(item[0])
        return real(cfg, url, fingerprint, item)

    monkeypatch.setattr(distances_stage, "knn_class", dying)
    with pytest.raises(KeyboardInterrupt):
        part.run("distances")
    assert part.state("distances") == "partial"

    redone = []
    monkeypatch.setattr(distances_stage, "knn_class", lambda *a: redone.append(a[-1][0]) or real(*a))
    rec = part.run("distances")
    assert rec["counts"]["classes_resumed"] == 4 and sorted(redone) == sorted(set(range(10)) - set(calls))
    for c in range(10):
        for name in ("members", "knn_idx", "knn_dist", "empty"):
            a, b = (r.store.array(f"classes/{c}/{name}")[:] for r in (full, part))
            assert np.array_equal(a, b), (c, name)
