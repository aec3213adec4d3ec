"""Validation metrics on hand-made cases, the spec loader, and the baselines on planted structure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.baselines import BASELINES
from pipeline.errors import UserError
from pipeline.validate import detection, load_spec, mask_share, rank_of, summary


def test_detection_on_hand_made_scores():
    truth = np.array([1, 1, 0, 0, 0], bool)
    assert detection(truth, np.array([0.9, 0.8, 0.1, 0.2, 0.3])) == (1.0, 1.0)
    assert detection(truth, np.array([0.1, 0.2, 0.9, 0.8, 0.7]))[0] == 0.0
    auroc, ap = detection(truth, np.array([0.9, 0.1, 0.5, 0.2, 0.3]))
    assert auroc == pytest.approx(3 / 6)  # (pos, neg) pairs ordered right: 0.9 beats all 3, 0.1 none
    assert ap == pytest.approx((1 + 2 / 5) / 2)  # precision at each positive: 1/1, 2/5
    assert all(np.isnan(detection(np.zeros(3, bool), np.arange(3.0))))
    # NaN scores count as the lowest, not as an error
    assert detection(truth, np.array([np.nan, 0.8, 0.1, 0.2, 0.3]))[0] == pytest.approx(0.5)


def test_rank_counts_ties_against_the_target():
    s = pd.Series({0: 0.5, 1: 0.9, 2: 0.5, 3: 0.1})
    assert rank_of(s, 1) == 1
    assert rank_of(s, 0) == 3  # tied with class 2: the worse rank
    assert rank_of(s, 3) == 4
    assert rank_of(s, 7) == 5  # not analysed: below every class


def test_mask_share_on_hand_made_maps():
    maps = np.zeros((2, 4, 4), np.float32)
    maps[0, 0, 0], maps[0, 3, 3] = 3.0, 1.0  # 3/4 of the positive mass in the mask
    maps[1, 0, 0], maps[1, 1, 1] = -5.0, 2.0  # negative relevance does not count
    masks = np.zeros((2, 4, 4), bool)
    masks[:, :2, :2] = True
    share, area = mask_share(maps, masks)
    assert share == pytest.approx((0.75 + 1.0) / 2)
    assert area == pytest.approx(0.25)


def test_specs_load_and_bad_specs_say_what_to_fix(tmp_path):
    spec = load_spec("demo")
    assert spec.base == "demo" and any(s.control for s in spec.scenarios)
    assert len({s.name for s in spec.scenarios}) == len(spec.scenarios)
    fm = load_spec("fashion-mnist")
    regimes = {s.poison.get("regime", "correlated") for s in fm.scenarios if not s.control}
    assert regimes == {"correlated", "backdoor"} and sum(not s.control for s in fm.scenarios) >= 5
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: demo\nscenarios:\n  - {name: a}\n")
    with pytest.raises(UserError, match="needs name and poison"):
        load_spec(str(bad))
    with pytest.raises(UserError, match="no validation spec"):
        load_spec("nope")


def test_summary_counts_first_ranks_and_states_the_control_margin():
    rows = []
    for sc, control, rank, auroc, score in [("c", True, 4, np.nan, 0.02), ("a", False, 1, 0.99, 0.3),
                                            ("b", False, 2, 0.9, 0.2)]:  # fmt: skip
        for m in ("unhans", "spray_euclidean"):
            rows.append(dict(scenario=sc, poison="p", control=control, method=m, rank=rank, target_score=score,
                             top_score=max(score, 0.1 if control else score), auroc=auroc, ap=auroc, flip_rate=0.5,
                             mask_share=0.3, mask_area=0.1, target_flagged=rank == 1 if m == "unhans" else np.nan,
                             other_flagged=int(control) if m == "unhans" else np.nan))  # fmt: skip
    text = summary(pd.DataFrame(rows))
    assert "unhans: target ranked first in 1 of 2 poisoned scenarios; median AUROC 0.945" in text
    assert "control top score 0.100; poisoned target scores min 0.200" in text
    assert "the target in 1 of 2 poisoned scenarios (1 of the 2 followed ones); other classes flagged: 1" in text
    assert "| 0.020 (0.100) | 1 other |" in text and "| 0.300 (0.300) | target |" in text


def _planted_features(n=300, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 32))
    truth = np.zeros(n, bool)
    truth[:30] = True
    x[truth, 0] += 6.0  # a backdoor-like shift of a tenth of the class along one direction
    return x, truth


@pytest.mark.parametrize("name", ["activation_clustering", "spectral_signature"])
def test_feature_baselines_find_a_shifted_group(name):
    x, truth = _planted_features()
    score, samples = BASELINES.get(name).score(x, 0)
    auroc, _ = detection(truth, samples)
    assert auroc > 0.95
    clean_score, _ = BASELINES.get(name).score(_planted_features(seed=1)[0][30:], 0)
    assert score > clean_score


def test_spray_baseline_reproduces_corelays_miss_that_our_spectrum_fixes():
    """A fixed corner patch that takes the relevance of a fifth of the class: the kNN graph falls into
    two components. CoRelAy's recipe (eigsh which='LM', k-means on all 32 eigenvectors) mixes in the
    far end of the spectrum and misses the group; the same graph through pipeline.spectral (which='LA',
    row-normalised spectral embedding) recovers it exactly."""
    from pipeline.metrics.euclidean import knn_euclidean
    from pipeline.spectral import knn_affinity, spectral_labels, spectrum

    rng = np.random.default_rng(0)
    maps = rng.random((200, 16, 16)).astype(np.float32) * 0.2
    maps[:, 4:12, 4:12] += 1.0  # the class's object
    truth = np.zeros(200, bool)
    truth[:40] = True
    maps[truth] *= 0.1
    maps[truth, 12:16, 12:16] += 3.0
    _, samples = BASELINES.get("spray_euclidean").score(maps, 0)
    assert detection(truth, samples)[0] < 0.9
    idx, dist = knn_euclidean(maps, 10)
    lam, vec = spectrum(knn_affinity(idx, dist), 32)
    labels = spectral_labels(vec, 2)
    assert lam[1] < 1e-9 < lam[2]  # two components
    assert detection(truth, labels == np.argmin(np.bincount(labels)))[0] == 1.0


def test_validate_cli_end_to_end_on_the_digits(tmp_path):
    """`unhans validate` poisons, trains, audits and reports every method on one backdoor scenario."""
    from typer.testing import CliRunner

    from pipeline.cli import app

    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "base: demo\nflip_split: train\nset: [train.epochs=6, distances.metric=euclidean]\nscenarios:\n"
        "  - {name: tint, poison: {kind: tint, regime: backdoor, target: 2, fraction: 0.2, seed: 4}}\n"
    )
    res = CliRunner().invoke(app, ["validate", "--spec", str(spec), "--root", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    out = pd.read_csv(tmp_path / "runs" / "results.csv")
    assert set(out["method"]) == {"unhans", "unhans_label_issues", *BASELINES.names()}
    row = out[out["method"] == "unhans"].iloc[0]
    assert row["flip_rate"] > 0.5  # the digits model follows a tint backdoor
    assert abs(row["n_poisoned"] - 0.2 * row["n_target"]) <= 1  # 20% of the (relabelled) target class
    # the global probe finds the tint: ranked first, flagged, the tinted images on top
    assert row["rank"] == 1 and row["auroc"] > 0.9 and row["target_flagged"], row
    assert "| tint |" in (tmp_path / "runs" / "results.md").read_text()
    assert "target ranked first in" in res.output
