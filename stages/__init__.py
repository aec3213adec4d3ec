"""The audit's stages, one module each: read the store, call the method, write the store.

`all_stages()` returns them in run order (each after its inputs); `runner(cfg)` is a Runner over
them. No stage imports another stage.
"""

from __future__ import annotations

from unhans.pipeline.core.runner import STAGES, Runner, StageSpec, ordered
from unhans.stages.config import Config, load_config


def all_stages() -> dict[str, StageSpec]:
    """Every stage, in run order."""
    from unhans.stages import attribute, clean, cluster, distances, index, report, score, train, transfer  # noqa: F401

    return ordered(STAGES)


def runner(cfg: Config, run_url: str | None = None) -> Runner:
    """A Runner of the whole chain for `cfg` (its store at `run_url`, default the config's)."""
    return Runner(cfg, all_stages(), run_url)


def _writes(spec: StageSpec) -> str:
    """What a stage writes, compactly: `attribution/*`, `classes/{c}/a, b`, `tables/x`, files."""
    parts: dict[str, list[str]] = {}
    for e in spec.outputs:
        if e.kind == "table":
            parts.setdefault(f"tables/{e.template}", [])
        elif e.kind == "array" and e.template.startswith("attribution/"):
            parts.setdefault("attribution/*", [])
        elif e.kind == "array":
            folder, leaf = e.template.rsplit("/", 1)
            parts.setdefault(folder + "/", []).append(leaf)
        elif "." in e.template.rsplit("/", 1)[-1]:  # a file, not a scratch folder
            parts.setdefault(e.template, [])
    cells = [f"`{k}{', '.join(v)}`" if v else f"`{k}`" for k, v in parts.items()]
    return ", ".join(cells) if cells else "`reports/<run>/` (outside the store)"


def stage_table() -> str:
    """The README's stage table: each stage in run order, the sections it reads, what it does and writes."""
    rows = ["| stage | reads config | does | writes |", "|---|---|---|---|"]
    for name, spec in all_stages().items():
        reads = [s + (" (when used)" if s in spec.reads_when else "") for s in spec.sections]
        rows.append(f"| `{name}` | {', '.join(reads)} | {spec.help} | {_writes(spec)} |")
    return "\n".join(rows) + "\n"


__all__ = ["Config", "all_stages", "load_config", "runner", "stage_table"]
