"""The manifest: what happens to each sample (keep, drop, relabel, review), and a curator's decisions on top.

Automatic decisions first: unreadable samples are dropped, samples flagged as Clever Hans get
`clean.flagged` (drop by default), everything else is kept. A curator's decisions file
(`clean.decisions`, set by `unhans clean --decisions FILE`; format in docs/decisions.md) is then
applied on top, entry by entry in file order (a later entry wins where two cover a sample): each
names a class and a cluster of the eigengap's clustering (the manifest's `cluster`) or "group"
(the class's most isolated group, `in_group` in sample_scores), and keep / drop / relabel /
review. `reason` says who decided what. The cleaned list holds the kept and relabelled samples,
the latter under their new label. The file is checked whole before anything is written, so a
bad file changes nothing already in the store.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any, Literal

import fsspec
import numpy as np
import pandas as pd
from pydantic import Field, computed_field

from unhans.pipeline.core.config import Section
from unhans.pipeline.core.errors import UserError


class CleanConfig(Section):
    """The manifest (pipeline/method/curation.py, stages/clean.py): automatic decisions, a curator's on top."""

    flagged: Literal["drop", "review", "keep"] = Field("drop", description="the automatic decision for flagged samples")
    decisions: str | None = Field(
        None, description="a curator's decisions file (JSON exported from the report, docs/decisions.md)"
    )

    @computed_field(description="hash of the decisions file's bytes: a changed file makes clean stale")  # type: ignore[prop-decorator]
    @property
    def decisions_sha256(self) -> str | None:
        if not self.decisions:
            return None
        try:
            with fsspec.open(self.decisions, "rb") as fh:
                return hashlib.sha256(fh.read()).hexdigest()[:16]
        except (OSError, ValueError):
            return "unreadable"


DECISIONS = ("keep", "drop", "relabel", "review")
FORMAT = "unhans-decisions"
VERSIONS = (1, 2)  # 2 adds per-image entries and, per class, which of the group or the clusters wins
PREFER = ("group", "clusters")


@dataclass(frozen=True)
class Decision:
    """A curator's decision on a block of a class (a cluster, or its isolated group) or on one image."""

    class_id: int
    cluster: int | str | None  # a cluster of the eigengap's clustering, "group", or None for one image
    index: int | None  # the sample (a row of tables/samples) of a per-image decision
    decision: str
    relabel_to: int | None
    note: str


@dataclass
class Curation:
    """A checked decisions file: who decided, the decisions, and per class which block wins where the
    isolated group and a cluster overlap with different decisions."""

    who: str
    decisions: list[Decision]
    prefer: dict[int, str]  # class_id -> "group" or "clusters"


