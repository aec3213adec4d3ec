"""Invariant Wasserstein distance: invariances, metric properties, degenerate maps, a planted artifact."""

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unhans.pipeline.method.metrics import knn_graph
from unhans.pipeline.method.metrics.euclidean import knn_euclidean
from unhans.pipeline.method.metrics.wasserstein import WassersteinParams, canonicalise, exact_w2, knn_wasserstein
from unhans.pipeline.method.spectral import eigengap, knn_affinity, spectral_labels, spectrum

DEFAULT = WassersteinParams()
FEW = settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def one_thread():
    """These problems are tiny: threads only add synchronisation, which is very slow when another
    process holds a core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def gauss(r: int, centre, sigmas, angle: float) -> np.ndarray:
    """An anisotropic Gaussian blob on an r x r grid (pixel centres at i + 0.5), major axis at `angle`."""
    rows, cols = np.meshgrid(np.arange(r) + 0.5, np.arange(r) + 0.5, indexing="ij")
    d0, d1 = rows - centre[0], cols - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    u, v = c * d0 + s * d1, -s * d0 + c * d1
    return np.exp(-0.5 * ((u / sigmas[0]) ** 2 + (v / sigmas[1]) ** 2))


def hook(r: int, centre, size: float, angle: float, scale: float = 1.0, knob: float = 0.8) -> np.ndarray:
    """A chiral, anisotropic shape (a bar with a knob off to one side), similarity-transformed exactly."""
    c, s = np.cos(angle), np.sin(angle)
    along, across = np.array([c, s]), np.array([-s, c])
    L = size * scale
    img = gauss(r, centre, (L, 0.35 * L), angle)
    img += knob * gauss(r, np.asarray(centre) + 0.9 * L * along + 0.6 * L * across, (0.35 * L, 0.35 * L), 0.0)
    return img.astype(np.float32)


def panel(r: int) -> list[np.ndarray]:
    """Different shapes: the typical distance between different maps."""
    m = r / 2
    ring = gauss(r, (m, m), (0.3 * r, 0.3 * r), 0) - 0.8 * gauss(r, (m, m), (0.18 * r, 0.18 * r), 0)
    two = gauss(r, (m - 0.2 * r, m), (0.08 * r, 0.08 * r), 0) + gauss(r, (m + 0.2 * r, m), (0.12 * r, 0.06 * r), 0.5)
    cross = gauss(r, (m, m), (0.25 * r, 0.05 * r), 0) + gauss(r, (m, m), (0.25 * r, 0.05 * r), np.pi / 2)
    tee = gauss(r, (m - 0.15 * r, m), (0.05 * r, 0.25 * r), 0) + gauss(r, (m + 0.05 * r, m), (0.2 * r, 0.05 * r), 0)
    return [np.maximum(x, 0).astype(np.float32) for x in (ring, two, cross, tee)]


def fast_pairwise(maps: list[np.ndarray], params: WassersteinParams) -> np.ndarray:
    """All pairwise fast distances of a handful of maps (k = n - 1 makes every pair a candidate)."""
    idx, dist, _ = knn_wasserstein(np.stack(maps), len(maps) - 1, params)
    D = np.zeros((len(maps), len(maps)))
    for i in range(len(maps)):
        D[i, idx[i]] = dist[i]
    return D


# ----------------------------------------------------------------------------- invariances, fast method

R = 32
hook_params = dict(cx=st.floats(11, 16), cy=st.floats(11, 16), size=st.floats(2.5, 3.5), angle=st.floats(0, 2 * np.pi))


@FEW
@given(**hook_params, dx=st.floats(3, 5), dy=st.floats(-5, 5))
def test_fast_translation_invariance(cx, cy, size, angle, dx, dy):
    a = hook(R, (cx, cy), size, angle)
    b = hook(R, (cx + dy, cy + dx), size, angle)
    maps = [a, b, *panel(R)]
    on = fast_pairwise(maps, DEFAULT)
    off = fast_pairwise(maps, WassersteinParams(translation=False))
    assert on[0, 1] < 0.25 * on[0, 2:].min()
    # without translation invariance the shift counts in full: d^2 = shape^2 + |shift|^2
    shift = np.hypot(dx, dy) / R
    assert off[0, 1] > 0.8 * shift and off[0, 1] > 2 * on[0, 1]


def rms_radius(m: np.ndarray) -> float:
    """RMS radius of a map's positive mass around its centre of mass, in image units."""
    w = np.maximum(m, 0) / np.maximum(m, 0).sum()
    rows, cols = np.meshgrid(np.arange(m.shape[0]), np.arange(m.shape[1]), indexing="ij")
    p = np.stack([rows, cols], -1).reshape(-1, 2) / m.shape[0]
    mu = w.ravel() @ p
    return float(np.sqrt(w.ravel() @ ((p - mu) ** 2).sum(1)))


