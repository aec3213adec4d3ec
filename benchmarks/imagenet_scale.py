"""The 1,000-class ImageNet path end to end: a generated train/ folder with every real wnid, audited.

Writes <root>/train/<wnid>/<wnid>_<i>.JPEG for all 1,000 ImageNet-1k WordNet ids (seeded crops of
real photos shipped in scikit-image, scikit-learn and matplotlib; pipeline.data.photos), runs
`unhans audit -c imagenet` on it (EfficientNet-Lite0 with its real ImageNet weights, every stage
including the 1,000-page report) and prints the per-stage wall-clock seconds, peak resident memory
and counts from the stage records. A second run of the same command must skip every stage (checked).

    python benchmarks/imagenet_scale.py --root /tmp/imagenet-scale                # 8 images per class
    python benchmarks/imagenet_scale.py --per-class 4 --set dataset.image_size=64 --set dataset.resize=73
    python benchmarks/imagenet_scale.py --until score --set compute.device=cuda   # no report (gpu_check.sh)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from unhans.pipeline.data.photos import write_imagenet_folder  # noqa: E402
from unhans.stages import (
    load_config,  # noqa: E402
    runner,  # noqa: E402
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--root", default="/tmp/unhans-imagenet-scale", help="folder for train/, the run and the report")
    ap.add_argument("--per-class", type=int, default=8, help="images per class")
    ap.add_argument("--side", type=int, default=96, help="side of the written JPEGs")
    ap.add_argument("--classes", type=int, default=1000, help="the first N wnids (1000: all; fewer for a smoke run)")
    ap.add_argument("--set", action="append", default=[], help="config override section.key=value")
    ap.add_argument("--until", help="stop after this stage (e.g. score: everything but clean and report)")
    args = ap.parse_args()

    root = Path(args.root)
    train = root / "train"
    t0 = time.perf_counter()
    if not train.exists():
        write_imagenet_folder(train, n_classes=args.classes, per_class=args.per_class, side=args.side)
    n_files = sum(len(files) for _, _, files in os.walk(train))
    print(f"dataset: {train} ({n_files} JPEGs in {len(os.listdir(train))} wnid folders; "
          f"written in {time.perf_counter() - t0:.1f} s)")  # fmt: skip

    overrides = [f"dataset.path={train}", f"run_dir={root / 'run'}", f"report_dir={root / 'report'}", *args.set]
    cfg = load_config("imagenet", overrides)
    r = runner(cfg)
    t0 = time.perf_counter()
    r.run_all(until=args.until)
    total = time.perf_counter() - t0
    print(f"\naudit: {total:.1f} s wall clock, {os.cpu_count()} CPUs, torch threads: {cfg.compute.threads or 'all'}")
    print(f"settings: image_size={cfg.dataset.image_size} model={cfg.model.arch} metric={cfg.distances.metric} "
          f"composite={cfg.attribute.composite}\n")  # fmt: skip
    print("| stage | seconds | peak resident MiB | counts |\n|---|---|---|---|")
    for row in r.status_rows():
        counts = ", ".join(f"{k}={v}" for k, v in row["counts"].items())
        print(f"| {row['stage']} | {row['seconds']} | {row['peak_mib']} | {counts} |")
    cs = r.store.read_table("class_scores")
    top = cs.iloc[0]
    over = cs[cs["clever_hans_score"] >= cfg.score.min_score]
    q_over = over["q_value"].min() if len(over) else float("nan")
    print(f"\nscore: top class {top['class_key']} {top['clever_hans_score']:.3f} (group of {top['group_size']}, "
          f"p = {top['p_value']:.2g}, q = {top['q_value']:.2g}); {len(over)} classes at or above min_score "
          f"{cfg.score.min_score:g} (smallest q among them: {q_over:.2g}), "
          f"{int(cs['is_clever_hans'].sum())} flagged; p-values of all classes, p < 0.05 in "
          f"{(cs['p_value'] < 0.05).mean():.3f} (benchmarks/calibration.py --run {root / 'run'})")  # fmt: skip
    if r.state("report") == "done":
        pages = len(list((root / "report").glob("class-*.html")))
        print(f"\nreport: {root / 'report' / 'index.html'} ({pages} class pages)")

    again = runner(load_config("imagenet", overrides))
    t0 = time.perf_counter()
    again.run_all(until=args.until)
    rows = again.status_rows()
    last = next((i for i, row in enumerate(rows) if row["stage"] == args.until), len(rows) - 1)
    states = {row["stage"]: row["state"] for row in rows[: last + 1]}
    assert all(s in ("done", "disabled") for s in states.values()), states
    print(f"rerun: every stage up to date, skipped in {time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main()
