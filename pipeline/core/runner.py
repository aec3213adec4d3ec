"""Stage registry and runner: fingerprints, skip-if-unchanged, status table, resumable runs.

A stage is a function `run(ctx) -> counts` registered with `@stage(name, sections, inputs)`; what
it writes is declared in pipeline/core/layout.py. The runner is given the stages to run (the
`stages` package collects them; this module imports none of them).

A stage's fingerprint hashes the config sections it reads, the fingerprints of its inputs and
its code version (package version + hash of the source of the stage's module and of every project
module it imports, directly or through others, except the orchestration, I/O and config modules in
INFRASTRUCTURE: a change to pipeline/method/statistics.py makes score stale as one to
stages/score.py does). A stage whose stored record carries the current fingerprint is skipped;
anything else is rerun, and since inputs' fingerprints enter their consumers', every stage
downstream of a change becomes stale too.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import hashlib
import importlib.util
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
from pydantic import Field

from unhans._version import __version__
from unhans.pipeline.core import layout
from unhans.pipeline.core.compute import (
    ComputeConfig,
    TaskMapper,
    machine,
    peak_memory_mib,
    reset_peak_memory,
    resolve_device,
    set_threads,
)
from unhans.pipeline.core.config import Section, fingerprint_of
from unhans.pipeline.core.errors import UserError
from unhans.pipeline.core.store import Store

log = logging.getLogger("unhans")


class RunConfig(Section):
    """The runner's own settings; the run's Config (stages/config.py) adds one section per part of the chain."""

    name: str = Field(..., description="the run's name (default: the config file's name)")
    run_dir: str | None = Field(None, description="store root: path or fsspec URL (None: runs/<name>)")
    report_dir: str | None = Field(None, description="the HTML report's folder (None: reports/<name>)")
    seed: int = Field(
        0, description="seed of everything random: training, hosts, clusterings, the class p-values' simulated null"
    )
    compute: ComputeConfig = Field(default_factory=ComputeConfig)

    @property
    def run_url(self) -> str:
        return self.run_dir or f"runs/{self.name}"

    @property
    def report_path(self) -> Path:
        return Path(self.report_dir or f"reports/{self.name}")

    def section(self, name: str) -> Section:
        return getattr(self, name)


@dataclass
class Context:
    """What a stage gets: the whole config, its store, the torch device, and run flags."""

    cfg: Any  # the run's Config (stages/config.py)
    store: Store
    device: torch.device
    tasks: TaskMapper
    resume: bool = False  # an earlier run of this exact fingerprint stopped part-way
    fingerprint: str = ""  # this run's stage fingerprint: per-class outputs record it to resume by class
    warnings: list[str] = field(default_factory=list)  # what the user should know: kept in the stage record
    notes: list[str] = field(default_factory=list)  # the warnings of the stages done before this one

    def warn(self, message: str) -> None:
        """Tell the user something the results depend on (a weak model, unreadable files): logged now, kept
        in the stage's record, printed by `unhans audit` and `unhans status`, shown on the report."""
        log.warning("warning: %s", message)
        self.warnings.append(message)

    @property
    def url(self) -> str:
        """The store's absolute path or URL, valid in worker processes and on other machines."""
        return self.store.absolute_url

    def finished_classes(self, ids, last: layout.Entry) -> set[int]:
        """When resuming, the classes whose last-written array `last` (a classes/{c}/... entry) carries
        this run's fingerprint (Store.write_array sets attributes after the data): they need no recomputing."""
        if not self.resume:
            return set()
        done = set()
        for c in ids:
            name = last(c=c)
            if self.store.has_array(name) and self.store.array(name).attrs.get("fingerprint") == self.fingerprint:
                done.add(int(c))
        return done

    def prepare_class_groups(self, ids) -> None:
        """Create classes/<id> groups up front, so parallel workers never race on group metadata."""
        for c in ids:
            self.store.group.require_group(f"classes/{c}")


@dataclass(frozen=True)
class StageSpec:
    name: str
    fn: Callable[[Context], dict]
    sections: tuple[str, ...]
    inputs: tuple[str, ...]
    enabled: Callable[[Any], bool]
    help: str
    outputs_exist: Callable[[Any], bool] | None  # for outputs kept outside the store
    reads_when: dict[str, Callable[[Any], bool]] = field(default_factory=dict)  # sections read only if so

    def sections_read(self, cfg: Any) -> tuple[str, ...]:
        """The config sections this stage reads under cfg: its sections, less those whose `reads_when`
        condition is false (they enter its fingerprint only when read)."""
        return tuple(s for s in self.sections if s not in self.reads_when or self.reads_when[s](cfg))

    @property
    def outputs(self) -> list[layout.Entry]:
        """What the stage writes into the store (pipeline/core/layout.py)."""
        return layout.outputs(self.name)

    @property
    def code_version(self) -> str:
        h = hashlib.sha256()
        for name in code_modules(self.fn.__module__):
            h.update(f"{name}\n".encode() + module_source(name).encode())
        return f"{__version__}+{h.hexdigest()[:10]}"


