"""Peak resident memory of each stage run alone, at two class sizes: the per-image term.

Every stage of a Fashion-MNIST audit (10 classes, invariant Wasserstein distances, one torch thread)
runs as its own `unhans <stage>` process, so a stage's peak (`peak_mib` in its record: the process's
peak resident memory while the stage ran) holds only that stage, the Python/torch start-up included.
Two runs, `--sizes` images per class (default 1,300, ImageNet's class size, and 5,200); the table gives
each stage's peak at both, the growth per 1,000 images of a class ((peak_b - peak_a) / (n_b - n_a)),
and a linear extrapolation to 8 GiB. The per-class stages visit one class at a time, so their growth is
per image of the largest class; the 1,000-class run of benchmarks/imagenet_scale.py shows they do not
grow with the number of classes.

    python benchmarks/memory.py                      # 1,300 and 5,200 images a class (about 15 minutes)
    python benchmarks/memory.py --sizes 200 400      # a smoke run
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

STAGES = ("index", "train", "attribute", "distances", "cluster", "transfer", "score", "clean", "report")
UNHANS = Path(sys.executable).parent / "unhans"


def run_stages(per_class: int, root: Path, extra: list[str]) -> dict[str, dict]:
    sets = [f"dataset.limit_per_class={per_class}", "distances.metric=wasserstein", *extra]
    args = ["-c", "fashion-mnist", "--run-dir", str(root / "run"), "--set", f"report_dir={root / 'report'}"]
    args += [a for s in sets for a in ("--set", s)]
    out = {}
    for stage in STAGES:
        t0 = time.perf_counter()
        subprocess.run([str(UNHANS), stage, *args], check=True, capture_output=True)
        record = json.loads((root / "run" / "stages" / f"{stage}.json").read_text())
        out[stage] = {"peak_mib": record.get("peak_mib"), "seconds": time.perf_counter() - t0}
        print(f"  n = {per_class}: {stage} {record.get('peak_mib')} MiB", file=sys.stderr, flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs=2, default=[1300, 5200], help="images per class of the two runs")
    ap.add_argument("--set", action="append", default=[], help="more config overrides")
    args = ap.parse_args()
    a, b = args.sizes
    with tempfile.TemporaryDirectory() as tmp:
        runs = {n: run_stages(n, Path(tmp) / f"n{n}", args.set) for n in (a, b)}
    print("\nPeak resident memory per stage, each stage alone in its process (Fashion-MNIST, 10 classes, "
          "Wasserstein distances, one torch thread; n images per class)\n")  # fmt: skip
    print(f"| stage | peak MiB, n = {a:,} | peak MiB, n = {b:,} | MiB per 1,000 more images a class (10,000 in all) | "
          f"n at 8 GiB (linear) |\n|---|---|---|---|---|")  # fmt: skip
    for stage in STAGES:
        pa, pb = runs[a][stage]["peak_mib"], runs[b][stage]["peak_mib"]
        slope = (pb - pa) / (b - a) * 1000
        at8 = f"{a + (8192 - pa) / slope * 1000:,.0f}" if slope > 0.5 else "no growth"
        print(f"| {stage} | {pa:,} | {pb:,} | {slope:.1f} | {at8} |")


if __name__ == "__main__":
    main()
