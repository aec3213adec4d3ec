"""LRP in one modified backward pass: rules by layer type, run as custom autograd functions.

While a composite is attached, every module it gives a rule has its forward replaced by an
autograd Function whose forward is the module's own and whose backward is the module's LRP rule.
Everything between those modules (reshapes, max pooling, concatenation, functional calls) passes
relevance as the gradient. So one backward pass computes the relevance, and nothing else:

    rule        layer cost in forward passes      what it adds to the plain forward
    epsilon     2                                 one transposed pass
    z+          3                                 the positive-weight forward, one transposed pass
    alpha-beta  5                                 the positive- and negative-weight forwards, two transposed
    gamma       5                                 the two gamma-weight forwards, two transposed
    flat, box   first layer only                  input-independent terms computed once per batch shape

zennit's hooks cost one more backward per layer (autograd's plain gradient, computed and discarded)
and evaluate the negative-input terms of z+, alpha-beta and gamma on inputs that are all zero after a
ReLU; here an input with no negative entry skips those terms, which are exact zeros there.
(`benchmarks/costs.py` counts the FLOPs; `benchmarks/attribution.py` times the stage.)

The rules and composites are zennit 0.5's (each rule's formula is in its docstring; x+ = max(x, 0),
x- = min(x, 0), W+ / W- the clamped parameters, f(x; W, b) the layer, f^T its transpose in x,
stab(z) = z + eps * sign(z) with sign(0) = 1). The maps equal zennit's to float rounding, tested on
VGG-16, ResNet-50 and EfficientNet-Lite0 (tests/method/test_lrp.py); canonizers (batch-norm merging,
explicit residual sums) are zennit's, applied before the rules are attached.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn
from zennit import composites as zc
from zennit import types as zt
from zennit.layer import Sum

from unhans.pipeline.core.errors import UserError
from unhans.pipeline.core.registry import Registry

Tensor = torch.Tensor
Params = tuple[Tensor, Tensor | None]


def stabilise(z: Tensor, eps: float) -> Tensor:
    """z moved away from zero by eps in its own direction (zero counts as positive)."""
    return torch.where(z >= 0, z + eps, z - eps)


def _vjp(fn: Callable[[Tensor], Tensor], x: Tensor, g: Tensor) -> Tensor:
    """g^T d fn / d x at x (one forward and one backward of fn)."""
    with torch.enable_grad():
        xr = x.detach().requires_grad_(True)
        (gx,) = torch.autograd.grad(fn(xr), xr, g)
    return gx


class Site:
    """One ruled module while attached: its own forward, its rule, and cached parameter variants."""

    def __init__(self, module: nn.Module, rule: Rule) -> None:
        self.module, self.rule = module, rule
        self.forward = module.forward  # the module's own (or a canonizer's) forward, bound
        self._cache: dict = {}

    def cached(self, key, make: Callable[[], object]):
        """`make()` once per attachment (the parameters are frozen while a composite is attached)."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    # the module as a linear map f(x; W, b) with replaceable parameters (Linear, Conv, ConvTranspose)
    def params(self, name: str, modify: Callable[[Tensor], Tensor]) -> Params:
        """(modify(weight), modify(bias) or None), cached under `name`."""
        w: Tensor = self.module.weight  # type: ignore[assignment]
        b: Tensor | None = getattr(self.module, "bias", None)
        return self.cached(("params", name), lambda: (modify(w), None if b is None else modify(b)))

    def linear(self, x: Tensor, w: Tensor, b: Tensor | None) -> Tensor:
        m = self.module
        if isinstance(m, nn.Linear):
            return F.linear(x, w, b)
        if isinstance(m, zt.ConvolutionStandard):
            return m._conv_forward(x, w, b)
        if isinstance(m, zt.ConvolutionTranspose):
            conv = (F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d)[x.dim() - 3]
            return conv(x, w, b, m.stride, m.padding, m.output_padding, m.groups, m.dilation)
        raise UserError(f"LRP's linear rules need a Linear or convolution layer, not {type(m).__name__}")

    def transpose(self, g: Tensor, w: Tensor, x: Tensor) -> Tensor:
        """f^T g: the gradient of <g, f(x; w, .)> in x (f is linear in x, so x gives only the shape)."""
        m = self.module
        if isinstance(m, nn.Linear):
            return g @ w
        if isinstance(m, zt.ConvolutionStandard) and m.padding_mode == "zeros" and not isinstance(m.padding, str):
            zeros = [0] * (x.dim() - 2)
            return torch.ops.aten.convolution_backward(
                g, x, w, None, m.stride, m.padding, m.dilation, False, zeros, m.groups, [True, False, False]
            )[0]
        return _vjp(lambda xr: self.linear(xr, w, None), x, g)

    def constant(self, key, x: Tensor, make: Callable[[Tensor], Tensor]) -> Tensor:
        """make(one sample shaped like x's rows), for terms that do not depend on the input's values."""
        shape = (1, *x.shape[1:])
        return self.cached((key, shape, x.dtype, x.device), lambda: make(x.new_ones(shape)))


