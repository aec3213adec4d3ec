"""The audit's stages, one module each: read the store, call the method, write the store.

`all_stages()` returns them in run order (each after its inputs); `runner(cfg)` is a Runner over
them. No stage imports another stage.
"""

from __future__ import annotations

from pipeline.core.runner import STAGES, Runner, StageSpec, ordered
from stages.config import Config, load_config


def all_stages() -> dict[str, StageSpec]:
    """Every stage, in run order."""
    from stages import attribute, clean, cluster, distances, index, report, score, train, transfer  # noqa: F401

    return ordered(STAGES)


def runner(cfg: Config, run_url: str | None = None) -> Runner:
    """A Runner of the whole chain for `cfg` (its store at `run_url`, default the config's)."""
    return Runner(cfg, all_stages(), run_url)


__all__ = ["Config", "all_stages", "load_config", "runner"]
