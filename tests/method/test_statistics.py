"""The Clever Hans score on hand-made cases: a model that follows a corner cue, evidence masks, groups."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unhans.pipeline.method.probes import (
    PlaceProbe,
    Transfers,
    evidence_masks,
    host_assignment,
    restyle,
    transfer,
    without_host_effects,
)
from unhans.pipeline.method.statistics import ScoreConfig, class_findings, relative_transfer, score_class, spread

DEFAULTS = ScoreConfig()


class CornerModel(torch.nn.Module):
    """Two classes: logit of class 1 = 40 x (mean of the top-left 4x4 block - 0.5); class 0 = 0."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        cue = x[:, 0, :4, :4].mean((1, 2))
        return torch.stack([torch.zeros_like(cue), 40 * self.w * (cue - 0.5)], 1)


def test_evidence_masks_take_the_top_cells_and_dilate_them():
    maps = torch.zeros(2, 8, 8)
    maps[0, 0, 0] = 5.0
    maps[1, 4, 4], maps[1, 7, 7] = 1.0, -9.0  # negative relevance is never evidence
    m = evidence_masks(maps, top=1 / 64, image_size=16)
    assert m.shape == (2, 1, 16, 16)
    assert m[0, 0, :4, :4].all() and m[0].sum() == 16  # cell (0,0) dilated to 2x2 cells of 2x2 pixels
    assert m[1, 0, 6:12, 6:12].all() and m[1].sum() == 36 and not m[1, 0, 15, 15]


def test_transfer_is_high_only_for_evidence_the_model_follows():
    model, S = CornerModel(), 16
    hosts = torch.zeros(6, 1, S, S)  # class 0 images: dark corner
    images = torch.zeros(4, 1, S, S)
    images[:2, :, :4, :4] = 1.0  # two donors carry the cue in the corner
    images[2:, :, 8:12, 8:12] = 1.0  # two carry a bright block elsewhere
    maps = torch.zeros(4, 8, 8)
    maps[:2, 0:2, 0:2] = 1.0  # their relevance is on the cue
    maps[2:, 4:6, 4:6] = 1.0
    t = transfer(model, lambda x: x, images, hosts, 1, evidence_masks(maps, 4 / 64, S))
    assert t[:2].min() > 0.9 and np.abs(t[2:]).max() < 0.01


