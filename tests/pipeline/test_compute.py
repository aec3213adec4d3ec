"""Per-class stages on a Dask LocalCluster of worker processes give the same store as in-process."""

import numpy as np

from tests.conftest import make_runner

SMALL = ["dataset.limit_per_class=20", "train.epochs=1", "attribute.batch_size=64"]


def test_two_worker_cluster_store_equals_single_process_store(tmp_path):
    single = make_runner(tmp_path / "single", overrides=SMALL)
    single.run_all(until="score")
    multi = make_runner(tmp_path / "multi", overrides=SMALL + ["compute.workers=2"])
    multi.run_all(until="score")
    for c in single.store.group["classes"].attrs["ids"]:
        for name in ("members", "knn_idx", "knn_dist", "eigenvalues", "eigenvectors", "labels", "embedding"):
            a = single.store.array(f"classes/{c}/{name}")[:]
            b = multi.store.array(f"classes/{c}/{name}")[:]
            np.testing.assert_array_equal(a, b, err_msg=f"class {c} {name}")
    a, b = single.store.read_table("class_scores"), multi.store.read_table("class_scores")
    assert a.equals(b)
    assert single.store.read_table("sample_scores").equals(multi.store.read_table("sample_scores"))
