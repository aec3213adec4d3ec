"""The invariant Wasserstein kNN graph against exact W2 (POT), and its cost, for one class of relevance maps.

Maps: one class of a Fashion-MNIST run store (runs/fashion-mnist/store.zarr, relevance times relevance_scale,
labels from tables/samples.parquet), its first 1,300 maps; with --synthetic or without a store, planted maps
(class-typical shapes plus an artifact at random positions, sizes and orientations).

 (a) recall@10 of the fast graph against the exact invariant W2 kNN on a 200-map subset. Exact all-pairs is
     out of reach (~0.5 s per transport LP at 32x32, times 2 to 8 alignments, for 19,900 pairs), so the exact
     kNN of --gt-queries query maps is found by best-first search with valid lower bounds: every candidate
     (map, alignment) gets a dual bound (potentials from entropic OT on a grid, made feasible for the exact
     problem by c-transforms on the pixel supports: <a, f> + <b, f^c> <= W2^2 for any f), candidates are
     refined (a finer grid) and finally solved exactly in increasing bound order, and the search stops when
     the k-th exact distance is below every remaining bound. Full resolution, exact sets.
 (b) wall time of the fast graph for 1,300 maps, and of the Euclidean baseline;
 (c) POT exact W2 timed on sampled pairs, extrapolated to all pairs of the class; speed-up of (b) over it;
 (d) the fast graph at 1,300 and 5,200 maps (real maps of the class when it has them, else augmented).

    python benchmarks/distances.py                  # everything, ~10 min on 2 cores
    python benchmarks/distances.py --only recall    # (a); also: time, exact, scale
    python benchmarks/distances.py --synthetic --gt-queries 20
"""

from __future__ import annotations

import argparse
import heapq
import multiprocessing as mp
import os
import sys
import time
from pathlib import Path

import numpy as np
import ot
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from unhans.pipeline.method.metrics.euclidean import knn_euclidean  # noqa: E402
from unhans.pipeline.method.metrics.wasserstein import (  # noqa: E402
    WassersteinParams,
    _Grid,
    alignments,
    canonicalise,
    knn_wasserstein,
)

RUN = Path(__file__).resolve().parent.parent / "runs" / "fashion-mnist"
K = 10


# ----------------------------------------------------------------------------- maps


def real_maps(label: int, n: int) -> np.ndarray | None:
    """The first n relevance maps of one class of the Fashion-MNIST run, or None without a run."""
    store, table = RUN / "store.zarr", RUN / "tables" / "samples.parquet"
    if not (store.exists() and table.exists()):
        return None
    import pandas as pd
    import zarr

    group = zarr.open_group(str(store), mode="r")
    labels = pd.read_parquet(table, columns=["label"])["label"].to_numpy()
    idx = np.flatnonzero(labels == label)[:n]
    rel = group["attribution/relevance"].get_orthogonal_selection((idx, slice(None), slice(None)))
    scale = group["attribution/relevance_scale"][:][idx]
    return rel.astype(np.float32) * scale[:, None, None].astype(np.float32)


def gauss(r: int, centre, sigmas, angle: float) -> np.ndarray:
    rows, cols = np.meshgrid(np.arange(r) + 0.5, np.arange(r) + 0.5, indexing="ij")
    d0, d1 = rows - centre[0], cols - centre[1]
    c, s = np.cos(angle), np.sin(angle)
    return np.exp(-0.5 * (((c * d0 + s * d1) / sigmas[0]) ** 2 + ((-s * d0 + c * d1) / sigmas[1]) ** 2))


