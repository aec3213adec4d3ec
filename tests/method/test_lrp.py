"""unhans' LRP engine against zennit, its reference: the same maps for every composite on VGG-16,
ResNet-50 and EfficientNet-Lite0, at most 4.5 forward passes of FLOPs, and the model given back intact."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.flop_counter import FlopCounterMode
from zennit.attribution import Gradient

from unhans.pipeline.data.models import MODELS
from unhans.pipeline.data.models.efficientnet_lite import build_efficientnet_lite0
from unhans.pipeline.method.lrp import COMPOSITES

SIZE = 64  # the maps' equality does not depend on the input size; 224 px only costs time


def _torchvision(arch: str) -> nn.Module:
    """Random weights, with batch-norm statistics far from the identity so that merging them matters."""
    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.2, 0.2)
    return model


@pytest.fixture(scope="module", params=["vgg16", "resnet50", "efficientnet_lite0"])
def network(request) -> tuple[str, nn.Module, torch.Tensor]:
    arch = request.param
    model = build_efficientnet_lite0() if arch == "efficientnet_lite0" else _torchvision(arch)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    torch.manual_seed(1)
    x = MODELS.get(arch).normaliser(3)(torch.rand(3, 3, SIZE, SIZE))
    return arch, model, x


def _bounds(arch: str) -> tuple[torch.Tensor, torch.Tensor]:
    norm = MODELS.get(arch).normaliser(3)
    return norm(torch.zeros(1, 3, 1, 1)), norm(torch.ones(1, 3, 1, 1))


def _initial(out: torch.Tensor) -> torch.Tensor:
    """The target logit itself as the initial relevance (as the attribute stage does)."""
    t = out.argmax(1, keepdim=True)
    return torch.zeros_like(out).scatter_(1, t, out.detach().gather(1, t))


def ours(model: nn.Module, composite, canonizers: list, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    attached = composite.attach(model, canonizers)
    try:
        leaf = x.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            # a non-leaf input: FlopCounterMode's module tracker cannot take the gradient of a leaf
            out = model(leaf.clone())
            (relevance,) = torch.autograd.grad(out, leaf, _initial(out))
    finally:
        attached.remove()
    return out.detach(), relevance


def zennits(model: nn.Module, composite, canonizers: list, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with Gradient(model=model, composite=composite.reference(canonizers)) as attributor:
        return attributor(x, _initial)


def max_relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    """Per map: largest |a - b| over the largest |b|; the worst map of the batch."""
    return float(((a - b).flatten(1).abs().amax(1) / b.flatten(1).abs().amax(1)).max())


@pytest.mark.parametrize("name", COMPOSITES.names())
def test_maps_equal_zennits(network, name: str) -> None:
    arch, model, x = network
    spec = MODELS.get(arch)
    composite = COMPOSITES.get(name)(*_bounds(arch))
    out, relevance = ours(model, composite, spec.canonizers(), x)
    ref_out, ref = zennits(model, composite, spec.canonizers(), x)
    assert torch.equal(out, ref_out)
    assert relevance.abs().amax() > 0
    assert max_relative_error(relevance, ref) <= 1e-4  # measured: 0 (bit-equal) to 1.8e-7 (gamma)
    assert max_relative_error(relevance.sum(1), ref.sum(1)) <= 1e-4


def test_lrp_pass_costs_at_most_4_5_forward_passes(network) -> None:
    arch, model, x = network
    composite = COMPOSITES.get("epsilon_plus_flat")(*_bounds(arch))
    with FlopCounterMode(display=False) as forward:
        with torch.no_grad():
            model(x)
    with FlopCounterMode(display=False) as lrp:
        ours(model, composite, MODELS.get(arch).canonizers(), x)
    # measured at 224 px (benchmarks/costs.py): 2.99 (VGG-16), 2.98 (ResNet-50); zennit's hooks: 5.97, 5.94
    assert lrp.get_total_flops() <= 4.5 * forward.get_total_flops()


def test_the_model_is_given_back_unchanged(network) -> None:
    arch, model, x = network
    state = {k: v.clone() for k, v in model.state_dict().items()}
    inplace = {name: m.inplace for name, m in model.named_modules() if hasattr(m, "inplace")}
    with torch.no_grad():
        before = model(x)
    ours(model, COMPOSITES.get("epsilon_plus_flat")(*_bounds(arch)), MODELS.get(arch).canonizers(), x)
    assert not any("forward" in vars(m) for m in model.modules())
    assert {name: m.inplace for name, m in model.named_modules() if hasattr(m, "inplace")} == inplace
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    with torch.no_grad():
        assert torch.equal(model(x), before)


class _Odd(nn.Module):
    """Layers outside the fast paths: 'same' and reflect padding, a transposed convolution, average
    pooling, a grouped convolution, and an in-place operation on a dense layer's output."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(2, 6, 3, padding="same")
        self.b = nn.Conv2d(6, 6, 3, padding=1, padding_mode="reflect", groups=3)
        self.c = nn.ConvTranspose2d(6, 4, 2, stride=2)
        self.pool = nn.AvgPool2d(4)
        self.act = nn.ReLU(inplace=True)
        self.fc1 = nn.Linear(4 * 4 * 4, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(self.act(self.c(self.act(self.b(self.act(self.a(x)))))))
        h = self.fc1(h.flatten(1))
        h += 0.5  # in place, on the output the epsilon rule reads
        return self.fc2(self.act(h))


@pytest.mark.parametrize("name", COMPOSITES.names())
def test_layers_outside_the_fast_paths_match_zennit(name: str) -> None:
    torch.manual_seed(2)
    model = _Odd().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    x = torch.randn(4, 2, 8, 8)
    composite = COMPOSITES.get(name)(torch.full((1, 2, 1, 1), -3.0), torch.full((1, 2, 1, 1), 3.0))
    out, relevance = ours(model, composite, [], x)
    ref_out, ref = zennits(model, composite, [], x)
    assert torch.equal(out, ref_out)
    assert max_relative_error(relevance, ref) <= 1e-4


def test_the_gpu_checks_scripts_run(tmp_path) -> None:
    """benchmarks/gpu_check.sh waits for a lent GPU; its throughput script runs here on the CPU, tiny,
    and its float32 maps equal zennit's; the shell script parses."""
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "table.md"
    subprocess.run([sys.executable, str(root / "benchmarks" / "gpu_attribution.py"), "--device", "cpu", "--size", "32",
                    "--batch", "2", "--batches", "1", "--repeats", "1", "--archs", "resnet50", "--out", str(out)],
                   check=True, capture_output=True)  # fmt: skip
    rows = [line.split("|") for line in out.read_text().splitlines() if line.startswith("| resnet50")]
    assert len(rows) == 4  # float32 and bfloat16, NCHW and channels-last
    float32_nchw = next(r for r in rows if r[2].strip() == "float32" and r[3].strip() == "NCHW")
    assert float(float32_nchw[-2]) <= 1e-4
    subprocess.run(["bash", "-n", str(root / "benchmarks" / "gpu_check.sh")], check=True)
