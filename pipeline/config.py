"""Typed config: one YAML file per dataset in configs/, validated, with --set overrides.

Every stage reads one or more sections; a stage's fingerprint hashes exactly the sections it
reads, so changing a section makes that stage and everything downstream stale.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from pipeline.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _choice(registry_path: str, value: str) -> str:
    """Check `value` against a registry (imported lazily to avoid import cycles)."""
    module, attr = registry_path.rsplit(".", 1)
    registry = getattr(__import__(module, fromlist=[attr]), attr)
    if value not in registry:
        raise ValueError(f"{value!r} is not one of: {', '.join(registry.names())}")
    return value


class ArtifactConfig(Section):
    """A seeded artifact inserted at load time into a fraction of some classes' images."""

    kind: str = "patch"
    classes: list[int] = Field(default_factory=list, description="class ids that get the artifact")
    fraction: float = Field(0.2, gt=0, le=1)
    size: float = Field(0.2, gt=0, le=1, description="side length as a fraction of the image side")
    position: Literal["fixed", "random"] = "fixed"
    seed: int = 0

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        return _choice("pipeline.artifacts.ARTIFACTS", v)


class DatasetConfig(Section):
    kind: str = "digits"
    path: str | None = Field(None, description="dataset root (IDX folder or class-folder tree)")
    split: Literal["train", "test"] = "train"
    image_size: int = Field(32, ge=8, le=1024, description="side of the model input, pixels")
    resize: int | None = Field(None, description="shorter side before the centre crop (folders)")
    limit_per_class: int | None = Field(None, ge=1, description="take at most this many per class")
    class_index: Literal["auto", "imagenet", "sorted"] = "auto"
    class_names: list[str] | None = Field(None, description="names for classes 0..C-1")
    artifact: ArtifactConfig | None = None

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        return _choice("pipeline.datasets.DATASETS", v)


class ModelConfig(Section):
    arch: str = "small_cnn"
    weights: str | None = Field(
        None, description="weights file; None: the train stage's checkpoint or packaged weights"
    )

    @field_validator("arch")
    @classmethod
    def _arch(cls, v: str) -> str:
        return _choice("pipeline.models.MODELS", v)


class TrainConfig(Section):
    enabled: bool = True
    epochs: int = Field(4, ge=1)
    batch_size: int = Field(128, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)


class AttributeConfig(Section):
    composite: str = "epsilon_plus_flat"
    target: Literal["label", "prediction"] = "label"
    batch_size: int = Field(64, ge=1, description="images per forward/backward pass")
    chunk_size: int = Field(1024, ge=1, description="rows per zarr chunk: the unit of writing and resuming")
    resolution: int = Field(32, ge=4, description="side of the stored relevance maps (power of 2)")
    features: bool = Field(True, description="store penultimate features (float16)")
    num_workers: int = Field(0, ge=0, description="image decoding worker processes")

    @field_validator("composite")
    @classmethod
    def _composite(cls, v: str) -> str:
        return _choice("pipeline.attribution.COMPOSITES", v)

    @field_validator("resolution")
    @classmethod
    def _pow2(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"{v} is not a power of two")
        return v


class DistancesConfig(Section):
    metric: str = "wasserstein"
    k: int = Field(10, ge=2, description="neighbours per sample in the kNN graph")
    # wasserstein only (pipeline/metrics/wasserstein.py)
    mass: Literal["positive", "absolute"] = Field("positive", description="relevance read as mass: max(R,0) or |R|")
    translation: bool = Field(True, description="invariant to translation (centre of mass)")
    scale: bool = Field(True, description="invariant to scale (RMS radius)")
    rotation: bool = Field(True, description="invariant to rotation (principal axes, best alignment)")
    reflection: bool = Field(False, description="also invariant to mirror images")
    isotropy: float = Field(0.15, ge=0, lt=1, description="anisotropy below which 8 rotations are tried")
    shortlist: int = Field(15, ge=1, description="candidates per map reranked with the Sinkhorn divergence")
    grid: int = Field(32, ge=4, description="side of the canonical grid of the fast method (even)")
    rerank: bool = Field(True, description="rerank the shortlist (False: linear-OT embedding distance only)")

    @field_validator("metric")
    @classmethod
    def _metric(cls, v: str) -> str:
        return _choice("pipeline.metrics.DISTANCES", v)

    @field_validator("grid")
    @classmethod
    def _even(cls, v: int) -> int:
        if v % 2:
            raise ValueError(f"{v} is not even")
        return v