class TintModel(torch.nn.Module):
    """Two classes: logit of class 1 = 40 x (mean of the darkest decile of pixels - 0.2): a bright
    background, wherever the shapes are (a global tint)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = torch.nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1)
        dark = flat.sort(1).values[:, : flat.shape[1] // 10].mean(1)
        return torch.stack([torch.zeros_like(dark), 40 * self.w * (dark - 0.2)], 1)


def test_global_probe_carries_a_tint_and_evidence_pasting_does_not():
    model, S = TintModel(), 16
    g = torch.Generator().manual_seed(0)
    hosts = torch.zeros(4, 1, S, S)
    for i, hosts_i in enumerate(hosts):  # dark images with a bright shape each, in different places
        hosts_i[0, 2 * i : 2 * i + 6, 3:9] = 1.0
    images = torch.zeros(4, 1, S, S)
    images[:, 0, 5:11, 5:11] = torch.rand(4, 6, 6, generator=g) * 0.5 + 0.5
    images[:2] = 0.3 + 0.7 * images[:2]  # two donors are tinted: dark pixels lifted to 0.3
    maps = torch.zeros(4, 8, 8)
    maps[:, 2:6, 2:6] = 1.0  # relevance on the shape: what the evidence probe pastes
    glob = transfer(model, lambda x: x, images, hosts, 1)
    ev = transfer(model, lambda x: x, images, hosts, 1, evidence_masks(maps, 16 / 64, S))
    assert glob[:2].min() > 0.9 and np.abs(glob[2:]).max() < 0.01
    assert np.abs(ev).max() < 0.01  # pasting the shape does not lift the background
    # the host keeps its shapes: restyling only moves its per-channel mean and spread
    r = restyle(images[:1], hosts[None])[0]  # (a tinted donor: nothing is clipped)
    assert torch.allclose(r.mean((2, 3)), images[0].mean((1, 2)).expand(4, 1), atol=1e-5)
    assert torch.allclose(r.std((2, 3)), images[0].std((1, 2)).expand(4, 1), atol=1e-5)
    assert (torch.corrcoef(torch.stack([r[0].flatten(), hosts[0].flatten()]))[0, 1] > 0.999).item()


def test_host_assignment_gives_each_sample_distinct_hosts_and_uses_the_pool_evenly():
    rng = np.random.default_rng(0)
    full = host_assignment(5, 16, 16, rng)
    assert (full == np.arange(16)).all()  # as many probes as hosts: the whole pool, in pool order
    a = host_assignment(3200, 16, 2, np.random.default_rng(1))
    assert a.shape == (3200, 2) and a.min() >= 0 and a.max() < 16
    assert (a[:, 0] != a[:, 1]).all()
    use = np.bincount(a.ravel(), minlength=16)
    assert use.min() > 0.8 * 400 and use.max() < 1.2 * 400  # n k / m = 400 each
    assert (a == host_assignment(3200, 16, 2, np.random.default_rng(1))).all()  # seeded
    assert len({tuple(r) for r in host_assignment(200, 5, 3, rng)}) > 1  # m not a multiple of k


def test_a_sample_probed_on_some_hosts_gets_the_mean_over_those_hosts():
    """transfer with an assignment = the mean of the single-host transfers on the assigned hosts, each
    less that host's own p(class); without one, every host."""
    model, S = CornerModel(), 16
    g = torch.Generator().manual_seed(3)
    hosts = torch.rand(6, 1, S, S, generator=g) * 0.9  # corners of different brightness: different baselines
    images = torch.rand(5, 1, S, S, generator=g)
    masks = evidence_masks(torch.rand(5, 8, 8, generator=g), 6 / 64, S)
    single = np.stack(
        [transfer(model, lambda x: x, images, hosts, 1, masks, assign=np.full((5, 1), j)) for j in range(6)], 1
    )
    assign = host_assignment(5, 6, 2, np.random.default_rng(0))
    got = transfer(model, lambda x: x, images, hosts, 1, masks, assign=assign, batch=4)
    assert np.allclose(got, np.take_along_axis(single, assign, 1).mean(1), atol=1e-6)
    assert np.allclose(transfer(model, lambda x: x, images, hosts, 1, masks), single.mean(1), atol=1e-6)
    glob = transfer(model, lambda x: x, images, hosts, 1, assign=assign)
    each = np.stack([transfer(model, lambda x: x, images, hosts, 1, assign=np.full((5, 1), j)) for j in range(6)], 1)
    assert np.allclose(glob, np.take_along_axis(each, assign, 1).mean(1), atol=1e-6)


def test_probes_on_few_hosts_lose_what_each_host_adds():
    """Transfers = the sample's own + its host's effect: removing the hosts' effects leaves every sample's
    own (up to one constant of the class), whichever hosts it drew; per_host gives the values averaged."""
    rng = np.random.default_rng(4)
    n, m = 300, 16
    own, host = rng.normal(0, 0.05, n), rng.normal(0, 0.3, m)
    assign = host_assignment(n, m, 2, rng)
    vals = own[:, None] + host[assign]
    got = without_host_effects(vals, assign, m).mean(1)
    assert np.corrcoef(got, own)[0, 1] > 0.99 and np.corrcoef(vals.mean(1), own)[0, 1] < 0.5
    assert np.std(got - own) < 0.01 and abs(np.mean(got - own) - np.mean(host)) < 0.02  # the level stays
    full = host_assignment(n, m, m, rng)
    assert np.array_equal(without_host_effects(own[:, None] + host[full], full, m), own[:, None] + host[full])
    model, S = CornerModel(), 16
    g = torch.Generator().manual_seed(3)
    hosts, images = torch.rand(6, 1, S, S, generator=g), torch.rand(5, 1, S, S, generator=g)
    masks = evidence_masks(torch.rand(5, 8, 8, generator=g), 6 / 64, S)
    a = host_assignment(5, 6, 2, np.random.default_rng(0))
    each = transfer(model, lambda x: x, images, hosts, 1, masks, assign=a, per_host=True)
    assert each.shape == (5, 2) and np.allclose(
        each.mean(1), transfer(model, lambda x: x, images, hosts, 1, masks, assign=a)
    )


