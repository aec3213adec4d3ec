"""A damaged run store: one clear error that says what to do, and nothing computed is touched."""

import os

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.helpers import make_runner
from unhans.pipeline.cli import app
from unhans.pipeline.core.errors import UserError

# 100 digits in 4 attribute chunks of 32 rows; chunk 1 holds samples 32..63
SMALL = ["dataset.limit_per_class=10", "train.epochs=1", "attribute.chunk_size=32", "attribute.resolution=8",
         "compute.decode_threads=0", "compute.threads=1", "distances.k=3"]  # fmt: skip


@pytest.fixture(scope="module")
def attributed(tmp_path_factory) -> str:
    """A small demo run through attribute, made once; tests damage copies of it."""
    tmp = tmp_path_factory.mktemp("attributed")
    make_runner(tmp, overrides=SMALL).run_all(until="attribute")
    return str(tmp / "run")


@pytest.fixture
def damaged(attributed, copy_of, tmp_path):
    """A copy of the small run at tmp_path/run (make_runner(tmp_path, ...) opens it)."""
    return copy_of(attributed, tmp_path / "run")


def files(run) -> dict[str, bytes]:
    return {p.relative_to(run).as_posix(): p.read_bytes() for p in sorted(run.rglob("*")) if p.is_file()}


def states(r) -> dict[str, str]:
    return {row["stage"]: row["state"] for row in r.status_rows()}


def cli(*args: str):
    res = CliRunner().invoke(app, list(args))
    assert res.exit_code == 2 and "error: " in res.output and "Traceback" not in res.output, res.output
    return res.output


def test_garbled_store_metadata_is_one_clear_error_and_the_run_is_untouched(damaged, tmp_path):
    (damaged / "store.zarr" / "zarr.json").write_bytes(b"\x00not json{")
    before = files(damaged)
    assert any(f.startswith("tables/") for f in before) and "stages/attribute.json" in before
    msg = r"store at .*store\.zarr cannot be opened .*move it away or pass another --run-dir"
    with pytest.raises(UserError, match=msg):
        make_runner(tmp_path, overrides=SMALL)
    assert "move it away" in cli("status", "-c", "demo", "--run-dir", str(damaged))
    assert "move it away" in cli("audit", "-c", "demo", "--run-dir", str(damaged))
    # tables, stage records, arrays and the garbled file itself are as they were
    assert files(damaged) == before


def test_truncated_stage_record_is_a_clear_error_until_deleted(damaged, tmp_path):
    rec = damaged / "stages" / "attribute.json"
    rec.write_bytes(rec.read_bytes()[:40])
    r = make_runner(tmp_path, overrides=SMALL)
    msg = r"stages/attribute\.json is corrupted \(not JSON: .*\); delete it and stage 'attribute' runs again"
    with pytest.raises(UserError, match=msg):
        r.status_rows()
    with pytest.raises(UserError, match=msg):
        r.run("distances")  # whether its input is done cannot be told
    assert "stages/attribute.json is corrupted" in cli("status", "-c", "demo", "--run-dir", str(damaged))
    rec.unlink()
    st = states(r)
    assert st["index"] == st["train"] == "done" and st["attribute"] == "missing"
    r.run("attribute")
    assert states(r)["attribute"] == "done"


