"""The ImageNet path: a train/-layout folder with real wnids, EfficientNet-Lite0's real weights."""

import numpy as np

from tests.helpers import make_runner

CATS = set(range(281, 286))  # tabby, tiger cat, Persian, Siamese, Egyptian cat


def test_index_and_attribute_with_efficientnet_lite0(tmp_path, imagenet_folder):
    r = make_runner(tmp_path, "imagenet", [f"dataset.path={imagenet_folder}", "attribute.batch_size=4",
                                           "compute.decode_threads=2"])  # fmt: skip
    r.run_all(until="attribute")
    assert r.state("train") == "disabled" and r.state("attribute") == "done"
    samples = r.store.read_table("samples")
    assert set(samples["class_name"]) >= {"tabby, tabby cat", "espresso"}
    pred = r.store.array("attribution/prediction")[:]
    status = r.store.array("attribution/status")[:]
    assert (status == 0).all()
    cat_rows = np.flatnonzero(samples["class_key"].to_numpy() == "n02123045")
    assert len(cat_rows) == 2 and all(int(p) in CATS for p in pred[cat_rows])
    coffee_rows = np.flatnonzero(samples["class_key"].to_numpy() == "n07920052")
    assert all(int(p) in {967, 968, 504} for p in pred[coffee_rows])
    maps = r.store.relevance(np.arange(len(samples)))
    assert maps.shape == (8, 32, 32) and np.isfinite(maps).all() and (np.abs(maps).reshape(8, -1).max(1) > 0).all()
    feats = r.store.array("attribution/features")[:]
    assert feats.shape == (8, 1280) and np.isfinite(feats).all()
    attrs = dict(r.store.array("attribution/relevance").attrs)
    assert attrs["model"] == "efficientnet_lite0" and attrs["composite"] == "epsilon_plus_flat"
