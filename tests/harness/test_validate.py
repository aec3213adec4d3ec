"""Validation metrics on hand-made cases, the spec loader, and the baselines on planted structure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from unhans.pipeline.core.errors import UserError
from unhans.pipeline.harness.detectors import names
from unhans.pipeline.harness.detectors.activation_clustering import activation_clustering
from unhans.pipeline.harness.detectors.heatmap_kmeans import heatmap_kmeans
from unhans.pipeline.harness.detectors.scan import anomaly_index, untangle, within_class_whitener
from unhans.pipeline.harness.detectors.spectral_signature import spectral_signature
from unhans.pipeline.harness.detectors.spectre import spectre
from unhans.pipeline.harness.detectors.spray_euclidean import spray_euclidean
from unhans.pipeline.harness.validate import detection, load_spec, mask_share, rank_of, summary

SCORERS = {f.__name__: f for f in (activation_clustering, spectral_signature, spectre, spray_euclidean)}


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
    bad.write_text("base: demo\nseeds: [0, 0]\nscenarios:\n  - {name: a, poison: {kind: patch, target: 1}}\n")
    with pytest.raises(UserError, match="seeds must be unique"):
        load_spec(str(bad))
    one = "scenarios:\n  - {name: a, poison: {kind: patch, target: 1}}\n"
    bad.write_text("base: demo\nablations:\n  - {name: e}\n" + one)
    with pytest.raises(UserError, match="ablation 0 needs name and set"):
        load_spec(str(bad))
    bad.write_text("base: demo\nablations:\n  - {name: e, set: [x=1], scenarios: [b]}\n" + one)
    with pytest.raises(UserError, match="names unknown scenarios"):
        load_spec(str(bad))


def test_each_seed_is_its_own_run_on_the_same_planted_data(tmp_path):
    from unhans.pipeline.harness.validate import scenario_config

    spec = load_spec("demo")
    sc = next(s for s in spec.scenarios if not s.control)
    (a, pa), (b, pb) = (scenario_config(spec, sc, tmp_path, [], seed) for seed in (0, 3))
    assert (a.seed, b.seed) == (0, 3) and a.run_dir != b.run_dir and b.run_dir.endswith("seed-3")
    assert a.dataset.poison == b.dataset.poison == pa == pb  # the artifact's own seed does not follow the run seed
    assert scenario_config(spec, sc, tmp_path, [])[0].seed == spec.seeds[0]


def _rows(runs):
    """Hand-made result rows: (scenario, seed, control, flip rate, unhans rank, auroc, score, spray auroc)."""
    rows = []
    for sc, seed, control, flip, rank, auroc, score, spray in runs:
        for m in ("unhans", "spray_euclidean"):
            u = m == "unhans"
            rows.append(dict(scenario=sc, seed=seed, poison="p", control=control, randomised=sc == "b", method=m,
                             rank=rank if u else 5, target_score=score, top_score=max(score, 0.1 if control else score),
                             auroc=auroc if u else spray, ap=auroc, flip_rate=flip, mask_share=0.3, mask_area=0.1,
                             target_flagged=(rank == 1 and not control) if u else np.nan,
                             other_flagged=int(control) if u else np.nan))  # fmt: skip
    return pd.DataFrame(rows)


def test_summary_counts_first_ranks_and_states_the_control_margin():
    text = summary(_rows([("c", 0, True, 0.5, 4, np.nan, 0.02, np.nan), ("a", 0, False, 0.5, 1, 0.99, 0.3, 0.5),
                          ("b", 0, False, 0.5, 2, 0.9, 0.2, 0.95)]))  # fmt: skip
    assert "unhans: target ranked first in 1 of 2 scenarios; median AUROC 0.945" in text
    assert "control top score 0.100; poisoned target scores min 0.200" in text
    assert "the target in 1 of 2 scenarios (1 of the 2 followed, 1 of the 2 followed at least 20% of the time)" in text
    assert "other classes flagged: 1 over all" in text
    assert "| 0.020 (0.100) | 1 other |" in text and "| 0.300 (0.300) | target |" in text
    assert "followed with random position or size: median AUROC 0.900 (1)" in text  # scenario b
    assert "in the followed runs (above / level at 3 decimals / below): spray_euclidean 1 / 0 / 1" in text


def test_summary_counts_a_peers_own_alarms():
    """A peer with a class alarm of its own (SCAn) gets a flag line like unhans', no-rule peers none."""
    rows = _rows([("c", 0, True, 0.5, 4, np.nan, 0.02, np.nan), ("a", 0, False, 0.5, 1, 0.99, 0.3, 0.5)])
    scan = rows[rows["method"] == "spray_euclidean"].assign(method="scan")
    scan["target_flagged"] = [False, True]
    scan["other_flagged"] = [2, 0]
    text = summary(pd.concat([rows, scan], ignore_index=True))
    assert "- scan flags (its own rule): the target in 1 of 1 scenarios (1 of the 1 followed" in text
    assert "other classes flagged: 2 over all 2 scenarios, controls included" in text
    assert "spray_euclidean flags" not in text


