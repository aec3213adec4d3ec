"""The clean stage with a curator's decisions file: applied on top of the automatic decisions,
per-image entries over per-block ones, an overlap of the isolated group and a cluster resolved only
as the file says, recorded in `reason`, relabels in the cleaned list, a bad file refused in one line
with nothing lost, and the file's content in the stage's fingerprint."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from tests.helpers import FAST_DEMO
from unhans.pipeline.cli import app
from unhans.pipeline.core.runner import Runner
from unhans.stages import load_config, runner

cli = CliRunner()


@pytest.fixture
def run_copy(demo_run, tmp_path) -> Path:
    """A private copy of the demo store this test may change."""
    return Path(shutil.copytree(demo_run.store.url, tmp_path / "run"))


def clean_cli(run_dir: Path, decisions: Path | None, *extra: str):
    args = ["clean", "-c", "demo", "--run-dir", str(run_dir)]
    for s in FAST_DEMO:
        args += ["--set", s]
    if decisions is not None:
        args += ["--decisions", str(decisions)]
    return cli.invoke(app, [*args, *extra])


def write(path: Path, doc) -> Path:
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return path


def decisions_doc(demo_run, entries: list[dict], version: int = 2, **top) -> dict:
    fp = demo_run.store.read_json("stages/score.json")["fingerprint"]
    return {"format": "unhans-decisions", "version": version, "run": "demo", "score_fingerprint": fp,
            "decided_by": "alice", "decisions": entries, **top}  # fmt: skip


def entry(c, cluster, decision, relabel_to=None, note=""):
    return {"class_id": c, "cluster": cluster, "decision": decision, "relabel_to": relabel_to, "note": note}


def image(c, index, decision, relabel_to=None, note=""):
    return {"class_id": c, "index": index, "decision": decision, "relabel_to": relabel_to, "note": note}


def group_and_overlap(demo_run) -> tuple[pd.DataFrame, int]:
    """Class 3's isolated group (its sample_scores rows) and the cluster that overlaps it most."""
    scores = demo_run.store.read_table("sample_scores")
    g = scores[(scores["class_id"] == 3) & scores["in_group"]]
    return g, int(g["cluster"].mode().iat[0])


def test_curator_decisions_are_applied_on_top_of_the_automatic_ones(demo_run, run_copy, tmp_path):
    before = pd.read_parquet(run_copy / "tables" / "manifest.parquet")
    scores = demo_run.store.read_table("sample_scores").set_index("index")
    doc = decisions_doc(demo_run, [entry(3, "group", "drop", note="checkerboard patch"),
                                   entry(0, 0, "relabel", relabel_to=6), entry(1, 0, "keep", note="fine"),
                                   entry(2, 0, "review")])  # fmt: skip
    res = clean_cli(run_copy, write(tmp_path / "d.json", doc))
    assert res.exit_code == 0, res.output
    m = pd.read_parquet(run_copy / "tables" / "manifest.parquet")
    assert list(m.columns) == ["index", "source", "label", "class_key", "class_name", "cluster", "clever_hans_score",
                               "is_clever_hans", "label_issue_score", "is_label_issue", "decision", "reason",
                               "relabel_to"]  # fmt: skip
    cls = scores["class_id"].reindex(m["index"]).to_numpy()
    group = (cls == 3) & scores["in_group"].reindex(m["index"]).fillna(False).to_numpy(bool)
    relabel = (cls == 0) & (m["cluster"] == 0).to_numpy()
    keep = (cls == 1) & (m["cluster"] == 0).to_numpy()
    review = (cls == 2) & (m["cluster"] == 0).to_numpy()
    assert group.sum() and relabel.sum() and keep.sum() and review.sum()
    assert (m.loc[group, "decision"] == "drop").all()
    assert (m.loc[group, "reason"] == "curator alice: drop the isolated group of class 3 (checkerboard patch)").all()
    assert (m.loc[relabel, "decision"] == "relabel").all() and (m.loc[relabel, "relabel_to"] == 6).all()
    assert (m.loc[relabel, "reason"] == "curator alice: relabel cluster 0 of class 0 to class 6").all()
    assert (m.loc[keep, "decision"] == "keep").all()
    assert (m.loc[keep, "reason"] == "curator alice: keep cluster 0 of class 1 (fine)").all()
    assert (m.loc[review, "decision"] == "review").all()
    untouched = ~(group | relabel | keep | review)
    pd.testing.assert_frame_equal(
        m.loc[untouched].drop(columns="relabel_to"), before.loc[untouched].drop(columns="relabel_to")
    )
    assert m.loc[~relabel, "relabel_to"].isna().all()
    cleaned = pd.read_parquet(run_copy / "tables" / "cleaned.parquet").set_index("index")
    assert set(cleaned.index) == set(m.loc[m["decision"].isin(["keep", "relabel"]), "index"])
    assert (cleaned.loc[m.loc[relabel, "index"], "label"] == 6).all()
    assert not set(m.loc[group | review, "index"]) & set(cleaned.index)
    csv = pd.read_csv(run_copy / "tables" / "manifest.csv")
    assert (
        csv["reason"].str.startswith("curator alice:").sum() == group.sum() + relabel.sum() + keep.sum() + review.sum()
    )


