"""Auditing the user's own model: any torchvision architecture with their classes and a state dict as
training scripts save it, or their own architecture through `python:module:function`; a layer LRP has no
rule for is one clear error."""

from __future__ import annotations

import torch
import torchvision
from typer.testing import CliRunner

from tests.helpers import make_runner, make_shapes_folder, tiny_net
from unhans.pipeline.cli import app
from unhans.pipeline.data.models import load_state


def shapes(tmp_path, per_class=6):
    return make_shapes_folder(tmp_path / "shapes", per_class=per_class)[0]


def test_a_fine_tuned_torchvision_checkpoint_is_audited(tmp_path):
    """resnet18 with 3 classes, saved from DataParallel inside a training checkpoint."""
    model = torchvision.models.resnet18(num_classes=3)
    state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"epoch": 7, "model_state_dict": state, "optimizer": {"lr": 0.1}}, tmp_path / "ckpt.pt")
    sets = [f"dataset.path={shapes(tmp_path)}", "dataset.kind=folder", "dataset.image_size=32",
            "model.arch=resnet18", f"model.weights={tmp_path / 'ckpt.pt'}", "attribute.resolution=8",
            "distances.metric=euclidean"]  # fmt: skip
    r = make_runner(tmp_path, "demo", sets + ["dataset.poison=null"])
    r.run_all(until="attribute")
    assert r.state("train") == "disabled" and r.record("attribute")["counts"]["attributed"] == 18
    assert r.record("attribute")["counts"]["accuracy"] is not None  # measured on the data, shown in the report
    assert sorted(load_state(tmp_path / "ckpt.pt")) == sorted(model.state_dict())


def test_your_own_architecture_by_a_python_factory_is_trained_and_explained(tmp_path):
    sets = [f"dataset.path={shapes(tmp_path)}", "dataset.kind=folder", "dataset.image_size=32",
            "dataset.poison=null", "model.arch=python:tests.helpers:tiny_net", "model.mean=[0.5,0.5,0.5]",
            "model.std=[0.25,0.25,0.25]", "train.epochs=2", "distances.metric=euclidean"]  # fmt: skip
    r = make_runner(tmp_path, "demo", sets)
    r.run_all(until="attribute")
    assert r.state("train") == "done" and r.record("attribute")["counts"]["attributed"] == 18
    assert tiny_net(3).state_dict().keys() == load_state(r.store.read_bytes("files/model.pt")).keys()


def test_a_layer_without_an_lrp_rule_is_named(tmp_path):
    sets = ["-c", "demo", "--run-dir", str(tmp_path / "run"), "--set", f"dataset.path={shapes(tmp_path)}",
            "--set", "dataset.kind=folder", "--set", "dataset.poison=null", "--set", "train.epochs=1",
            "--set", "model.arch=python:tests.helpers:net_with_layer_norm",
            "--set", "distances.metric=euclidean"]  # fmt: skip
    res = CliRunner().invoke(app, ["audit", *sets, "--until", "attribute"])
    assert res.exit_code == 2 and "layer '1' (LayerNorm) has no LRP rule" in res.output, res.output


def test_an_unknown_architecture_lists_the_choices(tmp_path):
    res = CliRunner().invoke(app, ["index", "-c", "demo", "--set", "model.arch=resnet99", "--run-dir", str(tmp_path)])
    assert res.exit_code == 2 and "small_cnn" in res.output and "python:module:function" in res.output