def read_decisions(
    path: str,
    run: str,
    score_fingerprint: str | None,
    scores: pd.DataFrame,
    clusters: dict[int, int],
    class_ids: set[int],
) -> Curation:
    """Parse and check a decisions file (docs/decisions.md). Every problem is one UserError.

    `scores` is the sample_scores table (index, class_id, cluster, in_group), `clusters` maps each
    analysed class to its number of clusters, `class_ids` are the valid relabel targets."""
    where = f"decisions file {path}"
    try:
        with fsspec.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, ValueError) as exc:
        raise UserError(f"{where} cannot be read ({exc}); pass the JSON file exported from the report") from None
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserError(f"{where} is not valid JSON ({exc}); export it again from the report") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("decisions"), list):
        raise UserError(f'{where}: expected an object with a "decisions" list (see docs/decisions.md)')
    if "format" in doc and doc["format"] != FORMAT:
        raise UserError(f'{where}: "format" is {doc["format"]!r}, expected {FORMAT!r}')
    version = doc.get("version", 1)
    if version not in VERSIONS:
        raise UserError(f'{where}: "version" {version!r} is not supported by this unhans (1 or 2)')
    if doc.get("run") is not None and doc["run"] != run:
        raise UserError(
            f"{where} was exported from the report of run {doc['run']!r}, not {run!r}; use that run's config "
            f'or fix "run"'
        )
    fp = doc.get("score_fingerprint")
    if fp and score_fingerprint and fp != score_fingerprint:
        raise UserError(
            f"{where} was made on another clustering (score stage {fp}, this run's is {score_fingerprint}), "
            f"so its cluster numbers may mean other samples; review the classes in the current report and export again"
        )
    who = doc.get("decided_by")
    if not isinstance(who, str) or not who.strip():
        raise UserError(f'{where}: "decided_by" must name who decided (a non-empty string)')
    class_of = dict(zip(scores["index"].astype(int), scores["class_id"].astype(int)))
    has_group = scores.groupby("class_id")["in_group"].any().to_dict() if "in_group" in scores else {}
    out: list[Decision] = []
    prefer: dict[int, str] = {}
    order: dict[tuple[int, int | str | None], int] = {}  # version 1: the later of two overlapping blocks wins
    seen: set[tuple] = set()
    for n, e in enumerate(doc["decisions"]):
        at = f"{where}: decisions[{n}]"
        if not isinstance(e, dict):
            raise UserError(f"{at} must be an object with class_id and cluster, index or prefer")
        c = _int(e.get("class_id"))
        if c is None or c not in clusters:
            known = ", ".join(str(x) for x in sorted(clusters)[:20]) + (", ..." if len(clusters) > 20 else "")
            raise UserError(f"{at}: class_id {e.get('class_id')!r} is not an analysed class (known: {known})")
        if "prefer" in e:
            if e["prefer"] not in PREFER:
                raise UserError(f'{at}: prefer {e["prefer"]!r} is not "group" or "clusters"')
            if c in prefer:
                raise UserError(f"{at}: class {c} says which block wins twice; keep one entry")
            prefer[c] = e["prefer"]
            continue
        cl: int | str | None = None
        index = None
        if "index" in e:
            index = _int(e.get("index"))
            if index is None or class_of.get(index) != c:
                raise UserError(f"{at}: index {e.get('index')!r} is not an analysed sample of class {c}")
        elif e.get("cluster") == "group":
            cl = "group"
            if not has_group.get(c, False):
                raise UserError(f"{at}: class {c} has no isolated group; use a cluster number 0..{clusters[c] - 1}")
        else:
            cl = _int(e.get("cluster"))
            if cl is None or not 0 <= cl < clusters[c]:
                raise UserError(
                    f"{at}: cluster {e.get('cluster')!r} is not a cluster of class {c} "
                    f'(0..{clusters[c] - 1}, or "group"; or give "index" for one image)'
                )
        d = e.get("decision")
        if d not in DECISIONS:
            raise UserError(f"{at}: decision {d!r} is not one of {', '.join(DECISIONS)}")
        target = None
        if d == "relabel":
            target = _int(e.get("relabel_to"))
            if target is None or target not in class_ids:
                raise UserError(
                    f"{at}: relabel needs relabel_to, a class id of this dataset (got {e.get('relabel_to')!r})"
                )
        elif e.get("relabel_to") is not None:
            raise UserError(f'{at}: relabel_to is set but the decision is {d!r}, not "relabel"')
        note = e.get("note") or ""
        if not isinstance(note, str):
            raise UserError(f"{at}: note must be a string")
        key = (c, cl, index)
        if key in seen:
            what = f"sample {index}" if index is not None else _what(cl)
            raise UserError(f"{at}: class {c} {what} is decided twice; keep one entry")
        seen.add(key)
        order[(c, cl)] = n
        out.append(Decision(c, cl, index, d, target, note.strip()))
    for c, group, others in _conflicts(out, scores):
        if c in prefer:
            continue
        if version == 1:  # files before version 2: the later entry wins, as they were applied in order
            prefer[c] = "group" if order[(c, "group")] > max(order[(c, j)] for j in others) else "clusters"
            continue
        raise UserError(
            f"{where}: class {c}'s isolated group ({group.decision}) and cluster(s) {', '.join(map(str, others))} "
            f"decide differently for {sum(others.values())} samples they share; add "
            f'{{"class_id": {c}, "prefer": "group"}} (or "clusters") to say which wins (the report asks when you '
            "export)"
        )
    return Curation(who.strip(), out, prefer)


def overlaps(scores: pd.DataFrame) -> dict[int, dict[int, int]]:
    """Per class, {cluster: members of its isolated group in that cluster} from sample_scores: where a
    decision on the group and one on a cluster meet."""
    if "in_group" not in scores:
        return {}
    counts = scores[scores["in_group"].astype(bool)].groupby(["class_id", "cluster"]).size()
    out: dict[int, dict[int, int]] = {}
    for (c, j), n in counts.items():
        out.setdefault(int(c), {})[int(j)] = int(n)
    return out


def _conflicts(decisions: list[Decision], scores: pd.DataFrame) -> list[tuple[int, Decision, dict]]:
    """(class, its group decision, {cluster: shared samples}) where the isolated group's decision and a
    cluster's differ on samples both cover."""
    out = []
    blocks = {(d.class_id, d.cluster): d for d in decisions if d.index is None}
    shared_of = overlaps(scores)
    for (c, cl), g in blocks.items():
        if cl != "group":
            continue
        shared = {
            j: n
            for j, n in shared_of.get(c, {}).items()
            if (d := blocks.get((c, j))) is not None and (d.decision, d.relabel_to) != (g.decision, g.relabel_to)
        }
        if shared:
            out.append((c, g, shared))
    return out