def test_summary_over_seeds_joins_per_seed_values_and_counts_runs():
    """Two seeds of each scenario: per-seed ranks and flip rates joined in seed order, medians over seeds,
    and the lines count runs; a run whose model ignores the artifact is not among the followed."""
    nan = np.nan
    text = summary(_rows([("a", 1, False, 0.05, 3, 0.5, 0.4, 0.6), ("a", 0, False, 0.8, 1, 0.97, 2.0, 0.7),
                          ("c", 0, True, 0.0, 2, nan, 0.9, nan), ("c", 1, True, 0.0, 4, nan, 1.1, nan)]))  # fmt: skip
    row = next(line for line in text.splitlines() if line.startswith("| a |"))
    assert "| 0.80/0.05 |" in row and "| 1/3 | 0.735 |" in row and "| target 1/2 |" in row
    assert "target ranked first in 1 of 2 runs (1 scenarios x 2 seeds)" in text
    assert "in the 1 the model follows (flip rate >= 0.1): first in 1, median AUROC 0.970" in text
    assert "control top score 1.100" in text
    assert "followed: min 2.000, median 2.000, above the control's top in 1 of 1" in text


def test_summary_says_which_machines_trained_the_models():
    """Another CPU trains another model from the same seed: the summary counts the runs per machine, and runs
    evaluated before the column existed count as unknown."""
    rows = _rows([("a", 0, False, 0.5, 1, 0.99, 0.3, 0.5), ("a", 1, False, 0.5, 1, 0.98, 0.3, 0.5),
                  ("c", 0, True, 0.0, 4, np.nan, 0.02, np.nan)])  # fmt: skip
    rows["machine"] = ["AMD EPYC, torch 2"] * 2 + ["Intel Xeon, torch 2"] * 2 + [np.nan] * 2
    text = summary(rows)
    line = next(x for x in text.splitlines() if x.startswith("- models trained on: "))
    parts = line.removeprefix("- models trained on: ").split("; ")
    assert sorted(parts) == ["AMD EPYC, torch 2 (1 runs)", "Intel Xeon, torch 2 (1 runs)", "unknown (1 runs)"]
    assert "models trained on" not in summary(rows.drop(columns="machine"))


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
    score, samples = SCORERS[name](x, 0)
    auroc, _ = detection(truth, samples)
    assert auroc > 0.95
    clean_score, _ = SCORERS[name](_planted_features(seed=1)[0][30:], 0)
    assert score > clean_score