def test_corrupted_table_names_the_table_and_the_stage_that_writes_it(damaged, tmp_path):
    table = damaged / "tables" / "samples.parquet"
    table.write_bytes(table.read_bytes()[: table.stat().st_size // 2])
    r = make_runner(tmp_path, overrides=SMALL)
    msg = r"table 'samples' at .*samples\.parquet cannot be read \(.*\); rerun `unhans index --force`"
    with pytest.raises(UserError, match=msg):
        r.run("distances")
    r.run("index", force=True)  # as the message says: the table is back, and attribute is still done
    assert len(r.store.read_table("samples")) == 100 and states(r)["attribute"] == "done"
    r.run("distances")
    assert r.record("distances")["counts"]["samples"] == 100


@pytest.mark.parametrize("damage", ["lost", "garbled"])
def test_lost_or_garbled_relevance_chunk_stops_distances_with_what_to_rerun(damaged, tmp_path, damage):
    """zarr reads a missing chunk file as fill values: every chunk is written, so a missing one is a lost
    file, named with its rows; a chunk that does not decompress names the array."""
    chunk = damaged / "store.zarr" / "attribution" / "relevance" / "c" / "1" / "0" / "0"
    if damage == "lost":
        chunk.unlink()
        msg = r"array 'attribution/relevance' in .* has lost the chunk files of rows 32\.\.63 \(zarr would read them"
        msg += r" as its fill value\)"
    else:
        chunk.write_bytes(os.urandom(chunk.stat().st_size))
        msg = r"array 'attribution/relevance' in .*store\.zarr has a chunk that cannot be read \(.*\)"
    r = make_runner(tmp_path, overrides=SMALL)
    with pytest.raises(UserError, match=msg + r"; rerun `unhans attribute --force` to write it again"):
        r.run("distances")
    r.run("attribute", force=True)
    r.run("distances")
    assert r.record("distances")["counts"]["samples"] == 100


@pytest.mark.parametrize("array", ["status", "relevance_scale"])
def test_lost_status_or_scale_chunk_stops_the_next_stage_with_what_to_rerun(damaged, tmp_path, array):
    """zarr reads a missing chunk as the fill value (status 255, relevance_scale NaN: never data). The runner
    checks every attribution array's chunks before a stage that reads the attribution."""
    (damaged / "store.zarr" / "attribution" / array / "c" / "1").unlink()
    r = make_runner(tmp_path, overrides=SMALL)
    msg = rf"array 'attribution/{array}' in .* has lost the chunk files of rows 32\.\.63 \(zarr would read them"
    msg += r" as its fill value\)"
    with pytest.raises(UserError, match=msg + r"; rerun `unhans attribute --force` to write it again"):
        r.run("distances")
    assert states(r)["attribute"] == "done" and states(r)["distances"] == "missing"  # nothing else touched
    r.run("attribute", force=True)
    r.run("distances")
    assert r.record("distances")["counts"]["samples"] == 100


def test_corrupted_array_metadata_names_the_array(damaged, tmp_path):
    (damaged / "store.zarr" / "attribution" / "status" / "zarr.json").write_text('{"zarr_format": 3, "node')
    r = make_runner(tmp_path, overrides=SMALL)
    msg = r"array 'attribution/status' in .* is corrupted \(.*\); rerun `unhans attribute --force`"
    with pytest.raises(UserError, match=msg):
        r.run("distances")


def test_garbled_class_array_chunk_names_the_stage_and_what_to_rerun(damaged, tmp_path):
    """A chunk of a small array that no longer decompresses stops the stage that reads it with one
    clear error (not zarr's traceback); rerunning the stage that wrote it repairs the run."""
    r = make_runner(tmp_path, overrides=SMALL)
    r.run("distances")
    chunk = damaged / "store.zarr" / "classes" / "0" / "knn_idx" / "c" / "0" / "0"
    chunk.write_bytes(os.urandom(chunk.stat().st_size))
    msg = r"array 'classes/0/knn_idx' in .* has a chunk that cannot be read .*; rerun `unhans distances --force`"
    with pytest.raises(UserError, match=msg):
        r.run("cluster")
    cli("cluster", "-c", "demo", "--run-dir", str(damaged), *sum([["--set", s] for s in SMALL], []))
    r.run("distances", force=True)
    r.run("cluster")
    assert states(r)["cluster"] == "done"


def test_lost_class_array_chunk_names_the_array_and_what_to_rerun(damaged, tmp_path):
    """A whole small array read back as its fill value is a lost chunk file (fills are never data): the
    chunk files are listed only then, and the error names the rows and the rerun."""
    r = make_runner(tmp_path, overrides=SMALL)
    r.run("distances")
    before = r.store.read("classes/0/knn_idx")
    assert before.size and not (before == -1).any()
    (damaged / "store.zarr" / "classes" / "0" / "knn_idx" / "c" / "0" / "0").unlink()
    msg = r"array 'classes/0/knn_idx' in .* has lost the chunk files of rows 0\.\.\d+ .*; rerun `unhans distances"
    with pytest.raises(UserError, match=msg):
        r.store.read("classes/0/knn_idx")
    with pytest.raises(UserError, match=msg):  # the concurrent reads of the report check the same way
        r.store.read_many(["classes/0/members", "classes/0/knn_idx"])
    with pytest.raises(UserError, match=r"array 'classes/0/nothing' is missing from .*; run the stage"):
        r.store.read_many(["classes/0/members", "classes/0/nothing"])
    (data, _), (dist, attrs) = r.store.read_many(["classes/0/members", "classes/0/knn_dist"])
    assert np.array_equal(data, r.store.read("classes/0/members"))
    dist_alone, attrs_alone = r.store.read_with_attrs("classes/0/knn_dist")
    assert np.array_equal(dist, dist_alone) and attrs == attrs_alone


def test_relevance_reads_see_an_array_replaced_by_another_store_of_the_process(damaged):
    """Store.relevance keeps the relevance arrays open between reads (the report reads them class by class);
    an array replaced since (here by another Store of the process, as a rerun of attribute does) is read
    anew, not through the stale opening."""
    from unhans.pipeline.core import layout
    from unhans.pipeline.core.store import Store

    reader, writer = Store(str(damaged)), Store(str(damaged))
    r = reader.relevance(np.arange(4)).shape[-1]
    assert reader.relevance(np.arange(36, 40)).max() != 2.0
    n = 40
    writer.create_array(layout.RELEVANCE(), (n, r, r), (16, r, r))[...] = np.ones((n, r, r), np.float16)
    writer.create_array(layout.RELEVANCE_SCALE(), (n,), (16,))[...] = np.full(n, 2.0, np.float32)
    after = reader.relevance(np.arange(36, 40))
    assert after.shape == (4, r, r) and np.all(after == 2.0)