def _rank(d: Decision, prefer: dict[int, str]) -> tuple:
    """Order of application: blocks before images; of a class's blocks, the preferred kind last."""
    if d.index is not None:
        return (1, d.class_id, d.index)
    group_last = prefer.get(d.class_id, "group") == "group"
    is_group = d.cluster == "group"
    return (0, d.class_id, is_group == group_last, -1 if is_group else int(d.cluster))  # type: ignore[arg-type]


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.strip().lstrip("-").isdigit():
        return int(v)
    return None


def _what(cluster: int | str | None) -> str:
    return "the isolated group" if cluster == "group" else f"cluster {cluster}"


def manifest(
    samples: pd.DataFrame,
    scores: pd.DataFrame,
    class_scores: pd.DataFrame,
    flagged_decision: str,
    curator: Curation | None,
    failures: pd.DataFrame | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """(manifest, cleaned list, curator decisions applied) from the samples table, sample_scores and
    class_scores (indexed by class_id): unreadable samples (skipped at index, or in `failures`, the images
    that did not decode: index, reason) dropped with their reason, flagged ones get `flagged_decision`,
    the rest kept; a curator's decisions on top: per class its clusters and its isolated group (the one the
    class prefers last, so it wins where they overlap), then the per-image decisions, which win over both."""
    classes = class_scores
    cols = ["index", "cluster", "clever_hans_score", "is_clever_hans", "class_id"]
    cols += ["in_group"] if "in_group" in scores else []
    label_issues = "is_label_issue" in scores  # reported for curators; no automatic decision
    cols += ["label_issue_score", "is_label_issue"] if label_issues else []
    m = samples[["index", "source", "label", "class_key", "class_name", "status"]].merge(
        scores[cols], on="index", how="left"
    )
    m["cluster"] = m["cluster"].fillna(-1).astype(int)
    m["clever_hans_score"] = m["clever_hans_score"].fillna(0.0)
    m["is_clever_hans"] = m["is_clever_hans"].fillna(False).astype(bool)
    if label_issues:
        m["is_label_issue"] = m["is_label_issue"].fillna(False).astype(bool)
    m["decision"] = "keep"
    m["reason"] = ""
    m["relabel_to"] = pd.array([pd.NA] * len(m), dtype="Int64")
    unusable = m["status"] != "ok"
    m.loc[unusable, "decision"] = "drop"
    m.loc[unusable, "reason"] = "unreadable: " + samples.loc[unusable, "reason"].astype(str)
    if failures is not None and len(failures):
        failed = m["index"].isin(failures["index"])
        why = failures.set_index("index")["reason"]
        m.loc[failed, "decision"] = "drop"
        m.loc[failed, "reason"] = "unreadable: " + m.loc[failed, "index"].map(why).astype(str)
        unusable |= failed
    flagged = m["is_clever_hans"]
    m.loc[flagged, "decision"] = flagged_decision
    m.loc[flagged, "reason"] = [
        f"auto: its evidence carries class {c} (score {v:.2f}; class score {classes.at[c, 'clever_hans_score']:.2f})"
        for c, v in zip(m.loc[flagged, "label"], m.loc[flagged, "clever_hans_score"])
    ]
    applied = 0
    if curator is not None:
        of_class, index = m["class_id"].to_numpy(), m["index"].to_numpy()
        in_group = m["in_group"].fillna(False).to_numpy(bool) if "in_group" in m else np.zeros(len(m), bool)
        for d in sorted(curator.decisions, key=lambda d: _rank(d, curator.prefer)):
            if d.index is not None:
                rows = index == d.index
                block = f"sample {d.index}"
            else:
                rows = of_class == d.class_id
                rows &= in_group if d.cluster == "group" else m["cluster"].to_numpy() == d.cluster
                block = _what(d.cluster)
            rows &= ~unusable.to_numpy()
            what = f"{d.decision} {block} of class {d.class_id}"
            if d.decision == "relabel":
                what = f"relabel {block} of class {d.class_id} to class {d.relabel_to}"
            m.loc[rows, "decision"] = d.decision
            m.loc[rows, "relabel_to"] = d.relabel_to if d.decision == "relabel" else pd.NA
            m.loc[rows, "reason"] = f"curator {curator.who}: {what}" + (f" ({d.note})" if d.note else "")
            applied += 1
    out = m.drop(columns=[c for c in ("status", "class_id", "in_group") if c in m])
    kept = out.loc[out["decision"].isin(["keep", "relabel"]), ["index", "source", "label", "relabel_to"]]
    kept = kept.assign(label=kept["relabel_to"].fillna(kept["label"]).astype(int)).drop(columns="relabel_to")
    return out, kept, applied