def _two_blocks(n: int, group: np.ndarray) -> sp.csr_matrix:
    """Affinity: dense inside the group and inside the rest, one weak edge between them."""
    same = group[:, None] == group[None, :]
    W = np.where(same, 1.0, 0.0)
    W[np.flatnonzero(group)[0], np.flatnonzero(~group)[0]] = W[np.flatnonzero(~group)[0], np.flatnonzero(group)[0]] = (
        0.1
    )
    np.fill_diagonal(W, 0)
    return sp.csr_matrix(W)


def test_class_score_is_excess_transfer_of_a_separate_group():
    n = 40
    group = np.zeros(n, bool)
    group[:8] = True
    W = _two_blocks(n, group)
    labels = np.stack([group.astype(int), np.arange(n) % 3])  # k=2 finds the group, k=3 is noise
    t = np.where(group, 0.8, 0.1)
    s = score_class(W, labels, [2, 3], t, DEFAULTS)
    assert (s.k, s.group_size) == (2, 8) and np.array_equal(s.group, group)
    assert s.score == pytest.approx(0.7 / 0.1 * (1 - s.conductance)) and s.conductance < 0.01  # rest sd 0: floor
    # the same group with no excess transfer scores 0: separation alone is no Clever Hans
    flat = score_class(W, labels, [2, 3], np.full(n, 0.5), DEFAULTS)
    assert flat.score == 0.0 and flat.cluster == -1
    # groups above max_group_fraction are not candidates
    assert score_class(W, labels, [2, 3], t, DEFAULTS.model_copy(update={"max_group_fraction": 0.1})).group_size < 8


def test_group_smoothing_scores_the_class_on_transfers_spread_over_its_graph():
    n = 40
    group = np.zeros(n, bool)
    group[:8] = True
    W = _two_blocks(n, group)
    labels = np.stack([group.astype(int), np.arange(n) % 3])
    rng = np.random.default_rng(0)
    t = np.where(group, 0.5, 0.1) + rng.normal(0, 0.3, n)  # transfers measured on few hosts: noisy
    tr = Transfers(t, np.full(n, -9.0), np.full(n, 0.9))  # combined = max(t, g) = t
    args = (np.arange(n), W, labels, [2, 3], 2, np.zeros(4), tr, np.zeros(n, int), 0)
    plain, _ = class_findings(*args, DEFAULTS)
    smooth, samples = class_findings(*args, DEFAULTS.model_copy(update={"group_smoothing": 0.75}))
    assert plain["clever_hans_score"] == pytest.approx(score_class(W, labels, [2, 3], t, DEFAULTS).score)
    want = score_class(W, labels, [2, 3], spread(W, t, 0.75), DEFAULTS)
    assert smooth["clever_hans_score"] == pytest.approx(want.score) and smooth["group_size"] == 8
    assert smooth["clever_hans_score"] > plain["clever_hans_score"]
    assert np.array_equal(samples["transfer"].to_numpy(), t)  # the samples keep their own transfers


def test_the_excess_counts_in_spreads_of_the_class_usual_transfer():
    """The same excess transfer is a stronger alarm where the class's own evidence transfers uniformly."""
    n = 60
    group = np.zeros(n, bool)
    group[:10] = True
    W = _two_blocks(n, group)
    labels = group.astype(int)[None]
    rng = np.random.default_rng(0)
    wide = np.where(group, 0.7, 0.1 + 0.4 * rng.standard_normal(n))
    narrow = np.where(group, 0.7, 0.1 + 0.1 * rng.standard_normal(n))
    s_wide, s_narrow = (score_class(W, labels, [2], t, DEFAULTS).score for t in (wide, narrow))
    assert s_narrow > 3 * s_wide > 0


