"""The whole chain on the 60,000 Fashion-MNIST training images (about 5 minutes on 2 cores)."""

import numpy as np
import pytest

from tests.helpers import FMNIST, make_runner

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(not FMNIST.exists(), reason="apt-get install dataset-fashion-mnist"),
]


def test_full_fashion_mnist_audit(tmp_path):
    r = make_runner(tmp_path, "fashion-mnist")
    r.run_all()
    assert all(row["state"] == "done" for row in r.status_rows())
    assert r.record("train")["counts"]["train_accuracy"] > 0.85
    assert r.record("attribute")["counts"]["attributed"] == 60_000
    manifest = r.store.read_table("manifest")
    assert len(manifest) == 60_000 and set(manifest["decision"]) <= {"keep", "drop", "review"}
    ok = r.store.array("attribution/status")[:] == 0
    rsum = r.store.array("attribution/relevance_sum")[:][ok]
    logit = r.store.array("attribution/logit")[:][ok]
    assert np.median(np.abs(rsum - logit) / np.abs(logit)) < 0.05
    assert (tmp_path / "report" / "index.html").exists()