def test_in_version_1_files_a_later_entry_wins_where_two_cover_a_sample(demo_run, run_copy, tmp_path):
    g, cluster = group_and_overlap(demo_run)
    doc = decisions_doc(demo_run, [entry(3, "group", "drop"), entry(3, cluster, "keep")], version=1)
    assert clean_cli(run_copy, write(tmp_path / "d.json", doc)).exit_code == 0
    m = pd.read_parquet(run_copy / "tables" / "manifest.parquet").set_index("index")
    both = g.loc[g["cluster"] == cluster, "index"]
    assert len(both) and (m.loc[both, "decision"] == "keep").all()


@pytest.mark.parametrize("prefer", ["group", "clusters"])
def test_an_overlap_of_group_and_cluster_is_resolved_as_the_file_says(demo_run, run_copy, tmp_path, prefer):
    g, cluster = group_and_overlap(demo_run)
    blocks = [entry(3, cluster, "keep"), entry(3, "group", "drop")]  # the order no longer matters
    doc = decisions_doc(demo_run, [*blocks, {"class_id": 3, "prefer": prefer}])
    assert clean_cli(run_copy, write(tmp_path / "d.json", doc)).exit_code == 0
    m = pd.read_parquet(run_copy / "tables" / "manifest.parquet").set_index("index")
    scores = demo_run.store.read_table("sample_scores")
    both = g.loc[g["cluster"] == cluster, "index"]
    only_cluster = scores.loc[(scores["class_id"] == 3) & (scores["cluster"] == cluster) & ~scores["in_group"], "index"]
    only_group = g.loc[g["cluster"] != cluster, "index"]
    assert len(both) and (m.loc[both, "decision"] == ("drop" if prefer == "group" else "keep")).all()
    assert (m.loc[only_cluster, "decision"] == "keep").all() and (m.loc[only_group, "decision"] == "drop").all()


def test_per_image_decisions_win_over_their_blocks(demo_run, run_copy, tmp_path):
    g, cluster = group_and_overlap(demo_run)
    spared, relabelled = int(g["index"].iat[0]), int(g["index"].iat[1])
    other = demo_run.store.read_table("sample_scores").query("class_id == 5")["index"].iat[0]
    entries = [entry(3, "group", "drop"), image(3, spared, "keep", note="no patch"),
               image(3, relabelled, "relabel", relabel_to=8), image(5, int(other), "review")]  # fmt: skip
    doc = decisions_doc(demo_run, entries)
    res = clean_cli(run_copy, write(tmp_path / "d.json", doc))
    assert res.exit_code == 0, res.output
    m = pd.read_parquet(run_copy / "tables" / "manifest.parquet").set_index("index")
    assert m.at[spared, "decision"] == "keep"
    assert m.at[spared, "reason"] == f"curator alice: keep sample {spared} of class 3 (no patch)"
    assert m.at[relabelled, "decision"] == "relabel" and m.at[relabelled, "relabel_to"] == 8
    assert m.at[int(other), "decision"] == "review"
    rest = g.loc[~g["index"].isin([spared, relabelled]), "index"]
    assert (m.loc[rest, "decision"] == "drop").all()
    cleaned = pd.read_parquet(run_copy / "tables" / "cleaned.parquet").set_index("index")
    assert spared in cleaned.index and cleaned.at[relabelled, "label"] == 8 and int(other) not in cleaned.index


