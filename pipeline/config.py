"""Typed config: one YAML file per dataset in configs/, validated, with --set overrides.

Every stage reads one or more sections; a stage's fingerprint hashes exactly the sections it
reads, so changing a section makes that stage and everything downstream stale.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, computed_field, field_validator

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


class PoisonConfig(Section):
    """Planted shortcuts for validating the audit (pipeline/poison.py): which samples, which artifact, where.

    Planned once at index time from (seed, labels) and stored in the samples table; painted at every load.
    """

    kind: str = Field(
        "checker",
        description="artifact: patch (solid square of colour), checker (checkerboard), text (a text stamp), "
        "frame (border of the image, or a square outline at position random), tint (the whole image blended "
        "towards colour; grey images: a grey-level shift), watermark (ImageNet-W's, from PyPI imagenet-w)",
    )
    regime: Literal["correlated", "backdoor"] = Field(
        "correlated",
        description="correlated: artifact on a fraction of the target class, labels unchanged; backdoor: "
        "artifact on images of the source classes, which are relabelled to the target",
    )
    target: int = Field(..., ge=0, description="class id that the artifact is tied to")
    sources: list[int] | None = Field(
        None, description="backdoor only: class ids whose images are poisoned and relabelled (None: all others)"
    )
    fraction: float = Field(
        0.1, description="share of the samples labelled target after poisoning that carry the artifact (0 < f < 1)"
    )
    size: float = Field(
        0.2,
        gt=0,
        le=1,
        description="artifact side as a fraction of the image side (frame at position fixed: border width; "
        "ignored by tint and watermark, whose size is ImageNet-W's)",
    )
    size_jitter: float = Field(0.0, ge=0, lt=1, description="0: fixed size; else side uniform in size*(1 +- jitter)")
    position: Literal["fixed", "random"] = Field(
        "fixed", description="fixed: bottom-right corner with a small margin (watermark: ImageNet-W's place); random"
    )
    rotation: float | Literal["random"] = Field(
        0.0, description="degrees counter-clockwise, or random (uniform 0-360); tint and fixed frame do not rotate"
    )
    colour: tuple[int, int, int] = Field(
        (255, 255, 255), description="artifact colour: a name (white, red), #rrggbb, a grey level 0-255 or [r, g, b]"
    )
    strength: float | None = Field(
        None, gt=0, le=1, description="opacity (tint: blend weight / grey shift); None: 0.3 tint, 0.5 watermark, else 1"
    )
    text: str | None = Field(None, description="text of text and watermark kinds; None: (c) and ImageNet-W's text")
    seed: int = Field(0, ge=0, description="seed of the plan: which samples, sizes, angles, positions")

    @field_validator("kind")
    @classmethod
    def _kind(cls, v: str) -> str:
        return _choice("pipeline.poison.KINDS", v)

    @field_validator("fraction")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0 < v < 1:
            raise ValueError("must be a share strictly between 0 and 1")
        return v

    @field_validator("sources")
    @classmethod
    def _sources(cls, v: list[int] | None, info) -> list[int] | None:
        if v is None:
            return v
        if info.data.get("regime") != "backdoor":
            raise ValueError("only for regime backdoor (correlated poisons the target class itself)")
        if not v or info.data.get("target") in v or len(set(v)) != len(v):
            raise ValueError("give distinct class ids other than the target")
        return v

    @field_validator("rotation", mode="before")
    @classmethod
    def _rotation(cls, v: Any) -> Any:
        if v == "random" or (isinstance(v, int | float) and not isinstance(v, bool)):
            return v
        raise ValueError("give degrees (a number) or random")

    @field_validator("colour", mode="before")
    @classmethod
    def _colour(cls, v: Any) -> Any:
        from PIL import ImageColor

        if isinstance(v, int) and not isinstance(v, bool):
            v = (v, v, v)
        elif isinstance(v, str):
            try:
                v = ImageColor.getrgb(v)[:3]
            except ValueError:
                v = None
        if not isinstance(v, list | tuple) or len(v) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in v):
            raise ValueError("not a colour: give a name (white, red), #rrggbb, a grey level 0-255 or [r, g, b]")
        return tuple(v)

    @field_validator("text")
    @classmethod
    def _text(cls, v: str | None, info) -> str | None:
        if v is not None and info.data.get("kind") == "text":
            try:
                v.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError("PIL's built-in bitmap font has Latin-1 characters only") from None
        if v is not None and not v.strip():
            raise ValueError("give some visible text")
        return v


class DatasetConfig(Section):
    kind: str = "digits"
    path: str | None = Field(None, description="dataset root (IDX folder or class-folder tree)")
    split: Literal["train", "test"] = "train"
    image_size: int = Field(32, ge=8, le=1024, description="side of the model input, pixels")
    resize: int | None = Field(None, description="shorter side before the centre crop (folders)")
    limit_per_class: int | None = Field(None, ge=1, description="take at most this many per class")
    class_index: Literal["auto", "imagenet", "sorted"] = "auto"
    class_names: list[str] | None = Field(None, description="names for classes 0..C-1")

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
    num_workers: int = Field(0, ge=0, description="image decoding threads (file-backed datasets)")
    precision: Literal["float32", "bfloat16"] = Field(
        "float32", description="dtype of the LRP pass (errors against float32: benchmarks/precision.py)"
    )
    channels_last: bool = Field(False, description="NHWC activations (faster convolutions on GPUs)")

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


class TransferConfig(Section):
    """The model probes behind the Clever Hans score (stages/transfer.py, pipeline/scores.py)."""

    top: float = Field(0.03, gt=0, le=1, description="share of relevance cells pasted as a sample's evidence")
    hosts: int = Field(16, ge=1, description="images of other classes each sample's evidence is pasted into")
    global_hosts: int = Field(
        4, ge=0, description="of those, how many take each sample's per-channel mean and spread (0: no global probe)"
    )


class ScoreConfig(Section):
    """The Clever Hans score (pipeline/scores.py): excess transfer of a separate group."""

    flag_threshold: float = Field(1.5, ge=0, description="class score from which a class is flagged")
    fdr: float = Field(0.05, gt=0, le=1, description="largest q-value (false discovery rate) of a flagged class")
    permutations: int = Field(200, ge=0, description="permutation draws per class for its p-value (0: no fdr test)")
    min_spread: float = Field(
        0.1, gt=0, le=1, description="least spread of a class's usual transfer (probability) the excess is counted in"
    )
    max_group_fraction: float = Field(0.5, gt=0, le=1, description="largest suspicious group, share of the class")
    min_group: int = Field(3, ge=1, description="smallest suspicious group, samples")
    smoothing: float = Field(
        0.75, ge=0, lt=1, description="weight of a sample's explanation neighbours in its score (0: its own transfer)"
    )
    confidence_floor: float = Field(
        0.5,
        gt=0,
        le=1,
        description="a sample's transfer is divided by its self-confidence, at least this (1: its plain transfer)",
    )


class ReportConfig(Section):
    top_classes: int | None = Field(None, ge=1, description="class pages for the top-ranked only")
    prototypes: int = Field(8, ge=1, description="most central members shown large per cluster")
    thumb_size: int = Field(64, ge=16, le=256, description="side of the member thumbnails on class pages, pixels")
    page_size: int = Field(48, ge=1, le=1000, description="members per page (and per sprite sheet) of a cluster")


class CleanConfig(Section):
    flagged: Literal["drop", "review", "keep"] = "drop"
    decisions: str | None = Field(
        None, description="a curator's decisions file (JSON exported from the report, docs/decisions.md)"
    )

    @computed_field(description="hash of the decisions file's bytes: a changed file makes clean stale")
    @property
    def decisions_sha256(self) -> str | None:
        if not self.decisions:
            return None
        import fsspec

        try:
            with fsspec.open(self.decisions, "rb") as fh:
                return hashlib.sha256(fh.read()).hexdigest()[:16]
        except (OSError, ValueError):
            return "unreadable"


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
    poison: PoisonConfig | None = Field(None, description="planted shortcuts (None: the data as they are)")
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    attribute: AttributeConfig = Field(default_factory=AttributeConfig)
    distances: DistancesConfig = Field(default_factory=DistancesConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)
    transfer: TransferConfig = Field(default_factory=TransferConfig)
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
        """A config section; an absent optional one (poison) reads as an empty section."""
        value = getattr(self, name)
        return Section() if value is None else value


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