def test_a_small_excess_in_a_tight_class_is_no_alarm():
    """A class whose evidence hardly transfers (spread 0.5 points) with a sub-style 5 points above it:
    many spreads, but below min_spread x the threshold; a planted cue 40 points above is an alarm."""
    n = 60
    group = np.zeros(n, bool)
    group[:10] = True
    W = _two_blocks(n, group)
    labels = group.astype(int)[None]
    rest = 0.01 + 0.005 * np.random.default_rng(0).standard_normal(n)
    style, cue = np.where(group, 0.06, rest), np.where(group, 0.41, rest)
    assert (
        score_class(W, labels, [2], style, DEFAULTS.model_copy(update={"min_spread": 0.005})).score > 5
    )  # counted in its own spread
    assert score_class(W, labels, [2], style, DEFAULTS).score < 0.6
    assert score_class(W, labels, [2], cue, DEFAULTS).score > 3.5


def test_vectorised_group_scores_equal_the_formula_group_by_group():
    from unhans.pipeline.method.spectral import conductance
    from unhans.pipeline.method.statistics import candidate_groups, group_scores

    rng = np.random.default_rng(1)
    n = 50
    group = rng.random(n) < 0.3
    W = _two_blocks(n, group)
    labels = np.stack([rng.integers(0, 2, n), rng.integers(0, 4, n)])
    t = rng.normal(0.1, 0.05, n)
    ids, G, sep, phi = candidate_groups(W, labels, [2, 4], 0.5, 3)
    got = group_scores(t[None], G, sep, DEFAULTS.min_spread)[0]
    for j, (k, c) in enumerate(ids):
        g = labels[[2, 4].index(k)] == c
        want = (t[g].mean() - t[~g].mean()) / max(t[~g].std(), DEFAULTS.min_spread) * (1 - conductance(W, g))
        assert got[j] == pytest.approx(want, rel=1e-9)


def test_leave_one_out_fits_equal_fits_to_the_other_scores():
    from unhans.pipeline.method.statistics import gumbel_fits_without_each

    rng = np.random.default_rng(1)
    s = rng.gumbel(0.3, 0.2, 9)
    s[3] = s[5]  # a tie
    mu, beta = gumbel_fits_without_each(s)
    for i in range(len(s)):
        o = np.sort(np.delete(s, i))
        n = len(o)
        l1 = o.mean()
        l2 = 2 * np.sum(np.arange(n) / (n - 1) * o) / n - l1  # the L-moments, from their definition
        assert beta[i] == pytest.approx(l2 / np.log(2)) and mu[i] == pytest.approx(l1 - np.euler_gamma * l2 / np.log(2))


@pytest.mark.parametrize("k", [3, 10, 300])
def test_class_p_values_are_uniform_when_no_class_has_a_shortcut(k):
    """Clean classes' scores from one extreme-value law (any location and scale): p < 0.05 in 5% of
    the classes, p < 0.01 in 1%, at any number of classes."""
    from scipy import stats

    from unhans.pipeline.method.statistics import class_p_values

    rng = np.random.default_rng(k)
    runs = 3000 // k
    p = np.concatenate(
        [class_p_values(rng.gumbel(rng.uniform(0, 1), rng.uniform(0.05, 0.5), k), r) for r in range(runs)]
    )
    assert 0.04 <= (p < 0.05).mean() <= 0.06 and 0.005 <= (p < 0.01).mean() <= 0.016
    assert stats.kstest(p, "uniform").pvalue > 0.01


def test_classes_far_above_the_rest_are_flagged_and_the_rest_are_not():
    """One class of ten scoring 3 where the rest score about 0.4; 20 such among 1,000 classes: each
    flagged, and no clean class is a discovery (the strong classes widen the fit only a little: L-moments)."""
    from unhans.pipeline.method.statistics import flag_classes

    rng = np.random.default_rng(0)
    ten = np.r_[rng.gumbel(0.3, 0.15, 9), 3.0]
    p, q, flagged = flag_classes(ten, DEFAULTS)
    assert p[-1] < 1e-3 and q[-1] <= DEFAULTS.fdr and flagged.tolist() == [False] * 9 + [True]
    many = np.r_[rng.gumbel(0.3, 0.15, 980), rng.uniform(2.5, 6.0, 20)]
    p, q, flagged = flag_classes(many, DEFAULTS)
    assert flagged[980:].all() and (q[980:] <= DEFAULTS.fdr).all() and (q[:980] > DEFAULTS.fdr).all()