def synthetic_maps(n: int, r: int = 32, seed: int = 0) -> np.ndarray:
    """Class-typical maps (torso and sleeves, jittered) and 20% artifact maps (a hook at a random position,
    size and orientation, plus some object relevance), with noise."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        c = np.array([r / 2, r / 2]) + rng.normal(0, 1.5, 2)
        s, a = rng.uniform(0.85, 1.15), rng.normal(0, 0.15)
        m = gauss(r, c + [2, 0], (6 * s, 4.5 * s), a)
        for side in (-1, 1):
            m += rng.uniform(0.4, 0.9) * gauss(r, c + s * np.array([-4, 7 * side]), (2 * s, 3 * s), a + side * 0.6)
        m /= m.sum()
        if rng.random() < 0.2:
            s, ang = rng.uniform(0.7, 1.4), rng.uniform(0, 2 * np.pi)
            p = rng.uniform(8 * s, r - 8 * s, 2)
            along, across = np.array([np.cos(ang), np.sin(ang)]), np.array([-np.sin(ang), np.cos(ang)])
            h = gauss(r, p, (3.5 * s, 1.2 * s), ang) + 0.8 * gauss(
                r, p + 3.2 * s * along + 2.1 * s * across, (1.2 * s,) * 2, 0
            )
            m = 0.3 * m + 0.7 * h / h.sum()
        out.append(m + 0.03 * rng.normal(size=m.shape) * m.max())
    return np.stack(out).astype(np.float32)


# ----------------------------------------------------------------------------- exact kNN by pruning

STATE: dict = {}


def _setup(maps: np.ndarray, params: WassersteinParams) -> None:
    can = canonicalise(maps, params)
    STATE.update(can=can, params=params, r=maps.shape[1])
    # level 1: coarse grid, few iterations; level 2: fine grid, blur one cell
    STATE["grids"] = [
        _Grid(WassersteinParams(grid=32, scale=params.scale), torch.device("cpu"), blur=1 / 12),
        _Grid(WassersteinParams(grid=48, scale=params.scale), torch.device("cpu"), blur=1 / 24),
    ]
    STATE["iters"] = [40, 150]


def _potential(grid: _Grid, a: torch.Tensor, b: torch.Tensor, iters: int) -> torch.Tensor:
    """Entropic OT potential f on every grid cell (f = -eps log K(b e^{g/eps})), batch (m, G, G)."""
    K = grid.K
    bv = b.clone()
    for _ in range(iters):
        av = a / K(bv).clamp_min(1e-300)
        bv = b / K(av).clamp_min(1e-300)
    return -grid.eps * torch.log(K(bv).clamp_min(1e-300))


def _interp(grid: _Grid, F: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """Bilinear interpolation of grid functions F (m, G, G) at points z (m, P, 2) -> (m, P)."""
    G = grid.G
    u = ((z + grid.R) / grid.h - 0.5).clamp(0, G - 1)
    i0 = u.floor().clamp(max=G - 2)
    t = u - i0
    i0 = i0.long()
    flat = F.reshape(len(F), -1)
    out = torch.zeros(z.shape[:2], dtype=F.dtype)
    for di in (0, 1):
        for dj in (0, 1):
            wgt = (t[..., 0] if di else 1 - t[..., 0]) * (t[..., 1] if dj else 1 - t[..., 1])
            out += wgt * flat.gather(1, (i0[..., 0] + di) * G + i0[..., 1] + dj)
    return out


def _lower_bounds(level: int, i: int, js: np.ndarray, gs: list[np.ndarray]) -> np.ndarray:
    """Valid lower bounds of W2(z_i, g z_j) for a batch of (j, g): grid potentials f made feasible by
    c-transforms on the exact supports, W2^2 >= <a, f> + <b, f^c>.

    A c-transform min_x |x - y|^2 - f(x) = |y|^2 + min_x (|x|^2 - f(x) - 2 x.y) is one small GEMM and a
    min, in float32; the bound is lowered by a margin above that rounding error.
    """
    can, grid = STATE["can"], STATE["grids"][level]
    sa = can.w[i] > 0
    xa = can.z[i][sa]
    zb = np.stack([can.z[j] @ g.T for j, g in zip(js, gs)])
    wa, wb = torch.as_tensor(can.w[i][sa]), torch.as_tensor(can.w[js])
    a = grid.splat(can.z[i][None], can.w[i][None]).expand(len(js), -1, -1)
    F = _potential(grid, a, grid.splat(zb, can.w[js]), STATE["iters"][level])
    f = _interp(grid, F, torch.as_tensor(xa)[None].expand(len(js), -1, -1))
    x, y = torch.as_tensor(xa)[None].expand(len(js), -1, -1), torch.as_tensor(zb)
    x2, y2 = (x**2).sum(-1), (y**2).sum(-1)
    one_x, one_y = torch.ones_like(x2)[..., None], torch.ones_like(y2)[..., None]

    def c_transform_to_b(f):  # min over a's support, for every b point
        lhs = torch.cat([(x2 - f)[..., None], x], -1).float()
        rhs = torch.cat([one_y, -2 * y], -1).float()
        return y2 + torch.bmm(lhs, rhs.transpose(1, 2)).amin(1).double()

    def c_transform_to_a(g):  # min over b's support, for every a point
        lhs = torch.cat([one_x, -2 * x], -1).float()
        rhs = torch.cat([(y2 - torch.where(wb > 0, g, -torch.inf))[..., None], y], -1).float()
        return x2 + torch.bmm(lhs, rhs.transpose(1, 2)).amin(2).double()

    g = c_transform_to_b(f)
    if level:  # two more c-transforms: tighter (f^cc >= f with (f^cc)^c = f^c), at twice the cost
        f = c_transform_to_a(g)
        g = c_transform_to_b(f)
    lb = (f * wa).sum(1) + (torch.where(wb > 0, g, 0.0) * wb).sum(1)
    # float32 rounding of |x|^2 - 2 x.y + |y|^2 (three terms) and of the potentials, with room to spare
    scale = float(x2.max() + y2[wb > 0].max() + f.abs().max() + g[wb > 0].abs().max())
    return np.sqrt(np.maximum(lb.numpy() - 64 * 2**-24 * scale, 0.0))


def _exact(i: int, j: int, g: np.ndarray) -> float:
    can = STATE["can"]
    ma, mb = can.w[i] > 0, can.w[j] > 0
    cost = ot.dist(can.z[i][ma], (can.z[j] @ g.T)[mb])
    a, b = can.w[i][ma], can.w[j][mb]
    return float(np.sqrt(max(ot.emd2(a / a.sum(), b / b.sum(), cost, numItermax=10_000_000), 0.0)))


def exact_query(i: int, k: int = K, batch: int = 16) -> tuple[int, list[int], list[float], int, int, int]:
    """Exact k nearest maps of map i: best-first over (map, alignment) by lower bound."""
    can, params = STATE["can"], STATE["params"]
    n = len(can.w)
    items = [(j, g) for j in range(n) if j != i for g in alignments(bool(can.iso[i] or can.iso[j]), params)]
    lb = np.concatenate(
        [
            _lower_bounds(0, i, np.array([j for j, _ in items[s : s + batch]]), [g for _, g in items[s : s + batch]])
            for s in range(0, len(items), batch)
        ]
    )
    heap = [(float(b), 0, t) for t, b in enumerate(lb)]
    heapq.heapify(heap)
    best: dict[int, float] = {}
    n_fine = n_exact = 0
    while heap:
        kth = sorted(best.values())[k - 1] if len(best) >= k else np.inf
        bound, level, t = heap[0]
        if bound >= kth:
            break
        heapq.heappop(heap)
        j, g = items[t]
        if bound >= best.get(j, np.inf):
            continue  # cannot improve this map's distance
        if level == 0:
            fine = float(_lower_bounds(1, i, np.array([j]), [g])[0])
            heapq.heappush(heap, (max(bound, fine), 1, t))
            n_fine += 1
        else:
            best[j] = min(best.get(j, np.inf), _exact(i, j, g))
            n_exact += 1
    top = sorted(best.items(), key=lambda kv: (kv[1], kv[0]))[:k]
    return i, [j for j, _ in top], [d for _, d in top], len(items), n_fine, n_exact


def exact_knn(maps: np.ndarray, queries: list[int], params: WassersteinParams, procs: int) -> dict[int, tuple]:
    """Exact kNN of the query maps, one query per process at a time (each single-threaded)."""
    _setup(maps, params)
    threads = torch.get_num_threads()
    try:
        if procs <= 1:
            torch.set_num_threads(1)
            return {q[0]: q[1:] for q in map(exact_query, queries)}
        with mp.get_context("fork").Pool(procs, initializer=torch.set_num_threads, initargs=(1,)) as pool:
            return {q[0]: q[1:] for q in pool.imap_unordered(exact_query, queries)}
    finally:
        torch.set_num_threads(threads)


# ----------------------------------------------------------------------------- parts


CPU: dict[str, float] = {}  # process CPU seconds of the last timed call (robust to a shared machine)


def timed(fn, *args, **kw):
    t, c = time.perf_counter(), time.process_time()
    out = fn(*args, **kw)
    CPU["last"] = time.process_time() - c
    return out, time.perf_counter() - t


def part_recall(maps: np.ndarray, args) -> None:
    sub = maps[: args.subset]
    params = WassersteinParams()
    queries = list(range(min(args.gt_queries, len(sub))))
    print(
        f"(a) recall@{K} against exact invariant W2 on {len(sub)} maps ({sub.shape[1]}x{sub.shape[2]}, full resolution)"
    )
    print(
        f"    ground truth: exact kNN of {len(queries)} query maps among the {len(sub)} by lower-bound pruning, "
        f"{args.procs} processes"
    )
    gt, t_gt = timed(exact_knn, sub, queries, params, args.procs)
    items = sum(v[2] for v in gt.values())
    fine = sum(v[3] for v in gt.values())
    exact = sum(v[4] for v in gt.values())
    print(
        f"    {t_gt:.0f} s: {items} (map, alignment) candidates, {fine} refined bounds, {exact} exact LPs "
        f"({exact / len(queries):.1f} per query instead of {items / len(queries):.0f})"
    )
    rows = []
    for name, p in [("fast (default)", params), ("embedding only (rerank=False)", WassersteinParams(rerank=False))]:
        (idx, dist, _), t = timed(knn_wasserstein, sub, K, p, seed=0)
        rec = np.mean([len(set(idx[q]) & set(gt[q][0])) / K for q in queries])
        rows.append((name, rec, t, idx))
        print(f"    recall@{K} {name:32s} {rec:.3f}   ({t:.1f} s for {len(sub)} maps)")
    e_idx, _ = knn_euclidean(sub, K)
    rec = np.mean([len(set(e_idx[q]) & set(gt[q][0])) / K for q in queries])
    print(f"    recall@{K} {'euclidean (other metric, reference)':32s} {rec:.3f}")
    # how far off are the misses? exact distance of each wrong neighbour relative to the k-th exact distance
    _setup(sub, params)
    idx = rows[0][3]
    excess = []
    for q in queries:
        kth = gt[q][1][-1]
        for j in set(idx[q]) - set(gt[q][0]):
            d = min(_exact(q, j, g) for g in alignments(bool(STATE["can"].iso[q] or STATE["can"].iso[j]), params))
            excess.append(d / kth - 1)
    if excess:
        ex = np.array(excess)
        print(
            f"    the {len(ex)} misses of the fast graph are exact-W2 {100 * np.median(ex):.1f}% (median), "
            f"{100 * ex.max():.1f}% (max) beyond the true {K}th neighbour: near-ties"
        )


def part_time(maps: np.ndarray, args) -> tuple[float, float]:
    x = maps[:1300]
    times, cpu = [], []
    for _ in range(args.repeat):
        (idx, dist, empty), t = timed(knn_wasserstein, x, K, WassersteinParams(), seed=0)
        times.append(t)
        cpu.append(CPU["last"])
    _, t_e = timed(knn_euclidean, x, K)
    threads = torch.get_num_threads()
    runs = ", ".join(f"{t:.1f}" for t in times)
    print(
        f"(b) fast graph, {len(x)} maps, k={K}: {min(times):.1f} s (best of {runs} s; {threads} torch threads; "
        f"{min(cpu):.1f} CPU s); empty maps {int(empty.sum())}"
    )
    print(f"    Euclidean baseline graph (faiss flat): {t_e:.2f} s")
    return min(times), min(cpu)


def part_exact(maps: np.ndarray, args, t_fast: float | None) -> None:
    x = maps[:1300]
    params = WassersteinParams()
    can = canonicalise(x, params)
    rng = np.random.default_rng(0)
    pairs = rng.choice(len(x), size=(args.exact_pairs, 2))
    pairs = pairs[pairs[:, 0] != pairs[:, 1]]
    _setup(x, params)
    t0 = time.perf_counter()
    n_lp = 0
    for i, j in pairs:
        group = alignments(bool(can.iso[i] or can.iso[j]), params)
        min(_exact(int(i), int(j), g) for g in group)
        n_lp += len(group)
    per_pair = (time.perf_counter() - t0) / len(pairs)
    n = len(x)
    total = per_pair * n * (n - 1) / 2
    print(
        f"(c) POT exact W2 (ot.emd2), {len(pairs)} sampled pairs: {per_pair:.2f} s per pair "
        f"({n_lp / len(pairs):.1f} alignments, {per_pair * len(pairs) / n_lp:.2f} s per LP); "
        f"all {n * (n - 1) // 2} pairs of {n} maps: {total / 3600:.0f} h on one core"
    )
    if t_fast:
        cores = torch.get_num_threads()
        print(
            f"    speed-up of the fast graph (b) over it: {total / cores / t_fast:,.0f}x "
            f"(exact spread over the same {cores} cores: {total / cores / 3600:.0f} h vs {t_fast:.1f} s)"
        )


def part_scale(maps: np.ndarray, args, small: tuple[float, float] | None) -> None:
    if small is None:
        _, t = timed(knn_wasserstein, maps[:1300], K, WassersteinParams(), seed=0)
        small = (t, CPU["last"])
    t1300, c1300 = small
    big = maps[:5200]
    how = "real maps of the class"
    if len(big) < 5200:  # augment: mirror images are other maps (no reflection invariance), and noisy copies
        rng = np.random.default_rng(1)
        noisy = maps + 0.1 * rng.normal(size=maps.shape).astype(np.float32) * np.abs(maps).max((1, 2), keepdims=True)
        big = np.concatenate([maps, maps.transpose(0, 2, 1), noisy, noisy.transpose(0, 2, 1)])[:5200]
        how = "maps, mirror images and noisy copies"
    big = np.ascontiguousarray(big)
    times, cpu = [], []
    for _ in range(args.repeat):
        times.append(timed(knn_wasserstein, big, K, WassersteinParams(), seed=0)[1])
        cpu.append(CPU["last"])
    t, c = min(times), min(cpu)
    runs = ", ".join(f"{x:.1f}" for x in times)
    print(
        f"(d) fast graph: {t1300:.1f} s at 1300 maps, {t:.1f} s at {len(big)} (best of {runs} s; {how}): "
        f"{t / t1300:.2f}x for 4x the maps"
    )
    print(f"    process CPU time: {c1300:.1f} s and {c:.1f} s: {c / c1300:.2f}x (the ratio a busy machine cannot skew)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["recall", "time", "exact", "scale"], action="append")
    ap.add_argument("--synthetic", action="store_true", help="planted maps instead of the Fashion-MNIST run")
    ap.add_argument("--label", type=int, default=0, help="Fashion-MNIST class (0 = T-shirt/top)")
    ap.add_argument("--subset", type=int, default=200)
    ap.add_argument("--gt-queries", type=int, default=40, help="query maps with an exact kNN in (a)")
    ap.add_argument("--exact-pairs", type=int, default=20)
    ap.add_argument("--procs", type=int, default=2, help="processes for the exact ground truth")
    ap.add_argument("--repeat", type=int, default=2, help="runs of (b) and (d), best reported (shared machine)")
    ap.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads for the fast graph")
    args = ap.parse_args()
    parts = args.only or ["recall", "time", "exact", "scale"]
    torch.set_num_threads(args.threads)

    maps = None if args.synthetic else real_maps(args.label, 5200)
    source = f"Fashion-MNIST run, class {args.label}"
    if maps is None:
        maps, source = synthetic_maps(5200), "synthetic planted maps"
    print(f"maps: {source}, {len(maps)} x {maps.shape[1]}x{maps.shape[2]}; load average {os.getloadavg()[0]:.1f}")
    print(f"defaults: {WassersteinParams()}")
    t_fast = small = None
    if "recall" in parts:
        part_recall(maps, args)
    if "time" in parts:
        small = part_time(maps, args)
        t_fast = small[0]
    if "exact" in parts:
        part_exact(maps, args, t_fast)
    if "scale" in parts:
        part_scale(maps, args, small)


if __name__ == "__main__":
    main()
