"""The demo audit on an idle machine and beside a CPU-bound job, with one torch thread (the default,
`compute.threads: 1`) and with all cores (`compute.threads: null`): wall time of each, and whether the
stores are the same (scripts/compare_stores.py). Run it alone: it makes the machine busy itself.

    python benchmarks/threads.py            # about 15 minutes on 2 cores
    python benchmarks/threads.py --config my.yaml --set train.epochs=30
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNHANS = str(Path(sys.executable).with_name("unhans"))
BUSY = "while True: pass"  # one core's worth of CPU-bound work, as another job on the machine would be


def audit(config: str, sets: list[str], threads: str, busy: bool, run: Path) -> float:
    hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(os.cpu_count() or 1)] if busy else []
    try:
        t0 = time.perf_counter()
        args = [UNHANS, "audit", "-c", config, "--run-dir", str(run), "--set", f"report_dir={run}-report",
                "--set", f"compute.threads={threads}"] + [x for s in sets for x in ("--set", s)]  # fmt: skip
        subprocess.run(args, check=True, capture_output=True)
        return time.perf_counter() - t0
    finally:
        for h in hogs:
            h.kill()
            h.wait()


def same(a: Path, b: Path) -> str:
    out = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare_stores.py"), str(a), str(b)],
                         capture_output=True, text=True)  # fmt: skip
    return "same store" if out.returncode == 0 else out.stdout.strip().splitlines()[-1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", default="demo")
    ap.add_argument("--set", action="append", default=[])
    args = ap.parse_args()
    print(f"{args.config} audit from an empty run folder, {os.cpu_count()} cores; busy: one CPU-bound process per core")
    with tempfile.TemporaryDirectory() as tmp:
        runs = {}
        for threads in ("1", "null"):
            for busy in (False, True):
                run = Path(tmp) / f"t{threads}-{'busy' if busy else 'idle'}"
                seconds = audit(args.config, args.set, threads, busy, run)
                runs[threads, busy] = run
                label = "1 thread " if threads == "1" else "all cores"
                print(
                    f"  {label}, {'beside a CPU-bound job' if busy else 'idle machine':<22} {seconds:7.1f} s",
                    flush=True,
                )
        print(f"1 thread, idle vs busy: {same(runs['1', False], runs['1', True])}")
        print(f"all cores, idle vs busy: {same(runs['null', False], runs['null', True])}")
        print(f"1 thread vs all cores (idle): {same(runs['1', False], runs['null', False])}")


if __name__ == "__main__":
    main()