BAD = {
    "bad JSON": ("{not json", "not valid JSON"),
    "no list": ({"decided_by": "alice"}, '"decisions" list'),
    "unknown class": ([entry(77, 0, "drop")], "class_id 77 is not an analysed class"),
    "unknown cluster": ([entry(3, 99, "drop")], "cluster 99 is not a cluster of class 3"),
    "unknown decision": ([entry(3, 0, "burn")], "decision 'burn' is not one of keep, drop, relabel, review"),
    "relabel without target": ([entry(3, 0, "relabel")], "relabel needs relabel_to"),
    "twice": ([entry(3, 0, "drop"), entry(3, 0, "keep")], "decided twice"),
    "image twice": (lambda g, j: [image(3, int(g["index"].iat[0]), d) for d in ("drop", "keep")], "is decided twice"),
    "image of another class": ([image(3, 10**6, "drop")], "index 1000000 is not an analysed sample of class 3"),
    "bad prefer": ([{"class_id": 3, "prefer": "both"}], "prefer 'both' is not"),
    "unresolved overlap": (lambda g, j: [entry(3, "group", "drop"), entry(3, j, "keep")], '"prefer": "group"'),
    "nobody": ({"decided_by": " ", "decisions": []}, '"decided_by" must name who decided'),
    "other run": ({"run": "imagenet", "decided_by": "a", "decisions": []}, "exported from the report of run"),
    "other clustering": ({"score_fingerprint": "0" * 16, "decided_by": "a", "decisions": []}, "another clustering"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_decisions_file_is_one_line_and_loses_nothing(demo_run, run_copy, tmp_path, case):
    content, message = BAD[case]
    if callable(content):  # entries on class 3's isolated group and the cluster overlapping it most
        content = content(*group_and_overlap(demo_run))
    if isinstance(content, list):
        content = decisions_doc(demo_run, content)
    elif isinstance(content, dict) and "run" not in content:
        content = {"run": "demo", **content}
    tables = {p.name: p.read_bytes() for p in (run_copy / "tables").iterdir()}
    res = clean_cli(run_copy, write(tmp_path / "bad.json", content))
    assert res.exit_code == 2, res.output
    errors = [line for line in res.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0] and "bad.json" in errors[0], res.output
    assert "Traceback" not in res.output
    assert {p.name: p.read_bytes() for p in (run_copy / "tables").iterdir()} == tables
    r = runner(load_config("demo", FAST_DEMO + [f"run_dir={run_copy}"]))
    assert r.state("score") == "done" and r.state("attribute") == "done"


def test_the_decisions_file_enters_the_fingerprint(demo_run, run_copy, tmp_path):
    path = write(tmp_path / "d.json", decisions_doc(demo_run, [entry(3, 0, "review")]))

    def fresh() -> Runner:
        overrides = [f"run_dir={run_copy}", f"report_dir={demo_run.cfg.report_path}", f"clean.decisions={path}"]
        return runner(load_config("demo", FAST_DEMO + overrides))

    assert fresh().state("clean") == "stale"  # the demo run was cleaned without decisions
    fresh().run("clean")
    assert fresh().state("clean") == "done"
    write(path, decisions_doc(demo_run, [entry(3, 0, "drop")]))
    assert fresh().state("clean") == "stale"
    assert fresh().state("report") == "done"  # only clean depends on the decisions


def test_decisions_are_kept_with_the_run_and_survive_later_audits(demo_run, run_copy, tmp_path):
    """`unhans clean --decisions` keeps the file in the run; a plain `unhans audit` applies it again; a new
    clustering makes it not apply, which the audit says; --clear-decisions removes it."""
    doc = decisions_doc(demo_run, [entry(3, "group", "drop", note="checker"), entry(2, 0, "review")])
    res = clean_cli(run_copy, write(tmp_path / "d.json", doc))
    assert res.exit_code == 0, res.output
    assert (run_copy / "files" / "decisions.json").exists()
    audit = ["audit", "-c", "demo", "--run-dir", str(run_copy), "--set", f"report_dir={tmp_path / 'report'}"]
    audit += [x for s in FAST_DEMO for x in ("--set", s)]
    res = cli.invoke(app, audit)  # no --decisions: the kept ones are applied again
    assert res.exit_code == 0, res.output
    m = pd.read_parquet(run_copy / "tables" / "manifest.parquet")
    assert m["reason"].str.startswith("curator alice").sum() > 0
    assert (m["decision"] == "review").sum() > 0
    res = cli.invoke(app, [*audit, "--set", "score.smoothing=0.5"])  # a new score: the kept clusters may differ
    assert res.exit_code == 0, res.output
    assert "warning: the curator decisions kept with this run" in res.output
    assert not pd.read_parquet(run_copy / "tables" / "manifest.parquet")["reason"].str.startswith("curator").any()
    res = clean_cli(run_copy, None, "--clear-decisions", "--set", "score.smoothing=0.5")
    assert res.exit_code == 0 and not (run_copy / "files" / "decisions.json").exists()
