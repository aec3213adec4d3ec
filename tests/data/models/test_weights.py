"""Weights files that are missing or are not checkpoints: one clear line naming the file, no traceback."""

import os

import pytest
import torch
from typer.testing import CliRunner

from unhans.pipeline.cli import app
from unhans.pipeline.core.errors import UserError
from unhans.pipeline.data.models import SmallCNN, load_state


def audit(tmp_path, folder, *settings: str):
    sets = [f"dataset.path={folder}", "dataset.image_size=32", "dataset.resize=36", "compute.decode_threads=0",
            f"report_dir={tmp_path / 'report'}", *settings]  # fmt: skip
    args = ["audit", "-c", "imagenet", "--run-dir", str(tmp_path / "run")] + [a for s in sets for a in ("--set", s)]
    return CliRunner().invoke(app, args)


def error_line(res) -> str:
    assert res.exit_code == 2 and "Traceback" not in res.output, res.output
    (line,) = [x for x in res.output.splitlines() if x.startswith("error: ")]
    return line


def test_missing_or_garbage_weights_stop_the_audit_with_one_line(tmp_path, imagenet_folder):
    missing = tmp_path / "nowhere" / "resnet18.pth"
    line = error_line(audit(tmp_path, imagenet_folder, "model.arch=resnet18", f"model.weights={missing}"))
    assert line == f"error: weights file {missing} does not exist; set model.weights to an existing file"
    garbage = tmp_path / "vgg16.pth"
    garbage.write_bytes(os.urandom(4096))
    line = error_line(audit(tmp_path, imagenet_folder, "model.arch=vgg16", f"model.weights={garbage}"))
    assert line.startswith(f"error: cannot load weights from {garbage} (")
    assert line.endswith("it must be a state dict saved with torch.save(model.state_dict(), path)")
    # what index computed stays done
    res = CliRunner().invoke(app, ["status", "-c", "imagenet", "--run-dir", str(tmp_path / "run"),
                                   "--set", f"dataset.path={imagenet_folder}", "--set", "dataset.image_size=32",
                                   "--set", "dataset.resize=36"])  # fmt: skip
    assert res.exit_code == 0 and res.output.splitlines()[2].split()[:2] == ["index", "done"], res.output


@pytest.mark.parametrize("kind", ["random bytes", "truncated", "text", "whole module", "folder", "not a dict"])
def test_a_file_that_is_no_state_dict_is_one_clear_error(tmp_path, kind):
    path = tmp_path / "weights.pth"
    if kind == "random bytes":
        path.write_bytes(os.urandom(4096))
    elif kind == "truncated":
        torch.save(SmallCNN(3, 10).state_dict(), path)
        path.write_bytes(path.read_bytes()[:1000])
    elif kind == "text":
        path.write_text('{"conv.weight": [1, 2, 3]}')
    elif kind == "whole module":  # torch.save(model) instead of its state dict: refused by weights_only
        torch.save(SmallCNN(3, 10), path)
    elif kind == "folder":
        path.mkdir()
    else:
        torch.save([torch.zeros(3)], path)
    with pytest.raises(UserError) as err:
        load_state(str(path))
    msg = str(err.value)
    assert str(path) in msg and "\n" not in msg and "weights_only" not in msg and len(msg) < 300, msg
    assert "state dict" in msg
