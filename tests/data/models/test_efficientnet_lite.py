"""EfficientNet-Lite0 with packaged weights: predictions on skimage photos and LRP conservation."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
from skimage import data
from skimage.transform import resize
from zennit.attribution import Gradient
from zennit.canonizers import MergeBatchNorm
from zennit.composites import EpsilonGammaBox, EpsilonPlusFlat
from zennit.core import Composite
from zennit.layer import Sum

from unhans.pipeline.core.errors import UserError
from unhans.pipeline.data.models.efficientnet_lite import (
    INPUT_SIZE,
    MEAN,
    STD,
    EfficientNetLiteCanonizer,
    build_efficientnet_lite0,
    packaged_weights_path,
)

CATS = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
COFFEE = {967, 968, 504}  # espresso, cup, coffee mug


def preprocess(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 -> (1, 3, 224, 224): shorter side to 256, centre crop, (x - 0.5) / 0.5."""
    height, width = image.shape[:2]
    scale = 256 / min(height, width)
    image = resize(image, (round(height * scale), round(width * scale)), anti_aliasing=True)
    top = (image.shape[0] - INPUT_SIZE[0]) // 2
    left = (image.shape[1] - INPUT_SIZE[1]) // 2
    image = image[top : top + INPUT_SIZE[0], left : left + INPUT_SIZE[1]]
    x = torch.from_numpy(image.astype(np.float32)).permute(2, 0, 1)[None]
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return build_efficientnet_lite0(None)


@pytest.fixture(scope="module")
def chelsea() -> torch.Tensor:
    return preprocess(data.chelsea())


def relevance_sum(model: torch.nn.Module, composite: Composite, x: torch.Tensor, target: int) -> float:
    """Sum of input relevance when the target logit itself is the initial relevance."""
    with Gradient(model, composite) as attributor:
        _, relevance = attributor(x, lambda out: torch.eye(out.shape[1])[[target]] * out.detach())
    return float(relevance.sum())


def composites() -> list[tuple[str, Callable[..., Composite]]]:
    return [
        ("epsilon_plus_flat", lambda canonizers: EpsilonPlusFlat(canonizers=canonizers)),
        ("epsilon_gamma_box", lambda canonizers: EpsilonGammaBox(low=-1.0, high=1.0, canonizers=canonizers)),
    ]


def test_packaged_weights_path_exists() -> None:
    assert packaged_weights_path().is_file()


def test_missing_weights_file_is_a_user_error(tmp_path) -> None:
    with pytest.raises(UserError):
        build_efficientnet_lite0(tmp_path / "nope.pth")


def test_shape_mismatch_names_the_pair(tmp_path) -> None:
    state = torch.load(packaged_weights_path(), map_location="cpu", weights_only=True)
    state["_fc.bias"] = torch.zeros(10)
    torch.save(state, tmp_path / "bad.pth")
    with pytest.raises(UserError, match=r"_fc\.bias.*classifier\.bias"):
        build_efficientnet_lite0(tmp_path / "bad.pth")


def test_model_is_in_eval_mode(model: torch.nn.Module) -> None:
    assert not model.training


def test_predicts_cat_for_chelsea(model: torch.nn.Module, chelsea: torch.Tensor) -> None:
    with torch.no_grad():
        top5 = model(chelsea)[0].topk(5).indices.tolist()
    assert top5[0] in CATS
    assert len(CATS.intersection(top5)) >= 3  # measured: tiger cat, Egyptian cat, tabby


def test_predicts_espresso_for_coffee(model: torch.nn.Module) -> None:
    with torch.no_grad():
        probs = model(preprocess(data.coffee()))[0].softmax(0)
    assert int(probs.argmax()) in COFFEE
    assert float(probs[sorted(COFFEE)].sum()) > 0.5  # measured: espresso 0.93


def test_canonizer_keeps_outputs_and_is_reverted(model: torch.nn.Module, chelsea: torch.Tensor) -> None:
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        before = model(chelsea)
    handles = EfficientNetLiteCanonizer().apply(model)
    try:
        merges = sum(isinstance(h, MergeBatchNorm) for h in handles)
        assert merges == sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 49
        assert sum(isinstance(m, Sum) for m in model.modules()) == 9  # one per skip connection
        with torch.no_grad():
            during = model(chelsea)
        assert torch.allclose(during, before, rtol=1e-4, atol=1e-4 * float(before.abs().max()))
    finally:
        for handle in handles:
            handle.remove()
    assert not any(isinstance(m, Sum) for m in model.modules())
    assert not any("forward" in vars(m) for m in model.modules())
    after_state = model.state_dict()
    assert after_state.keys() == before_state.keys()
    assert all(torch.equal(after_state[k], v) for k, v in before_state.items())
    with torch.no_grad():
        assert torch.equal(model(chelsea), before)


@pytest.mark.parametrize(("name", "make"), composites())
def test_lrp_conservation_bias_free(
    model: torch.nn.Module, chelsea: torch.Tensor, name: str, make: Callable[..., Composite]
) -> None:
    """Without biases LRP must conserve; this checks the BN merge and the skip-connection `Sum` rules."""
    bias_free = copy.deepcopy(model)
    for module in bias_free.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.bias.data.zero_()
            module.running_mean.data.zero_()
    bias_free.classifier.bias.data.zero_()
    with torch.no_grad():
        logits = bias_free(chelsea)[0]
    target = int(logits.argmax())
    logit = float(logits[target])
    canonized = relevance_sum(bias_free, make([EfficientNetLiteCanonizer()]), chelsea, target)
    plain = relevance_sum(bias_free, make(None), chelsea, target)
    # measured rel. errors: canonized 2.6e-3 (flat) / 5.9e-5 (gamma box); plain ~5e2 (skips double relevance)
    assert abs(canonized - logit) / abs(logit) < {"epsilon_plus_flat": 5e-3, "epsilon_gamma_box": 5e-4}[name]
    assert abs(plain - logit) / abs(logit) > 10


@pytest.mark.parametrize(("name", "make"), composites())
def test_lrp_relevance_with_biases(
    model: torch.nn.Module, chelsea: torch.Tensor, name: str, make: Callable[..., Composite]
) -> None:
    """With the real (BN-merged) biases most relevance is absorbed by biases; none may be created."""
    with torch.no_grad():
        logits = model(chelsea)[0]
    target = int(logits.argmax())
    logit = float(logits[target])
    canonized = relevance_sum(model, make([EfficientNetLiteCanonizer()]), chelsea, target)
    plain = relevance_sum(model, make(None), chelsea, target)
    # measured (logit 9.11): canonized 0.0021 (flat) / 0.141 (gamma box); plain 108.5 / 1110
    assert 0 < canonized < 0.05 * logit
    assert plain > 5 * logit
