"""A user's path on their own folder (issue 15): `unhans init` looks at the data and writes a config that
keeps the borders; `unhans audit` then flags a corner stamp with no manual choice; a weak model is
warned about; curator decisions survive later audits; the command line answers at once, logs progress
without a terminal and says how to resume after Ctrl-C; `unhans.audit` runs from Python."""

from __future__ import annotations

import logging
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from tests.helpers import CORNERS, make_shapes_folder
from unhans.pipeline.cli import app
from unhans.stages import load_config

cli = CliRunner()


def init_and_audit(tmp_path, monkeypatch, placement: str = "bottom-right", *extra: str):
    data, stamped = make_shapes_folder(tmp_path / "shapes", placement)
    monkeypatch.chdir(tmp_path)
    res = cli.invoke(app, ["init", str(data), "--out", "shapes.yaml"])
    assert res.exit_code == 0, res.output
    res = cli.invoke(app, ["audit", "-c", "shapes.yaml", *extra])
    assert res.exit_code == 0, res.output
    return res, stamped


def test_init_keeps_the_whole_image_and_explains_its_choices(tmp_path, monkeypatch):
    data, _ = make_shapes_folder(tmp_path / "shapes", per_class=8)
    good = (data / "disc" / "disc_000.png").read_bytes()
    (data / "disc" / "broken.png").write_bytes(good[: len(good) // 2])  # a truncated file
    monkeypatch.chdir(tmp_path)
    res = cli.invoke(app, ["init", str(data)])
    assert res.exit_code == 0, res.output
    assert "25 of 25 images in 3 classes" in res.output and "1 unreadable among them" in res.output
    assert "wrote shapes.yaml" in res.output
    text = (tmp_path / "shapes.yaml").read_text()
    cfg = load_config(str(tmp_path / "shapes.yaml"))
    assert cfg.dataset.kind == "folder" and cfg.dataset.fit == "squash" and cfg.dataset.resize is None
    assert cfg.dataset.image_size == 32 and cfg.model.arch == "small_gap_cnn" and cfg.train.holdout > 0
    assert "nothing is cut" in text and "# " in text.splitlines()[0] and "broken.png" in text
    again = cli.invoke(app, ["init", str(data)])
    assert again.exit_code == 2 and "exists" in again.output  # never over a config without --force


def test_init_for_your_own_model_states_the_crop(tmp_path, monkeypatch):
    data, _ = make_shapes_folder(tmp_path / "shapes", per_class=4)
    monkeypatch.chdir(tmp_path)
    res = cli.invoke(app, ["init", str(data), "--weights", "model.pt"])
    assert res.exit_code == 2 and "--arch" in res.output
    res = cli.invoke(app, ["init", str(data), "--arch", "resnet18", "--weights", "model.pt", "--out", "own.yaml"])
    assert res.exit_code == 0, res.output
    cfg = load_config("own.yaml")
    assert cfg.dataset.fit == "crop" and cfg.dataset.image_size == 224 and not cfg.train.enabled
    assert "the borders of each image are cut" in (tmp_path / "own.yaml").read_text()


def test_the_first_audit_of_a_users_folder_sees_the_corner_stamp(tmp_path, monkeypatch):
    """With no manual choice the audit keeps the image borders (the old default crop cut the stamp away) and
    trains a model good enough to explain: the stamped discs' relevance sits on the stamp."""
    res, stamped = init_and_audit(tmp_path, monkeypatch)
    assert "warning" not in res.output, res.output
    from unhans.pipeline.core.store import Store

    store = Store(str(tmp_path / "runs" / "shapes"))
    samples = store.read_table("samples")
    disc = samples[samples["class_key"] == "disc"]
    maps = np.maximum(store.relevance(disc["index"].to_numpy()), 0)
    corner = maps[:, -4:, -4:].sum((1, 2)) / maps.sum((1, 2))  # the stamp's 3 x 3 px and their neighbours
    is_stamped = disc["source"].str.rsplit("/", n=1).str[-1].isin(stamped).to_numpy()
    assert np.median(corner[is_stamped]) > 3 * np.median(corner[~is_stamped])
    assert store.read_table("class_scores").set_index("class_key").at["disc", "rank"] <= 2


@pytest.mark.slow
@pytest.mark.parametrize("placement", CORNERS)
def test_a_stamp_at_every_corner_and_along_a_border_is_flagged(tmp_path, monkeypatch, placement):
    res, stamped = init_and_audit(tmp_path, monkeypatch, placement)
    run = tmp_path / "runs" / "shapes" / "tables"
    cs = pd.read_parquet(run / "class_scores.parquet").set_index("class_key")
    ss = pd.read_parquet(run / "sample_scores.parquet").merge(pd.read_parquet(run / "samples.parquet"), on="index")
    disc = ss[ss["class_key"] == "disc"]
    truth = disc["source"].str.rsplit("/", n=1).str[-1].isin(stamped)
    assert cs.at["disc", "is_clever_hans"] and cs["is_clever_hans"].sum() == 1, cs
    assert roc_auc_score(truth, disc["clever_hans_score"]) >= 0.95
    # found by its place, ranked by it, and the curator sees where it is
    c = int(cs.at["disc", "class_id"])
    assert cs.at["disc", "sample_probe"] == "place"
    assert "The place" in (tmp_path / "reports" / "shapes" / f"class-{c}.html").read_text()
    assert (tmp_path / "reports" / "shapes" / f"class-{c}" / "place.png").stat().st_size > 0


def test_a_weak_model_is_warned_about_on_the_console_in_status_and_on_the_report(tmp_path, monkeypatch):
    res, _ = init_and_audit(tmp_path, monkeypatch, "bottom-right", "--set", "train.epochs=1")
    assert "warning: the trained model is weak" in res.output
    status = cli.invoke(app, ["status", "-c", "shapes.yaml", "--set", "train.epochs=1"])
    assert "warning: the trained model is weak" in status.output
    page = (tmp_path / "reports" / "shapes" / "index.html").read_text()
    assert 'class="warnings"' in page and "the trained model is weak" in page and "held-out images" in page


def test_the_command_line_starts_without_torch_and_prints_its_version():
    out = subprocess.run([sys.executable, "-c", "import sys, unhans.pipeline.cli; print('torch' in sys.modules)"],
                         capture_output=True, text=True, check=True)  # fmt: skip
    assert out.stdout.strip() == "False"  # so `unhans --help` answers at once
    res = cli.invoke(app, ["--version"])
    assert res.exit_code == 0 and res.output.startswith("unhans ")


def test_ctrl_c_says_how_to_resume(tmp_path, monkeypatch):
    import dataclasses

    from unhans.pipeline.core import runner as runner_module

    def interrupted(ctx):
        raise KeyboardInterrupt

    spec = runner_module.STAGES["index"]
    monkeypatch.setitem(runner_module.STAGES, "index", dataclasses.replace(spec, fn=interrupted))
    res = cli.invoke(app, ["index", "-c", "demo", "--run-dir", str(tmp_path / "run")])
    assert res.exit_code == 130 and "interrupted; rerun to resume" in res.output


def test_progress_is_logged_without_a_terminal(caplog, monkeypatch):
    from unhans.pipeline.core import compute

    monkeypatch.setattr(compute, "LOG_EVERY", 0.0)
    with caplog.at_level(logging.INFO, logger="unhans"):
        assert list(compute.progress(range(3), "attribute", total=3, unit="batch")) == [0, 1, 2]
    assert "attribute: 1/3 batch, about" in caplog.text and "left" in caplog.text


def test_the_python_api_returns_the_run(tmp_path):
    import unhans

    run = unhans.audit("demo", run_dir=str(tmp_path / "run"), report_dir=str(tmp_path / "report"),
                       dataset__limit_per_class=20, train={"epochs": 2}, distances={"metric": "euclidean"})  # fmt: skip
    assert run.report.exists() and run.manifest_path.endswith("manifest.parquet")
    assert len(run.class_scores) == 10 and len(run.manifest) == 200 and run.config.train.epochs == 2
    assert list(run.status()["state"]) == ["done"] * 9
    again = unhans.open_run("demo", run_dir=str(tmp_path / "run"), dataset__limit_per_class=20,
                            train={"epochs": 2}, distances={"metric": "euclidean"})  # fmt: skip
    assert again.class_scores.equals(run.class_scores)
