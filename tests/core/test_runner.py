import numpy as np
import pytest

from tests.helpers import make_runner
from unhans.pipeline.core.errors import UserError
from unhans.stages import load_config, runner

SMALL = ["dataset.limit_per_class=30", "train.epochs=1", "attribute.batch_size=32"]


def states(r):
    return {row["stage"]: row["state"] for row in r.status_rows()}


def test_stages_run_after_their_inputs():
    from unhans.stages import all_stages

    order = list(all_stages())
    assert order[:7] == ["index", "train", "attribute", "distances", "cluster", "transfer", "score"]
    for pos, (name, spec) in enumerate(all_stages().items()):
        assert all(order.index(i) < pos for i in spec.inputs), name


def test_status_fresh_run_is_all_missing(tmp_path):
    r = make_runner(tmp_path, overrides=SMALL)
    assert set(states(r).values()) == {"missing"}


def test_rerun_is_skipped_and_config_change_makes_downstream_stale(tmp_path):
    r = make_runner(tmp_path, overrides=SMALL)
    r.run_all(until="cluster")
    assert states(r)["cluster"] == "done" and states(r)["score"] == "missing"
    rec = r.record("attribute")
    r2 = make_runner(tmp_path, overrides=SMALL)
    r2.run("attribute")
    assert r2.record("attribute")["finished"] == rec["finished"]  # skipped: unchanged

    # changing the distances section leaves upstream done, makes distances and cluster stale
    r3 = make_runner(tmp_path, overrides=SMALL + ["distances.k=5"])
    st = states(r3)
    assert st["index"] == st["train"] == st["attribute"] == "done"
    assert st["distances"] == "stale" and st["cluster"] == "stale"

    # changing an upstream section (the poisoning, read by index) makes everything stale
    r4 = make_runner(tmp_path, overrides=SMALL + ["dataset.poison.fraction=0.5"])
    assert {s for k, s in states(r4).items() if k in ("index", "train", "attribute", "cluster")} == {"stale"}


def test_a_change_to_a_method_module_makes_the_stages_that_use_it_stale(tmp_path, monkeypatch):
    """The code version covers the project modules a stage imports, not only its own file: editing
    pipeline/method/spectral.py restales cluster (and what reads it) but not distances."""
    import unhans.pipeline.core.runner as runner_module

    deps = runner_module.code_modules("unhans.stages.cluster")
    assert "unhans.pipeline.method.spectral" in deps and "unhans.stages.cluster" in deps
    assert not set(deps) & runner_module.INFRASTRUCTURE  # orchestration and I/O changes restale nothing
    assert "unhans.pipeline.method.probes" in runner_module.code_modules(
        "unhans.stages.score"
    )  # through the importer's imports
    r = make_runner(tmp_path, overrides=SMALL)
    r.run_all(until="cluster")
    real = runner_module.module_source
    monkeypatch.setattr(
        runner_module,
        "module_source",
        lambda name: real(name) + ("\n# edited" if name == "unhans.pipeline.method.spectral" else ""),
    )
    st = states(make_runner(tmp_path, overrides=SMALL))
    assert st["distances"] == "done" and st["cluster"] == "stale"


def test_stage_refuses_to_run_on_stale_inputs(tmp_path):
    r = make_runner(tmp_path, overrides=SMALL)
    r.run_all(until="index")
    with pytest.raises(UserError, match="needs 'train', which is missing.*unhans train"):
        r.run("attribute")


def test_force_reruns(tmp_path):
    r = make_runner(tmp_path, overrides=SMALL)
    r.run("index")
    first = r.record("index")["started"]
    import time

    time.sleep(1.1)
    r.run("index", force=True)
    assert r.record("index")["started"] != first


def test_a_second_run_on_the_same_store_is_refused(tmp_path):
    import json
    import subprocess
    import sys

    r = make_runner(tmp_path, overrides=SMALL)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = tmp_path / "run" / "LOCK"
        lock.write_text(json.dumps({"host": __import__("socket").gethostname(), "pid": holder.pid, "since": 0}))
        with pytest.raises(UserError, match=f"in use by process {holder.pid}.*delete .*LOCK"):
            r.run("index")
        assert lock.exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is dead now: its lock is stale and taken over
    r.run("index")
    assert r.state("index") == "done" and not (tmp_path / "run" / "LOCK").exists()


def test_a_store_on_an_fsspec_url_holds_the_same_run(tmp_path):
    """The chain on a memory:// store (fsspec; not a local path: atomic writes go through fs.mv) gives
    the tables and arrays of a local store."""
    import uuid

    sets = ["dataset.limit_per_class=20", "train.epochs=1", "distances.metric=euclidean"]
    local = make_runner(tmp_path / "local", overrides=sets)
    local.run_all(until="clean")
    cfg = load_config("demo", sets + [f"report_dir={tmp_path / 'report'}"])
    remote = runner(cfg, f"memory://unhans-{uuid.uuid4().hex[:8]}/run")
    remote.run_all(until="clean")
    assert remote.store.absolute_url.startswith("memory://")
    assert all(remote.state(s) in ("done", "disabled") for s in remote.stages if s != "report")
    for name in ("samples", "class_scores", "sample_scores", "manifest"):
        assert (
            local.store.read_table(name)
            .drop(columns=["source"], errors="ignore")
            .equals(remote.store.read_table(name).drop(columns=["source"], errors="ignore"))
        ), name
    np.testing.assert_array_equal(
        local.store.array("attribution/relevance")[:], remote.store.array("attribution/relevance")[:]
    )


def test_a_stage_that_fails_before_writing_keeps_its_done_record(tmp_path):
    """`unhans attribute --force` stopped by bad input before it writes anything leaves the finished
    attributions usable: the record stays done (it used to turn partial and block every later stage)."""
    r = make_runner(tmp_path, overrides=SMALL)
    r.run_all(until="attribute")
    rec = r.record("attribute")
    checkpoint = tmp_path / "run" / "files" / "model.pt"
    checkpoint.rename(tmp_path / "model.pt")
    with pytest.raises(UserError, match=r"files/model.pt is missing; rerun `unhans train --force`"):
        r.run("attribute", force=True)
    assert r.record("attribute") == rec and states(r)["attribute"] == "done"
    (tmp_path / "model.pt").rename(checkpoint)
    r.run("distances")  # the chain goes on from the kept attributions
    assert states(r)["distances"] == "done"
