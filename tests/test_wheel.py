"""The package a user installs: a wheel built from this checkout, installed into a fresh virtual
environment, audits the demo from another folder, with its configs from the package and no top-level
module of its own but `unhans`."""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_a_built_wheel_installs_and_audits_the_demo_from_another_folder(tmp_path):
    dist = tmp_path / "dist"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation",
                    "-w", str(dist), "-q"], check=True)  # fmt: skip
    [wheel] = dist.glob("unhans-*.whl")
    tops = {n.split("/")[0] for n in zipfile.ZipFile(wheel).namelist() if not n.startswith("unhans-")}
    assert tops == {"unhans"}  # pipeline and stages live under unhans: no clash with other packages
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())  # fmt: skip
    # the dependencies: this environment's, through a path file (installing them would fetch gigabytes)
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "-q", str(wheel)],
                   check=True)  # fmt: skip
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = subprocess.run([python, "-c", "import unhans; print(unhans.__file__)"], cwd=elsewhere,
                           capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert where.startswith(str(site))
    res = subprocess.run([venv / "bin" / "unhans", "audit", "-c", "demo", "--set", "train.epochs=2",
                          "--set", "distances.metric=euclidean", "--set", "dataset.limit_per_class=30"],
                         cwd=elsewhere, capture_output=True, text=True, timeout=900)  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert (elsewhere / "reports" / "demo" / "index.html").exists()
    assert (elsewhere / "runs" / "demo" / "tables" / "manifest.csv").exists()
    version = subprocess.run([venv / "bin" / "unhans", "--version"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("unhans ")