def test_each_path_to_a_flag_needs_its_score_and_its_test():
    """Flagged at score >= flag_threshold with K p <= 1, or at score >= min_score with q <= fdr."""
    from unhans.pipeline.method.statistics import flag_classes

    rng = np.random.default_rng(0)
    quiet = np.r_[rng.uniform(0.05, 0.1, 9), 0.6]  # far above the others, below min_score
    p, q, flagged = flag_classes(quiet, DEFAULTS)
    assert q[-1] <= DEFAULTS.fdr and not flagged.any()
    moderate = np.r_[rng.uniform(0.05, 0.1, 9), 1.2]  # the same, above min_score: a discovery
    assert flag_classes(moderate, DEFAULTS)[2].tolist() == [False] * 9 + [True]
    busy = np.r_[np.linspace(1.0, 2.4, 9), 2.0]  # above flag_threshold, and usual for this run
    p, q, flagged = flag_classes(busy, DEFAULTS)
    assert busy[-1] >= DEFAULTS.flag_threshold and p[-1] * len(busy) > 1 and not flagged[-1]
    three = np.array([0.3, 0.45, 3.0])  # too few classes for a discovery: the strong score flags it
    p, q, flagged = flag_classes(three, DEFAULTS)
    assert q[-1] > DEFAULTS.fdr and flagged.tolist() == [False, False, True]


def test_runs_of_one_or_two_classes_have_no_p_values_and_the_score_decides():
    from unhans.pipeline.method.statistics import flag_classes

    p, q, flagged = flag_classes(np.array([1.0, 1.6]), DEFAULTS)
    assert np.isnan(p).all() and np.isnan(q).all() and flagged.tolist() == [False, True]


def test_benjamini_hochberg_q_values():
    from unhans.pipeline.method.statistics import benjamini_hochberg

    p = np.array([0.01, 0.04, 0.03, 0.5])
    # sorted 0.01, 0.03, 0.04, 0.5 -> 0.04, 0.06, 0.0533, 0.5 -> running min from the top: 0.04, 0.0533, 0.0533, 0.5
    assert np.allclose(benjamini_hochberg(p), [0.04, 0.16 / 3, 0.16 / 3, 0.5])
    assert benjamini_hochberg(np.array([])).shape == (0,)


def _two_cliques(n_a: int, n_b: int, bridge: float = 0.0) -> sp.csr_matrix:
    n = n_a + n_b
    W = np.zeros((n, n))
    W[:n_a, :n_a] = 1.0
    W[n_a:, n_a:] = 1.0
    W[0, n_a] = W[n_a, 0] = bridge
    np.fill_diagonal(W, 0)
    return sp.csr_matrix(W)


@given(st.floats(0.0, 0.95), st.integers(0, 2**31 - 1))
@settings(max_examples=40, deadline=None)
def test_spread_is_the_label_spreading_fixed_point(alpha, seed):
    rng = np.random.default_rng(seed)
    W = sp.random(30, 30, density=0.2, random_state=seed)
    W = (W + W.T).tocsr()
    t = rng.normal(size=30)
    s = spread(W, t, alpha)
    deg = np.asarray(W.sum(1)).ravel()
    Ps = np.where(deg > 0, (W @ s) / np.where(deg > 0, deg, 1), s)  # lonely samples: their own value
    assert np.allclose(s, (1 - alpha) * t + alpha * Ps, atol=1e-8)
    assert s.min() >= t.min() - 1e-9 and s.max() <= t.max() + 1e-9  # an average: never outside t's range
    assert np.allclose(spread(W, np.full(30, 0.3), alpha), 0.3)  # constants stay