@FEW
@given(
    size=st.floats(3.5, 4.5), angle=st.floats(0, 2 * np.pi), factor=st.one_of(st.floats(0.6, 0.75), st.floats(1.3, 1.5))
)
def test_fast_scale_invariance(size, angle, factor):
    a = hook(R, (16, 16), size, angle)
    b = hook(R, (16, 16), size, angle, scale=factor)
    maps = [a, b, *panel(R)]
    on = fast_pairwise(maps, DEFAULT)
    off = fast_pairwise(maps, WassersteinParams(scale=False))
    assert on[0, 1] < 0.25 * on[0, 2:].min()
    # without scale invariance, a dilation by s costs |1 - s| RMS radii (image units); with it, little
    rms = rms_radius(a)
    assert off[0, 1] > 0.6 * abs(1 - factor) * rms
    assert off[0, 1] > 3 * on[0, 1] * rms


@FEW
@given(**hook_params, turn=st.floats(0.5, np.pi - 0.5))
def test_fast_rotation_invariance(cx, cy, size, angle, turn):
    a = hook(R, (cx, cy), size, angle)
    b = hook(R, (cx, cy), size, angle + turn)
    maps = [a, b, *panel(R)]
    on = fast_pairwise(maps, DEFAULT)
    off = fast_pairwise(maps, WassersteinParams(rotation=False))
    assert on[0, 1] < 0.25 * on[0, 2:].min()
    assert off[0, 1] > 0.3 * off[0, 2:].min() and off[0, 1] > 4 * on[0, 1]


def test_fast_reflection_counts_only_when_asked():
    a = hook(R, (16, 16), 4.0, 0.4)
    mirror = a.T.copy()  # a mirror image is not a rotation of a chiral shape
    maps = [a, mirror, *panel(R)]
    proper = fast_pairwise(maps, DEFAULT)
    mirrored = fast_pairwise(maps, WassersteinParams(reflection=True))
    assert mirrored[0, 1] < 0.25 * mirrored[0, 2:].min()
    assert proper[0, 1] > 4 * mirrored[0, 1]


# ----------------------------------------------------------------------------- exact W2 (POT), small grids

E = 16


def random_map(seed: int, r: int = E) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = np.zeros((r, r))
    for _ in range(3):
        img += rng.uniform(-0.3, 1.0) * gauss(
            r, rng.uniform(4, r - 4, 2), rng.uniform(1.0, 3.0, 2), rng.uniform(0, np.pi)
        )
    return img.astype(np.float32)


@settings(max_examples=12, deadline=None)
@given(st.integers(0, 10_000), st.integers(0, 10_000), st.booleans())
def test_exact_identity_and_symmetry(s1, s2, reflection):
    params = WassersteinParams(reflection=reflection)
    a, b = random_map(s1), random_map(s2)
    assert exact_w2(a, a, params) < 1e-6
    ab, ba = exact_w2(a, b, params), exact_w2(b, a, params)
    assert np.isfinite(ab) and ab >= 0
    assert ab == pytest.approx(ba, rel=1e-6, abs=1e-9)


@FEW
@given(st.integers(-3, 3), st.integers(-3, 3), st.integers(1, 3), st.floats(0.2, 1.3))
def test_exact_lattice_transforms(dy, dx, quarter_turns, angle):
    """Integer shifts, quarter turns and mirror images map the pixel lattice onto itself: exactly zero."""
    r = 20
    a = hook(r, (10, 10), 2.0, angle)
    a[a < 1e-2 * a.max()] = 0  # compact support, clear of the border: np.roll does not wrap mass
    assert not (a[:3].any() or a[-3:].any() or a[:, :3].any() or a[:, -3:].any())
    shifted = np.roll(a, (dy, dx), (0, 1))
    assert exact_w2(a, shifted, DEFAULT) < 1e-6
    shift = np.hypot(dy, dx) / r
    assert exact_w2(a, shifted, WassersteinParams(translation=False)) == pytest.approx(shift, abs=1e-6)
    turned = np.rot90(a, quarter_turns).copy()
    assert exact_w2(a, turned, DEFAULT) < 1e-6
    assert exact_w2(a, turned, WassersteinParams(rotation=False)) > 0.2
    mirror = a.T.copy()
    assert exact_w2(a, mirror, WassersteinParams(reflection=True)) < 1e-6
    assert exact_w2(a, mirror, DEFAULT) > 0.1


