"""Compute resources: torch device selection, CPU threads, progress bars, Dask task mapping."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import torch
from pydantic import Field
from tqdm import tqdm

from unhans.pipeline.core.config import Section
from unhans.pipeline.core.errors import UserError

T = TypeVar("T")
log = logging.getLogger("unhans")


class ComputeConfig(Section):
    """Where and how a run computes; no result depends on it but the torch thread count (docs/measurements.md)."""

    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    threads: int | None = Field(
        1,
        ge=1,
        description="torch CPU threads per process: 1 gives the same store on any machine and does not slow down "
        "when other jobs hold the cores (use compute.workers for more processes, the same store); None: all cores",
    )
    workers: int = Field(0, ge=0, description="Dask LocalCluster worker processes (0 or 1: in-process)")
    scheduler: str | None = Field(None, description="address of an existing Dask scheduler, e.g. tcp://host:8786")
    decode_threads: int = Field(0, ge=0, description="image decoding threads of file-backed datasets (0: inline)")


def resolve_device(name: str) -> torch.device:
    """`auto` picks CUDA when present, else CPU; an unavailable device is a UserError."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"compute.device = {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError("compute.device asks for CUDA but no GPU is visible; use compute.device=auto or cpu")
    return dev


def worker_device(device: torch.device) -> torch.device:
    """On a Dask worker with several GPUs visible, its own GPU: cuda:(worker number mod GPU count).

    LocalCluster numbers its workers 0..N-1, so `compute.workers` = number of GPUs gives one worker per
    GPU. Workers of an external cluster usually see one GPU each (CUDA_VISIBLE_DEVICES), so cuda:0."""
    if device.type != "cuda" or device.index is not None or torch.cuda.device_count() < 2:
        return device
    try:
        from dask.distributed import get_worker

        name = get_worker().name
    except (ImportError, ValueError):  # not on a worker
        return device
    slot = name if isinstance(name, int) else int(hashlib.sha256(str(name).encode()).hexdigest(), 16)
    return torch.device("cuda", slot % torch.cuda.device_count())


def set_threads(threads: int | None) -> None:
    torch.set_num_threads(threads or os.cpu_count() or 1)


LOG_EVERY = 10.0  # seconds between progress log lines when stderr is not a terminal


def reset_peak_memory() -> bool:
    """Start a new peak of this process's resident memory (Linux: /proc/self/clear_refs); False where the
    platform cannot, and the peak then counts from the process's start."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def machine() -> str:
    """The CPU and torch build this process computes with, e.g. 'AMD EPYC, torch 2.9.1+cu128'.

    Stage records keep it: the same code, seed and thread count give the same model on the same CPU,
    but another CPU's kernels round differently and train another model (docs/validation.md).
    """
    import platform

    cpu = ""
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), "")
    return f"{cpu or platform.processor() or platform.machine() or 'unknown CPU'}, torch {torch.__version__}"


def peak_memory_mib() -> float:
    """Peak resident memory of this process, MiB: since the last reset_peak_memory (Linux VmHWM), else
    since the process started (getrusage)."""
    with contextlib.suppress(OSError, ValueError, IndexError):
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


def progress(items: Iterable[T], desc: str, total: int | None = None, unit: str = "it") -> Iterator[T]:
    """Progress on stderr: a bar in a terminal (or with UNHANS_PROGRESS=1); elsewhere (a log file, a CI
    job, a notebook) a log line with the count and the time left every LOG_EVERY seconds."""
    if sys.stderr.isatty() or os.environ.get("UNHANS_PROGRESS") == "1":
        yield from tqdm(items, desc=desc, total=total, unit=unit, mininterval=1.0, dynamic_ncols=True)
        return
    start = last = time.monotonic()
    for done, item in enumerate(items, 1):
        yield item
        now = time.monotonic()
        if now - last >= LOG_EVERY:
            last = now
            left = total - done if total else 0
            eta = f", about {_duration(left * (now - start) / done)} left" if left > 0 else ""
            log.info("%s: %d/%s %s%s", desc, done, total if total else "?", unit, eta)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


def _call_with_threads(fn: Callable, threads: int, *args: Any) -> Any:
    """Run one task on a worker with a fixed number of torch/BLAS/faiss threads."""
    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:  # pragma: no cover
        pass
    return fn(*args)


@contextlib.contextmanager
def dask_client(cfg) -> Iterator[Any]:
    """A Dask client: on `compute.scheduler` if given, else on a LocalCluster of worker processes."""
    from dask.distributed import Client, LocalCluster

    if cfg.scheduler:
        try:
            client = Client(cfg.scheduler, timeout="20s")
        except OSError as exc:
            raise UserError(
                f"cannot reach the Dask scheduler at {cfg.scheduler} ({exc}); start one with "
                "`dask scheduler` and `dask worker <address>`, or drop compute.scheduler"
            ) from None
        with client:
            yield client
        return
    cluster = LocalCluster(n_workers=cfg.workers, threads_per_worker=1, processes=True, dashboard_address=None)
    with cluster, Client(cluster) as client:
        yield client


class TaskMapper:
    """Maps module-level functions over items: in this process, or on Dask workers when
    `compute.workers` > 1 or `compute.scheduler` is set. One cluster serves every stage of a run
    (started on first use, closed by `close`)."""

    def __init__(self, cfg) -> None:
        self.cfg = cfg
        self._stack: contextlib.ExitStack | None = None
        self._client = None
        self.calls = 0  # map calls so far (the runner asks whether a stage started any task)

    @property
    def distributed(self) -> bool:
        return bool(self.cfg.scheduler) or self.cfg.workers > 1

    def client(self):
        if self._client is None:
            self._stack = contextlib.ExitStack()
            self._client = self._stack.enter_context(dask_client(self.cfg))
        return self._client

    def close(self) -> None:
        if self._stack is not None:
            self._stack.close()
        self._stack = self._client = None

    def worker_count(self) -> int:
        """Workers to share work between: the cluster's (1 in-process)."""
        if not self.distributed:
            return 1
        return max(1, len(self.client().scheduler_info(n_workers=-1)["workers"]))

    def map(self, fn: Callable, items: list, desc: str, *shared: Any) -> list:
        """[fn(*shared, item) for item in items], in order."""
        self.calls += 1
        if not self.distributed:
            return [fn(*shared, it) for it in progress(items, desc, total=len(items), unit="task")]
        from dask.distributed import as_completed

        client = self.client()
        threads = self.cfg.threads or 1
        # the shared arguments (config, store URL, ...) are small: each task carries its own copy rather
        # than a scattered one, so a task stays runnable on any worker after another one is lost
        futures = [client.submit(_call_with_threads, fn, threads, *shared, it, pure=False) for it in items]
        for _ in progress(as_completed(futures), desc, total=len(futures), unit="task"):
            pass
        return client.gather(futures)