class Rule:
    """How relevance r at a module's output becomes relevance at its input x (y: its output)."""

    needs_input = True
    needs_output = False

    def relevance(self, site: Site, x: Tensor, y: Tensor | None, r: Tensor) -> Tensor:
        raise NotImplementedError


def _signed(x: Tensor) -> tuple[Tensor, Tensor | None]:
    """(x+, x-), x- None when x has no negative entry (its terms are exact zeros then, and x+ is x)."""
    if not bool((x < 0).any()):
        return x, None
    return x.clamp(min=0), x.clamp(max=0)


def _pos(t: Tensor) -> Tensor:
    return t.clamp(min=0)


def _neg(t: Tensor) -> Tensor:
    return t.clamp(max=0)


@dataclass
class Epsilon(Rule):
    """R_in = x * f^T_W(r / stab(f(x; W, b)))."""

    eps: float = 1e-6
    needs_output = True

    def relevance(self, site, x, y, r):
        w, _ = site.params("", lambda t: t)
        return x * site.transpose(r / stabilise(y, self.eps), w, x)


@dataclass
class ZPlus(Rule):
    """z = f(x+; W+, b+) + f(x-; W-, 0);  R_in = x+ * f^T_{W+}(r / stab(z)) + x- * f^T_{W-}(r / stab(z))."""

    eps: float = 1e-6

    def relevance(self, site, x, y, r):
        (wp, bp), (wn, _) = site.params("+", _pos), site.params("-", _neg)
        xp, xn = _signed(x)
        z = site.linear(xp, wp, bp)
        if xn is not None:
            z = z + site.linear(xn, wn, None)
        g = r / stabilise(z, self.eps)
        out = xp * site.transpose(g, wp, x)
        return out if xn is None else out + xn * site.transpose(g, wn, x)


@dataclass
class AlphaBeta(Rule):
    """z+ = f(x+; W+, b+) + f(x-; W-, 0),  z- = f(x+; W-, b-) + f(x-; W+, 0);
    R_in = alpha (x+ f^T_{W+} g+ + x- f^T_{W-} g+) - beta (x+ f^T_{W-} g- + x- f^T_{W+} g-),  g+- = r / stab(z+-)."""

    alpha: float = 2.0
    beta: float = 1.0
    eps: float = 1e-6

    def relevance(self, site, x, y, r):
        (wp, bp), (wn, bn) = site.params("+", _pos), site.params("-", _neg)
        xp, xn = _signed(x)
        zp, zn = site.linear(xp, wp, bp), site.linear(xp, wn, bn)
        if xn is not None:
            zp, zn = zp + site.linear(xn, wn, None), zn + site.linear(xn, wp, None)
        gp, gn = r / stabilise(zp, self.eps), r / stabilise(zn, self.eps)
        pos, neg = xp * site.transpose(gp, wp, x), xp * site.transpose(gn, wn, x)
        if xn is not None:
            pos, neg = pos + xn * site.transpose(gp, wn, x), neg + xn * site.transpose(gn, wp, x)
        return self.alpha * pos - self.beta * neg


