"""scripts/compare_stores.py, the check that a refactoring left the demo store unchanged, finds differences."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "compare_stores.py"


def load():
    spec = importlib.util.spec_from_file_location("compare_stores", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_copy_is_equal_and_a_changed_value_or_column_is_named(demo_run, tmp_path):
    cs = load()
    a = Path(demo_run.store.root)
    b = Path(shutil.copytree(a, tmp_path / "copy"))
    assert cs.compare(a, b) == []
    arr = zarr.open_group(str(b / "store.zarr"), mode="r+")["classes/3/transfer"]
    arr[0] = arr[0] + 1.0
    table = pd.read_parquet(b / "tables" / "class_scores.parquet").assign(extra=1)
    table.to_parquet(b / "tables" / "class_scores.parquet", index=False)
    diffs = cs.compare(a, b)
    assert any(d.startswith("array classes/3/transfer: 1 of") for d in diffs)
    assert any(d.startswith("table class_scores: columns") for d in diffs)
    assert not any("class_scores" in d for d in cs.compare(a, b, {"class_scores": ["extra"]}))
    assert np.isfinite(arr[0])
