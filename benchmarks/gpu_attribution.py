"""LRP throughput on one device: VGG-16, ResNet-50 and EfficientNet-Lite0 at 224 px, float32 and
bfloat16, NCHW and channels-last, against zennit's hooks and a plain forward pass, measured in the same run.

The LRP pass is `pipeline.method.attribution.LRP` (the attribute stage's, epsilon_plus_flat with each
model's canonizers) on random inputs already on the device; torchvision's models have random weights
(the cost does not depend on their values), EfficientNet-Lite0 its packaged ImageNet weights. Per
configuration: images/s of the LRP pass (best of --repeats passes over --batches batches, synchronised),
of zennit's Gradient attributor with the same composite (float32, NCHW: zennit's reference), and of a
plain forward pass; the ratio LRP/zennit; and the largest relative error of the float32 maps against
zennit's (per map: max |ours - zennit| / max |zennit|). Prints a markdown table; `--out FILE` also writes it.

    python benchmarks/gpu_attribution.py --device cuda                     # the GPU check (benchmarks/gpu_check.sh)
    python benchmarks/gpu_attribution.py --device cpu --size 64 --batch 2 --batches 1 --repeats 1   # a smoke run
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torchvision
from zennit.attribution import Gradient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from unhans.pipeline.data.models import MODELS  # noqa: E402
from unhans.pipeline.data.models.efficientnet_lite import build_efficientnet_lite0  # noqa: E402
from unhans.pipeline.method.attribution import LRP  # noqa: E402
from unhans.pipeline.method.lrp import COMPOSITES  # noqa: E402

ARCHS = ("resnet50", "vgg16", "efficientnet_lite0")
COMPOSITE = "epsilon_plus_flat"


def build(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)  # the same random weights for every configuration and for zennit
    model = (
        build_efficientnet_lite0() if arch == "efficientnet_lite0" else getattr(torchvision.models, arch)(weights=None)
    )
    return model.eval()


def best_rate(fn, xs: list[torch.Tensor], repeats: int, device: torch.device) -> float:
    """Images per second of fn over all batches, best of `repeats` (after one warm-up batch)."""

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    fn(xs[0])
    sync()
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        for x in xs:
            fn(x)
        sync()
        best = max(best, sum(len(x) for x in xs) / (time.perf_counter() - t0))
    return best


def initial(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The target logit as the initial relevance (the attribute stage's)."""
    return torch.zeros_like(out).scatter_(1, y[:, None], out.gather(1, y[:, None]))


def measure(arch: str, args, device: torch.device) -> list[dict]:
    spec = MODELS.get(arch)
    gen = torch.Generator().manual_seed(0)
    xs = [torch.rand(args.batch, 3, args.size, args.size, generator=gen).to(device) for _ in range(args.batches)]
    ys = [torch.randint(0, 1000, (args.batch,), generator=gen).to(device) for _ in range(args.batches)]
    rows = []
    # zennit's hooks, float32 NCHW: the reference rate and maps
    model = build(arch).to(device)
    for p in model.parameters():
        p.requires_grad_(False)
    normalise = spec.normaliser(3, device)
    low, high = normalise(torch.zeros(1, 3, 1, 1, device=device)), normalise(torch.ones(1, 3, 1, 1, device=device))
    reference = COMPOSITES.get(COMPOSITE)(low, high).reference(spec.canonizers())
    labels = {id(x): y for x, y in zip(xs, ys)}
    with Gradient(model=model, composite=reference) as attributor:
        zennit_rate = best_rate(
            lambda x: attributor(normalise(x), lambda o: initial(o, labels[id(x)])), xs, args.repeats, device
        )
        zennit_maps = attributor(normalise(xs[0]), lambda o: initial(o, ys[0]))[1].float()
    for precision in ("float32", "bfloat16"):
        for channels_last in (False, True):
            lrp = LRP(build(arch), spec, COMPOSITE, 3, device, False, precision, channels_last)
            with torch.no_grad():  # the plain model, in the same dtype and memory format
                fwd = best_rate(lambda x: lrp.model(lrp.normalise(x.to(lrp.dtype)).contiguous(
                    memory_format=lrp.memory_format)), xs, args.repeats, device)  # fmt: skip
            with lrp:
                rate = best_rate(lambda x: lrp(x, labels[id(x)]), xs, args.repeats, device)
                maps = lrp(xs[0], ys[0])["relevance"].float()
            err = ((maps - zennit_maps).flatten(1).abs().amax(1) / zennit_maps.flatten(1).abs().amax(1)).max()
            rows.append({"arch": arch, "precision": precision, "channels_last": channels_last, "lrp": rate,
                         "zennit": zennit_rate, "forward": fwd, "err": float(err)})  # fmt: skip
            print(f"{arch} {precision} channels_last={channels_last}: {rate:.1f} img/s", file=sys.stderr, flush=True)
    return rows


def table(rows: list[dict], device: torch.device, args) -> str:
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    lines = [
        f"LRP throughput ({COMPOSITE}; {name}; {args.size} px, batch {args.batch} x {args.batches}, best of "
        f"{args.repeats}; torch {torch.__version__})",
        "",
        "| model | precision | memory format | LRP img/s | zennit img/s (float32, NCHW) | LRP / zennit | forward img/s "
        "| LRP / forward time | max rel. error vs zennit |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        fmt = "channels-last" if r["channels_last"] else "NCHW"
        cells = [r["arch"], r["precision"], fmt, f"{r['lrp']:.1f}", f"{r['zennit']:.1f}",
                 f"{r['lrp'] / r['zennit']:.2f}", f"{r['forward']:.1f}", f"{r['forward'] / r['lrp']:.2f}",
                 f"{r['err']:.1e}"]  # fmt: skip
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--archs", nargs="+", default=list(ARCHS), choices=ARCHS)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--batches", type=int, default=5)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", help="also write the table to this file")
    args = ap.parse_args()
    device = torch.device(args.device)
    rows = [r for arch in args.archs for r in measure(arch, args, device)]
    text = table(rows, device, args)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
