"""The store layout (pipeline/core/layout.py) names everything a run writes, once, with its writer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr

from unhans.pipeline.core import layout
from unhans.pipeline.core.store import Store
from unhans.stages import all_stages

COMMANDS = {"verify", "validate"}  # writers beside the stages (pipeline/harness/)


def test_every_entry_has_a_known_writer_and_a_fill_that_is_not_data():
    stages = set(all_stages())
    for e in layout.ENTRIES:
        assert e.writer in stages | COMMANDS, e
        if e.kind == "array":
            assert e.dtype and e.fill is not None, e
            if e.dtype.startswith("float"):
                assert np.isnan(e.fill), e  # no stage writes NaN
    names = [e.template for e in layout.ENTRIES]
    assert len(names) == len(set(names))


def test_paths_resolve_to_their_entries():
    assert layout.find("classes/12/knn_idx") is layout.KNN_IDX and layout.KNN_IDX(c=12) == "classes/12/knn_idx"
    assert layout.find("files/attribute_failures/00000003.json") is layout.FAILURE_CHUNKS
    assert (
        layout.writer_of("attribution/status") == "attribute" and layout.writer_of("classes/3/transfer") == "transfer"
    )
    assert layout.find("classes/3/unknown") is None and layout.writer_of("nowhere") == ""


def test_the_store_refuses_an_undeclared_path(tmp_path):
    store = Store(str(tmp_path / "run"))
    with pytest.raises(ValueError, match="not declared in pipeline/core/layout.py"):
        store.write_array("classes/3/scratch", np.zeros(3))
    with pytest.raises(ValueError, match="not declared"):
        store.write_table("notes", __import__("pandas").DataFrame({"a": [1]}))
    with pytest.raises(ValueError, match="not declared"):
        store.write_bytes("files/other.bin", b"x")
    with pytest.raises(TypeError, match="declared int64"):
        store.write_array(layout.MEMBERS(c=3), np.zeros(3, np.int32))


def _arrays(group: zarr.Group, prefix: str = "") -> list[tuple[str, zarr.Array]]:
    out = []
    for name, node in group.members():
        out += _arrays(node, f"{prefix}{name}/") if isinstance(node, zarr.Group) else [(f"{prefix}{name}", node)]
    return out


def test_a_run_writes_only_declared_entries_each_by_its_writer(demo_run):
    """Everything in the demo's store is declared, written by a stage that ran, with the declared dtype
    and fill value; and every stage's declared store outputs exist."""
    root = Path(demo_run.store.root)
    ran = {name for name in demo_run.stages if demo_run.state(name) == "done"}
    for path, arr in _arrays(zarr.open_group(str(root / "store.zarr"), mode="r")):
        e = layout.find(path)
        assert e is not None and e.kind == "array" and e.writer in ran, path
        assert arr.dtype == np.dtype(e.dtype), path
        fill = arr.metadata.fill_value
        assert (np.isnan(fill) and np.isnan(e.fill)) if arr.dtype.kind == "f" else fill == e.fill, path
    tables = {p.stem for p in (root / "tables").glob("*.parquet")}
    for t in tables:
        e = layout.find(t)
        assert e is not None and e.kind == "table" and e.writer in ran, t
    for p in (root / "files").rglob("*"):
        e = layout.find(str(p.relative_to(root)))
        assert e is not None and e.kind == "file" and e.writer in ran, p
    for name in ran:
        for e in layout.outputs(name):
            if e.kind == "table":
                assert e.template in tables, e
            elif e.kind == "array" and "{c}" not in e.template:
                assert demo_run.store.has_array(e()), e
