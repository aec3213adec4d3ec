"""The command line, as a user runs it: one clear line for user errors, the chain on the demo."""

import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from unhans.pipeline.cli import app

runner = CliRunner()


def test_bad_config_value_is_one_line_and_exit_2(tmp_path):
    res = runner.invoke(app, ["audit", "-c", "demo", "--set", "attribute.composite=nope", "--run-dir", str(tmp_path)])
    assert res.exit_code == 2
    assert "attribute.composite" in res.output and "epsilon_plus_flat" in res.output
    assert "Traceback" not in res.output


def test_missing_dataset_is_a_clear_error(tmp_path):
    res = runner.invoke(app, ["index", "-c", "imagenet", "--set", f"dataset.path={tmp_path}/nope",
                              "--run-dir", str(tmp_path / "run")])  # fmt: skip
    assert res.exit_code == 2 and "dataset.path" in res.output and "Traceback" not in res.output


def test_stage_commands_and_status(tmp_path):
    common = ["-c", "demo", "--run-dir", str(tmp_path / "run"), "--set", "dataset.limit_per_class=20"]
    res = runner.invoke(app, ["attribute", *common])
    assert res.exit_code == 2 and "needs 'index'" in res.output
    res = runner.invoke(app, ["index", *common])
    assert res.exit_code == 0, res.output
    res = runner.invoke(app, ["status", *common])
    assert res.exit_code == 0
    lines = {line.split()[0]: line.split()[1] for line in res.output.splitlines()[2:]}
    assert lines["index"] == "done" and lines["train"] == "missing" and lines["clean"] == "missing"


def test_audit_from_the_console_script_writes_report_and_manifest(tmp_path):
    """`unhans audit` end to end on the demo (fewer epochs, 100 images a class), as a subprocess."""
    exe = Path(sys.executable).with_name("unhans")
    # one torch thread: on a machine busy with other jobs, the Sinkhorn loops' many small parallel regions
    # wait for descheduled threads and the distances stage slows 10-20x (docs/measurements.md)
    cmd = [str(exe), "audit", "-c", "demo", "--run-dir", str(tmp_path / "run"),
           "--set", f"report_dir={tmp_path / 'report'}", "--set", "train.epochs=3",
           "--set", "dataset.limit_per_class=100", "--set", "compute.threads=1"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert (tmp_path / "report" / "index.html").exists()
    assert (tmp_path / "run" / "tables" / "manifest.csv").exists()
    assert (tmp_path / "run" / "tables" / "manifest.parquet").exists()
    assert "manifest:" in res.stdout and "report:" in res.stdout
    # a second audit skips every stage
    res2 = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res2.returncode == 0 and res2.stderr.count("up to date") == 9