def test_spectre_sees_a_group_hidden_in_a_direction_of_larger_clean_variance():
    """The clean class varies most along direction 0; a tenth of it is shifted along direction 1 by less
    than that spread. Spectral signatures follow the largest variance and miss it; SPECTRE's robust
    whitening makes the clean variance isotropic first, so the group is what stands out."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(600, 16))
    x[:, 0] *= 6.0
    truth = np.zeros(600, bool)
    truth[:60] = True
    x[truth, 1] += 4.0
    assert detection(truth, spectral_signature(x)[1])[0] < 0.7
    assert detection(truth, spectre(x)[1])[0] > 0.95


def test_scan_untangles_a_shifted_group_and_its_index_singles_the_class_out():
    """Ten classes with a shared within-class covariance (known from a clean set); one holds a tenth of
    samples shifted along a direction. SCAn's statistic puts that class far above the others (anomaly
    index > e^2, the paper's bound), the others stay below, and the shifted samples are the smaller
    identity."""
    rng = np.random.default_rng(0)
    mix = rng.normal(size=(16, 16))
    centres = rng.normal(scale=5.0, size=(10, 16))

    def draw(n, c):
        return (rng.normal(size=(n, 16)) @ mix) + centres[c]

    clean = np.concatenate([draw(50, c) for c in range(10)])
    labels = np.repeat(np.arange(10), 50)
    w = within_class_whitener(clean, labels)
    classes = [draw(300, c) for c in range(10)]
    truth = np.zeros(300, bool)
    truth[:30] = True
    classes[4][truth] += mix[2] * 5.0  # the trigger: an identity of its own inside class 4
    found = [untangle(x @ w) for x in classes]
    index = anomaly_index(np.array([f[0] for f in found]))
    assert index[4] > np.exp(2) and np.delete(index, 4).max() < np.exp(2)
    assert (found[4][1].astype(bool) == truth).mean() > 0.97
    assert detection(truth, found[4][2])[0] > 0.99


def test_heatmap_kmeans_finds_a_corner_patch_group():
    rng = np.random.default_rng(0)
    maps = rng.random((200, 16, 16)).astype(np.float32) * 0.2
    maps[:, 4:12, 4:12] += 1.0
    truth = np.zeros(200, bool)
    truth[:40] = True
    maps[truth] *= 0.1
    maps[truth, 12:16, 12:16] += 3.0
    score, samples = heatmap_kmeans(maps, 0)
    assert detection(truth, samples)[0] == 1.0
    clean_score, _ = heatmap_kmeans(maps[~truth], 0)
    assert score > clean_score


def test_spray_baseline_reproduces_corelays_miss_that_our_spectrum_fixes():
    """A fixed corner patch that takes the relevance of a fifth of the class: the kNN graph falls into
    two components. CoRelAy's recipe (eigsh which='LM', k-means on all 32 eigenvectors) mixes in the
    far end of the spectrum and misses the group; the same graph through pipeline.spectral (which='LA',
    row-normalised spectral embedding) recovers it exactly."""
    from unhans.pipeline.method.metrics.euclidean import knn_euclidean
    from unhans.pipeline.method.spectral import knn_affinity, spectral_labels, spectrum

    rng = np.random.default_rng(0)
    maps = rng.random((200, 16, 16)).astype(np.float32) * 0.2
    maps[:, 4:12, 4:12] += 1.0  # the class's object
    truth = np.zeros(200, bool)
    truth[:40] = True
    maps[truth] *= 0.1
    maps[truth, 12:16, 12:16] += 3.0
    _, samples = spray_euclidean(maps, 0)
    assert detection(truth, samples)[0] < 0.9
    idx, dist = knn_euclidean(maps, 10)
    lam, vec = spectrum(knn_affinity(idx, dist), 32)
    labels = spectral_labels(vec, 2)
    assert lam[1] < 1e-9 < lam[2]  # two components
    assert detection(truth, labels == np.argmin(np.bincount(labels)))[0] == 1.0


def test_validate_cli_end_to_end_on_the_digits(tmp_path):
    """`unhans validate` poisons, trains, audits and reports every method on one backdoor scenario."""
    from typer.testing import CliRunner

    from unhans.pipeline.cli import app

    spec = tmp_path / "spec.yaml"
    spec.write_text(
        "base: demo\nflip_split: train\nset: [train.epochs=6, distances.metric=euclidean]\nscenarios:\n"
        "  - {name: tint, poison: {kind: tint, regime: backdoor, target: 2, fraction: 0.2, seed: 4}}\n"
    )
    res = CliRunner().invoke(app, ["validate", "--spec", str(spec), "--root", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    out = pd.read_csv(tmp_path / "runs" / "results.csv")
    assert set(out["method"]) == set(names())
    row = out[out["method"] == "unhans"].iloc[0]
    assert row["flip_rate"] > 0.5  # the digits model follows a tint backdoor
    assert abs(row["n_poisoned"] - 0.2 * row["n_target"]) <= 1  # 20% of the (relabelled) target class
    # the global probe finds the tint: ranked first, flagged, the tinted images on top
    assert row["rank"] == 1 and row["auroc"] > 0.9 and row["target_flagged"], row
    # SCAn got its clean set (the unpoisoned training images, digits have no test split) and decided
    scan = out[out["method"] == "scan"].iloc[0]
    assert scan["target_flagged"] in (True, False) and scan["other_flagged"] >= 0
    assert "| tint |" in (tmp_path / "runs" / "results.md").read_text()
    assert "target ranked first in" in res.output
    # --collect runs nothing and rebuilds the same tables from the runs' evaluations
    table = (tmp_path / "runs" / "results.md").read_text()
    (tmp_path / "runs" / "results.md").unlink()
    args = ["validate", "--spec", str(spec), "--root", str(tmp_path / "runs"), "--collect"]
    again = CliRunner().invoke(app, args)
    assert again.exit_code == 0 and table.strip() in again.output
    assert (tmp_path / "runs" / "results.md").read_text() == table
    empty = CliRunner().invoke(app, ["validate", "--spec", str(spec), "--root", str(tmp_path / "none"), "--collect"])
    assert empty.exit_code == 2 and "no evaluated run" in empty.output
    # an ablation reruns unhans after attribute on a copy of the run: the same model and maps
    spec.write_text(
        spec.read_text().replace(
            "scenarios:", "ablations:\n  - {name: wasserstein, set: [distances.metric=wasserstein]}\nscenarios:"
        )
    )
    res = CliRunner().invoke(app, ["validate", "--spec", str(spec), "--root", str(tmp_path / "runs")])
    assert res.exit_code == 0, res.output
    out = pd.read_csv(tmp_path / "runs" / "results.csv")
    ab = out[out["method"] == "unhans[wasserstein]"].iloc[0]
    assert ab["flip_rate"] == row["flip_rate"] and ab["rank"] == 1 and ab["auroc"] > 0.9, ab
    copy = tmp_path / "runs" / "tint" / "seed-0-wasserstein"
    for stage in ("train", "attribute"):  # reused, not rerun
        assert (copy / "stages" / f"{stage}.json").read_text() == (
            tmp_path / "runs" / "tint" / "seed-0" / "stages" / f"{stage}.json"
        ).read_text()
    assert '"metric": "wasserstein"' in (copy / "stages" / "distances.json").read_text()
    # an ablation that would retrain is refused with what to do
    spec.write_text(spec.read_text().replace("name: wasserstein, set: [", "name: short, set: [train.epochs=3, "))
    res = CliRunner().invoke(app, ["validate", "--spec", str(spec), "--root", str(tmp_path / "runs")])
    assert res.exit_code == 2 and "change the train, attribute stage(s)" in res.output, res.output