@dataclass
class Gamma(Rule):
    """Generalised gamma rule, with Wa = W + gamma W+, Wb = W + gamma W- (biases alike):
    z_a = f(x+; Wa, ba) + f(x-; Wb, 0) for outputs y > 0,  z_b = f(x+; Wb, bb) + f(x-; Wa, 0) for y < 0;
    g_a = [y > 0] r / stab(z_a),  g_b = [y < 0] r / stab(z_b);
    R_in = x+ (f^T_{Wa} g_a + f^T_{Wb} g_b) + x- (f^T_{Wb} g_a + f^T_{Wa} g_b)."""

    gamma: float = 0.25
    eps: float = 1e-6
    needs_output = True

    def relevance(self, site, x, y, r):
        wa, ba = site.params("gamma+", lambda t: t + self.gamma * t.clamp(min=0))
        wb, bb = site.params("gamma-", lambda t: t + self.gamma * t.clamp(max=0))
        xp, xn = _signed(x)
        za, zb = site.linear(xp, wa, ba), site.linear(xp, wb, bb)
        if xn is not None:
            za, zb = za + site.linear(xn, wb, None), zb + site.linear(xn, wa, None)
        ga, gb = (y > 0) * r / stabilise(za, self.eps), (y < 0) * r / stabilise(zb, self.eps)
        out = xp * site.transpose(ga, wa, x) + xp * site.transpose(gb, wb, x)
        if xn is not None:
            out = out + xn * site.transpose(ga, wb, x) + xn * site.transpose(gb, wa, x)
        return out


@dataclass
class ZBox(Rule):
    """Inputs bounded by [low, high]: z = f(x; W, b) - (f(low; W+, b+) + f(high; W-, b-));
    R_in = x f^T_W g - (low f^T_{W+} g + high f^T_{W-} g),  g = r / stab(z)."""

    low: Tensor
    high: Tensor
    eps: float = 1e-6
    needs_output = True

    def relevance(self, site, x, y, r):
        w, _ = site.params("", lambda t: t)
        (wp, bp), (wn, bn) = site.params("+", _pos), site.params("-", _neg)
        low = site.constant("low", x, lambda one: self.low.to(one) * one)
        high = site.constant("high", x, lambda one: self.high.to(one) * one)
        bound = site.constant("box", x, lambda one: site.linear(low, wp, bp) + site.linear(high, wn, bn))
        g = r / stabilise(y - bound, self.eps)
        return x * site.transpose(g, w, x) - (low * site.transpose(g, wp, x) + high * site.transpose(g, wn, x))


@dataclass
class Flat(Rule):
    """Every input and weight 1, no bias: R_in = f^T_1(r / stab(f(1; 1, 0)))."""

    eps: float = 1e-6

    def relevance(self, site, x, y, r):
        ones, _ = site.params("ones", torch.ones_like)
        z = site.constant("flat", x, lambda one: site.linear(one, ones, None))
        return site.transpose(r / stabilise(z, self.eps), ones, x)


@dataclass
class Norm(Rule):
    """Parameter-free layers (sums, average pooling): R_in = x * f^T(r / stab(f(x)))."""

    eps: float = 1e-6
    needs_output = True

    def relevance(self, site, x, y, r):
        return x * _vjp(site.forward, x, r / stabilise(y, self.eps))


class Pass(Rule):
    """Relevance passes unchanged (activations, batch norms merged into their convolution)."""

    needs_input = False

    def relevance(self, site, x, y, r):
        return r


class _Apply(torch.autograd.Function):
    """Forward: the module's own. Backward: its LRP rule."""

    @staticmethod
    def forward(ctx, x: Tensor, site: Site) -> Tensor:
        y = site.forward(x)
        ctx.site = site
        # the output is copied: later in-place operations on it must not change what the rule reads
        rule = site.rule
        ctx.save_for_backward(x if rule.needs_input else None, y.clone() if rule.needs_output else None)
        return y

    @staticmethod
    def backward(ctx, r: Tensor) -> tuple[Tensor, None]:
        x, y = ctx.saved_tensors
        return ctx.site.rule.relevance(ctx.site, x, y, r), None


