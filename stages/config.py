"""The run's config: the runner's own settings plus one section per part of the chain.

Each section is declared beside the code that reads it; this class only composes them (a key's
home is the module named in its section's docstring, and docs/configuration.md lists them all).
`load_config("demo")` reads configs/demo.yaml; `--set section.key=value` overrides are applied
before validation, so every problem is one error naming the key.
"""

from __future__ import annotations

from pydantic import Field

from pipeline.core.config import load
from pipeline.core.runner import RunConfig
from pipeline.data import DatasetConfig
from pipeline.data.models import ModelConfig
from pipeline.method.attribution import AttributeConfig
from pipeline.method.curation import CleanConfig
from pipeline.method.metrics import DistancesConfig, WassersteinParams
from pipeline.method.probes import TransferConfig
from pipeline.method.spectral import ClusterConfig
from pipeline.method.statistics import ScoreConfig
from pipeline.method.training import TrainConfig
from pipeline.report.pages import ReportConfig


class Config(RunConfig):
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    attribute: AttributeConfig = Field(default_factory=AttributeConfig)
    distances: DistancesConfig = Field(default_factory=WassersteinParams)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    transfer: TransferConfig = Field(default_factory=TransferConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    clean: CleanConfig = Field(default_factory=CleanConfig)


def load_config(name_or_path: str, overrides: list[str] | None = None) -> Config:
    """Read, override and validate a config (a name in configs/ or a YAML path)."""
    return load(Config, name_or_path, overrides)