def compact(x: np.ndarray) -> np.ndarray:
    """Drop the far Gaussian tails (fewer support points, faster exact solves)."""
    return np.where(x >= 1e-3 * x.max(), x, 0).astype(np.float32)


@FEW
@given(st.floats(0, 2 * np.pi), st.floats(0.6, np.pi - 0.6), st.floats(0.75, 1.3), st.floats(-1.5, 1.5))
def test_exact_similarity_invariance(angle, turn, factor, shift):
    """Off-lattice transforms: a turned, scaled, shifted copy is nearer than any different shape with rotation
    invariance, farther without. (Pixels are point masses, so two samplings of one shape on differently turned
    or scaled lattices keep a floor of a fraction of a pixel: not exactly zero.)"""
    r = 24
    a = compact(hook(r, (12, 12), 3.5, angle))
    b = compact(hook(r, (12 + shift, 12 - shift), 3.5, angle + turn, scale=factor))
    typical = min(exact_w2(a, compact(x)) for x in panel(r))
    assert exact_w2(a, b) < 0.75 * typical
    assert exact_w2(a, b, WassersteinParams(rotation=False)) > 1.1 * typical


def test_nearly_isotropic_maps_try_more_rotations():
    """A cross with a knob, stretched 10% along one arm or the other: nearly the same map, but the principal
    axes are 90 degrees apart. Two proper rotations cannot align them; the 8 of isotropic maps can."""
    r = 24

    def cross(stretch_axis: int) -> np.ndarray:
        s0, s1 = (1.1, 1.0) if stretch_axis == 0 else (1.0, 1.1)
        img = gauss(r, (12, 12), (5.0 * s0, 1.2), 0) + gauss(r, (12, 12), (1.2, 5.0 * s1), 0)
        return (img + 0.6 * gauss(r, (6, 14), (1.3, 1.3), 0)).astype(np.float32)

    a, b = cross(0), cross(1)
    assert canonicalise(np.stack([a, b]), DEFAULT).iso.any()
    axes_only = WassersteinParams(isotropy=0.0)
    assert exact_w2(a, b) < 0.6 * exact_w2(a, b, axes_only)
    assert fast_pairwise([a, b], DEFAULT)[0, 1] < 0.6 * fast_pairwise([a, b], axes_only)[0, 1]


# ----------------------------------------------------------------------------- degenerate maps


def test_degenerate_maps_give_finite_distances_and_are_flagged():
    r = 16
    one_pixel = np.zeros((r, r), np.float32)
    one_pixel[3, 11] = 5.0
    negative = -np.abs(random_map(1))
    with_nan = random_map(2)
    with_nan[0, 0] = np.nan
    maps = np.stack([np.zeros((r, r), np.float32), negative, one_pixel, with_nan, random_map(3), one_pixel.copy()])
    for a in maps:
        for b in maps:
            d = exact_w2(a, b)
            assert np.isfinite(d) and d >= 0
    idx, dist, empty = knn_wasserstein(maps, 3)
    assert np.isfinite(dist).all() and (dist >= 0).all()
    assert empty.tolist() == [True, True, False, False, False, False]
    assert idx[2, 0] == 5 and dist[2, 0] < 1e-6  # the two one-pixel maps coincide
    assert exact_w2(maps[0], maps[1]) < 1e-6  # empty maps share the uniform measure
    _, _, empty_abs = knn_wasserstein(maps, 3, WassersteinParams(mass="absolute"))
    assert empty_abs.tolist() == [True, False, False, False, False, False]


def test_graph_shape_symmetry_and_duplicates():
    rng = np.random.default_rng(0)
    maps = np.stack([hook(R, rng.uniform(10, 22, 2), rng.uniform(2.5, 4.5), rng.uniform(0, 6)) for _ in range(60)])
    maps[7] = maps[3]
    idx, dist, empty = knn_wasserstein(maps, 8, seed=1)
    assert idx.shape == (60, 8) and idx.dtype == np.int64 and dist.dtype == np.float32
    assert not empty.any() and np.isfinite(dist).all()
    assert (idx != np.arange(60)[:, None]).all() and all(len(set(row)) == 8 for row in idx)
    assert (np.diff(dist, axis=1) >= 0).all()
    assert idx[3, 0] == 7 and idx[7, 0] == 3 and dist[3, 0] < 1e-3 * dist[:, -1].mean()
    d = {(i, j): dist[i, c] for i in range(60) for c, j in enumerate(idx[i])}
    for (i, j), v in d.items():
        if (j, i) in d:
            assert v == pytest.approx(d[j, i], rel=1e-5, abs=1e-7)
    # the registry entry (parameters from the config section) and a k larger than the class
    cfg = WassersteinParams(k=10)
    reg_idx, reg_dist, reg_empty = knn_graph(maps[:5], cfg, 0, None)
    assert reg_idx.shape == (5, 4) and reg_dist.shape == (5, 4) and reg_empty.shape == (5,)


