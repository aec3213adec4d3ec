import gzip

import numpy as np
import pytest

from tests.helpers import FMNIST
from unhans.pipeline.core.errors import UserError
from unhans.pipeline.data import build_dataset
from unhans.pipeline.data.idx import read_idx
from unhans.stages import load_config


def write_idx(path, arr):
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + arr.astype(np.uint8).tobytes())


def test_read_idx_roundtrip_and_truncation(tmp_path):
    arr = np.arange(2 * 3 * 4).reshape(2, 3, 4).astype(np.uint8)
    write_idx(tmp_path / "x.gz", arr)
    np.testing.assert_array_equal(read_idx(tmp_path / "x.gz"), arr)
    (tmp_path / "bad").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x09abc")
    with pytest.raises(UserError, match="truncated"):
        read_idx(tmp_path / "bad")
    (tmp_path / "junk").write_bytes(b"PK\x03\x04 not idx")
    with pytest.raises(UserError, match="magic"):
        read_idx(tmp_path / "junk")


@pytest.mark.skipif(not FMNIST.exists(), reason="apt-get install dataset-fashion-mnist (make test does)")
def test_fashion_mnist_from_the_debian_package():
    cfg = load_config("fashion-mnist").dataset
    ds = build_dataset(cfg)
    df = ds.index()
    assert len(df) == 60_000 and np.bincount(df["label"]).tolist() == [6000] * 10
    assert ds.classes[9].name == "Ankle boot"
    x, ok, _ = ds.load(df["source"].tolist()[:8])
    assert x.shape == (8, 1, 32, 32) and ok.all() and float(x.max()) <= 1.0


def test_missing_idx_folder_names_the_package(tmp_path):
    with pytest.raises(UserError, match="dataset-fashion-mnist"):
        build_dataset(load_config("fashion-mnist", [f"dataset.path={tmp_path}/fashion-mnist"]).dataset)
