"""Stages on a Dask LocalCluster of worker processes give the same store as in one process."""

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

from tests.helpers import make_runner

# one torch thread per task in both runs: torch's CPU kernels round differently with another thread count
# (a few float16 relevance values in 200,000 differ between 1 and 2 threads), and workers use compute.threads
SMALL = ["dataset.limit_per_class=20", "train.epochs=1", "attribute.batch_size=16", "attribute.chunk_size=32",
         "compute.threads=1"]  # fmt: skip
ATTRIBUTION = ["relevance", "relevance_scale", "logit", "relevance_sum", "prediction", "target", "status",
               "features", "done"]  # fmt: skip


def test_two_worker_cluster_store_equals_single_process_store(tmp_path):
    single = make_runner(tmp_path / "single", overrides=SMALL)
    single.run_all(until="score")
    multi = make_runner(tmp_path / "multi", overrides=SMALL + ["compute.workers=2"])
    multi.run_all(until="score")
    # attribute: 7 chunks shared out over the workers in contiguous shards
    assert multi.record("attribute")["counts"]["chunks"] == 7
    for name in ATTRIBUTION:
        a = single.store.array(f"attribution/{name}")[:]
        b = multi.store.array(f"attribution/{name}")[:]
        np.testing.assert_array_equal(a, b, err_msg=name)
    for c in single.store.group["classes"].attrs["ids"]:
        for name in ("members", "knn_idx", "knn_dist", "eigenvalues", "eigenvectors", "labels", "embedding"):
            a = single.store.array(f"classes/{c}/{name}")[:]
            b = multi.store.array(f"classes/{c}/{name}")[:]
            np.testing.assert_array_equal(a, b, err_msg=f"class {c} {name}")
    a, b = single.store.read_table("class_scores"), multi.store.read_table("class_scores")
    assert a.equals(b)
    assert single.store.read_table("sample_scores").equals(multi.store.read_table("sample_scores"))


def test_a_worker_killed_mid_attribute_is_replaced_and_the_store_is_unchanged(tmp_path):
    """SIGKILL one Dask worker while it attributes a shard: Dask reruns the shard on a live worker and
    the store equals the single-process one."""
    sets = SMALL + ["attribute.chunk_size=8", "attribute.batch_size=8"]
    ref = make_runner(tmp_path / "ref", overrides=sets)
    ref.run_all(until="attribute")
    r = make_runner(tmp_path / "kill", overrides=sets + ["compute.workers=2"])
    r.run_all(until="train")
    done_dir = tmp_path / "kill" / "run" / "store.zarr" / "attribution" / "done" / "c"
    killed: list[int] = []

    def kill_one_worker() -> None:
        deadline = time.time() + 120
        while time.time() < deadline:
            client = r.tasks._client
            if client is not None and done_dir.exists() and len(os.listdir(done_dir)) >= 2:
                pid = min(client.run(os.getpid).values())
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.01)

    killer = threading.Thread(target=kill_one_worker)
    killer.start()
    rec = r.run("attribute")
    killer.join()
    assert killed, "no worker was killed"
    assert len(os.listdir(done_dir)) == rec["counts"]["chunks"] == 25
    for name in ATTRIBUTION:
        a = ref.store.array(f"attribution/{name}")[:]
        b = r.store.array(f"attribution/{name}")[:]
        np.testing.assert_array_equal(a, b, err_msg=name)


def test_cli_on_an_external_dask_cluster_gives_the_single_process_store(tmp_path):
    """`dask scheduler` + two `dask worker` processes, `unhans audit --scheduler tcp://...`."""
    bin_dir = Path(sys.executable).parent
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    env = os.environ | {"OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([bin_dir / "dask", "scheduler", "--host", "127.0.0.1", "--port", str(port),
                               "--dashboard-address", ":0"], env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)]  # fmt: skip
    try:
        procs += [
            subprocess.Popen(
                [bin_dir / "dask", "worker", address, "--nthreads", "1", "--no-dashboard"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )  # fmt: skip
            for _ in range(2)
        ]
        sets = SMALL + ["distances.metric=euclidean"]
        cmd = [bin_dir / "unhans", "audit", "-c", "demo", "--until", "score", "--scheduler", address,
               "--run-dir", str(tmp_path / "cluster" / "run")]  # fmt: skip
        for s in sets:
            cmd += ["--set", s]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-2000:]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=30)
    single = make_runner(tmp_path / "single", overrides=sets)
    single.run_all(until="score")
    cluster = make_runner(tmp_path / "cluster", overrides=sets)
    assert cluster.state("score") == "done"
    for name in ATTRIBUTION:
        np.testing.assert_array_equal(
            single.store.array(f"attribution/{name}")[:], cluster.store.array(f"attribution/{name}")[:], err_msg=name
        )
    for name in ("class_scores", "sample_scores"):
        assert single.store.read_table(name).equals(cluster.store.read_table(name)), name


def test_the_peak_memory_resets_per_stage_and_lands_in_the_record(tmp_path):
    """A stage's record carries this process's peak resident memory while it ran: the peak of an allocation
    made before the stage does not leak into the stage's figure (Linux resets it; elsewhere it is the
    process's peak and the record says so)."""
    from tests.helpers import make_runner
    from unhans.pipeline.core.compute import machine, peak_memory_mib, reset_peak_memory

    reset_peak_memory()
    base = peak_memory_mib()
    big = np.ones(300 * 2**20 // 8)  # 300 MiB, touched
    assert peak_memory_mib() >= base + 250
    del big
    resettable = reset_peak_memory()
    r = make_runner(tmp_path, overrides=["dataset.limit_per_class=30"])
    r.run("index")
    rec = r.record("index")
    assert rec["peak_of"] == ("stage" if resettable else "process") and rec["peak_mib"] > 0
    if resettable:
        assert rec["peak_mib"] < base + 250  # the 300 MiB before the stage are not in its peak
    assert {row["stage"]: row["peak_mib"] for row in r.status_rows()}["index"] == rec["peak_mib"]
    assert rec["machine"] == machine() and ", torch " in rec["machine"]  # which CPU: models differ between CPUs
