"""LRP attribution with a composite chosen by name (pipeline/method/lrp.py), batched, on any torch device."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn
from zennit import types as zt
from zennit.layer import Sum

from unhans.pipeline.core.config import Section
from unhans.pipeline.core.errors import UserError
from unhans.pipeline.data.models import ModelSpec, penultimate_layer
from unhans.pipeline.method.lrp import COMPOSITES


class AttributeConfig(Section):
    """LRP for every sample (pipeline/method/attribution.py, stages/attribute.py)."""

    choices = {"composite": COMPOSITES}

    composite: str = Field(
        "epsilon_plus_flat", description="LRP composite: rules per layer type, zennit's names and rules"
    )
    target: Literal["label", "prediction"] = Field(
        "label", description="the logit explained: the sample's label or the model's prediction"
    )
    batch_size: int = Field(64, ge=1, description="images per forward/backward pass")
    chunk_size: int = Field(1024, ge=1, description="rows per zarr chunk: the unit of writing and resuming")
    resolution: int = Field(32, ge=4, description="side of the stored relevance maps (power of 2)")
    features: bool = Field(True, description="store penultimate features (float16)")
    precision: Literal["float32", "bfloat16"] = Field(
        "float32", description="dtype of the LRP pass (errors against float32: benchmarks/precision.py)"
    )
    channels_last: bool = Field(False, description="NHWC activations (faster convolutions on GPUs)")
    thumbnail: int = Field(
        64, ge=16, le=256, description="side of the image thumbnails stored for the report's member grid, pixels "
        "(at most the image size)",
    )  # fmt: skip

    @field_validator("resolution")
    @classmethod
    def _pow2(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError(f"{v} is not a power of two")
        return v


def sum_pool(relevance: torch.Tensor, resolution: int) -> torch.Tensor:
    """(B, C, H, W) -> (B, r, r): sum over channels, then sum-pool (conserves total relevance)."""
    r = relevance.sum(1, keepdim=True)
    factor = r.shape[-1] // resolution
    if factor > 1:
        r = F.avg_pool2d(r, factor) * (factor * factor)
    return r[:, 0]


# leaf layers LRP passes relevance through correctly: the composites assign each a rule by its type (linear
# and convolutional layers, batch norms, activations, pooling), or relevance flows through them unchanged
PASS_THROUGH = (nn.Flatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.Identity, Sum,
                nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d,
                nn.AdaptiveMaxPool3d)  # fmt: skip
RULED = (zt.Linear, zt.BatchNorm, zt.Activation, zt.AvgPool)
NO_RULE = (nn.MultiheadAttention,)  # weighted, yet zennit counts it an activation: relevance would pass as is


def check_layers(model: nn.Module) -> None:
    """A UserError naming the first leaf layer of `model` that LRP has no rule for (its relevance would be
    a plain gradient there, and the maps wrong without a word)."""
    for name, m in model.named_modules():
        leaf = next(m.children(), None) is None
        if (leaf and not isinstance(m, PASS_THROUGH + RULED)) or isinstance(m, NO_RULE):
            raise UserError(
                f"the model's layer {name!r} ({type(m).__name__}) has no LRP rule in unhans: LRP covers linear, "
                "convolutional, batch-norm, activation and pooling layers; replace that layer or choose "
                "another model.arch"
            )


# the dtype the whole LRP pass runs in (model, inputs, rules); the errors against float32 are measured
# by benchmarks/precision.py (docs/measurements.md#attribution). No float16: its 5-bit exponent breaks LRP on
# EfficientNet-Lite0 (median cosine to the float32 maps 0.27), while bfloat16 keeps 0.9998.
PRECISIONS = {"float32": torch.float32, "bfloat16": torch.bfloat16}


class LRP:
    """A model with a composite attached. Use as a context manager; call on batches in [0, 1].

    `precision` runs the model and the rules in float32 or bfloat16 (outputs are returned
    in that dtype; callers convert); `channels_last` stores activations NHWC, which GPUs' tensor-core
    convolutions prefer.

    Returns a dict: logits (B, K), target (B,), relevance (B, C, H, W) at the input, and
    features (B, D) (the input of the last Linear layer) when `features=True`.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        composite: str,
        channels: int,
        device: torch.device,
        features: bool = False,
        precision: str = "float32",
        channels_last: bool = False,
    ) -> None:
        self.dtype = PRECISIONS[precision]
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.model = model.to(device=device, dtype=self.dtype, memory_format=self.memory_format).eval()  # type: ignore[call-overload]
        self.device = device
        self.normalise = spec.normaliser(channels, device, self.dtype)
        low = self.normalise(torch.zeros(1, channels, 1, 1, device=device, dtype=self.dtype))
        high = self.normalise(torch.ones(1, channels, 1, 1, device=device, dtype=self.dtype))
        self.composite = COMPOSITES.get(composite)(low, high)
        self.canonizers = spec.canonizers()
        check_layers(model)
        self._attached = None
        self.want_features = features
        self._features: torch.Tensor | None = None
        self._handles: list = []

    def __enter__(self) -> LRP:
        for p in self.model.parameters():
            p.requires_grad_(False)
        self._attached = self.composite.attach(self.model, self.canonizers)
        if self.want_features:
            layer = penultimate_layer(self.model)
            self._handles.append(layer.register_forward_pre_hook(self._grab))
        return self

    def __exit__(self, *exc) -> None:
        if self._attached is not None:
            self._attached.remove()
            self._attached = None
        for h in self._handles:
            h.remove()
        self._handles.clear()

    def _grab(self, module: nn.Module, args: tuple) -> None:
        self._features = args[0].detach().flatten(1)

    def __call__(self, x: torch.Tensor, labels: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """`labels` (B,) selects the explained logit; None explains the predicted class."""
        x = x.to(self.device, non_blocking=True).to(self.dtype)
        x = self.normalise(x).contiguous(memory_format=self.memory_format).requires_grad_(True)
        with torch.enable_grad():
            logits = self.model(x)
            target = logits.argmax(1) if labels is None else labels.to(self.device)
            # initial relevance = the target logit itself, so relevance sums to it (conservation)
            grad_out = torch.zeros_like(logits).scatter_(1, target[:, None], logits.detach().gather(1, target[:, None]))
            (relevance,) = torch.autograd.grad(logits, x, grad_outputs=grad_out)
        out = {"logits": logits.detach(), "target": target, "relevance": relevance}
        if self.want_features and self._features is not None:
            out["features"] = self._features
        return out
