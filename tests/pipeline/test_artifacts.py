import numpy as np
import pandas as pd
import torch

from pipeline.artifacts import ARTIFACTS, paint, plan_artifacts
from pipeline.config import ArtifactConfig


def test_plan_is_deterministic_and_hits_the_fraction():
    labels = np.repeat(np.arange(5), 40)
    cfg = ArtifactConfig(kind="patch", classes=[1, 3], fraction=0.25, size=0.25, position="random", seed=7)
    a, b = plan_artifacts(labels, 32, cfg), plan_artifacts(labels, 32, cfg)
    pd.testing.assert_frame_equal(a, b)
    assert a["artifact"].sum() == 20 and set(labels[a["artifact"]]) == {1, 3}
    hit = a[a["artifact"]]
    assert ((hit["art_y"] >= 0) & (hit["art_y"] + hit["art_size"] <= 32)).all()
    c = plan_artifacts(labels, 32, cfg.model_copy(update={"seed": 8}))
    assert not a["artifact"].equals(c["artifact"])


def test_every_painter_changes_only_its_box():
    for kind in ARTIFACTS:
        x = torch.full((2, 1, 16, 16), 0.3)
        rows = pd.DataFrame({"artifact": [True, False], "art_y": [2, -1], "art_x": [5, -1], "art_size": [6, -1]})
        paint(x, rows, kind)
        changed = (x[0, 0] != 0.3).nonzero()
        assert len(changed), kind
        assert changed[:, 0].min() >= 2 and changed[:, 0].max() < 8 and changed[:, 1].min() >= 5
        assert (x[1] == 0.3).all()
