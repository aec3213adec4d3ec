"""Mixed precision and channels-last for the attribute stage: how far the maps move, how much faster.

Settings: float32 (the reference), bfloat16 (`attribute.precision`), float16 (not offered: measured
here to show why), channels-last (`attribute.channels_last`) in float32 and bfloat16. For each model
the same inputs are explained with pipeline.method.attribution.LRP in every setting, and the relevance is
sum-pooled to the stored 32 x 32 maps as the stage does. Printed per setting, against float32:

  rel. L1     sum |R - R32| / sum |R32| per image (median and max)
  cosine      cosine similarity of the pooled maps (median and min)
  top-3% IoU  overlap of the top 3% positive cells (the evidence the transfer stage pastes; median, min)
  img/s       throughput on this machine, and the ratio to float32

Models: EfficientNet-Lite0 with its real ImageNet weights on crops of the natural photos shipped in
installed packages (224 px), and the small CNN of a finished Fashion-MNIST run when one exists
(runs/fashion-mnist, `make audit DATASET=fashion-mnist`) on its own training images.

    python benchmarks/precision.py
    python benchmarks/precision.py --device cuda      # on a GPU machine: the speed that matters
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from unhans.pipeline.core.store import Store  # noqa: E402
from unhans.pipeline.data import build_dataset, iter_batches  # noqa: E402
from unhans.pipeline.data.models import MODELS, build_model, model_for_run  # noqa: E402
from unhans.pipeline.data.photos import write_imagenet_folder  # noqa: E402
from unhans.pipeline.method.attribution import LRP, PRECISIONS, sum_pool  # noqa: E402
from unhans.stages import load_config  # noqa: E402

SETTINGS = [("float32", False), ("bfloat16", False), ("float16", False), ("float32", True), ("bfloat16", True)]
# float16 is measured to show why attribute.precision does not offer it


def explain(model, spec, channels, x, y, device, precision, channels_last, batch) -> tuple[np.ndarray, float]:
    """Pooled maps (n, 32, 32) float64 and images/s (best of 2 passes)."""
    best, maps = float("inf"), None
    model = copy.deepcopy(model)  # LRP casts the module in place; the next setting needs the float32 weights
    offered = precision in PRECISIONS
    lrp = LRP(model, spec, "epsilon_plus_flat", channels, device, False, precision if offered else "float32",
              channels_last)  # fmt: skip
    if not offered:  # attribute.precision offers float32 and bfloat16; float16 is set here by hand
        lrp.dtype = getattr(torch, precision)
        lrp.model.to(lrp.dtype)
        lrp.normalise = spec.normaliser(channels, device, lrp.dtype)
    with lrp:
        for _ in range(2):
            out = []
            t0 = time.perf_counter()
            for s in range(0, len(x), batch):
                r = lrp(x[s : s + batch], y[s : s + batch])["relevance"].float()
                out.append(sum_pool(r, 32).cpu())
            if device.type == "cuda":
                torch.cuda.synchronize()
            best = min(best, time.perf_counter() - t0)
            maps = torch.cat(out).double().numpy()
    return maps, len(x) / best


def compare(ref: np.ndarray, maps: np.ndarray) -> dict[str, float]:
    a, b = ref.reshape(len(ref), -1), maps.reshape(len(maps), -1)
    l1 = np.abs(b - a).sum(1) / np.maximum(np.abs(a).sum(1), 1e-30)
    cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
    k = max(1, round(0.03 * a.shape[1]))
    ta, tb = np.argsort(-a, 1)[:, :k], np.argsort(-b, 1)[:, :k]
    iou = np.array([len(np.intersect1d(p, q)) / len(np.union1d(p, q)) for p, q in zip(ta, tb)])
    finite = np.isfinite(b).all(1)
    return {"l1_med": np.median(l1), "l1_max": l1.max(), "cos_med": np.median(cos), "cos_min": cos.min(),
            "iou_med": np.median(iou), "iou_min": iou.min(), "finite": finite.mean()}  # fmt: skip


def inputs_efficientnet(n: int, tmp: Path):
    root = write_imagenet_folder(tmp / "train", n_classes=n // 2, per_class=2, side=320)
    cfg = load_config("imagenet", [f"dataset.path={root}", "model.arch=efficientnet_lite0"])
    ds = build_dataset(cfg.dataset)
    samples = ds.index()
    [(_, x, _, _)] = list(iter_batches(ds, samples, [np.arange(len(samples))], 2))
    model = build_model(cfg.model, 1000, 3, 224, None)
    with torch.no_grad():  # explain the predicted class: the photos' wnids are arbitrary
        y = model((x - 0.5) / 0.5).argmax(1)
    return "efficientnet_lite0 (ImageNet weights), 224 px", model, MODELS.get("efficientnet_lite0"), 3, x, y


def inputs_small_cnn(n: int):
    run = Path("runs/fashion-mnist")
    if not (run / "files" / "model.pt").exists():
        return None
    cfg = load_config("fashion-mnist")
    ds = build_dataset(cfg.dataset)
    samples = Store(str(run)).read_table("samples")
    idx = np.random.default_rng(0).choice(len(samples), n, replace=False)
    [(_, x, _, _)] = list(iter_batches(ds, samples, [np.sort(idx)]))
    model = model_for_run(cfg, Store(str(run)), len(ds.classes), ds.channels)
    y = torch.as_tensor(samples["label"].to_numpy()[np.sort(idx)])
    return "small_cnn (trained, runs/fashion-mnist), 32 px", model, MODELS.get("small_cnn"), 1, x, y


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=32, help="EfficientNet images (the small CNN gets 16x as many)")
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    device = torch.device(args.device)
    print(f"device: {device}, torch {torch.__version__}, {torch.get_num_threads()} threads\n")
    with tempfile.TemporaryDirectory() as tmp:
        cases = [inputs_efficientnet(args.images, Path(tmp)), inputs_small_cnn(16 * args.images)]
    print("| model | precision | channels-last | rel. L1 (median / max) | cosine (median / min) | "
          "top-3% IoU (median / min) | finite maps | img/s | x float32 |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for case in cases:
        if case is None:
            print("| small_cnn | (no runs/fashion-mnist: run `make audit DATASET=fashion-mnist`) |||||||")
            continue
        name, model, spec, channels, x, y = case
        ref, ref_speed = None, None
        for precision, cl in SETTINGS:
            try:
                maps, speed = explain(model, spec, channels, x, y, device, precision, cl, args.batch)
            except RuntimeError as exc:  # a dtype the device has no kernels for
                print(f"| {name} | {precision} | {cl} | not supported here: {str(exc).splitlines()[0][:80]} ||||||")
                continue
            if ref is None:
                ref, ref_speed = maps, speed
            m = compare(ref, maps)
            print(f"| {name} | {precision} | {'yes' if cl else 'no'} | {m['l1_med']:.4f} / {m['l1_max']:.4f} | "
                  f"{m['cos_med']:.5f} / {m['cos_min']:.5f} | {m['iou_med']:.3f} / {m['iou_min']:.3f} | "
                  f"{m['finite']:.2f} | {speed:.1f} | {speed / ref_speed:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
