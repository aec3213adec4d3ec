"""Wasserstein distance between relevance maps, invariant to translation, scale and rotation.

A map becomes a probability measure a = sum_p w_p delta(x_p) on its pixel centres x_p (image units: a
square image spans [-0.5, 0.5]^2), with w = max(R, 0) ("positive") or |R| ("absolute") normalised to
unit mass. A map without mass is flagged `empty` and replaced by the uniform measure (never a NaN).

Canonical form, each step switchable. mu = sum w x is the centre of mass, C = sum w (x-mu)(x-mu)^T +
I/(12 r^2) the covariance of the map read as piecewise-constant pixels (so one pixel has C > 0), and
C = V diag(l1, l2) V^T with l1 >= l2. Then z_p = D V^T (x_p - mu): rotation puts the major axis on
the first coordinate (V = I without rotation), scale divides by the RMS radius s = sqrt(l1 + l2)
(D = 1/s, so the RMS radius becomes 1; D = 1 without scale). Without translation invariance the
position is kept exactly: W2^2 of measures with means mu_a, mu_b equals |mu_a - mu_b|^2 plus W2^2 of
the centred ones, so that term is added to every squared distance below.

Principal axes fix a frame only up to the sign of each axis. The distance is the minimum over a group
of candidate alignments g acting on the second map, d(a, b) = min_g W2(z_a, g z_b), which is
symmetric because the candidates form a group: {I, -I} (the two proper rotations R and -R) by
default; when either map is nearly isotropic, anisotropy (l1 - l2)/(l1 + l2) < `isotropy`, its axes
are noise and the 8 rotations by multiples of 45 degrees are tried instead. Reflections (mirror
images) are not rotations and count only with `reflection=True` (which doubles the group; without
rotation invariance it adds the left-right mirror image).

Exact: `exact_w2` solves the transport LP (POT `ot.emd2`, squared-Euclidean ground cost between the
canonical support points) per candidate alignment: ~0.3-0.5 s per LP at 32x32 on one core, so it is the
ground truth and for small problems only. Pixels are point masses, so two samplings of one shape on
differently turned or scaled lattices stay a fraction of a pixel apart (in canonical units); lattice-
preserving moves (integer shifts, quarter turns, mirror images) give exactly zero.

Fast (`knn_wasserstein`), in torch (GPU when present), on a common G x G grid over the canonical square
[-R, R]^2 (R = 3 RMS radii; bilinear splatting). Entropic OT with blur sqrt(eps) = R/12 uses the
separable Gaussian kernel K = k (x) k: applying K to a batch of grids is two GEMMs, O(G^3) per grid.
  1. Linear OT embedding: entropic OT from a fixed isotropic Gaussian reference rho to each map
     (over-relaxed Sinkhorn), barycentric map T; E = sqrt(rho) T, |E_a - E_b| ~ W2(a, b). Grid and rho
     are invariant under the 8 symmetries of the square, so a map's views under quarter turns and flips
     are permutations of E; a 45-degree view (isotropic maps only) costs one more solve.
  2. Shortlist: PCA (64 dims) of the view embeddings in an exact faiss flat index (a GPU index when
     faiss has one), 2 * `shortlist` candidates per map plus reverse edges; per pair the best alignment
     by the full embedding distance, then each map's `shortlist` best pairs.
  3. Rerank those pairs with the debiased Sinkhorn divergence S = OT_eps(a, g b) - (OT_eps(a, a) +
     OT_eps(b, b)) / 2 (~ W2^2); distance sqrt(max(S, 0)) (plus the position term without translation
     invariance).
Recall against the exact invariant W2 and the time per class are measured by benchmarks/distances.py
(docs/measurements.md#distances); the alternatives this method was chosen over are in docs/history.md.
Cost per class of n maps of r x r, shortlist S (>= k), iterations t (30-50), grid G: O(n r^2) to
canonicalise and splat, O(n (1 + f) t G^3) for the embedding (f: share of isotropic maps), O(n^2 d) for
the flat search on d = 64 (seconds at n = 6,000; the only super-linear term), O(n S G^2) for alignments
and O(n S t G^3) for the rerank. Memory O(n (r^2 + G^2)), nothing n x n.
CPU threads: the Sinkhorn loops issue many small GEMMs, each a parallel region; with more torch threads
than free cores (several workers per machine) each region waits for a descheduled thread and the whole
is 10-20x slower. Give each worker process at most its share of the cores.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import ot
import torch
from pydantic import Field, field_validator

from unhans.pipeline.core.config import Section
from unhans.pipeline.method.metrics.euclidean import flat_index

# Fixed numerics (not tunables): grid half-width in RMS radii (image units without scale invariance),
# entropic blur, Sinkhorn iterations and over-relaxation, PCA dimension, mass floor of the grids.
HALF_WIDTH = 3.0
HALF_WIDTH_UNSCALED = 1.0
BLUR = 1.0 / 12  # entropic blur sqrt(eps) as a fraction of the grid half-width (0.25 RMS radii)
LOT_ITERS = 50
RERANK_ITERS = 30
OVERRELAX = 1.5
PCA_DIM = 64
CPU_BATCH, GPU_BATCH = 128, 8192  # grids per Sinkhorn batch: small on CPU (it stays in cache), large on a GPU
_TINY = 1e-300
FLOOR = 1e-9


class WassersteinParams(Section):
    """`distances` with metric wasserstein: the invariant Wasserstein distance (all have working defaults)."""

    metric: Literal["wasserstein"] = "wasserstein"
    k: int = Field(10, ge=2, description="neighbours per sample in the kNN graph")
    mass: Literal["positive", "absolute"] = Field("positive", description="relevance read as mass: max(R,0) or |R|")
    translation: bool = Field(True, description="invariant to translation (centre of mass)")
    scale: bool = Field(True, description="invariant to scale (RMS radius)")
    rotation: bool = Field(True, description="invariant to rotation (principal axes, best alignment)")
    reflection: bool = Field(False, description="also invariant to mirror images")
    isotropy: float = Field(0.15, ge=0, lt=1, description="anisotropy below which 8 rotations are tried")
    shortlist: int = Field(15, ge=1, description="candidates per map reranked with the Sinkhorn divergence")
    grid: int = Field(32, ge=4, description="side of the canonical grid of the fast method (even)")
    rerank: bool = Field(True, description="rerank the shortlist (False: linear-OT embedding distance only)")

    @field_validator("grid")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"{v} is not even")
        return v


# ----------------------------------------------------------------------------- canonical form


@dataclass
class Canonical:
    """Maps as canonical point clouds on their pixel centres."""

    w: np.ndarray  # (n, P) float64, unit mass
    z: np.ndarray  # (n, P, 2) float64 canonical coordinates (centred)
    mu: np.ndarray  # (n, 2) centre of mass, image units
    iso: np.ndarray  # (n,) bool, principal axes ignored
    empty: np.ndarray  # (n,) bool, no mass: uniform measure used


def pixel_grid(h: int, w: int) -> np.ndarray:
    """(h*w, 2) pixel centres (row, col) in image units, centred; the longer side spans [-0.5, 0.5]."""
    s = max(h, w)
    rows = (np.arange(h) + 0.5 - h / 2) / s
    cols = (np.arange(w) + 0.5 - w / 2) / s
    return np.stack(np.meshgrid(rows, cols, indexing="ij"), -1).reshape(-1, 2)


def mass_distributions(maps: np.ndarray, mode: str = "positive") -> tuple[np.ndarray, np.ndarray]:
    """(n, H, W) maps -> (n, H*W) unit-mass weights and the (n,) mask of maps without mass (uniform)."""
    n = len(maps)
    x = np.asarray(maps, dtype=np.float64).reshape(n, -1)
    x = np.where(np.isfinite(x), x, 0.0)
    x = np.maximum(x, 0.0) if mode == "positive" else np.abs(x)
    total = x.sum(1)
    empty = ~(total > 0)
    x[empty] = 1.0
    return x / x.sum(1, keepdims=True), empty


def canonicalise(maps: np.ndarray, params: WassersteinParams) -> Canonical:
    """Maps (n, H, W) -> canonical point clouds (see the module docstring)."""
    maps = np.asarray(maps)
    if maps.ndim != 3:
        raise ValueError(f"maps must be (n, H, W), got shape {maps.shape}")
    n, h, wd = maps.shape
    w, empty = mass_distributions(maps, params.mass)
    grid = pixel_grid(h, wd)
    mu = w @ grid
    y = grid[None] - mu[:, None]
    cov = np.einsum("np,npi,npj->nij", w, y, y) + np.eye(2) / (12.0 * max(h, wd) ** 2)
    a, b, c = cov[:, 0, 0], cov[:, 1, 1], cov[:, 0, 1]
    trace = a + b
    aniso = np.sqrt((a - b) ** 2 + 4 * c**2) / trace
    z = y
    if params.rotation:
        theta = 0.5 * np.arctan2(2 * c, a - b)  # angle of the major axis
        ct, st = np.cos(theta)[:, None], np.sin(theta)[:, None]
        z = np.stack([ct * y[..., 0] + st * y[..., 1], -st * y[..., 0] + ct * y[..., 1]], -1)
    if params.scale:
        z = z / np.sqrt(trace)[:, None, None]
    iso = (aniso < params.isotropy) if params.rotation else np.zeros(n, bool)
    return Canonical(w=w, z=z, mu=mu, iso=iso, empty=empty)


def rotation(angle: float) -> np.ndarray:
    c, s = np.cos(angle), np.sin(angle)
    return np.array([[c, -s], [s, c]])


FLIP = np.diag([1.0, -1.0])


def alignments(iso: bool, params: WassersteinParams) -> list[np.ndarray]:
    """The group of candidate alignments g (2x2, acting on column vectors) for a pair of maps.

    iso: whether either map of the pair is nearly isotropic. Identity first.
    """
    if params.rotation:
        m = 8 if iso else 2
        group = [rotation(2 * np.pi * j / m) for j in range(m)]
    else:
        group = [np.eye(2)]
    if params.reflection:
        group = group + [g @ FLIP for g in group]
    return group


def _emd_w2sq(wa: np.ndarray, za: np.ndarray, wb: np.ndarray, zb: np.ndarray) -> float:
    ma, mb = wa > 0, wb > 0
    a, b = wa[ma], wb[mb]
    cost = ot.dist(za[ma], zb[mb])
    return float(max(ot.emd2(a / a.sum(), b / b.sum(), cost, numItermax=10_000_000), 0.0))


def exact_w2(a_map: np.ndarray, b_map: np.ndarray, params: WassersteinParams = WassersteinParams()) -> float:
    """Exact invariant W2 between two (H, W) maps: min over candidate alignments of the transport LP."""
    a_map, b_map = np.asarray(a_map), np.asarray(b_map)
    if a_map.shape != b_map.shape:
        raise ValueError(f"maps differ in shape: {a_map.shape} vs {b_map.shape}")
    can = canonicalise(np.stack([a_map, b_map]), params)
    shift = 0.0 if params.translation else float(((can.mu[0] - can.mu[1]) ** 2).sum())
    best = min(
        _emd_w2sq(can.w[0], can.z[0], can.w[1], can.z[1] @ g.T)
        for g in alignments(bool(can.iso[0] or can.iso[1]), params)
    )
    return float(np.sqrt(best + shift))


# ----------------------------------------------------------------------------- grid machinery


def _square_symmetry(g: np.ndarray) -> bool:
    """Whether g is one of the 8 symmetries of the square (entries in {0, +1, -1})."""
    return bool(np.all(np.isclose(np.abs(g), np.round(np.abs(g)))))


class _Grid:
    """The canonical G x G grid: coordinates, Gaussian reference, 1-D kernel, symmetry permutations."""

    def __init__(self, params: WassersteinParams, device: torch.device, blur: float = BLUR) -> None:
        G = params.grid
        self.G, self.device = G, device
        self.R = HALF_WIDTH if params.scale else HALF_WIDTH_UNSCALED
        self.h = 2 * self.R / G
        self.eps = (blur * self.R) ** 2
        c = -self.R + self.h * (np.arange(G) + 0.5)
        self.c_np = c
        self.c = torch.as_tensor(c, dtype=torch.float64, device=device)
        k = torch.exp(-((self.c[:, None] - self.c[None]) ** 2) / self.eps)
        # exact zeros instead of tiny entries: subnormal products inside the GEMMs are very slow on CPUs
        self.k = torch.where(k > 1e-100, k, 0.0)
        sigma2 = (self.R / 3.0) ** 2 / 2.0  # reference RMS radius R/3 (= 1 with scale invariance)
        rho = torch.exp(-(self.c[:, None] ** 2 + self.c[None] ** 2) / (2 * sigma2))
        self.rho = rho / rho.sum()
        self.cells = np.stack(np.meshgrid(c, c, indexing="ij"), -1).reshape(-1, 2)
        self._perms: dict[bytes, torch.Tensor] = {}
        self.batch = CPU_BATCH if device.type == "cpu" else GPU_BATCH

    def perm(self, g: np.ndarray) -> torch.Tensor:
        """Flat index p with H_g = H.flatten()[p] the histogram of the points g z (g a square symmetry)."""
        key = np.round(g).astype(np.int8).tobytes()
        if key not in self._perms:
            src = self.cells @ np.round(g)  # g^{-1} y = g^T y for orthogonal g, as rows: y @ g
            idx = np.round((src + self.R) / self.h - 0.5).astype(np.int64)
            self._perms[key] = torch.as_tensor(idx[:, 0] * self.G + idx[:, 1], device=self.device)
        return self._perms[key]

    def splat(self, z: np.ndarray, w: np.ndarray, batch: int = 2048) -> torch.Tensor:
        """Bilinear splatting of (m, P, 2) canonical points with weights (m, P) -> (m, G, G) float64."""
        G, out = self.G, []
        for s in range(0, len(z), batch):
            zz = torch.as_tensor(z[s : s + batch], dtype=torch.float64, device=self.device)
            ww = torch.as_tensor(w[s : s + batch], dtype=torch.float64, device=self.device)
            u = ((zz + self.R) / self.h - 0.5).clamp(0, G - 1)
            i0 = u.floor().clamp(max=G - 2)
            f = u - i0
            i0 = i0.long()
            hist = torch.zeros(len(zz), G * G, dtype=torch.float64, device=self.device)
            for di in (0, 1):
                fi = f[..., 0] if di else 1 - f[..., 0]
                for dj in (0, 1):
                    fj = f[..., 1] if dj else 1 - f[..., 1]
                    hist.scatter_add_(1, (i0[..., 0] + di) * G + i0[..., 1] + dj, ww * fi * fj)
            # a floor of negligible mass everywhere keeps the Sinkhorn scalings in a moderate range (tiny
            # ones make subnormal products inside the GEMMs, which are very slow on CPUs)
            hist = (1 - FLOOR) * hist / hist.sum(1, keepdim=True) + FLOOR / G**2
            out.append(hist.reshape(-1, G, G))
        return torch.cat(out)

    def K(self, x: torch.Tensor) -> torch.Tensor:
        """Gaussian kernel applied to a batch of (G, G) grids: k x k (two GEMMs)."""
        y = torch.matmul(x, self.k)
        return torch.matmul(y.transpose(1, 2), self.k).transpose(1, 2)


def _relax(old: torch.Tensor, new: torch.Tensor, omega: float) -> torch.Tensor:
    """Over-relaxed Sinkhorn step old^(1-omega) new^omega, computed in logs, zero where new is zero."""
    ok = (old > 0) & (new > 0)
    mixed = torch.exp((1 - omega) * torch.log(old.clamp_min(_TINY)) + omega * torch.log(new.clamp_min(_TINY)))
    return torch.where(ok, mixed, new)


def _lot_embed(grid: _Grid, hist: torch.Tensor) -> torch.Tensor:
    """Linear OT embeddings (m, G, G, 2) float32: sqrt(rho) * barycentric map of entropic OT rho -> hist."""
    rho, c, K = grid.rho, grid.c, grid.K
    out, batch = [], grid.batch
    for s in range(0, len(hist), batch):
        b = hist[s : s + batch]
        v = torch.ones_like(b)
        u = torch.ones_like(b)
        for it in range(LOT_ITERS):
            omega = OVERRELAX if it >= 5 else 1.0
            u = _relax(u, rho / K(v).clamp_min(_TINY), omega)
            v = _relax(v, b / K(u).clamp_min(_TINY), omega)
        kv = K(v)
        ok = kv > _TINY
        denom = kv.clamp_min(_TINY)
        t0 = torch.where(ok, K(v * c[:, None]) / denom, c[:, None].expand_as(kv))
        t1 = torch.where(ok, K(v * c[None, :]) / denom, c[None, :].expand_as(kv))
        out.append((torch.stack([t0, t1], -1) * rho.sqrt()[None, :, :, None]).float())
    return torch.cat(out)


def _ot_eps(grid: _Grid, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Entropic OT_eps(a, b) (dual value) for batches of grids a, b (m, G, G)."""
    K = grid.K
    bv = b.clone()
    for _ in range(RERANK_ITERS):
        av = a / K(bv).clamp_min(_TINY)
        bv = b / K(av).clamp_min(_TINY)
    av = a / K(bv).clamp_min(_TINY)
    fa = torch.where(a > 0, torch.log(av.clamp_min(_TINY) / a.clamp_min(_TINY)), 0.0)
    gb = torch.where(b > 0, torch.log(bv.clamp_min(_TINY) / b.clamp_min(_TINY)), 0.0)
    return grid.eps * ((a * fa).sum((1, 2)) + (b * gb).sum((1, 2)))


