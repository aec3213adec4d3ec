"""The transfer stage's donor loading (pipeline/method/probes.py): chunks decode ahead of the probes."""

import time

import numpy as np
import torch

from tests.helpers import make_imagenet_folder
from unhans.pipeline.data import build_dataset
from unhans.pipeline.method import probes
from unhans.stages import load_config


def test_donor_chunks_decode_ahead_of_the_probes_and_equal_a_plain_load(tmp_path, monkeypatch):
    folder = make_imagenet_folder(tmp_path / "train")
    cfg = load_config("imagenet", [f"dataset.path={folder}", "dataset.image_size=32", "dataset.resize=36"])
    ds = build_dataset(cfg.dataset)
    samples = ds.index()
    idx = np.array([6, 0, 3, 7, 1, 5, 2])
    monkeypatch.setattr(probes, "DONOR_CHUNK", 3)
    submitted = []
    load_one = ds.load_one
    monkeypatch.setattr(ds, "load_one", lambda s: (submitted.append(s), load_one(s))[1])
    expected = ds.load(samples["source"].to_numpy()[idx])[0]
    submitted.clear()
    got = []
    for start, x in probes.chunks(ds, samples, idx, decode_threads=2):
        if start == 0:  # while the first chunk is probed, the next two decode (the threads get to them)
            deadline = time.monotonic() + 10
            while len(submitted) < len(idx) and time.monotonic() < deadline:
                time.sleep(0.01)
            assert len(submitted) == len(idx)
        got.append((start, x))
    assert [s for s, _ in got] == [0, 3, 6] and [len(x) for _, x in got] == [3, 3, 1]
    assert torch.equal(torch.cat([x for _, x in got]), expected)
    assert torch.equal(probes.images(ds, samples, idx, 0), expected)