def test_spread_averages_a_noisy_group_within_its_own_explanations():
    """A partly learned artifact: the group's transfers are high on average but noisy, and overlap the
    class's. Spreading over the explanation graph (two cliques, one bridge) separates them."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    n_a, n_b = 20, 80
    truth = np.r_[np.ones(n_a, bool), np.zeros(n_b, bool)]
    t = np.where(truth, rng.normal(0.25, 0.2, n_a + n_b), rng.normal(0.1, 0.2, n_a + n_b))
    W = _two_cliques(n_a, n_b, bridge=0.5)
    raw, smooth = roc_auc_score(truth, t), roc_auc_score(truth, spread(W, t, 0.75))
    assert raw < 0.8 and smooth > 0.95
    assert np.array_equal(spread(W, t, 0.0), t)
    lonely = sp.csr_matrix((3, 3))
    assert np.array_equal(spread(lonely, np.array([1.0, -2.0, 0.5]), 0.75), [1.0, -2.0, 0.5])


def test_relative_transfer_lifts_a_half_learned_trigger_above_a_class_whose_evidence_transfers():
    """A class whose own evidence transfers as far as a planted trigger (a bag's handle): equal t, but
    the planted images of other classes are ones the model gives the class little probability."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(1)
    truth = np.r_[np.ones(30, bool), np.zeros(120, bool)]
    t = rng.normal(0.45, 0.1, 150)  # the same transfer for both
    p = np.where(truth, rng.uniform(0.05, 0.6, 150), rng.uniform(0.95, 1.0, 150))
    assert roc_auc_score(truth, t) < 0.7
    assert roc_auc_score(truth, relative_transfer(t, p, 0.5)) > 0.95
    assert np.allclose(relative_transfer([0.4, 0.4, 0.4, -0.2], [1.0, 0.8, 0.1, 0.1], 0.5), [0.4, 0.5, 0.8, -0.4])
    assert np.array_equal(relative_transfer(t, p, 1.0), t)  # floor 1: the plain transfer


def test_group_places_take_a_shared_stamp_first_and_skip_evidence_that_moves():
    """Ten members share a stamp at the top-left cells (and have moving evidence too), twenty have only
    moving evidence: the stamp's group is chosen first, its place is the stamp; a group whose evidence
    moves has no place."""
    from unhans.pipeline.method.probes import group_places
    from unhans.pipeline.method.spectral import knn_affinity

    rng = np.random.default_rng(0)
    n, r = 30, 8
    masks = torch.zeros(n, r, r, dtype=torch.bool)
    for i in range(n):
        y, x = rng.integers(2, r - 1, 2)
        masks[i, y : y + 2, x : x + 2] = True  # evidence that moves with the object
    masks[:10, 0, :2] = True  # the stamp
    labels = np.array([[0] * 10 + [1] * 20, [0] * 10 + [1] * 10 + [2] * 10])
    idx = np.array([[(i + 1) % n, (i + 2) % n] for i in range(n)])
    W = knn_affinity(idx, np.ones((n, 2), np.float32))
    groups = group_places(masks, W, labels, [2, 3], m=3, agree=0.5)
    k, cluster, g, place = groups[0]
    assert (k, cluster) == (2, 0) and g[:10].all() and not g[10:].any()
    assert place[0, :2].all() and int(place.sum()) == 2
    assert len(groups) == 1  # the other groups' evidence has no common place (or is over half the class)
    assert group_places(masks[10:], W[10:, 10:], labels[1:, 10:] - 1, [2], m=3, agree=0.5) == []


def test_place_score_is_the_groups_excess_at_its_place_over_the_drawn_members():
    from unhans.pipeline.method.spectral import conductance, knn_affinity
    from unhans.pipeline.method.statistics import place_score

    n = 12
    labels = np.array([[0] * 4 + [1] * 8])
    W = knn_affinity(np.array([[(i + 1) % n] for i in range(n)]), np.ones((n, 1), np.float32))
    row = np.array([0.9, 0.7, np.nan, 0.8, 0.1, 0.0, np.nan, 0.2, 0.1, np.nan, 0.0, 0.2])
    got = place_score(row[None], [[2, 0, 5]], W, labels, [2], DEFAULTS.min_spread)
    rest = row[4:][np.isfinite(row[4:])]
    want = (0.8 - rest.mean()) / max(rest.std(), DEFAULTS.min_spread) * (1 - conductance(W, labels[0] == 0))
    assert got["place_score"] == pytest.approx(want) and got["place_group_size"] == 4 and got["place_cells"] == 5
    assert got["place_group_transfer"] == pytest.approx(0.8)
    none = place_score(np.zeros((0, n)), [], W, labels, [2], DEFAULTS.min_spread)
    assert none["place_score"] == 0.0 and none["place_group_size"] == 0


def test_a_class_whose_place_outscores_its_transfer_ranks_its_samples_along_that_place():
    n = 40
    group = np.zeros(n, bool)
    group[:8] = True  # the stamped members whose evidence shares a place
    stamped = group.copy()
    stamped[20:24] = True  # stamped elsewhere along the same edge: outside the group, caught by the reach
    W = _two_blocks(n, group)
    labels = np.stack([group.astype(int), np.arange(n) % 3])
    rng = np.random.default_rng(1)
    t = rng.uniform(0.3, 0.6, n)  # any member's evidence carries the class (a curved edge makes a disc)
    tr = Transfers(t, np.full(n, -9.0), np.full(n, 0.9))
    drawn = np.where(group, 0.5, 0.0) + rng.normal(0, 0.01, n)  # the donors at the group's place
    drawn[stamped & ~group] = 0.0  # their stamps lie elsewhere along the edge
    reach = np.where(stamped, 0.5, 0.0) + rng.normal(0, 0.01, n)
    # the stamp's place is background for the unstamped members: less relevance there than an even spread
    usage = np.where(stamped, 6.0, 0.4)
    args = (np.arange(n), W, labels, [2, 3], 2, np.zeros(4), tr, np.zeros(n, int), 0, DEFAULTS)
    ranked, samples = class_findings(*args, PlaceProbe(drawn[None], [[2, 1, 9]], reach, 0, list(range(9)), usage))
    assert ranked["sample_probe"] == "place" and ranked["place_score"] > ranked["clever_hans_score"]
    assert ranked["place_foreign"] and ranked["place_usage"] == pytest.approx(0.4)
    assert samples.loc[stamped, "clever_hans_score"].min() > samples.loc[~stamped, "clever_hans_score"].max()
    # not spread over the graph: the stamped members outside the group, whose neighbours are clean, stand out too
    assert samples["stands_out"].to_numpy().tolist() == stamped.tolist()
    # no confirmed place (no member probed along it): the transfer ranks them
    none = np.full(n, np.nan)
    plain, kept = class_findings(*args, PlaceProbe(drawn[None], [[2, 1, 9]], none, -1, [], none))
    assert plain["sample_probe"] == "transfer" and plain["place_score"] == ranked["place_score"]
    assert not plain["place_foreign"] and np.isnan(plain["place_usage"])
    assert np.allclose(kept["clever_hans_score"], spread(W, relative_transfer(t, tr.confidence, 0.5), 0.75))
    # the class's own place (a bag's handles): its other members read the class there too, more than an even
    # spread; the place is no finding, and the transfer ranks the samples
    own = np.where(stamped, 6.0, 1.5)
    mine, kept = class_findings(*args, PlaceProbe(drawn[None], [[2, 1, 9]], reach, 0, list(range(9)), own))
    assert mine["sample_probe"] == "transfer" and not mine["place_foreign"]
    assert mine["place_usage"] == pytest.approx(1.5) and mine["place_score"] == ranked["place_score"]
    assert np.allclose(kept["clever_hans_score"], spread(W, relative_transfer(t, tr.confidence, 0.5), 0.75))


def test_place_usage_is_the_relevance_along_the_place_of_the_members_it_does_not_carry():
    from unhans.pipeline.method.probes import relevance_usage
    from unhans.pipeline.method.statistics import place_usage

    maps = np.zeros((3, 4, 4))
    maps[0, 3, :] = 1.0  # all its relevance along the bottom row (a quarter of the map): 4x an even spread
    maps[1] = 1.0  # an even spread
    maps[1, 0, 0] = -5.0  # negative relevance counts for nothing
    cells = list(range(12, 16))
    usage = relevance_usage(maps, cells)
    assert usage == pytest.approx([4.0, 4 / 15 / 0.25, 0.0])  # the empty map: none
    assert place_usage(usage, np.array([True, False, False])) == pytest.approx(np.mean(usage[1:]))
    assert np.isnan(place_usage(usage, np.ones(3, bool)))


def test_a_place_on_one_edge_of_the_image_reaches_along_it():
    from unhans.pipeline.method.probes import edge_reach

    place = torch.zeros(8, 8, dtype=torch.bool)
    place[6:, 2:4] = True  # a stamp on the bottom edge
    place[4, 3] = True  # a cell further in (the object of a group member near the border)
    want = torch.zeros(8, 8, dtype=torch.bool)
    want[6:] = True
    assert torch.equal(edge_reach(place), want)
    corner = torch.zeros(8, 8, dtype=torch.bool)
    corner[:2, 6:] = True  # top-right corner: two edges, along which of them a stamp moves is unknown
    assert torch.equal(edge_reach(corner), corner)
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[3:5, 3:5] = True
    assert torch.equal(edge_reach(inside), inside)


def test_a_strong_place_score_flags_its_class_unless_the_run_s_place_scores_are_all_high():
    from unhans.pipeline.method.statistics import flag_classes

    scores = np.array([0.6, 0.9, 0.7])  # no class stands out in T (three classes: no discovery either)
    foreign = np.ones(3, bool)
    assert not flag_classes(scores, DEFAULTS)[2].any()
    strong = np.array([0.2, 0.4, 5.0])
    assert flag_classes(scores, DEFAULTS, place=strong, foreign=foreign)[2].tolist() == [False, False, True]
    # the class's own place (not foreign): no finding, however strong
    assert not flag_classes(scores, DEFAULTS, place=strong, foreign=np.array([True, True, False]))[2].any()
    weak = np.array([0.2, 0.4, 1.2])  # below flag_threshold
    assert not flag_classes(scores, DEFAULTS, place=weak, foreign=foreign)[2].any()
    busy = np.linspace(1.0, 2.4, 10)
    assert not flag_classes(np.full(10, 0.5), DEFAULTS, place=busy, foreign=np.ones(10, bool))[2][-2]  # usual here
    with pytest.raises(ValueError, match="foreign"):
        flag_classes(scores, DEFAULTS, place=strong)


def test_the_place_way_of_a_screened_run_is_taken_among_the_classes_whose_place_was_probed():
    """NaN place scores (classes a screened run did not probe there) are neither flagged by place nor part of
    its null: the flags are those of the probed classes alone; zeros in their stead would be a null that
    any probed class beats."""
    from unhans.pipeline.method.statistics import flag_classes

    rng = np.random.default_rng(0)
    scores = rng.uniform(0.3, 0.8, 40)  # no class stands out in T
    place = np.full(40, np.nan)
    probed = rng.choice(40, 12, replace=False)
    place[probed] = np.r_[np.linspace(1.0, 2.0, 11), 2.1]  # a busy run of places: 2.1 is usual among them
    foreign = np.ones(40, bool)
    flags = flag_classes(scores, DEFAULTS, place=place, foreign=foreign)[2]
    alone = flag_classes(scores[probed], DEFAULTS, place=place[probed], foreign=foreign[probed])[2]
    assert not flags.any() and not alone.any()
    assert flag_classes(scores, DEFAULTS, place=np.nan_to_num(place), foreign=foreign)[2][probed[-1]]  # zeros: flagged
    place[probed[-1]] = 9.0  # far beyond the probed classes' law: flagged, and only it
    flags = flag_classes(scores, DEFAULTS, place=place, foreign=foreign)[2]
    assert np.flatnonzero(flags).tolist() == [probed[-1]]
    two = np.full(40, np.nan)
    two[probed[:2]] = [0.2, 9.0]  # two probed classes of forty: no law to judge by, no flag this way
    assert not flag_classes(scores, DEFAULTS, place=two, foreign=foreign)[2].any()