def test_fast_agrees_with_exact_on_a_small_set():
    rng = np.random.default_rng(3)
    r = 16
    maps = []
    for _ in range(12):
        img = np.zeros((r, r))
        for _ in range(3):
            centre, sigmas = rng.uniform(5, r - 5, 2), rng.uniform(1.5, 3.5, 2)
            img += rng.uniform(0.3, 1.0) * gauss(r, centre, sigmas, rng.uniform(0, np.pi))
        maps.append(img.astype(np.float32))
    n = len(maps)
    exact = np.zeros((n, n))
    for i in range(n):
        for j in range(i + 1, n):
            exact[i, j] = exact[j, i] = exact_w2(maps[i], maps[j])
    fast = fast_pairwise(maps, DEFAULT)
    iu = np.triu_indices(n, 1)
    assert np.corrcoef(exact[iu], fast[iu])[0, 1] > 0.85
    np.fill_diagonal(exact, np.inf)
    np.fill_diagonal(fast, np.inf)
    assert (exact.argmin(1) == fast.argmin(1)).mean() >= 0.5


def test_params_are_checked():
    with pytest.raises(ValueError):
        WassersteinParams(mass="signed")
    with pytest.raises(ValueError):
        WassersteinParams(grid=7)


# ----------------------------------------------------------------------------- planted artifact


def planted(n_normal: int = 160, n_artifact: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Class-typical maps (a torso and two sleeves, small jitter) and Clever-Hans maps whose relevance sits
    mostly on a hook-shaped artifact at a random position, size and orientation; plus noise."""
    rng = np.random.default_rng(seed)

    def typical():
        c = np.array([16.0, 16.0]) + rng.normal(0, 1.5, 2)
        s, a = rng.uniform(0.9, 1.1), rng.normal(0, 0.1)
        m = gauss(R, c + [2, 0], (6 * s, 4.5 * s), a)
        for side in (-1, 1):
            m += rng.uniform(0.5, 0.8) * gauss(R, c + s * np.array([-4, 7 * side]), (2 * s, 3 * s), a + side * 0.6)
        return m / m.sum()

    def artifact():
        s, angle = rng.uniform(0.7, 1.4), rng.uniform(0, 2 * np.pi)
        h = hook(R, rng.uniform(8 * s, R - 8 * s, 2), 3.5, angle, scale=s)
        return 0.7 * h / h.sum() + 0.3 * typical()

    maps = np.stack([typical() for _ in range(n_normal)] + [artifact() for _ in range(n_artifact)])
    maps = maps + 0.03 * rng.normal(size=maps.shape) * maps.max((1, 2), keepdims=True)
    y = np.r_[np.zeros(n_normal, bool), np.ones(n_artifact, bool)]
    order = rng.permutation(len(y))
    return maps[order].astype(np.float32), y[order]


def artifact_f1(idx: np.ndarray, dist: np.ndarray, y: np.ndarray) -> float:
    """Best F1 of one spectral cluster (eigengap's number of clusters) against the planted artifact maps."""
    lam, vec = spectrum(knn_affinity(idx, dist), 10)
    labels = spectral_labels(vec, eigengap(lam, 8))
    return max(2 * (y & (labels == c)).sum() / (y.sum() + (labels == c).sum()) for c in np.unique(labels))


def test_planted_artifact_forms_one_cluster_only_under_the_invariant_distance():
    maps, y = planted()
    idx, dist, _ = knn_wasserstein(maps, 10)
    e_idx, e_dist = knn_euclidean(maps, 10)
    assert y[idx[y]].mean() > 0.8  # artifact maps' neighbours are artifact maps
    assert y[e_idx[y]].mean() < 0.4  # but not under the Euclidean baseline
    assert artifact_f1(idx, dist, y) > 0.9
    assert artifact_f1(e_idx, e_dist, y) < 0.6
