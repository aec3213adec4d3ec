"""Config machinery: sections, YAML loading, `--set` overrides, one-line errors, fingerprints.

A config is one YAML file of sections. Each section is a `Section` (a pydantic model) declared
beside the code that reads it (`DistancesConfig` in pipeline/method/metrics/, `ScoreConfig` in
pipeline/method/statistics.py, ...); `stages/config.py` composes them into the run's `Config`.
A stage's fingerprint hashes exactly the sections it reads (pipeline/core/runner.py), so changing
a section makes that stage and everything downstream stale.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, ClassVar, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError, ValidationInfo, field_validator

from unhans.pipeline.core.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parents[2] / "configs"


class Section(BaseModel):
    """A config section: unknown keys are errors, values are validated on assignment too. `choices` maps a
    field to the Registry whose names it takes (names select code): a value not registered is an error
    that lists the choices, and docs/configuration.md lists them too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
    choices: ClassVar[dict[str, Any]] = {}

    @field_validator("*")
    @classmethod
    def _registered(cls, v: Any, info: ValidationInfo) -> Any:
        registry = cls.choices.get(info.field_name or "")
        if registry is not None and v is not None and v not in registry:
            raise ValueError(f"{v!r} is not one of: {', '.join(registry.names())}")
        return v


M = TypeVar("M", bound=BaseModel)


def resolve_config_path(name_or_path: str) -> Path:
    """`demo` -> configs/demo.yaml; a path is taken as given."""
    p = Path(name_or_path)
    if p.suffix in {".yaml", ".yml"} or p.is_file():
        if not p.is_file():
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


def submodels(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation admits (a model, an optional one, a union of annotated ones)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for a in get_args(annotation) for m in submodels(a)]


def _walk(model: type[BaseModel], loc: tuple) -> tuple[list[type[BaseModel]], list[str], list[str]]:
    """Follow an error location through the config's models: (the models at its end, the keys of the
    location that are fields, the discriminated unions' tags met on the way)."""
    models, keys, tags = [model], [], []
    for key in loc[:-1]:
        fields = [m.model_fields[str(key)] for m in models if str(key) in m.model_fields]
        if fields:
            models = [sub for f in fields for sub in submodels(f.annotation)]
            keys.append(str(key))
        else:  # a discriminated union's tag: keep the member whose fields default to it
            models = [m for m in models if key in {f.default for f in m.model_fields.values()}]
            tags.append(str(key))
        if not models:
            break
    return models, keys + [str(loc[-1])] if loc else keys, tags


def _tag_field(models: list[type[BaseModel]], tag: str) -> str:
    """The field of a discriminated union's members whose default is `tag` (its discriminator)."""
    for m in models:
        for name, f in m.model_fields.items():
            if f.default == tag:
                return name
    return "kind"


def format_validation_error(err: ValidationError, source: str, model: type[BaseModel]) -> str:
    lines = []
    for e in err.errors():
        models, keys, tags = _walk(model, tuple(e["loc"]))
        key = ".".join(keys)
        if e["type"] == "extra_forbidden":
            allowed = ", ".join(sorted({k for m in models for k in m.model_fields}))
            chosen = f" (with {'.'.join(keys[:-1])}.{_tag_field(models, tags[-1])} = {tags[-1]})" if tags else ""
            lines.append(f"{source}: unknown key {key!r}{chosen}; allowed keys here: {allowed}")
        elif e["type"] == "union_tag_invalid":
            ctx = e.get("ctx", {})
            expected = str(ctx.get("expected_tags", "")).replace("'", "")
            members = _walk(model, (*e["loc"], ""))[0]  # the union's members
            field = _tag_field(members, expected.split(", ")[0])
            lines.append(f"{source}: {key}.{field} = {ctx.get('tag')!r} is not one of: {expected}")
        else:
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"{source}: {key} = {e.get('input')!r}: {msg}")
    return "\n".join(lines)


def merge(base: dict, update: dict) -> dict:
    """`update` merged into `base` (in place), section by section."""
    for k, v in update.items():
        base[k] = merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return base


def load(model: type[M], name_or_path: str, overrides: list[str] | None = None, updates: dict | None = None) -> M:
    """Read, override (`section.key=value` strings, then a nested dict of `updates`) and validate a config
    as `model`; every problem is one UserError naming the key."""
    path = resolve_config_path(name_or_path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise UserError(f"{path}: not valid YAML ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: the top level must be a mapping of sections")
    data.setdefault("name", path.stem)
    apply_overrides(data, overrides or [])
    merge(data, updates or {})
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise UserError(format_validation_error(err, str(path), model)) from None


def fingerprint_of(obj: Any) -> str:
    """Stable short hash of a JSON-able object (config sections, input fingerprints)."""
    if isinstance(obj, BaseModel):
        obj = obj.model_dump(mode="json")
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
