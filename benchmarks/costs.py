"""Per-stage cost as a function of N (samples) and n (class size), and a cost model for ImageNet.

Three measurements, all taken in this run on this machine (the output says which CPU, how many
threads and the load average while each part ran):

 lrp     VGG-16 and ResNet-50 at 224 px (random weights: the cost does not depend on their values)
         through pipeline.attribution.LRP with the imagenet config's composite and the ModelSpec's
         canonizers: CPU seconds per image (process CPU time, batch --batch, --batches batches, best
         of --repeats), and the FLOPs per image of the LRP pass and of a plain forward pass, counted by
         torch.utils.flop_counter (conv and matmul FLOPs, 2 per multiply-add, of every aten op
         dispatched: zennit's modified forward passes inside its backward hooks included).
 stages  the whole chain on Fashion-MNIST (small CNN trained 1 epoch by the train stage, the default
         invariant Wasserstein distances) at three N (n = N/10 per class), one torch/BLAS/faiss
         thread: process CPU time (self + children) and wall time of every stage (the transfer stage's
         also without its model's forward passes, timed inside it); the kNN graph of each chain's largest
         class once more with its torch traffic counted (matmul FLOPs, element-wise bytes, kernels, host
         seconds: what its GPU path would run); and the chain once more at --report-n images a class,
         where the report's fixed cost per class is read.
 decode  pipeline/data/folder.py FolderDataset.decode (PIL draft decoding, resize to 256, centre
         crop to 224) of ImageNet-sized JPEGs (500 x 375, quality 90, crops of the photos shipped in
         installed packages) and the index stage's header probe: CPU seconds per image on one core.

Cost model (ImageNet-1k: N = 1,281,167 images, K = 1,000 classes of n = N/K on average; the model's
weights are given, so no train stage). One worker = one GPU with C CPU cores (--cores-per-gpu).

    attribute  max(N F_lrp / R,  N (t_dec + t_th + t_att) / C)  decoding runs in compute.decode_threads
                                                             threads beside the GPU, the thumbnails
                                                             (t_th) in threads of their own
    distances  K (F_d / R64 + B_d / BW + O_d L) + K h_d / C   on a GPU worker; CPU only: K a_d n^b_d / C
                   F_d, B_d, O_d, h_d: per class, the float64 matmul FLOPs, element-wise bytes, kernel count
                   (at the GPU's batch) and host-side CPU seconds (canonical forms, faiss, numpy
                   bookkeeping, timed) of the kNN graph (distance_traffic, on each chain's largest class,
                   fitted as a n^b); R64, BW, L: ASSUMED GPU float64 throughput, bandwidth, launch cost
    cluster    K a_c n^b_c / C                               per-class fits t(n) = a n^b over the
                                                             three Fashion-MNIST sizes (32 x 32 maps
                                                             at both scales, so they carry over)
    transfer   max(N (h + h_p) F_fwd / R,  D t_dec / C)  +  (m K t_dec + K a_t n^b_t) / C
                   h: forward passes per sample of the evidence and global probes, configs/imagenet.yaml's
                   (a screening of 1 + 1 probes, then the 40 candidate classes on all 16 + 4 hosts:
                   1 + 1 + 40 / K x 20 = 2.8); h_p: the place probe's bound per sample, place_groups x 2
                   place_donors x place_hosts x K_p / N, K_p the classes whose place is probed (screened: the
                   candidates and place_reference more, 80; 0.1 on its 8 hosts; a confirmed place's reach adds
                   place_hosts per member of its class, not counted); D: the donors decoded (every sample,
                   the candidates' again, the place probe's), beside the GPU's passes (the next chunk decodes
                   while one is probed); m = 16 hosts a class, decoded before its probes; a_t n^b_t: the
                   stage's CPU time less its model's forward passes (timed in the stage), which on a GPU
                   worker are the GPU's
    score      K a_s n^b_s / C                               statistics on the stored transfers
    report     K (d t_dec + a_r n^b_r) / C                 d: images decoded a class (prototypes of every
                                                             block, the group's strip); the member tiles are
                                                             the attribute stage's thumbnails
    index      N (t_probe + t_idx)            in the driver, one core
    clean      N t_clean                      in the driver, one core

F_lrp, F_fwd: measured FLOPs per image; R: ASSUMED sustained GPU throughput (--gpu-tflops; no GPU was
measured unless --device cuda); t_dec, t_probe: measured per image and core; t_att, t_idx, t_clean:
marginal CPU seconds per sample on Fashion-MNIST (slope of t = c0 + c1 N; they include the small
    CNN's own work, an upper bound); a, b:
fitted. On G GPUs (--gpus, a Dask cluster, `compute.workers`/`compute.scheduler`): attribute is
sharded by chunks and the per-class stages are mapped over classes, so those terms divide by G
(linear scaling, the store on a shared filesystem or an fsspec URL that every worker reads and
writes); index and clean run in the driver and do not. The CPU-only columns replace N F_lrp / R by
N t_lrp / C and N h F_fwd / R by N h t_fwd / C (measured CPU seconds per image and core).

    python benchmarks/costs.py                       # everything (~8 min of one core)
    python benchmarks/costs.py --quick               # tiny sizes: a smoke run (~1 min)
    python benchmarks/costs.py --only lrp --json /tmp/lrp.json
    python benchmarks/costs.py --only stages --load /tmp/lrp.json --gpu-tflops 100
    python benchmarks/costs.py --only model --load /tmp/all.json      # the cost model again, no measuring
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from unhans.pipeline.data.folder import FolderDataset, imagenet_classes, probe  # noqa: E402
from unhans.pipeline.data.models import MODELS  # noqa: E402
from unhans.pipeline.data.photos import natural_photos  # noqa: E402
from unhans.pipeline.method.attribution import LRP, sum_pool  # noqa: E402
from unhans.pipeline.report.pages import GROUP_STRIP  # noqa: E402
from unhans.pipeline.report.render import image_rgb, thumbs  # noqa: E402
from unhans.stages import load_config, runner  # noqa: E402
from unhans.stages.transfer import screened  # noqa: E402

IMAGENET_N, IMAGENET_K = 1_281_167, 1000
ARCHS = ("vgg16", "resnet50")
PER_CLASS = ("distances", "cluster", "transfer", "transfer_rest", "score", "report")  # transfer_rest: less its model


# ----------------------------------------------------------------------------- helpers


class _GlobalOnly(contextlib.nullcontext):
    parents = {"Global"}


class FlopCounter(FlopCounterMode):
    """FlopCounterMode without its per-module tracker: the tracker puts multi-grad hooks on module inputs,
    and torch.autograd.grad with respect to a leaf input (what pipeline.attribution.LRP does) then fails
    ('A leaf node was passed to _will_engine_execute_node ...'). Totals only."""

    def __init__(self) -> None:
        super().__init__(display=False)
        self.mod_tracker = _GlobalOnly()

    def by_op(self) -> dict[str, int]:
        return {str(k).removeprefix("aten."): v for k, v in self.get_flop_counts().get("Global", {}).items()}


def cpu_seconds() -> float:
    """Process CPU time (user + system) of this process and its finished children."""
    a, b = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return a.ru_utime + a.ru_stime + b.ru_utime + b.ru_stime


def machine() -> str:
    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    return f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}"


def load() -> str:
    return "load average {:.2f} / {:.2f} / {:.2f} (1 / 5 / 15 min)".format(*os.getloadavg())


@contextlib.contextmanager
def threads(n: int):
    """n torch, BLAS and OpenMP (faiss) threads inside the block."""
    from threadpoolctl import threadpool_limits

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    with contextlib.suppress(ImportError):
        import faiss

        faiss.omp_set_num_threads(n)
    try:
        with threadpool_limits(limits=n):
            yield
    finally:
        torch.set_num_threads(old)


def fit_power(ns, ts) -> tuple[float, float]:
    """t = a n^b by least squares in log-log; (a, b)."""
    x, y = np.log(np.asarray(ns, float)), np.log(np.maximum(np.asarray(ts, float), 1e-4))
    b, loga = np.polyfit(x, y, 1)
    return float(np.exp(loga)), float(b)


def fit_linear(Ns, ts) -> tuple[float, float]:
    """t = c0 + c1 N by least squares; (c0, c1), the marginal cost c1 clamped at 0."""
    c1, c0 = np.polyfit(np.asarray(Ns, float), np.asarray(ts, float), 1)
    return float(c0), max(float(c1), 0.0)


def hours(s: float) -> str:
    if s != s:  # nan: not measured
        return "-"
    if s < 60:
        return f"{s:.1f} s"
    if s < 3600:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h" if s < 48 * 3600 else f"{s / 3600:.0f} h ({s / 86400:.1f} d)"


# ----------------------------------------------------------------------------- 1. LRP per image


def measure_lrp(arch: str, args) -> dict:
    """FLOPs and seconds per image of one LRP pass and of one plain forward pass, 224 px."""
    import torchvision

    device = torch.device(args.device)
    composite = load_config("imagenet").attribute.composite
    spec = MODELS.get(arch)
    # spec.build refuses to run without ImageNet weights; the cost does not depend on their values
    model = getattr(torchvision.models, arch)(weights=None, num_classes=1000).eval().to(device)
    gen = torch.Generator().manual_seed(0)
    S, B = args.image_size, args.batch
    xs = [torch.rand(B, 3, S, S, generator=gen) for _ in range(args.batches)]
    ys = [torch.randint(0, 1000, (B,), generator=gen) for _ in range(args.batches)]
    normalise = spec.normaliser(3, device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize()

    def forward(x: torch.Tensor) -> None:
        with torch.no_grad():
            model(normalise(x.to(device)))

    def timed(fn, repeats: int) -> tuple[float, float]:
        """Best (CPU seconds, wall seconds) per image over `repeats` passes over all batches."""
        fn(xs[0])  # warm-up: allocations, hook set-up, kernel selection
        sync()
        best_cpu = best_wall = float("inf")
        for _ in range(repeats):
            c0, w0 = time.process_time(), time.perf_counter()
            for x in xs:
                fn(x)
            sync()
            n = B * len(xs)
            best_cpu = min(best_cpu, (time.process_time() - c0) / n)
            best_wall = min(best_wall, (time.perf_counter() - w0) / n)
        return best_cpu, best_wall

    with FlopCounter() as fc:
        forward(xs[0])
    fwd_flops = fc.get_total_flops() / B
    fwd_cpu, fwd_wall = timed(forward, args.repeats)
    with LRP(model, spec, composite, 3, device) as lrp:
        with FlopCounter() as fc:
            out = lrp(xs[0], ys[0])
        lrp_flops, ops = fc.get_total_flops() / B, {k: v / B for k, v in fc.by_op().items()}
        rel = out["relevance"].flatten(1).sum(1)
        logit = out["logits"].gather(1, out["target"][:, None])[:, 0]
        conservation = float((rel / logit).median())
        lrp_cpu, lrp_wall = timed(lambda x: sum_pool(lrp(x, ys[0][: len(x)])["relevance"], 32), args.repeats)
    return {
        "arch": arch,
        "composite": composite,
        "canonizers": [type(c).__name__ for c in spec.canonizers()],
        "image_size": S,
        "batch": B,
        "batches": args.batches,
        "repeats": args.repeats,
        "threads": torch.get_num_threads(),
        "device": str(device),
        "lrp_flops": lrp_flops,
        "fwd_flops": fwd_flops,
        "lrp_ops": ops,
        "lrp_cpu_s": lrp_cpu,
        "lrp_wall_s": lrp_wall,
        "fwd_cpu_s": fwd_cpu,
        "fwd_wall_s": fwd_wall,
        "conservation": conservation,
    }


def print_lrp(rows: list[dict]) -> None:
    r0 = rows[0]
    dev = r0["device"]
    per = "wall s/img" if dev != "cpu" else "CPU s/img"
    print(f"\n### LRP per image ({dev}, {r0['threads']} torch thread(s), {r0['image_size']} px, batch {r0['batch']} "
          f"x {r0['batches']} batches, best of {r0['repeats']}; random weights)\n")  # fmt: skip
    print(f"| model | composite (canonizers) | LRP GFLOP/img | forward GFLOP/img | LRP / forward | LRP {per} | "
          f"forward {per} | LRP GFLOP/s | forward GFLOP/s | LRP wall s/img | relevance sum / logit |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t_l = r["lrp_cpu_s"] if dev == "cpu" else r["lrp_wall_s"]
        t_f = r["fwd_cpu_s"] if dev == "cpu" else r["fwd_wall_s"]
        print(f"| {r['arch']} | {r['composite']} ({', '.join(r['canonizers'])}) | {r['lrp_flops'] / 1e9:.1f} | "
              f"{r['fwd_flops'] / 1e9:.2f} | {r['lrp_flops'] / r['fwd_flops']:.2f} | {t_l:.3f} | {t_f:.3f} | "
              f"{r['lrp_flops'] / t_l / 1e9:.1f} | {r['fwd_flops'] / t_f / 1e9:.1f} | {r['lrp_wall_s']:.3f} | "
              f"{r['conservation']:.4f} |")  # fmt: skip
    for r in rows:
        ops = ", ".join(f"{k} {v / r['fwd_flops']:.2f}" for k, v in sorted(r["lrp_ops"].items()))
        print(f"\n{r['arch']}: LRP FLOPs by op, in forward passes: {ops}")


# ----------------------------------------------------------------------------- 2. stages on Fashion-MNIST


class _TimedModel(torch.nn.Module):
    """The model with the CPU seconds of its forward passes counted (this thread's: one torch thread)."""

    def __init__(self, inner: torch.nn.Module):
        super().__init__()
        self.inner, self.cpu = inner, 0.0

    def forward(self, x):
        c0 = time.thread_time()
        out = self.inner(x)
        self.cpu += time.thread_time() - c0
        return out


@contextlib.contextmanager
def timed_transfer_model():
    """Inside the block the transfer stage (in this process) probes through a _TimedModel; yields them (a dict by
    the wrapped model's id), whose .cpu is the stage's forward passes (on a GPU worker the GPU's, counted apart)."""
    from unhans.stages import transfer as stage

    original, timed = stage._model_and_data, {}

    def patched(cfg, url):
        model, ds, normalise = original(cfg, url)
        return timed.setdefault(id(model), _TimedModel(model)), ds, normalise

    stage._model_and_data = patched
    try:
        yield timed
    finally:
        stage._model_and_data = original


class _Traffic(TorchDispatchMode):
    """Counts what the torch ops inside it would cost a GPU: matmul FLOPs, and for every other op its count and
    the bytes of its tensor inputs and outputs (element-wise ops are bound by memory bandwidth there)."""

    MM = {torch.ops.aten.mm.default, torch.ops.aten.bmm.default, torch.ops.aten.addmm.default}

    def __init__(self):
        super().__init__()
        self.flops, self.bytes, self.ops = 0.0, 0.0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func in self.MM:
            a, b = args[-2], args[-1]
            self.flops += 2.0 * a.numel() * b.shape[-1]
        else:
            tensors = [t for t in tree_flatten((args, kwargs, out))[0] if isinstance(t, torch.Tensor)]
            self.ops += 1
            self.bytes += sum(t.numel() * t.element_size() for t in tensors)
        return out


def distance_traffic(store) -> dict:
    """The invariant kNN graph of the run's largest class again (one thread, CPU, the GPU's Sinkhorn batch), counted
    by _Traffic (what its GPU path would run: matmul FLOPs, element-wise bytes, kernels), with the CPU seconds of
    its host-side work, which stays on the CPU of a GPU worker, timed: canonical forms, the faiss search (on the
    CPU here; faiss-gpu would take it) and the pair bookkeeping in numpy."""
    from unhans.pipeline.core import layout
    from unhans.pipeline.method.metrics import wasserstein

    ids = list(store.group["classes"].attrs["ids"])
    members = max((store.read(layout.MEMBERS(c=c)) for c in ids), key=len)
    maps = store.relevance(members)
    host = [0.0]

    def timed(fn):
        def call(*a, **k):
            c0 = time.thread_time()
            try:
                return fn(*a, **k)
            finally:
                host[0] += time.thread_time() - c0

        return call

    class TimedIndex:
        def __init__(self, index) -> None:
            self.add, self.search = timed(index.add), timed(index.search)

    init, saved = wasserstein._Grid.__init__, {}

    def gpu_batch_grid(self, *a, **k) -> None:
        init(self, *a, **k)
        self.batch = wasserstein.GPU_BATCH

    patches = {name: timed(getattr(wasserstein, name)) for name in ("canonicalise", "_pair_orientation", "_top_pairs",
                                                                     "_assemble")}  # fmt: skip
    patches["flat_index"] = lambda dim, real=wasserstein.flat_index: TimedIndex(real(dim))
    for name, fn in patches.items():
        saved[name] = getattr(wasserstein, name)
        setattr(wasserstein, name, fn)
    wasserstein._Grid.__init__ = gpu_batch_grid
    try:
        with _Traffic() as t:
            wasserstein.knn_wasserstein(maps, 10, wasserstein.WassersteinParams(), seed=0, device="cpu")
    finally:
        wasserstein._Grid.__init__ = init
        for name, fn in saved.items():
            setattr(wasserstein, name, fn)
    return {"n": len(members), "flops": t.flops, "bytes": t.bytes, "ops": t.ops, "host_cpu": host[0]}


def _chain(N: int, args, tmp: str, repeats: int) -> dict:
    """Every stage of the chain on Fashion-MNIST at N samples (N / 10 a class), CPU and wall seconds each, then
    the report again of every class and of the top class alone (dataset and imports warm), best of `repeats`
    each: their difference separates the report's cost per class from its cost per stage."""
    overrides = [
        f"dataset.limit_per_class={N // 10}",
        f"train.epochs={args.epochs}",
        f"compute.threads={args.threads}",
        "compute.workers=0",
        "distances.metric=wasserstein",
        f"run_dir={tmp}/run",
        f"report_dir={tmp}/report",
    ]
    r = runner(load_config("fashion-mnist", overrides))
    stages = {}
    print(f"  N = {N:,}: {load()}", file=sys.stderr, flush=True)
    with threads(args.threads):
        for name in r.stages:
            c0, w0 = cpu_seconds(), time.perf_counter()
            with timed_transfer_model() as timed:
                rec = r.run(name)
            if rec is None:
                continue
            stages[name] = {"cpu": cpu_seconds() - c0, "wall": time.perf_counter() - w0}
            if name == "transfer":  # its model's forward passes, and the rest (the per-class term on a GPU worker)
                stages[name]["model_cpu"] = sum(m.cpu for m in timed.values())
                stages["transfer_rest"] = {"cpu": stages[name]["cpu"] - stages[name]["model_cpu"], "wall": np.nan}
            print(f"    {name}: {stages[name]['cpu']:.1f} s CPU", file=sys.stderr, flush=True)
        one = runner(load_config("fashion-mnist", overrides + ["report.top_classes=1"]))
        best = {"report_all": float("inf"), "report_one": float("inf")}
        for _ in range(repeats):  # interleaved, so a slow spell of the machine hits both
            for name, rr in (("report_all", r), ("report_one", one)):
                c0 = cpu_seconds()
                rr.run("report", force=True)
                best[name] = min(best[name], cpu_seconds() - c0)
        stages.update({k: {"cpu": v} for k, v in best.items()})
    samples = r.store.read_table("samples")
    n_classes = int(samples["label"].nunique())
    with threads(1):
        traffic = distance_traffic(r.store)  # after the timed stages: counting slows the ops it counts
    return {"N": len(samples), "classes": n_classes, "n": len(samples) / n_classes, "stages": stages,
            "threads": args.threads, "epochs": args.epochs, "load": os.getloadavg()[0],
            "distance_traffic": traffic}  # fmt: skip


def measure_stages(sizes: list[int], args) -> list[dict]:
    """CPU and wall seconds of every stage of the chain on Fashion-MNIST, for each total N."""
    rows = []
    for N in sizes:
        with tempfile.TemporaryDirectory() as tmp:
            rows.append(_chain(N, args, tmp, repeats=3))
    return rows


def measure_report_fixed(args) -> dict:
    """The chain at --report-n images a class, for the report's fixed cost per class (printed with the stages):
    at the sizes above a class's images cost 10 to 100 times that fixed cost, so it cannot be read off them."""
    with tempfile.TemporaryDirectory() as tmp:
        return _chain(10 * args.report_n, args, tmp, repeats=args.report_repeats)


def print_stages(rows: list[dict], fixed: dict | None, args) -> None:
    Ns = [r["N"] for r in rows]
    names = [s for s in rows[-1]["stages"]]
    print(f"\n### Stages on Fashion-MNIST (32 px, small CNN trained {rows[0]['epochs']} epoch(s), Wasserstein "
          f"distances; {rows[0]['threads']} thread(s); process CPU seconds, wall in brackets)\n")  # fmt: skip
    print("| stage | " + " | ".join(f"N = {N:,}" for N in Ns) + " | ms / sample (largest N) | marginal ms / sample "
          "(t = c0 + c1 N) | exponent in N |")  # fmt: skip
    print("|---|" + "---|" * (len(Ns) + 3))
    names = [s for s in names if s not in ("report_all", "report_one")]
    for s in names:
        ts = [r["stages"][s]["cpu"] for r in rows]
        cells = [f"{r['stages'][s]['cpu']:.2f} ({r['stages'][s]['wall']:.2f})" for r in rows]
        _, b = fit_power(Ns, ts)
        c0, c1 = fit_linear(Ns, ts)
        per = ts[-1] / Ns[-1] * 1e3
        print(f"| {s} | " + " | ".join(cells) + f" | {per:.3f} | {c1 * 1e3:.3f} (c0 = {c0:.2f} s) | {b:.2f} |")
    ns = [r["n"] for r in rows]
    print(
        "\nPer-class stages, CPU seconds per class (the stage's time / classes), fitted t(n) = a n^b (the fit "
        "carries each stage's fixed cost, spread over the classes; the last column is the marginal cost alone):\n"
    )
    print("| stage | " + " | ".join(f"n = {n:,.0f}" for n in ns) + " | a | b | a n^b at n = 1,281 | c1 x 1,281 |")
    print("|---|" + "---|" * (len(ns) + 4))
    for s in PER_CLASS:
        if s not in rows[-1]["stages"]:
            continue
        ts = [r["stages"][s]["cpu"] / r["classes"] for r in rows]
        a, b = fit_power(ns, ts)
        _, c1 = fit_linear(Ns, [r["stages"][s]["cpu"] for r in rows])
        print(f"| {s} | " + " | ".join(f"{t:.3f}" for t in ts) + f" | {a:.3g} | {b:.2f} | {a * 1281**b:.2f} | "
              f"{c1 * 1281:.2f} |")  # fmt: skip
    if fixed is not None:
        # t_all = s0 + K (f + n c1), t_one = s0 + f + n c1 (K classes of n); c1, the report's cost per image, from
        # the sizes above (their report of every class), where it dominates; n c1 is small at n = --report-n
        _, c1 = fit_linear(Ns, [r["stages"]["report_all"]["cpu"] for r in rows])
        t_all, t_one = fixed["stages"]["report_all"]["cpu"], fixed["stages"]["report_one"]["cpu"]
        f = (t_all - t_one) / (fixed["classes"] - 1) - fixed["n"] * c1
        print(
            f"\nReport, per image and per class (t = s0 + classes x (f + n x c1)): {c1 * 1e3:.3f} ms per image "
            f"(the slope over the sizes above); f = {f * 1e3:.1f} ms per class, from the chain at n = "
            f"{fixed['n']:,.0f} images a class, the report of its {fixed['classes']} classes and of the top class "
            f"alone rerun warm, best of {args.report_repeats} each ({t_all:.3f} s and {t_one:.3f} s; n x c1 = "
            f"{fixed['n'] * c1 * 1e3:.1f} ms of a class's {(t_all - t_one) / (fixed['classes'] - 1) * 1e3:.1f} ms); "
            f"s0 = {t_one - f - fixed['n'] * c1:.3f} s per stage."
        )


# ----------------------------------------------------------------------------- 3. decoding


def measure_decode(args) -> dict:
    """CPU seconds per image of FolderDataset.decode and of the index stage's header probe, one core."""
    rng = np.random.default_rng(0)
    photos = list(natural_photos().values())
    W, H = args.jpeg_size
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "train"
        paths = []
        wnids = [c.key for c in imagenet_classes()[:4]]
        for i in range(args.images):
            img = photos[i % len(photos)]
            h, w = img.shape[:2]
            ch, cw = int(h * rng.uniform(0.6, 1.0)), int(w * rng.uniform(0.6, 1.0))
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            d = root / wnids[i % len(wnids)]
            d.mkdir(parents=True, exist_ok=True)
            p = d / f"{i}.JPEG"
            Image.fromarray(np.ascontiguousarray(img[y : y + ch, x : x + cw])).resize((W, H), Image.BILINEAR).save(
                p, quality=90
            )
            paths.append(str(p))
        kib = np.mean([os.path.getsize(p) for p in paths]) / 1024
        ds = FolderDataset(load_config("imagenet", [f"dataset.path={root}"]).dataset)
        out = ds.decode(paths[0])

        def best(fn) -> tuple[float, float]:
            bc = bw = float("inf")
            for _ in range(args.repeats):
                c0, w0 = time.process_time(), time.perf_counter()
                for p in paths:
                    fn(p)
                bc = min(bc, (time.process_time() - c0) / len(paths))
                bw = min(bw, (time.perf_counter() - w0) / len(paths))
            return bc, bw

        with threads(1):
            dec_cpu, dec_wall = best(ds.decode)
            probe_cpu, _ = best(probe)
            # the attribute stage's thumbnail of a decoded image (in its thumbnail threads), at attribute.thumbnail
            side = load_config("imagenet").attribute.thumbnail
            x = torch.stack([ds.decode(p) for p in paths[:32]])  # (b, 3, S, S) in [0, 1], as the stage gets them
            c0 = time.process_time()
            for _ in range(args.repeats):
                thumbs(image_rgb(x.numpy()), side)
            thumb_cpu = (time.process_time() - c0) / (args.repeats * len(x))
    return {"width": W, "height": H, "kib": kib, "images": len(paths), "out_shape": list(out.shape),
            "resize": ds.resize, "decode_s": dec_cpu, "decode_wall_s": dec_wall, "probe_s": probe_cpu,
            "thumb_s": thumb_cpu, "thumb_side": side}  # fmt: skip


def print_decode(d: dict) -> None:
    print(f"\n### JPEG decoding (FolderDataset.decode: draft, resize to {d['resize']}, crop to {d['out_shape'][-1]}; "
          f"one core, best of passes over {d['images']} files in the page cache)\n")  # fmt: skip
    print("| JPEG | mean size | decode CPU ms/img | decode wall ms/img | images/s per core | header probe ms/file | "
          "thumbnail CPU ms/img |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    print(f"| {d['width']} x {d['height']}, quality 90 | {d['kib']:.0f} KiB | {d['decode_s'] * 1e3:.2f} | "
          f"{d['decode_wall_s'] * 1e3:.2f} | {1 / d['decode_s']:.0f} | {d['probe_s'] * 1e3:.3f} | "
          f"{d.get('thumb_s', 0.0) * 1e3:.2f} ({d.get('thumb_side', '-')} px) |")  # fmt: skip


# ----------------------------------------------------------------------------- cost model


def transfer_passes(cfg, classes: int) -> float:
    """Forward passes per sample of the evidence and global probes under cfg, classes of equal size: the
    probes, and in a screened run (transfer.candidates) the candidates' share of the samples again on every
    host and global host (stages/transfer.py)."""
    tr = cfg.transfer
    h = float(tr.probes + tr.global_probes)
    return h + min(tr.candidates, classes) / classes * (tr.hosts + tr.global_hosts) if screened(cfg) else h


def cost_model(m: dict, args) -> None:
    N, K, G, C = args.imagenet_n, args.imagenet_k, args.gpus, args.cores_per_gpu
    cfg = load_config("imagenet")
    tr = cfg.transfer
    h = args.passes if args.passes is not None else transfer_passes(cfg, K)
    # the place probe's bound: every class's place, or a screened run's candidates' and its random reference's
    K_p = min(tr.candidates + tr.place_reference, K) if screened(cfg) else K
    h_p = tr.place_groups * 2 * tr.place_donors * min(tr.place_hosts, tr.hosts) * K_p / N
    n = N / K
    # images the transfer stage decodes: every sample, the candidates' samples again, the place probe's donors
    # (at most place_groups x 2 place_donors a class) and each class's hosts
    cand = min(tr.candidates, K) / K if screened(cfg) else 0.0
    n_donors = N * (1 + cand) + K_p * tr.place_groups * 2 * tr.place_donors
    n_dec = n_donors + K * tr.hosts
    R = args.gpu_tflops * 1e12
    st, dec = m["stages"], m["decode"]
    # per-sample stages: the marginal cost c1 of t = c0 + c1 N (c0: reading Fashion-MNIST's files and the like)
    per_sample = {s: fit_linear([r["N"] for r in st], [r["stages"][s]["cpu"] for r in st])[1]
                  for s in ("index", "attribute", "clean")}  # fmt: skip
    fits = {}
    for s in PER_CLASS:
        if s not in st[0]["stages"]:  # measurements from before transfer_rest was measured: the whole stage
            fits[s] = fits["transfer"]
            continue
        fits[s] = fit_power([r["n"] for r in st], [r["stages"][s]["cpu"] / r["classes"] for r in st])
    t_class = {s: a * n**b for s, (a, b) in fits.items()}
    t_dec, t_probe, t_thumb = dec["decode_s"], dec["probe_s"], dec.get("thumb_s", 0.0)
    # images the report decodes a class: its blocks' prototypes (at most k_max clusters and the group) and the strip
    d_report = cfg.report.prototypes * (cfg.cluster.k_max + 1) + GROUP_STRIP
    gpu_measured = m["lrp"][0]["device"] != "cpu"
    # the distances on a GPU worker: each term of the counted traffic fitted as a n^b over the runs' largest classes
    dist_gpu, dist_what = None, ""
    if all("distance_traffic" in r for r in st):
        tr_rows = [r["distance_traffic"] for r in st]
        ns = [t["n"] for t in tr_rows]
        at = {key: fit_power(ns, [t[key] for t in tr_rows]) for key in ("flops", "bytes", "ops", "host_cpu")}
        per = {key: a * n**b for key, (a, b) in at.items()}
        R64, BW, L = args.gpu_fp64_tflops * 1e12, args.gpu_bandwidth * 1e12, args.launch_us * 1e-6
        gpu_class = per["flops"] / R64 + per["bytes"] / BW + per["ops"] * L
        dist_gpu = K * gpu_class + K * per["host_cpu"] / C
        dist_what = (f"{per['flops'] / 1e9:.0f} GFLOP / R64 + {per['bytes'] / 1e9:.1f} GB / BW + {per['ops']:,.0f} "
                     f"ops x {args.launch_us:g} us) + K x {per['host_cpu']:.2f} s / C")  # fmt: skip

    print(f"\n### Cost model: ImageNet-1k ({N:,} images, {K:,} classes of n = {n:,.0f} on average), no train stage\n")
    if gpu_measured:
        print(f"GPU seconds per image MEASURED on {m['lrp'][0]['device']} (the lrp part's wall time).")
    else:
        print(f"GPU: ASSUMED sustained {args.gpu_tflops:g} TFLOP/s of the counted conv/matmul FLOPs per GPU "
              "(--gpu-tflops; not measured: no GPU here). The FLOPs per image are measured; GPU times scale "
              "as 1 / throughput.")  # fmt: skip
    print(f"CPU: {C} cores per GPU worker (--cores-per-gpu), per-core costs measured here; {G} GPUs = a Dask "
          f"cluster of {G} such workers, linear scaling, the store on a shared filesystem (or an fsspec URL); "
          "index and clean run in the driver. Per-class CPU stages use t(n) = a n^b fitted on Fashion-MNIST "
          "(n = " + ", ".join(f"{r['n']:,.0f}" for r in st) + "): "
          + ", ".join(f"{s} b = {fits[s][1]:.2f}" for s in PER_CLASS) + ".")  # fmt: skip
    print("Per-sample CPU terms (t_att, t_idx, t_clean) are marginal costs (slope of t = c0 + c1 N).")
    if dist_gpu is not None:
        a, b = fits["distances"]
        print(f"Wasserstein distances run in torch on the worker's GPU when it has one: per class of n = {n:,.0f} "
              f"the counted torch traffic of the kNN graph (fitted over the chains' largest classes, n = "
              + ", ".join(f"{x:,.0f}" for x in ns) + f"): {per['flops'] / 1e9:.0f} GFLOP of float64 matmuls at an "
              f"ASSUMED R64 = {args.gpu_fp64_tflops:g} TFLOP/s (--gpu-fp64-tflops), {per['bytes'] / 1e9:.1f} GB of "
              f"element-wise traffic at an ASSUMED BW = {args.gpu_bandwidth:g} TB/s (--gpu-bandwidth), "
              f"{per['ops']:,.0f} kernel launches at an ASSUMED {args.launch_us:g} us (--launch-us): "
              f"{gpu_class:.2f} s of GPU a class; the host-side work (canonical forms, pairs, the faiss search on "
              f"the CPU) {per['host_cpu']:.2f} CPU s a class. On the CPU alone the stage takes "
              f"{a * n**b:.1f} CPU s a class (measured, the table's CPU-only columns: "
              f"{hours(K * a * n**b / C)} on {C} cores).\n")  # fmt: skip
    else:
        print("Wasserstein distances run in torch on the worker's GPU when it has one; the CPU projection is an "
              "upper bound for them (these measurements have no counted distance traffic).\n")  # fmt: skip

    for r in m["lrp"]:
        arch = r["arch"]
        if gpu_measured:
            g_att, g_transfer = N * r["lrp_wall_s"], N * (h + h_p) * r["fwd_wall_s"]
        else:
            g_att, g_transfer = N * r["lrp_flops"] / R, N * (h + h_p) * r["fwd_flops"] / R
        # CPU only: core-seconds (not known when the lrp part ran on a GPU)
        c_att, c_transfer = (
            (N * r["lrp_cpu_s"], N * (h + h_p) * r["fwd_cpu_s"]) if not gpu_measured else (np.nan, np.nan)
        )
        cpu = {
            "attribute": N * (t_dec + t_thumb + per_sample["attribute"]),
            "distances": K * t_class["distances"],
            "cluster": K * t_class["cluster"],
            "transfer": n_dec * t_dec + K * t_class["transfer_rest"],
            "score": K * t_class["score"],
            "report": K * d_report * t_dec + K * t_class["report"],
        }
        driver = {"index": N * (t_probe + per_sample["index"]), "clean": N * per_sample["clean"]}
        rows = []  # stage, what, 1 GPU, G GPUs, CPU-only C cores, CPU-only G x C cores
        rows.append(("index", f"N x ({t_probe * 1e3:.2f} ms probe + {per_sample['index'] * 1e3:.3f} ms), driver",
                     driver["index"], driver["index"], driver["index"], driver["index"]))  # fmt: skip
        one = max(g_att, cpu["attribute"] / C)
        cpu_only = (c_att + cpu["attribute"]) / C
        rows.append(("attribute", f"max(N x {r['lrp_flops'] / 1e9:.0f} GFLOP / R, N x ({t_dec * 1e3:.1f} ms decode + "
                     f"{t_thumb * 1e3:.2f} ms thumbnail + {per_sample['attribute'] * 1e3:.2f} ms) / C); CPU only: "
                     f"N x {r['lrp_cpu_s']:.2f} s / C",
                     one, one / G, cpu_only, cpu_only / G))  # fmt: skip
        # on a GPU worker the distances' torch part runs on the GPU (assumed throughputs), the rest on its cores
        a, b = fits["distances"]
        on_cpu = cpu["distances"] / C
        one = dist_gpu if dist_gpu is not None else on_cpu
        what = f"K x ({dist_what}; CPU only: " if dist_gpu is not None else ""
        rows.append(("distances", f"{what}K x {a:.3g} n^{b:.2f} s / C", one, one / G, on_cpu, on_cpu / G))
        a, b = fits["cluster"]
        rows.append(("cluster", f"K x {a:.3g} n^{b:.2f} s / C", cpu["cluster"] / C, cpu["cluster"] / C / G,
                     cpu["cluster"] / C, cpu["cluster"] / C / G))  # fmt: skip
        # the donors decode while the previous chunk's probes run (pipeline/method/probes.py, chunks): the larger of
        # the GPU's passes and the donors' decoding, then a class's hosts (decoded before its probes) and the rest
        one = max(g_transfer, n_donors * t_dec / C) + (tr.hosts * K * t_dec + K * t_class["transfer_rest"]) / C
        cpu_only = (c_transfer + cpu["transfer"]) / C
        hh = f"({h:.2f} + {h_p:.2f})"
        rows.append(("transfer", f"max(N x {hh} x {r['fwd_flops'] / 1e9:.1f} GFLOP / R, {n_donors / N:.2f}N x decode "
                     f"/ C) + ({tr.hosts}K x decode + K x {t_class['transfer_rest']:.2f} s) / C; CPU only: N x {hh} x "
                     f"{r['fwd_cpu_s']:.3f} s / C + ({n_dec / N:.2f}N x decode + K x {t_class['transfer_rest']:.2f} s) "
                     "/ C", one, one / G, cpu_only, cpu_only / G))  # fmt: skip
        rows.append(("score", f"K x {t_class['score']:.2f} s / C", cpu["score"] / C, cpu["score"] / C / G,
                     cpu["score"] / C, cpu["score"] / C / G))  # fmt: skip
        rows.append(("report", f"K x ({d_report} x decode + {t_class['report']:.2f} s) / C", cpu["report"] / C,
                     cpu["report"] / C / G, cpu["report"] / C, cpu["report"] / C / G))  # fmt: skip
        rows.append(("clean", f"N x {per_sample['clean'] * 1e3:.3f} ms, driver", driver["clean"], driver["clean"],
                     driver["clean"], driver["clean"]))  # fmt: skip
        print(f"#### {arch} ({r['composite']}; LRP {r['lrp_flops'] / 1e9:.0f} GFLOP/img, "
              f"forward {r['fwd_flops'] / 1e9:.1f} GFLOP/img)\n")  # fmt: skip
        print(f"| stage | cost | 1 GPU + {C} cores | {G} GPUs (Dask) | CPU only, {C} cores | "
              f"CPU only, {G} x {C} cores |")  # fmt: skip
        print("|---|---|---|---|---|---|")
        for name, what, *ts in rows:
            print(f"| {name} | {what} | " + " | ".join(hours(t) for t in ts) + " |")
        tot = [sum(row[i] for row in rows) for i in range(2, 6)]
        print("| **total** | | " + " | ".join(f"**{hours(t)}**" for t in tot) + " |")
        print(f"\nTransfer on 1 GPU: {hours(g_transfer)} of forward passes on the GPU; on the CPU, decoding the "
              f"donors {hours(n_donors * t_dec / C)} (beside the GPU), the hosts {hours(tr.hosts * K * t_dec / C)} and "
              f"the per-class term less the model's passes {hours(K * t_class['transfer_rest'] / C)} (with them: "
              f"{hours(K * t_class['transfer'] / C)}; fitted on Fashion-MNIST at 20 passes a sample, an upper "
              "bound at fewer).")  # fmt: skip
        ips_att = 1 / r["lrp_wall_s"] if gpu_measured else R / r["lrp_flops"]
        ips_transfer = 1 / ((h + h_p) * r["fwd_wall_s"]) if gpu_measured else R / ((h + h_p) * r["fwd_flops"])
        print(f"\nDecoding to keep one GPU busy: attribute {ips_att:,.0f} img/s x {t_dec * 1e3:.1f} ms = "
              f"{ips_att * t_dec:.1f} cores; transfer {ips_transfer:,.0f} img/s x {t_dec * 1e3:.1f} ms = "
              f"{ips_transfer * t_dec:.1f} cores (donors; {tr.hosts} hosts per class are decoded once).\n")  # fmt: skip


# ----------------------------------------------------------------------------- main


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["lrp", "stages", "decode", "model"],
                    help="run one part (the model needs all three; model: none, the cost model of --load)")  # fmt: skip
    ap.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    ap.add_argument("--json", help="write the measurements to this file")
    ap.add_argument("--load", help="measurements of parts not run now, from an earlier --json")
    # lrp
    ap.add_argument("--device", default="cpu", help="LRP part: cpu, or cuda to measure GPU seconds per image")
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=2, help="best of this many passes (lrp and decode)")
    # stages
    ap.add_argument("--sizes", type=int, nargs=3, default=[2_500, 5_000, 10_000], help="total N, 10 classes")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--report-n", type=int, default=10, help="images a class of the run for the report's fixed cost")
    ap.add_argument("--report-repeats", type=int, default=5, help="best of this many reruns of the report there")
    ap.add_argument("--threads", type=int, default=1, help="torch/BLAS/faiss threads for the lrp and stages parts")
    # decode
    ap.add_argument("--images", type=int, default=200, help="JPEGs decoded")
    ap.add_argument("--jpeg-size", type=int, nargs=2, default=[500, 375], metavar=("W", "H"))
    # model
    ap.add_argument("--gpu-tflops", type=float, default=40.0,
                    help="ASSUMED sustained GPU TFLOP/s on conv/matmul FLOPs (default 40: an H100 running the "
                         "fp32 models with cuDNN's default TF32 convolutions, about what fp32/TF32 ResNet-50 "
                         "training sustains there, less for zennit's hooks)")  # fmt: skip
    ap.add_argument("--gpus", type=int, default=8)
    ap.add_argument("--cores-per-gpu", type=int, default=8)
    ap.add_argument("--gpu-fp64-tflops", type=float, default=10.0,
                    help="ASSUMED sustained float64 TFLOP/s of the distances' small batched matmuls on the GPU "
                         "(an H100 peaks at 67 on float64 tensor cores; 32 x 32 matrices reach less)")  # fmt: skip
    ap.add_argument("--gpu-bandwidth", type=float, default=1.5,
                    help="ASSUMED sustained memory bandwidth of the GPU's element-wise kernels, TB/s (H100: 2-3.35 "
                         "peak)")  # fmt: skip
    ap.add_argument("--launch-us", type=float, default=10.0, help="ASSUMED microseconds a GPU kernel launch costs")
    ap.add_argument("--passes", type=float, default=None,
                    help="forward passes per sample of the transfer stage's evidence and global probes (default: "
                         "configs/imagenet.yaml's, transfer_passes; the self-confidence comes from the attribute "
                         "stage, the place probe is added)")  # fmt: skip
    ap.add_argument("--imagenet-n", type=int, default=IMAGENET_N)
    ap.add_argument("--imagenet-k", type=int, default=IMAGENET_K)
    args = ap.parse_args()
    if args.quick:
        args.batch, args.batches, args.repeats = 1, 1, 1
        args.sizes, args.images = [200, 400, 800], 20

    m = json.loads(Path(args.load).read_text()) if args.load else {}
    print(f"Measured on: {machine()}; {load()} at start.")
    if args.only in (None, "lrp"):
        with threads(args.threads):
            m["lrp"] = [measure_lrp(a, args) for a in ARCHS]
        print_lrp(m["lrp"])
        print(f"\n(lrp part ended at {load()})")
    if args.only in (None, "stages"):
        m["stages"] = measure_stages(args.sizes, args)
        m["report_fixed"] = measure_report_fixed(args)
        print_stages(m["stages"], m["report_fixed"], args)
        print(f"\n(stages part ended at {load()})")
    if args.only in (None, "decode"):
        m["decode"] = measure_decode(args)
        print_decode(m["decode"])
        print(f"\n(decode part ended at {load()})")
    m["machine"] = machine()
    if args.json:
        Path(args.json).write_text(json.dumps(m, indent=1))
    if all(k in m for k in ("lrp", "stages", "decode")):
        cost_model(m, args)
    else:
        print("\n(cost model: needs the lrp, stages and decode measurements; run all parts or pass --load)")


if __name__ == "__main__":
    main()
