"""The run store's layout: every array, table and file, once, with the stage (or command) that writes it.

Stages name store paths only through these entries (`RELEVANCE()`, `KNN_IDX(c=3)`, `SAMPLES.name`),
the Store refuses to write a path that is not declared here, error messages look up which stage to
rerun here, and docs/store.md is generated from this module (`python scripts/make_docs.py`;
tests/test_docs.py checks that the page is current).

Arrays get a fill value that cannot be mistaken for data (NaN, or a sentinel outside the values a
stage writes) and every chunk is written even when it equals the fill value, so a lost chunk file is
seen: `Store.read` refuses an array with a chunk missing, and a chunk lost under a half-written
attribution reads as NaN or a sentinel that `Store.check_attribution` counts.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Literal

STORE_VERSION = 2  # 2: fill values that cannot be mistaken for data, every chunk written
MISSING_INT = -(2**31)  # int32 sentinel: an attribution row never written (a lost chunk)
MISSING_STATUS = 255  # uint8 sentinel of attribution/status
NAN = float("nan")


@dataclass(frozen=True)
class Entry:
    """One array, table or file of a run store. `template` may hold `{c}` (a class id)."""

    template: str  # arrays: path in store.zarr/; tables: name under tables/; files: path under the run
    kind: Literal["array", "table", "file"]
    writer: str  # the stage (or command: verify, validate) that writes it
    doc: str
    shape: str = ""  # arrays: shape in the glossary's letters (docs/glossary.md)
    dtype: str = ""
    fill: Any = None  # arrays: what a chunk never written reads as
    columns: tuple[str, ...] = field(default=())  # tables

    def __call__(self, **keys: Any) -> str:
        """The concrete path: `KNN_IDX(c=3)` -> 'classes/3/knn_idx'."""
        return self.template.format(**keys)

    @property
    def name(self) -> str:
        return self.template

    @property
    def pattern(self) -> re.Pattern:
        return re.compile("^" + re.escape(self.template).replace(r"\{c\}", r"(?P<c>-?\d+)") + "$")


ENTRIES: list[Entry] = []


def _add(entry: Entry) -> Entry:
    ENTRIES.append(entry)
    return entry


def array(template: str, writer: str, shape: str, dtype: str, fill: Any, doc: str) -> Entry:
    return _add(Entry(template, "array", writer, doc, shape, dtype, fill))


def table(name: str, writer: str, columns: str, doc: str) -> Entry:
    return _add(Entry(name, "table", writer, doc, columns=tuple(c.strip() for c in columns.split(",") if c.strip())))


def file(path: str, writer: str, doc: str) -> Entry:
    return _add(Entry(path, "file", writer, doc))


# ---- index -------------------------------------------------------------------------------------
SAMPLES = table(
    "samples", "index", "index, source, label, status, reason, class_key, class_name",
    "one row per sample; status ok or skipped (reason says why). A planted shortcut (dataset.poison) adds "
    "original_label, artifact, art_y, art_x, art_h, art_w, art_angle, art_size, art_key: label is the label "
    "after poisoning, the box (y, x, h, w) bounds the painted pixels (-1 when clean), art_angle in degrees "
    "counter-clockwise, art_size the side before rotation, art_key the sample's own draw (sample-specific kinds)",
)  # fmt: skip
CLASSES = table("classes", "index", "class_id, class_key, class_name, n_samples", "one row per class of the dataset")

# ---- train ---------------------------------------------------------------------------------------
MODEL = file("files/model.pt", "train", "state dict of the trained model (torch.load weights_only)")
TRAINING = file(
    "files/training.json", "train", "per epoch: loss and held-out accuracy; the held-out samples; the epoch kept"
)

# ---- attribute: chunked by attribute.chunk_size rows (C); each chunk is written whole by one writer
RELEVANCE = array(
    "attribution/relevance", "attribute", "(N, r, r)", "float16", NAN,
    "input relevance summed over channels, sum-pooled to r x r, divided by relevance_scale",
)  # fmt: skip
RELEVANCE_SCALE = array(
    "attribution/relevance_scale",
    "attribute",
    "(N,)",
    "float32",
    NAN,
    "largest absolute relevance of each map (1 where all-zero)",
)
RELEVANCE_SUM = array(
    "attribution/relevance_sum", "attribute", "(N,)", "float32", NAN, "sum of the input relevance before pooling"
)
LOGIT = array("attribution/logit", "attribute", "(N,)", "float32", NAN, "the explained (target) logit")
LABEL_PROBABILITY = array(
    "attribution/label_probability", "attribute", "(N,)", "float32", NAN,
    "the softmax at the label in the explained pass, p(label): the sample's self-confidence",
)  # fmt: skip
PREDICTION = array(
    "attribution/prediction", "attribute", "(N,)", "int32", MISSING_INT, "argmax of the logits (-1: not attributed)"
)
TARGET = array(
    "attribution/target", "attribute", "(N,)", "int32", MISSING_INT, "the explained class (-1: not attributed)"
)
STATUS = array(
    "attribution/status", "attribute", "(N,)", "uint8", MISSING_STATUS,
    "0 attributed, 1 skipped at index, 2 decoding failed",
)  # fmt: skip
THUMBNAILS = array(
    "attribution/thumbnails", "attribute", "(N, t, t, 3)", "uint8", 0,
    "each image as the model saw it, RGB, area-averaged to t = min(image size, attribute.thumbnail) px (grey "
    "where not attributed): the tiles of the report's member grid, so the report decodes no image but its "
    "prototypes",
)  # fmt: skip
FEATURES = array(
    "attribution/features", "attribute", "(N, D)", "float16", NAN,
    "input of the model's last Linear layer (attribute.features)",
)  # fmt: skip
DONE = array(
    "attribution/done", "attribute", "(N/C,)", "bool", False,
    "chunk c (rows cC..cC+C-1) is complete: set after its rows, so a killed run resumes at the first chunk not done",
)  # fmt: skip
ATTRIBUTE_FAILURES = table("attribute_failures", "attribute", "index, source, reason", "images that failed to decode")
FAILURE_CHUNKS = file("files/attribute_failures", "attribute", "per-chunk JSON lists of decoding failures")

# ---- distances: one group per analysed class; arrays written whole ----------------------------------
MEMBERS = array("classes/{c}/members", "distances", "(n,)", "int64", -1, "sample indices (rows of samples)")
EMPTY = array("classes/{c}/empty", "distances", "(n,)", "bool", False, "maps without mass")
KNN_IDX = array("classes/{c}/knn_idx", "distances", "(n, k)", "int64", -1, "positions in members of the neighbours")
KNN_DIST = array(
    "classes/{c}/knn_dist", "distances", "(n, k)", "float32", NAN,
    "their distances (attrs: metric, fingerprint); written last, so a resumed run skips the classes that carry it",
)  # fmt: skip

# ---- cluster -------------------------------------------------------------------------------------
EIGENVALUES = array(
    "classes/{c}/eigenvalues", "cluster", "(m,)", "float32", NAN, "smallest eigenvalues of the normalised Laplacian"
)
EIGENVECTORS = array("classes/{c}/eigenvectors", "cluster", "(n, m)", "float32", NAN, "their eigenvectors")
LABELS = array(
    "classes/{c}/labels", "cluster", "(K, n)", "int32", -1, "k-means labels for k in attrs.k; attrs.n_clusters"
)
EMBEDDING = array("classes/{c}/embedding", "cluster", "(n, 2)", "float32", NAN, "2-D display coordinates")

# ---- transfer ------------------------------------------------------------------------------------
TRANSFER_EVIDENCE = array(
    "classes/{c}/transfer_evidence", "transfer", "(n,)", "float64", NAN, "each member's pasted-evidence transfer t"
)
TRANSFER_GLOBAL = array(
    "classes/{c}/transfer_global", "transfer", "(n,)", "float64", NAN,
    "each member's global-look transfer g (zeros with transfer.global_hosts = 0)",
)  # fmt: skip
PLACE = array(
    "classes/{c}/place", "transfer", "(P, n)", "float64", NAN,
    "place probe: each probed group's transfer of the drawn members' pixels at its place, NaN for the others "
    "(attrs.groups: [k, cluster, cells] per group; attrs.probed: false where a screened run did not probe the "
    "class's place, stages/transfer.py)",
)  # fmt: skip
PLACE_REACH = array(
    "classes/{c}/place_reach", "transfer", "(n,)", "float64", NAN,
    "every member's transfer at the confirmed place group's reach (its place along the one image edge it touches), "
    "all NaN without one (attrs: group, its row in place, -1 without one; cells, the reach's flat indices into "
    "the relevance map)",
)  # fmt: skip
TRANSFER_SCREEN = array(
    "classes/{c}/transfer_screen", "transfer", "(n,)", "float64", NAN,
    "with transfer.candidates: max(t, g) at the screening's probes, every class's; the candidates are chosen "
    "by their class scores on it, and every class's p-value is taken on them (attrs: fingerprint)",
)  # fmt: skip
TRANSFER = array(
    "classes/{c}/transfer", "transfer", "(n,)", "float64", NAN,
    "max(t, g), what the class is scored on; written last (attrs: fingerprint, in_full: a candidate probed on "
    "every host): resume by class",
)  # fmt: skip

# ---- score -----------------------------------------------------------------------------------------
CLASS_SCORES = table(
    "class_scores", "score",
    "rank, class_id, class_key, class_name, n_samples, n_clusters, eigengap, group_k, group_cluster, group_size, "
    "group_fraction, conductance, group_transfer, group_probe, rest_transfer, clever_hans_score, p_value, q_value, "
    "is_clever_hans, screening_score, place_score, place_group_size, place_cells, place_group_transfer, "
    "place_rest_transfer, place_usage, place_foreign, sample_probe, label_issue_fraction",
    "one row per analysed class, ranked by clever_hans_score (docs/methods.md)",
)  # fmt: skip
SAMPLE_SCORES = table(
    "sample_scores", "score",
    "index, class_id, cluster, in_group, clever_hans_score, is_clever_hans, stands_out, transfer, evidence_transfer, "
    "global_transfer, self_confidence, label_issue_score, is_label_issue",
    "one row per analysed sample (docs/methods.md)",
)  # fmt: skip

# ---- clean -----------------------------------------------------------------------------------------
MANIFEST = table(
    "manifest", "clean",
    "index, source, label, class_key, class_name, cluster, clever_hans_score, is_clever_hans, label_issue_score, "
    "is_label_issue, decision, reason, relabel_to",
    "one row per sample: keep, drop, relabel or review, and who decided why",
)  # fmt: skip
CLEANED = table("cleaned", "clean", "index, source, label", "the samples to train on (relabelled: the new label)")
DECISIONS = file(
    "files/decisions.json", "clean",
    "the curator decisions last applied (docs/decisions.md), reapplied by later audits until replaced",
)  # fmt: skip

# ---- commands beside the stages (pipeline/harness) --------------------------------------------------
MODEL_CLEANED = file("files/model_cleaned.pt", "verify", "the model retrained on tables/cleaned")
PCLARC = file("files/pclarc.pt", "verify", "the P-ClArC correction (pipeline/harness/pclarc.py)")
VERIFY_CSV = file("verify.csv", "verify", "flip rate, accuracy and re-audit of each model")
VERIFY_MD = file("verify.md", "verify", "the same as a Markdown table")
VALIDATION = file("validation.csv", "validate", "one row per detector of a validation run")


def find(path: str) -> Entry | None:
    """The entry a concrete path belongs to (None if undeclared)."""
    for e in ENTRIES:
        if e.pattern.match(path):
            return e
    for e in ENTRIES:  # files inside a declared folder
        if e.kind == "file" and path.startswith(e.template + "/"):
            return e
    return None


def writer_of(path: str) -> str:
    """The stage or command that writes `path` ('' if undeclared)."""
    e = find(path)
    return e.writer if e else ""


def outputs(writer: str) -> list[Entry]:
    """Everything one stage (or command) writes, in layout order."""
    return [e for e in ENTRIES if e.writer == writer]


def markdown() -> str:
    """docs/store.md: the layout as a reader of a store needs it."""
    lines = [
        f"# unhans run store — layout version {STORE_VERSION}",
        "",
        "<!-- generated by `python scripts/make_docs.py` from pipeline/core/layout.py; "
        "tests/test_docs.py checks it -->",
        "",
        "A run store is a directory (local path or any fsspec URL) that other tools can read without unhans.",
        f"`store.zarr/` is a zarr v3 group carrying `store_version = {STORE_VERSION}` in its attributes (a reader",
        "must refuse other versions); tables are Parquet with a CSV copy; stage records are JSON.",
        "",
        "```",
        "<run>/",
        "  store.zarr/                 arrays (below); classes.attrs: ids (analysed class ids), metric",
        "  tables/<name>.parquet|.csv  tables (below)",
        "  stages/<stage>.json         fingerprint, complete, started, finished, seconds, peak_mib (peak",
        "                              resident memory of the process while the stage ran; peak_of: stage or",
        "                              process), machine (CPU and torch: another CPU trains another model),",
        "                              counts, settings, inputs (their fingerprints), code_version",
        "  files/                      other artefacts (below)",
        "  LOCK                        held while a run writes",
        "```",
        "",
        "Letters: N samples, C = attribute.chunk_size, r = attribute.resolution, D feature width, n members of a",
        "class, k = distances.k, m eigenpairs, K clusterings (k = 2..k_max); see docs/glossary.md. Arrays under",
        "`attribution/` are chunked by C rows, so no two writers share a chunk; arrays under `classes/<c>/` are",
        "written whole, their attributes after their data. A chunk never written reads as the fill value, which",
        "no stage writes as data; every chunk is stored even where it equals the fill value, so a lost chunk",
        "file is detected. Relevance in physical units is `relevance[i] * relevance_scale[i]` (attrs on",
        "`relevance`: model, weights, composite, target_rule, resolution, image_size).",
        "",
        "## Arrays",
        "",
        "| path | shape | dtype | fill | written by | meaning |",
        "|---|---|---|---|---|---|",
    ]
    for e in ENTRIES:
        if e.kind == "array":
            lines.append(f"| `{e.template}` | {e.shape} | {e.dtype} | {e.fill} | {e.writer} | {e.doc} |")
    lines += ["", "## Tables", "", "| table | written by | columns | meaning |", "|---|---|---|---|"]
    for e in ENTRIES:
        if e.kind == "table":
            lines.append(f"| `tables/{e.template}` | {e.writer} | {', '.join(e.columns)} | {e.doc} |")
    lines += ["", "## Files", "", "| path | written by | meaning |", "|---|---|---|"]
    for e in ENTRIES:
        if e.kind == "file":
            lines.append(f"| `{e.template}` | {e.writer} | {e.doc} |")
    lines += [
        "",
        "Column meanings are in docs/methods.md (scores) and docs/decisions.md (manifest decisions). All JSON",
        "and table writes are atomic (a temporary file, then a rename).",
        "",
    ]
    return "\n".join(lines)