class ClusterConfig(Section):
    n_eigenvectors: int = Field(32, ge=2)
    k_max: int = Field(8, ge=2, description="largest number of clusters considered")
    embedding: Literal["spectral", "tsne"] = "spectral"


class ScoreConfig(Section):
    flag_threshold: float = Field(0.5, ge=0, le=1, description="class score above which to flag")
    max_group_fraction: float = Field(0.5, gt=0, le=1, description="largest suspicious group share")


class ReportConfig(Section):
    top_classes: int | None = Field(None, ge=1, description="class pages for the top-ranked only")
    prototypes: int = Field(8, ge=1)


class CleanConfig(Section):
    flagged: Literal["drop", "review", "keep"] = "drop"


class ComputeConfig(Section):
    device: str = Field("auto", description="auto, cpu, cuda or cuda:N")
    threads: int | None = Field(None, ge=1, description="torch CPU threads (None: all cores)")
    workers: int = Field(0, ge=0, description="Dask LocalCluster worker processes (0 or 1: in-process)")
    scheduler: str | None = Field(None, description="address of an existing Dask scheduler, e.g. tcp://host:8786")


class Config(Section):
    name: str
    run_dir: str | None = Field(None, description="store root: path or fsspec URL")
    report_dir: str | None = None
    seed: int = 0
    compute: ComputeConfig = Field(default_factory=ComputeConfig)
    dataset: DatasetConfig = Field(default_factory=DatasetConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    attribute: AttributeConfig = Field(default_factory=AttributeConfig)
    distances: DistancesConfig = Field(default_factory=DistancesConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    report: ReportConfig = Field(default_factory=ReportConfig)
    clean: CleanConfig = Field(default_factory=CleanConfig)

    @property
    def run_url(self) -> str:
        return self.run_dir or f"runs/{self.name}"

    @property
    def report_path(self) -> Path:
        return Path(self.report_dir or f"reports/{self.name}")

    def section(self, name: str) -> Any:
        return getattr(self, name)


def resolve_config_path(name_or_path: str) -> Path:
    """`demo` -> configs/demo.yaml; a path is taken as given."""
    p = Path(name_or_path)
    if p.suffix in {".yaml", ".yml"} or p.exists():
        if not p.exists():
            raise UserError(f"config file {p} does not exist")
        return p
    candidate = CONFIG_DIR / f"{name_or_path}.yaml"
    if not candidate.exists():
        known = ", ".join(sorted(q.stem for q in CONFIG_DIR.glob("*.yaml")))
        raise UserError(f"no config named {name_or_path!r}; known configs: {known}")
    return candidate


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Apply `section.key=value` strings (values parsed as YAML) to a raw config dict."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"--set {item!r}: write it as section.key=value")
        dotted, value = item.split("=", 1)
        keys = dotted.strip().split(".")
        node = data
        for key in keys[:-1]:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise UserError(f"--set {item!r}: {key!r} is not a section")
        node[keys[-1]] = _parse_value(value)
    return data


def _allowed_keys(model: type[BaseModel], loc: tuple) -> list[str]:
    for key in loc[:-1]:
        field = model.model_fields.get(str(key))
        if field is None:
            return []
        ann = field.annotation
        sub = next(
            (a for a in getattr(ann, "__args__", (ann,)) if isinstance(a, type) and issubclass(a, BaseModel)),
            None,
        )
        if sub is None:
            return []
        model = sub
    return sorted(model.model_fields)


def format_validation_error(err: ValidationError, source: str) -> str:
    lines = []
    for e in err.errors():
        loc = tuple(e["loc"])
        key = ".".join(str(x) for x in loc)
        if e["type"] == "extra_forbidden":
            allowed = _allowed_keys(Config, loc)
            lines.append(f"{source}: unknown key {key!r}; allowed keys here: {', '.join(allowed)}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {key} = {e.get('input')!r}: {msg}")
    return "\n".join(lines)


def load_config(name_or_path: str, overrides: list[str] | None = None) -> Config:
    """Read, override and validate a config; every problem is one UserError naming the key."""
    path = resolve_config_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections")
    data.setdefault("name", path.stem)
    apply_overrides(data, overrides or [])
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise UserError(format_validation_error(err, str(path))) from None


def fingerprint_of(obj: Any) -> str:
    """Stable short hash of a JSON-able object (config sections, input fingerprints)."""
    import hashlib

    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