# Modules whose code does not decide what a stage computes: orchestration, errors, the store's I/O and
# the config schema (settings reach a fingerprint through the config sections themselves). Their
# changes leave finished stages done; every other project module a stage uses is in its code version.
INFRASTRUCTURE = frozenset(
    {"unhans", "unhans.pipeline", "unhans.pipeline.cli", "unhans.pipeline.api", "unhans.pipeline.core",
     "unhans.pipeline.core.compute", "unhans.pipeline.core.config", "unhans.pipeline.core.errors",
     "unhans.pipeline.core.layout", "unhans.pipeline.core.registry", "unhans.pipeline.core.runner",
     "unhans.pipeline.core.store", "unhans.stages", "unhans.stages.config"}
)  # fmt: skip
PROJECT = ("unhans",)


def module_source(name: str) -> str:
    """The source text of project module `name`."""
    spec = importlib.util.find_spec(name)
    return Path(spec.origin).read_text() if spec and spec.origin else ""


def _is_module(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


@functools.cache
def code_modules(name: str) -> tuple[str, ...]:
    """Module `name` and the project modules it imports (at the top or inside functions), followed
    through the imported modules, less INFRASTRUCTURE: the modules whose source makes its code version."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        mod = todo.pop()
        if mod in seen or mod in INFRASTRUCTURE or not _is_module(mod):
            continue
        seen.add(mod)
        for node in ast.walk(ast.parse(module_source(mod))):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names if a.name.split(".")[0] in PROJECT]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                if node.module.split(".")[0] in PROJECT:
                    todo.append(node.module)
                    todo += [
                        f"{node.module}.{a.name}" for a in node.names
                    ]  # `from unhans.pipeline.method import probes`
    return tuple(sorted(seen))


STAGES: dict[str, StageSpec] = {}


def stage(
    name: str,
    sections: Iterable[str],
    inputs: Iterable[str] = (),
    enabled: Callable[[Any], bool] = lambda cfg: True,
    outputs_exist: Callable[[Any], bool] | None = None,
    reads_when: dict[str, Callable[[Any], bool]] | None = None,
) -> Callable[[Callable[[Context], dict]], Callable[[Context], dict]]:
    """Register a stage entry point `fn(ctx) -> counts`; stages run in registration order. `reads_when`:
    sections the stage reads only under a condition on the config (StageSpec.sections_read)."""

    def deco(fn: Callable[[Context], dict]) -> Callable[[Context], dict]:
        doc = (fn.__doc__ or "").strip().splitlines()
        STAGES[name] = StageSpec(
            name, fn, tuple(sections), tuple(inputs), enabled, doc[0] if doc else "", outputs_exist,
            dict(reads_when or {}),
        )  # fmt: skip
        return fn

    return deco


def ordered(stages: dict[str, StageSpec]) -> dict[str, StageSpec]:
    """Stages in run order: each after its inputs (ties broken by name)."""
    out: dict[str, StageSpec] = {}
    while len(out) < len(stages):
        ready = sorted(n for n, s in stages.items() if n not in out and all(i in out for i in s.inputs))
        if not ready:
            raise RuntimeError(f"stage inputs form a cycle or name unknown stages: {sorted(set(stages) - set(out))}")
        out[ready[0]] = stages[ready[0]]
    return out


class Runner:
    """Runs stages of one config against one store."""

    def __init__(self, cfg: Any, stages: dict[str, StageSpec], run_url: str | None = None) -> None:
        self.cfg = cfg
        self.stages = ordered(stages)
        self.store = Store(run_url or cfg.run_url)
        self._fp: dict[str, str] = {}
        self._lock_depth = 0
        self.tasks = TaskMapper(cfg.compute)

    # ---- fingerprints and status --------------------------------------------------------------
    def active_inputs(self, spec: StageSpec) -> list[str]:
        return [i for i in spec.inputs if self.stages[i].enabled(self.cfg)]

    def fingerprint(self, name: str) -> str:
        if name not in self._fp:
            spec = self.stages[name]
            self._fp[name] = fingerprint_of(
                {
                    "sections": {s: self.cfg.section(s).model_dump(mode="json") for s in spec.sections_read(self.cfg)},
                    "inputs": {i: self.fingerprint(i) for i in self.active_inputs(spec)},
                    "code": spec.code_version,
                    "seed": self.cfg.seed,
                }
            )
        return self._fp[name]

    def record(self, name: str) -> dict | None:
        return self.store.read_json(f"stages/{name}.json")

    def state(self, name: str) -> str:
        spec = self.stages[name]
        if not spec.enabled(self.cfg):
            return "disabled"
        rec = self.record(name)
        if rec is None:
            return "missing"
        if rec.get("fingerprint") != self.fingerprint(name):
            return "stale"
        if not rec.get("complete"):
            return "partial"
        if spec.outputs_exist is not None and not spec.outputs_exist(self.cfg):
            return "missing"
        return "done"

    def warnings(self) -> list[str]:
        """The warnings of the stages that are done, in run order."""
        return [
            w
            for name in self.stages
            if self.state(name) == "done"
            for w in (self.record(name) or {}).get("warnings", [])
        ]

    def status_rows(self) -> list[dict]:
        rows = []
        for name, spec in self.stages.items():
            rec = self.record(name) or {}
            rows.append(
                {
                    "stage": name,
                    "state": self.state(name),
                    "finished": rec.get("finished", ""),
                    "seconds": rec.get("seconds"),
                    "peak_mib": rec.get("peak_mib"),
                    "counts": rec.get("counts", {}),
                    "inputs": ",".join(self.active_inputs(spec)),
                    "settings": ",".join(spec.sections_read(self.cfg)),
                }
            )
        return rows

    # ---- running -----------------------------------------------------------------------------------
    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the store's lock (re-entrant within this runner)."""
        if self._lock_depth:
            self._lock_depth += 1
            try:
                yield
            finally:
                self._lock_depth -= 1
            return
        with self.store.lock():
            self._lock_depth = 1
            try:
                yield
            finally:
                self._lock_depth = 0
                self.tasks.close()

    def run(self, name: str, force: bool = False) -> dict | None:
        """Run one stage if it is not up to date; its inputs must be done already."""
        with self.locked():
            return self._run(name, force)

    def _run(self, name: str, force: bool) -> dict | None:
        spec = self.stages[name]
        if not spec.enabled(self.cfg):
            log.info("%s: disabled by the config", name)
            return None
        for inp in self.active_inputs(spec):
            st = self.state(inp)
            if st != "done":
                raise UserError(
                    f"stage {name!r} needs {inp!r}, which is {st}; run `unhans {inp}` or `unhans audit` first"
                )
        fp = self.fingerprint(name)
        old = self.record(name)
        if self.state(name) == "done" and not force:
            log.info("%s: up to date (fingerprint %s), skipped", name, fp)
            return old
        if "attribute" in self.active_inputs(spec):
            self.store.check_attribution()  # lost chunk files read as fill values: stop before using them
        resume = bool(old and old.get("fingerprint") == fp and not old.get("complete") and not force)
        started = datetime.now(UTC).isoformat(timespec="seconds")
        self.store.write_json(
            f"stages/{name}.json",
            {"stage": name, "fingerprint": fp, "complete": False, "started": started},
        )
        set_threads(self.cfg.compute.threads)
        device = resolve_device(self.cfg.compute.device)
        ctx = Context(self.cfg, self.store, device, self.tasks, resume=resume, fingerprint=fp, notes=self.warnings())
        log.info("%s: %s", name, "resuming" if resume else "running")
        t0 = time.perf_counter()
        peak_of_stage = reset_peak_memory()
        writes, calls = Store.writes, self.tasks.calls
        try:
            counts = spec.fn(ctx) or {}
        except BaseException as exc:
            if old is not None and Store.writes == writes and self.tasks.calls == calls:
                # failed before writing anything (bad weights, bad input, ...): the outputs are as they
                # were, so is their record (a done stage stays done)
                self.store.write_json(f"stages/{name}.json", old)
            if not (isinstance(exc, RuntimeError) and "decompress" in str(exc).lower()):
                raise
            # a chunk file of the store that no longer decodes (garbled, truncated)
            inputs = ", ".join(f"`unhans {i} --force`" for i in self.active_inputs(spec)) or "a fresh --run-dir"
            raise UserError(
                f"stage {name!r} cannot read a chunk of the store at {self.store.url} ({exc}); the file is "
                f"damaged: rerun the stage that wrote it ({inputs}), then `unhans {name}`"
            ) from None
        seconds = round(time.perf_counter() - t0, 2)
        rec: dict[str, Any] = {
            "stage": name,
            "fingerprint": fp,
            "complete": True,
            "started": started,
            "finished": datetime.now(UTC).isoformat(timespec="seconds"),
            "seconds": seconds,
            # this process's peak resident memory while the stage ran (with compute.workers, the workers'
            # own memory is not in it); "process": the platform cannot reset the peak, it is the process's
            "peak_mib": round(peak_memory_mib()),
            "peak_of": "stage" if peak_of_stage else "process",
            "machine": machine(),  # another CPU can train another model from the same seed
            "counts": counts,
            "code_version": spec.code_version,
            "settings": {s: self.cfg.section(s).model_dump(mode="json") for s in spec.sections_read(self.cfg)},
            "inputs": {i: self.fingerprint(i) for i in self.active_inputs(spec)},
            "warnings": ctx.warnings,
        }
        self.store.write_json(f"stages/{name}.json", rec)
        log.info("%s: done in %.1f s %s", name, seconds, counts)
        return rec

    def run_all(self, until: str | None = None, force: bool = False) -> None:
        with self.locked():
            for name in self.stages:
                self.run(name, force=force)
                if name == until:
                    break
