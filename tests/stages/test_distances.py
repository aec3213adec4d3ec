"""distances resumes by class: a run stopped (or killed) after some classes recomputes only the others."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import unhans.stages.distances as distances_stage
from tests.helpers import make_runner

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


def test_sigkilled_distances_run_resumes_to_the_same_store(tmp_path):
    """SIGKILL the CLI mid-distances (no cleanup runs), rerun: finished classes are kept, the rest
    recomputed, and the store equals an uninterrupted run's."""
    sets = ["train.epochs=1", "compute.threads=1", "dataset.limit_per_class=100"]
    exe = str(Path(sys.executable).with_name("unhans"))
    run = tmp_path / "k" / "run"
    cmd = [exe, "audit", "-c", "demo", "--until", "distances", "--run-dir", str(run)]
    for s in sets:
        cmd += ["--set", s]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)

    def finished() -> int:
        metas = (run / "store.zarr" / "classes").glob("*/knn_dist/zarr.json")
        return sum('"fingerprint"' in m.read_text() for m in metas)

    deadline = time.time() + 300
    while time.time() < deadline and finished() < 3 and proc.poll() is None:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert 3 <= finished() < 10, "the run was not stopped mid-distances"

    killed = make_runner(tmp_path / "k", overrides=sets)
    assert killed.state("distances") == "partial"
    rec = killed.run("distances")
    assert rec["counts"]["classes_resumed"] >= 3
    full = make_runner(tmp_path / "full", overrides=sets)
    full.run_all(until="distances")
    for c in range(10):
        for name in ("members", "knn_idx", "knn_dist", "empty"):
            a, b = (r.store.array(f"classes/{c}/{name}")[:] for r in (full, killed))
            assert np.array_equal(a, b), (c, name)