def _ot_eps_self(grid: _Grid, a: torch.Tensor) -> torch.Tensor:
    """OT_eps(a, a) by the symmetric (averaged) Sinkhorn iteration."""
    K = grid.K
    av = a.clone()
    for _ in range(RERANK_ITERS):
        av = torch.sqrt(av * a / K(av).clamp_min(_TINY))
    av = a / K(av).clamp_min(_TINY)
    fa = torch.where(a > 0, torch.log(av.clamp_min(_TINY) / a.clamp_min(_TINY)), 0.0)
    return 2 * grid.eps * (a * fa).sum((1, 2))


# ----------------------------------------------------------------------------- views


class _Views:
    """Views g z_i of the maps under candidate alignments, as (source histogram, square symmetry d).

    A 45-degree rotation is not a symmetry of the grid: isotropic maps get a second source, the splat
    of their 45-degree rotation r45 z_i, and g = d r45. Every other view is a permutation of a source.
    """

    def __init__(self, can: Canonical, params: WassersteinParams, grid: _Grid) -> None:
        self.params, self.grid = params, grid
        n = len(can.w)
        self.n, self.iso, self.mu = n, can.iso, can.mu
        self.r45 = rotation(np.pi / 4)
        extra = np.flatnonzero(can.iso) if params.rotation else np.zeros(0, np.int64)
        self.src_of = np.arange(n)
        self.src45 = np.full(n, -1)
        self.src45[extra] = n + np.arange(len(extra))
        self.hist = grid.splat(
            np.concatenate([can.z, can.z[extra] @ self.r45.T]), np.concatenate([can.w, can.w[extra]])
        )
        # the alignments of isotropic pairs, and which of them non-isotropic pairs use too
        self.full = alignments(True, params)
        small = alignments(False, params)
        self.in_small = [any(np.allclose(g, h) for h in small) for g in self.full]

    def sources(self, idx: np.ndarray, g: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sources and the square symmetry d with g z_i = d (source points of i), for maps idx."""
        if _square_symmetry(g):
            return self.src_of[idx], np.round(g)
        src = self.src45[idx]
        if (src < 0).any():
            raise ValueError("45-degree view of a map that is not isotropic")
        return src, np.round(g @ self.r45.T)

    def hist_view(self, srcs: np.ndarray, d: np.ndarray) -> torch.Tensor:
        """Histograms (m, G, G) of the views d (source) for sources srcs."""
        G, dev = self.grid.G, self.grid.device
        flat = self.hist.reshape(len(self.hist), -1)[torch.as_tensor(srcs, device=dev)]
        return flat[:, self.grid.perm(d)].reshape(-1, G, G)


def _embed_view(grid: _Grid, emb: torch.Tensor, srcs: np.ndarray, d: np.ndarray) -> torch.Tensor:
    """Embeddings (m, G*G*2) of the views d (source): E_d(y) = d E(d^-1 y), a signed permutation."""
    dev = emb.device
    cols = np.abs(d).argmax(1)  # (E(x) d^T)_r = sign_r E(x)_{cols_r}
    signs = torch.as_tensor(np.tile(d[np.arange(2), cols], grid.G**2), dtype=emb.dtype, device=dev)
    index = (grid.perm(d)[:, None] * 2 + torch.as_tensor(cols, device=dev)[None]).reshape(-1)
    rows = torch.index_select(emb.reshape(len(emb), -1), 0, torch.as_tensor(srcs, device=dev))
    return torch.index_select(rows, 1, index) * signs


# ----------------------------------------------------------------------------- kNN


def _resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _blocks(views: _Views, queries: bool) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(owners, sources, d) per alignment: the index rows (every view of every map under its own group)
    or the query rows (the identity view of every map, all views of isotropic maps)."""
    out = []
    for gi, g in enumerate(views.full):
        if gi == 0:
            owners = np.arange(views.n)
        elif views.in_small[gi] and not queries:
            owners = np.arange(views.n)
        else:
            owners = np.flatnonzero(views.iso)
        if len(owners):
            srcs, d = views.sources(owners, g)
            out.append((owners, srcs, d))
    return out


def _pca_basis(x: torch.Tensor, dim: int, rng: np.random.Generator, power: int = 3) -> torch.Tensor:
    """Top `dim` right singular vectors of x (m, D) as a (D, dim) basis: seeded randomised range finder."""
    omega = torch.as_tensor(rng.standard_normal((x.shape[1], dim + 16)), dtype=x.dtype, device=x.device)
    y = torch.linalg.qr(x @ omega).Q
    for _ in range(power):
        y = torch.linalg.qr(x @ torch.linalg.qr(x.T @ y).Q).Q
    _, _, vt = torch.linalg.svd(y.T @ x, full_matrices=False)
    return vt[:dim].T.contiguous()


def _shortlist(grid: _Grid, views: _Views, emb: torch.Tensor, want: int, seed: int) -> list[np.ndarray]:
    """`want` candidate maps per map from an exact faiss index over PCA-reduced view embeddings."""
    n = views.n
    if n - 1 <= want:
        return [np.delete(np.arange(n), i) for i in range(n)]
    rows, queries = _blocks(views, queries=False), _blocks(views, queries=True)
    # PCA basis from a seeded subsample of the index rows
    sizes = np.array([len(o) for o, _, _ in rows])
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(sizes.sum(), size=min(sizes.sum(), 4096), replace=False))
    offsets = np.r_[0, np.cumsum(sizes)]
    x = torch.cat(
        [
            _embed_view(grid, emb, srcs[pick[(pick >= lo) & (pick < hi)] - lo], d)
            for (_, srcs, d), lo, hi in zip(rows, offsets[:-1], offsets[1:])
        ]
    ).double()
    mean = x.mean(0)
    basis = _pca_basis(x - mean, min(PCA_DIM, *x.shape), rng)

    def project(blocks: list, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
        parts, owners = [], []
        for own, srcs, d in blocks:
            for s in range(0, len(srcs), batch):
                e = _embed_view(grid, emb, srcs[s : s + batch], d).double()
                parts.append(((e - mean) @ basis).float().cpu().numpy())
            owners.append(own)
        return np.ascontiguousarray(np.concatenate(parts)), np.concatenate(owners)

    xb, rows_owner = project(rows)
    xq, q_owner = project(queries)
    if not views.params.translation:  # d^2 = shape^2 + |mu_a - mu_b|^2: the position joins the embedding
        xb = np.ascontiguousarray(np.hstack([xb, views.mu[rows_owner].astype(np.float32)]))
        xq = np.ascontiguousarray(np.hstack([xq, views.mu[q_owner].astype(np.float32)]))
    index = flat_index(xb.shape[1])
    index.add(xb)
    kk = int(min(len(xb), np.ceil((want + 1) * len(xb) / n) + 16))
    dist, found = index.search(xq, kk)
    # per map: candidates by their smallest distance over its query views, self excluded
    qo = np.repeat(q_owner, kk)
    co = np.where(found >= 0, rows_owner[np.maximum(found, 0)], -1).ravel()
    cd = dist.ravel()
    ok = (co >= 0) & (co != qo)
    qo, co, cd = qo[ok], co[ok], cd[ok]
    order = np.lexsort((cd, co, qo))
    qo, co, cd = qo[order], co[order], cd[order]
    first = np.r_[True, (qo[1:] != qo[:-1]) | (co[1:] != co[:-1])]
    qo, co, cd = qo[first], co[first], cd[first]
    order = np.lexsort((co, cd, qo))
    qo, co = qo[order], co[order]
    rank = np.arange(len(qo)) - np.searchsorted(qo, np.arange(n))[qo]
    qo, co = qo[rank < want], co[rank < want]
    bounds = np.searchsorted(qo, np.arange(n + 1))
    return [co[bounds[i] : bounds[i + 1]] for i in range(n)]


def _pair_orientation(i: np.ndarray, j: np.ndarray, iso: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unordered pair -> (p, q), q the map whose views are tried: the isotropic one, else the larger index."""
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    swap = iso[lo] & ~iso[hi]
    return np.where(swap, hi, lo), np.where(swap, lo, hi)


def _by_alignment(views: _Views, iso_pair: np.ndarray, g_index: np.ndarray | None = None):
    """Yield (pair rows, alignment g, its index in its group) over the pairs' candidate alignments."""
    for flag in (False, True):
        group = alignments(flag, views.params)
        sel = np.flatnonzero(iso_pair == flag)
        for gi, g in enumerate(group):
            rows = sel if g_index is None else sel[g_index[sel] == gi]
            if len(rows):
                yield rows, g, gi


def _best_alignments(
    grid: _Grid, views: _Views, emb: torch.Tensor, p: np.ndarray, q: np.ndarray, iso_pair: np.ndarray, batch: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Per pair the smallest squared embedding distance over its alignments, and that alignment's index."""
    best_d = np.full(len(p), np.inf)
    best_g = np.zeros(len(p), np.int64)
    emb_flat = emb.reshape(len(emb), -1)
    for rows_all, g, gi in _by_alignment(views, iso_pair):
        for s in range(0, len(rows_all), batch):
            rows = rows_all[s : s + batch]
            base = emb_flat[torch.as_tensor(views.src_of[p[rows]], device=grid.device)]
            srcs, d = views.sources(q[rows], g)
            dd = (base - _embed_view(grid, emb, srcs, d)).pow(2).sum(1).double().cpu().numpy()
            better = dd < best_d[rows]
            best_d[rows[better]] = dd[better]
            best_g[rows[better]] = gi
    return best_d, best_g


def _sinkhorn_rerank(
    grid: _Grid,
    views: _Views,
    p: np.ndarray,
    q: np.ndarray,
    g_index: np.ndarray,
    iso_pair: np.ndarray,
) -> np.ndarray:
    """Debiased Sinkhorn divergence S(a_p, g a_q) per pair (approximates W2^2), clipped at 0."""
    n_src, batch = len(views.hist), grid.batch
    self_ot = torch.cat([_ot_eps_self(grid, views.hist[s : s + batch]) for s in range(0, n_src, batch)])
    out = np.empty(len(p))
    for rows_all, g, _ in _by_alignment(views, iso_pair, g_index):
        for s in range(0, len(rows_all), batch):
            rows = rows_all[s : s + batch]
            src_p = torch.as_tensor(views.src_of[p[rows]], device=grid.device)
            srcs, d = views.sources(q[rows], g)
            a, b = views.hist[src_p], views.hist_view(srcs, d)
            val = _ot_eps(grid, a, b) - 0.5 * self_ot[src_p] - 0.5 * self_ot[torch.as_tensor(srcs, device=grid.device)]
            out[rows] = val.cpu().numpy()
    return np.maximum(out, 0.0)


def _top_pairs(p: np.ndarray, q: np.ndarray, d2: np.ndarray, n: int, want: int) -> np.ndarray:
    """Indices of the pairs among the `want` smallest of p's or of q's pairs."""
    ends = np.concatenate([p, q])
    pid = np.concatenate([np.arange(len(p))] * 2)
    order = np.lexsort((np.concatenate([d2, d2]), ends))
    ends, pid = ends[order], pid[order]
    rank = np.arange(len(ends)) - np.searchsorted(ends, np.arange(n))[ends]
    return np.unique(pid[rank < want])


def _assemble(p: np.ndarray, q: np.ndarray, d2: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Per map the k nearest of its pairs (ascending, ties by index); short rows (degenerate input) are
    filled with the remaining maps at the row's largest distance."""
    ends = np.concatenate([p, q])
    other = np.concatenate([q, p])
    dd = np.concatenate([d2, d2])
    order = np.lexsort((other, dd, ends))
    ends, other, dd = ends[order], other[order], dd[order]
    bounds = np.searchsorted(ends, np.arange(n + 1))
    idx = np.empty((n, k), np.int64)
    dist = np.empty((n, k), np.float32)
    for i in range(n):
        o, d = other[bounds[i] : bounds[i + 1]][:k], dd[bounds[i] : bounds[i + 1]][:k]
        if len(o) < k:
            rest = np.setdiff1d(np.delete(np.arange(n), i), o)[: k - len(o)]
            o = np.concatenate([o, rest])
            d = np.concatenate([d, np.full(len(rest), d.max() if len(d) else 0.0)])
        idx[i], dist[i] = o, np.sqrt(np.maximum(d, 0.0))
    return idx, dist


def knn_wasserstein(
    maps: np.ndarray,
    k: int,
    params: WassersteinParams = WassersteinParams(),
    seed: int = 0,
    device: str | torch.device | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """kNN graph under the invariant Wasserstein distance (the fast method of the module docstring).

    maps (n, H, W) -> indices (n, k) int64 of each map's nearest other maps, distances (n, k) float32
    ascending, and the (n,) bool mask of maps without mass. k is capped at n - 1. device: torch
    device for the transport computations (default: CUDA when available, else CPU).
    """
    maps = np.asarray(maps)
    n = len(maps)
    if n < 2:
        raise ValueError("a kNN graph needs at least two maps")
    k = min(int(k), n - 1)
    if k < 1:
        raise ValueError("k must be >= 1")
    dev = _resolve_device(device)
    can = canonicalise(maps, params)
    grid = _Grid(params, dev)
    views = _Views(can, params, grid)
    emb = _lot_embed(grid, views.hist)
    want = max(params.shortlist, k)
    cands = _shortlist(grid, views, emb, 2 * want, seed)

    # unordered candidate pairs (forward and reverse edges), oriented, with their best alignment
    ii = np.repeat(np.arange(n), [len(c) for c in cands])
    p, q = _pair_orientation(ii, np.concatenate(cands).astype(np.int64), can.iso)
    p, q = np.unique(np.stack([p, q], 1), axis=0).T
    iso_pair = can.iso[p] | can.iso[q]
    d2, g_index = _best_alignments(grid, views, emb, p, q, iso_pair)
    shift = np.zeros(len(p)) if params.translation else ((can.mu[p] - can.mu[q]) ** 2).sum(1)
    d2 = d2 + shift

    # each map's `want` best pairs by the embedding, reranked with the Sinkhorn divergence
    keep = _top_pairs(p, q, d2, n, want)
    p, q, g_index, iso_pair, d2 = p[keep], q[keep], g_index[keep], iso_pair[keep], d2[keep]
    if params.rerank:
        d2 = _sinkhorn_rerank(grid, views, p, q, g_index, iso_pair) + shift[keep]
    idx, dist = _assemble(p, q, d2, n, k)
    return idx, dist, can.empty


def knn(maps: np.ndarray, params: WassersteinParams, seed: int = 0, device: str | torch.device | None = None):
    """The registry's entry point (pipeline/method/metrics/__init__.py): `distances` -> kNN graph."""
    return knn_wasserstein(maps, params.k, params, seed, device)
