"""Throughput of the attribute stage against a bare zennit loop, measured in the same run.

For each scenario the stage runs from the CLI's runner (loading, LRP, pooling, zarr writes,
resume bookkeeping) and the bare loop runs zennit's Gradient attributor over the same model,
composite and inputs, already decoded and in memory, with the same batch size. Prints
images/s for both and the ratio stage/bare (issue 16's target: >= 1.3; the stage runs unhans' own
LRP engine, pipeline/method/lrp.py, whose maps equal zennit's).

    python benchmarks/attribution.py               # both scenarios
    python benchmarks/attribution.py --only small  # the small CNN on Fashion-MNIST (Debian package)
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from zennit.attribution import Gradient

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from unhans.pipeline.core.runner import Runner  # noqa: E402
from unhans.pipeline.data import build_dataset, iter_batches  # noqa: E402
from unhans.pipeline.data.models import build_model, model_spec  # noqa: E402
from unhans.pipeline.data.photos import write_imagenet_folder  # noqa: E402
from unhans.pipeline.method.lrp import COMPOSITES  # noqa: E402
from unhans.stages import load_config, runner  # noqa: E402


def bare_zennit(r: Runner, repeats: int) -> float:
    """images/s of a plain zennit loop over pre-decoded inputs (best of `repeats`)."""
    cfg, store = r.cfg, r.store
    samples = store.read_table("samples")
    ds = build_dataset(cfg.dataset)
    spec = model_spec(cfg.model)
    ckpt = store.read_bytes("files/model.pt") if r.state("train") == "done" else None
    model = build_model(cfg.model, len(ds.classes), ds.channels, cfg.dataset.image_size, ckpt)
    for p in model.parameters():
        p.requires_grad_(False)
    bs = cfg.attribute.batch_size
    order = np.arange(len(samples))
    batches = [order[i : i + bs] for i in range(0, len(order), bs)]
    normalise = spec.normaliser(ds.channels)
    data = [(normalise(x), torch.as_tensor(samples["label"].to_numpy()[idx])) for idx, x, _, _ in
            iter_batches(ds, samples, batches)]  # fmt: skip
    low, high = normalise(torch.zeros(1, ds.channels, 1, 1)), normalise(torch.ones(1, ds.channels, 1, 1))
    composite = COMPOSITES.get(cfg.attribute.composite)(low, high).reference(spec.canonizers())
    best = 0.0
    for _ in range(repeats):
        t0 = time.perf_counter()
        with Gradient(model=model, composite=composite) as attributor:
            for x, y in data:
                # the same initial relevance as the stage: the target logit
                out, rel = attributor(
                    x, lambda o, y=y: torch.zeros_like(o).scatter_(1, y[:, None], o.gather(1, y[:, None]))
                )  # noqa: E501
                rel.sum(1).numpy()
        best = max(best, len(samples) / (time.perf_counter() - t0))
    return best


def stage_throughput(r: Runner, repeats: int) -> float:
    """images/s of the attribute stage, forced to rerun (best of `repeats`)."""
    best = 0.0
    n = len(r.store.read_table("samples"))
    for _ in range(repeats):
        rec = r.run("attribute", force=True)
        best = max(best, n / rec["seconds"])
    return best


def scenario(name: str, config: str, overrides: list[str], repeats: int) -> tuple[str, float, float]:
    with tempfile.TemporaryDirectory() as tmp:
        # all cores for the stage, as the bare loop has them (the config's default is one torch thread)
        cfg = load_config(config, overrides + [f"run_dir={tmp}/run", "compute.threads=null"])
        r = runner(cfg)
        r.run_all(until="train")
        stage = stage_throughput(r, repeats)
        bare = bare_zennit(r, repeats)
    return name, stage, bare


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=["small", "imagenet"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--images", type=int, default=96, help="JPEGs in the ImageNet-layout scenario")
    ap.add_argument("--small", type=int, default=10_000, help="Fashion-MNIST images in the small scenario")
    args = ap.parse_args()
    torch.set_num_threads(torch.get_num_threads())
    rows = []
    if args.only in (None, "small"):
        small = ["train.epochs=1", "attribute.batch_size=128", f"dataset.limit_per_class={args.small // 10}"]
        name = f"small_cnn / Fashion-MNIST {args.small // 1000}k 32px / epsilon_plus_flat"
        rows.append(scenario(name, "fashion-mnist", small, args.repeats))
    if args.only in (None, "imagenet"):
        with tempfile.TemporaryDirectory() as tmp:
            root = write_imagenet_folder(Path(tmp) / "train", n_classes=args.images // 4, per_class=4, side=256)
            rows.append(scenario("efficientnet_lite0 / JPEG 224px / epsilon_plus_flat", "imagenet",
                                 [f"dataset.path={root}", "attribute.batch_size=32", "compute.decode_threads=1"],
                                 args.repeats))  # fmt: skip
    print(f"{'scenario':<52} {'stage img/s':>12} {'bare zennit img/s':>18} {'ratio':>7}")
    for name, stage, bare in rows:
        print(f"{name:<52} {stage:>12.1f} {bare:>18.1f} {stage / bare:>7.3f}")


if __name__ == "__main__":
    main()
