"""score resumes by class: the transfers of finished classes are kept, the rest recomputed."""

from __future__ import annotations

import pytest

import stages.score as score_stage
from tests.conftest import make_runner

SMALL = ["train.epochs=1", "dataset.limit_per_class=20", "distances.metric=euclidean"]


def test_interrupted_score_resumes_by_class_to_the_same_tables(tmp_path, monkeypatch):
    full = make_runner(tmp_path / "full", overrides=SMALL)
    full.run_all(until="score")

    part = make_runner(tmp_path / "part", overrides=SMALL)
    part.run_all(until="cluster")
    real, calls = score_stage.transfer, []

    def dying(*args):
        if len(calls) == 4:
            raise KeyboardInterrupt  # stopped during the fifth class
        calls.append(args[-1])
        return real(*args)

    monkeypatch.setattr(score_stage, "transfer", dying)
    with pytest.raises(KeyboardInterrupt):
        part.run("score")
    assert part.state("score") == "partial"

    redone = []
    monkeypatch.setattr(score_stage, "transfer", lambda *a: redone.append(a[-1]) or real(*a))
    rec = part.run("score")
    assert rec["counts"]["classes_resumed"] == 4
    assert sorted(redone) == sorted(set(range(10)) - set(calls))
    for name in ("class_scores", "sample_scores"):
        assert full.store.read_table(name).equals(part.store.read_table(name)), name
