"""The Python API for notebooks: `unhans.audit(config, **overrides)` runs the chain and returns a Run.

    import unhans
    run = unhans.audit("demo", train={"epochs": 6})     # or a YAML path, a dict, a Config
    run.class_scores.head()                                   # tables as pandas DataFrames
    run.report, run.manifest_path                             # where the HTML report and the manifest are
    run.warnings                                              # e.g. a weak model, unreadable files

`unhans.open_run(config)` gives the Run of an audit done before (from the CLI, say) without running anything.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

import pandas as pd
from pydantic import ValidationError

from unhans.pipeline.core import layout
from unhans.pipeline.core.config import format_validation_error, merge
from unhans.pipeline.core.errors import UserError
from unhans.pipeline.core.runner import Runner
from unhans.stages import Config, load_config, runner


@dataclass
class Run:
    """One audited run: its config, its store, its tables, its report and its warnings."""

    runner: Runner

    @property
    def config(self) -> Config:
        return self.runner.cfg

    @property
    def store_url(self) -> str:
        return self.runner.store.url

    @property
    def report(self) -> Path:
        """The report's overview page."""
        return self.config.report_path / "index.html"

    @property
    def manifest_path(self) -> str:
        return f"{self.store_url}/tables/{layout.MANIFEST.name}.parquet"

    def table(self, name: str) -> pd.DataFrame:
        """A table of the store by name (docs/store.md)."""
        return self.runner.store.read_table(name)

    @cached_property
    def samples(self) -> pd.DataFrame:
        return self.table(layout.SAMPLES.name)

    @cached_property
    def class_scores(self) -> pd.DataFrame:
        return self.table(layout.CLASS_SCORES.name)

    @cached_property
    def sample_scores(self) -> pd.DataFrame:
        return self.table(layout.SAMPLE_SCORES.name)

    @cached_property
    def manifest(self) -> pd.DataFrame:
        return self.table(layout.MANIFEST.name)

    @cached_property
    def cleaned(self) -> pd.DataFrame:
        return self.table(layout.CLEANED.name)

    @property
    def flagged_classes(self) -> pd.DataFrame:
        cs = self.class_scores
        return cs[cs["is_clever_hans"].astype(bool)]

    @property
    def warnings(self) -> list[str]:
        """What the stages warned about (a weak model, unreadable files, ...), in run order."""
        return self.runner.warnings()

    def status(self) -> pd.DataFrame:
        """The stage table of `unhans status`."""
        return pd.DataFrame(self.runner.status_rows())


def _updates(overrides: dict[str, Any]) -> dict[str, Any]:
    """`train={"epochs": 6}`, `train__max_epochs=6` and `seed=1` as one nested update."""
    out: dict[str, Any] = {}
    for key, value in overrides.items():
        keys = key.split("__")
        node = out
        for k in keys[:-1]:
            node = node.setdefault(k, {})
        if isinstance(value, dict) and isinstance(node.get(keys[-1]), dict):
            node[keys[-1]].update(value)
        else:
            node[keys[-1]] = value
    return out


def _config(config: Any, overrides: dict[str, Any]) -> Config:
    """A validated Config from a name, a path, a dict or a Config, with the overrides merged in."""
    if isinstance(config, Config | dict):
        data = config.model_dump(mode="json", round_trip=True) if isinstance(config, Config) else dict(config)
        data.setdefault("name", "run")
        try:
            return Config.model_validate(merge(data, _updates(overrides)))
        except ValidationError as err:
            raise UserError(format_validation_error(err, "config", Config)) from None
    return load_config(str(config), updates=_updates(overrides))


def audit(config: Any = "demo", **overrides: Any) -> Run:
    """Run every stage that is not up to date for `config` (a name in configs/, a YAML path, a dict or a
    Config, with `overrides`) and return the Run."""
    r = runner(_config(config, overrides))
    r.run_all()
    return Run(r)


def open_run(config: Any = "demo", **overrides: Any) -> Run:
    """The Run of `config` as its store holds it now, running nothing."""
    return Run(runner(_config(config, overrides)))