LayerMap = list[tuple[type | tuple, Rule]]


@dataclass
class Composite:
    """Rules by layer type: `first` for the first layer matching it (in module order), then `layers`.

    `reference` builds zennit's composite of the same name, the reference the tests compare against."""

    layers: LayerMap
    first: LayerMap = field(default_factory=list)
    reference: Callable[[list], zc.Composite] | None = None

    def rule_for(self, module: nn.Module, first: bool) -> Rule | None:
        for types, rule in (self.first if first else []) + self.layers:
            if isinstance(module, types):
                return rule
        return None

    def attach(self, model: nn.Module, canonizers: list) -> Attachment:
        """Apply the canonizers, then give every matching module its rule (undo with .remove())."""
        return Attachment(self, model, canonizers)


class Attachment:
    """A composite attached to a model; `remove()` restores the model."""

    def __init__(self, composite: Composite, model: nn.Module, canonizers: list) -> None:
        self._canonized = [h for c in canonizers for h in c.apply(model)]
        self._patched: list[tuple[nn.Module, Callable | None]] = []
        self._inplace: list[nn.Module] = []
        first = bool(composite.first)
        for _, m in model.named_modules():
            rule = composite.rule_for(m, first)
            if rule is not None and first and any(isinstance(m, t) for t, _ in composite.first):
                first = False
            if getattr(m, "inplace", False) is True:  # in-place activations would overwrite a rule's input
                m.inplace = False
                self._inplace.append(m)
            if rule is None:
                continue
            site = Site(m, rule)
            self._patched.append((m, m.__dict__.get("forward")))

            def forward(x, *args, site=site, **kwargs):
                if args or kwargs:
                    raise UserError(f"LRP takes one input per layer; {type(site.module).__name__} got more")
                return _Apply.apply(x, site)

            m.forward = forward

    def remove(self) -> None:
        for m, own in reversed(self._patched):
            if own is None:
                del m.forward
            else:
                m.forward = own
        for m in self._inplace:
            m.inplace = True  # type: ignore[assignment]
        for h in reversed(self._canonized):
            h.remove()
        self._patched, self._inplace, self._canonized = [], [], []


# name -> factory(low, high) -> Composite; low/high bound the normalised input (the box rule's)
COMPOSITES: Registry[Callable[[Tensor, Tensor], Composite]] = Registry("composite")


def _layers(conv: Rule) -> LayerMap:
    """zennit's layer map: activations and batch norms pass, sums and average pooling normalise,
    `conv` for convolutions, epsilon for dense layers."""
    return [(zt.Activation, Pass()), (Sum, Norm()), (zt.AvgPool, Norm()), (zt.BatchNorm, Pass()),
            (zt.Convolution, conv), (nn.Linear, Epsilon())]  # fmt: skip


def _by_type(conv: type[Rule], flat: bool, reference: Callable, low: Tensor, high: Tensor) -> Composite:
    """`conv` for convolutions, the flat rule on the first layer when `flat`; `low`/`high` unused."""
    return Composite(_layers(conv()), [(zt.Linear, Flat())] if flat else [], lambda c: reference(canonizers=c))


for _name, _conv, _flat, _reference in [
    ("epsilon_plus_flat", ZPlus, True, zc.EpsilonPlusFlat),
    ("epsilon_plus", ZPlus, False, zc.EpsilonPlus),
    ("epsilon_alpha2_beta1_flat", AlphaBeta, True, zc.EpsilonAlpha2Beta1Flat),
    ("epsilon_alpha2_beta1", AlphaBeta, False, zc.EpsilonAlpha2Beta1),
]:
    COMPOSITES.register(_name)(partial(_by_type, _conv, _flat, _reference))


@COMPOSITES.register("epsilon_gamma_box")
def _epsilon_gamma_box(low: Tensor, high: Tensor) -> Composite:
    return Composite(_layers(Gamma()), [(zt.Convolution, ZBox(low, high))],
                     lambda c: zc.EpsilonGammaBox(low=low, high=high, canonizers=c))  # fmt: skip
