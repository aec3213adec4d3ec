"""The report's HTML: the overview (index.html) and one page per class, with its sprite sheets.

Layout of a report folder (open index.html from disk; no server, no network, vanilla JS):

    index.html           model, warnings and unreadable files; how to read a score; a histogram of
                         the class scores; every class ranked (plain headers with a tooltip each,
                         technical columns behind a toggle, a thumbnail strip of its suspicious group),
                         rendered by JS from an inline JSON array; the curator's decisions, exported
    class-<id>.html      verdict, spectrum with the eigengap, the embedding (JS: coloured by the
                         scored clustering, hover shows the image, drag selects), per block (cluster
                         or isolated group) a decision, mean relevance map and prototypes, and every
                         member in one grid (score and flag on each tile; sort, filter, page; select
                         and decide per image)
    class-<id>/s<j>.png  sprite sheets of the members' thumbnails: row i of sheet j is member
                         j * page_size + i in order of falling sample score, [image | signed heatmap],
                         the attribute stage's thumbnails (min(attribute.thumbnail, image_size) px a
                         tile, enlarged by the browser to thumb_size)
    class-<id>/group.png the overview's strip: images above heatmaps of the group's central members
    class-<id>/prototypes.png  a row per block: its mean relevance map, then image and heatmap of each
                         prototype (the page cuts the cells with CSS; overlays are blended by CSS)
    classes.js           UNHANS_CLASSES = [[class_id, class_key, class_name], ...] (relabel targets) and
                         UNHANS_OVERLAPS = {class_id: [[cluster, group members in it], ...]}
    assets/              report.js and report.css, copied from pipeline/report/assets/
    report.json          what made this folder (asset hash, score fingerprint); the stage is rerun
                         when the assets change

Only the member grid's current page loads sprite sheets, so a class page of any size holds at most
one page of pixels beyond the prototypes. Every string from the data is HTML-escaped in markup and
embedded in JSON with `<`, `>` and `&` escaped (render.safe_json); the JS writes data only through
textContent. Curator decisions are kept in localStorage and exported as the decisions file of
docs/decisions.md.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
from pydantic import Field

from unhans.pipeline.core import layout
from unhans.pipeline.core.config import Section
from unhans.pipeline.core.store import Store
from unhans.pipeline.data import build_dataset, iter_batches
from unhans.pipeline.method.curation import DECISIONS
from unhans.pipeline.report.render import (
    PALETTE,
    esc,
    heatmap_rgb,
    loaded_rgb,
    png_bytes,
    safe_json,
    sprite,
    svg_histogram,
    svg_spectrum,
    thumb,
)

UNREADABLE_SHOWN = 200  # unreadable files listed on the overview (all are in the manifest)
# The overview's columns of class_scores, in this order: (column, header, what it means, technical).
# Technical columns are behind a toggle; columns not listed here follow as they come, shown.
COLUMNS = [
    ("rank", "rank", "1: the most suspicious class", False),
    ("class_name", "class", "open a class to see its clusters, its suspicious group and every image", False),
    ("clever_hans_score", "score", "how far the class's most isolated group is explained alike and answered by "
     "the model from its own evidence, in robust spreads above the rest of the class; 0: nothing stands out", False),
    ("is_clever_hans", "flagged", "the score is high and improbable for the run's other classes (see 'How to "
     "read this'): its flagged images are dropped automatically", False),
    ("q_value", "q", "false-discovery rate at which the class counts as flagged (Benjamini-Hochberg over the "
     "classes' p-values); shown only where the score is high enough for it to decide", False),
    ("place_score", "place score", "for a group whose evidence sits at one place of the image (a stamp, a frame): "
     "how much more the class is carried by the group's pixels there than by the rest's, in spreads of the rest's; "
     "a strong one flags the class too where the place is foreign to the class; empty: not probed (a screened "
     "run probes the places of its candidate classes and of a random reference of classes)", False),
    ("n_samples", "images", "images of the class that were audited", False),
    ("group_size", "group", "images in the class's most isolated group", False),
    ("group_fraction", "share", "the group's share of the class", False),
    ("group_probe", "cue", "what carries the group's transfer: 'evidence', the pixels of its top relevance; "
     "'global', its overall colour, brightness or contrast", False),
    ("label_issue_fraction", "label issues", "share of the class the model predicts as another class with less "
     "than the class's usual confidence (likely wrong labels)", False),
    ("class_id", "id", "the class id (tables/classes)", True),
    ("class_key", "key", "the class's key (folder name, WordNet id)", True),
    ("n_clusters", "clusters", "clusters the eigengap chooses", True),
    ("eigengap", "eigengap", "gap after the chosen number of eigenvalues; larger: clearer clusters", True),
    ("group_k", "group k", "the clustering the group was chosen from", True),
    ("group_cluster", "group cluster", "the group's cluster in that clustering", True),
    ("conductance", "conductance", "how strongly the group's explanations connect to the rest (0: cut off)", True),
    ("group_transfer", "group transfer", "mean transfer of the group's evidence to other classes' images", True),
    ("rest_transfer", "rest transfer", "mean transfer of the rest of the class", True),
    ("place_group_size", "place group", "images in the group whose place was probed", True),
    ("place_cells", "place cells", "map cells of that place", True),
    ("place_group_transfer", "place group transfer", "mean transfer of the group's pixels at its place", True),
    ("place_rest_transfer", "place rest transfer", "mean transfer of the rest's pixels at the same place", True),
    ("place_usage", "place usage", "relevance the images the place does not carry the class from give to it, "
     "relative to an even spread (above the limit: the class's own place, a part of the object, no stamp)", True),
    ("place_foreign", "foreign place", "the confirmed place is background for the class's other images: it may "
     "flag the class and rank its images", True),
    ("sample_probe", "images ranked by", "'place': the class's images are ranked by how much their own pixels along "
     "the place carry the class (its place score reaches the threshold, its score does not); 'transfer': by their "
     "evidence's transfer", True),
    ("p_value", "p", "chance that a class without a shortcut scores this high, judged by the run's other classes; "
     "shown only where the score is high enough for it to decide", True),
    ("screening_score", "screening score", "in a screened run (transfer.candidates): the class's score on the few "
     "probes every class got, on which the p- and q-values are taken; the classes that scored highest were then "
     "probed on every host (their score is that probe's); empty where the run did not screen", True),
]  # fmt: skip
MEANINGFUL_ABOVE_THRESHOLD = ("p_value", "q_value")


class ReportConfig(Section):
    """The curators' HTML report (pipeline/report/, stages/report.py)."""

    top_classes: int | None = Field(None, ge=1, description="class pages for the top-ranked only")
    prototypes: int = Field(8, ge=1, description="most central members shown large per cluster")
    thumb_size: int = Field(
        64, ge=16, le=256, description="side the member thumbnails are shown at on class pages, pixels (they are "
        "stored at attribute.thumbnail)",
    )  # fmt: skip
    page_size: int = Field(48, ge=1, le=1000, description="members per page of a class's grid, and per sprite sheet")


def plain(d: dict) -> dict:
    """numpy scalars -> Python, NaN -> None (JSON has no NaN)."""
    out = {}
    for k, v in d.items():
        if isinstance(v, np.generic):
            v = v.item()
        if isinstance(v, float) and not math.isfinite(v):
            v = None
        out[str(k)] = v
    return out


def page(title: str, body: str, data: dict) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8">'
        f'<meta name="viewport" content="width=device-width, initial-scale=1"><title>{esc(title)}</title>'
        f'<link rel="icon" href="data:,"><link rel="stylesheet" href="assets/report.css"></head><body>{body}'
        f'<script type="application/json" id="unhans-data">{safe_json(data)}</script>'
        f'<script src="classes.js"></script><script src="assets/report.js"></script></body></html>'
    )


def _toolbar(overview: bool) -> str:
    extra = '<button type="button" id="clear">clear all</button>' if overview else _selection_bar()
    return (
        '<div class="toolbar"><label>decided by <input id="decided-by" type="text" size="16" '
        'autocomplete="name" placeholder="your name"></label><span id="decision-count"></span>'
        '<button type="button" id="export">export decisions</button>'
        '<label>import <input type="file" id="import" accept=".json,application/json"></label>'
        f'<span id="message" class="message" role="status"></span>{extra}</div>'
    )


def _selection_bar() -> str:
    """Class pages: decide for the selected images (chosen in the member grid or the embedding)."""
    return (
        '<div class="selection"><span id="selected-count">0 images selected</span>'
        '<button type="button" id="select-page">select this page</button>'
        '<button type="button" id="select-shown">select all shown</button>'
        '<button type="button" id="select-none">clear selection</button>'
        f'<label>decide <select id="selection-decision">{_OPTIONS.replace("automatic", "choose")}</select></label>'
        '<label class="relabel" hidden>relabel to <select id="selection-relabel"></select></label>'
        '<label>note <input id="selection-note" type="text" size="20"></label>'
        '<button type="button" id="selection-apply">apply to selected</button>'
        '<button type="button" id="selection-undo">undo their image decisions</button></div>'
    )


def index_page(common: dict, cs: pd.DataFrame, linked: set[int], strips: set[int] | None = None) -> str:
    """The overview: model, warnings, how to read a score, the score histogram, and every class
    (rows rendered by report.js from inline JSON; thumbnails of the groups load lazily)."""
    known = [c for c, *_ in COLUMNS]
    cols = [c for c in known if c in cs] + [c for c in cs.columns if c not in known]
    rows = [[plain({"v": v})["v"] for v in r] for r in cs[cols].itertuples(index=False)]
    help_ = {c: {"label": h, "help": t, "technical": tech} for c, h, t, tech in COLUMNS}
    threshold, min_score, fdr = common["flag_threshold"], common["min_score"], common["fdr"]
    data = {"page": "index", "run": common["run"], "report_id": common["report_id"],
            "score_fingerprint": common["score_fingerprint"], "columns": cols, "rows": rows,
            "headers": {c: help_.get(c, {"label": c, "help": "a column of tables/class_scores", "technical": False})
                        for c in cols},
            "threshold": min_score, "meaningful_above_threshold": list(MEANINGFUL_ABOVE_THRESHOLD),
            "pages": sorted(linked), "strips": sorted(strips or ())}  # fmt: skip
    flagged = int(cs["is_clever_hans"].sum()) if "is_clever_hans" in cs else 0
    warnings = "".join(f"<li>{esc(w)}</li>" for w in common.get("warnings", []))
    unreadable = common.get("unreadable", [])
    listed = "".join(f"<tr><td>{esc(str(s))}</td><td>{esc(str(r))}</td></tr>" for s, r in unreadable[:UNREADABLE_SHOWN])
    more = (
        f"<p>... and {len(unreadable) - UNREADABLE_SHOWN} more (tables/manifest.csv).</p>"
        if len(unreadable) > UNREADABLE_SHOWN
        else ""
    )
    test = (
        f" and at most one class of a clean run of this size would score so high, or when it reaches "
        f"{min_score:g} and its q-value is at most {fdr:g} (a discovery at that false discovery rate over the "
        f"classes), or when its place score reaches {threshold:g} in the same way and the place is foreign to "
        f"the class (its other images read little there)"
        if common.get("calibrated", True)
        else ""
    )
    scores = cs["clever_hans_score"].to_numpy(np.float64) if "clever_hans_score" in cs else np.zeros(0)
    body = (
        f"<h1>Clever Hans audit: {esc(common['run'])}</h1>{common['provenance']}"
        f'<p class="model">{esc(common.get("model_line", ""))}</p>'
        + (f'<div class="warnings" role="alert"><b>Warnings</b><ul>{warnings}</ul></div>' if warnings else "")
        + (
            f'<p class="warnings"><a href="#unreadable">{len(unreadable)} unreadable files</a> are left out of the '
            "audit and dropped by the manifest.</p>"
            if unreadable
            else ""
        )
        + f"{_toolbar(True)}"
        f'<div class="plots"><div><p class="how"><b>How to read this.</b> Each class gets a score: how far its most '
        f"isolated group of images is explained alike, cut off from the rest of the class, and answered by the "
        f"model from that group's own evidence (a shortcut such as a watermark or a patch). 0: nothing stands out; "
        f"a class is <b>flagged</b> (in red) when its score reaches {threshold:g}{test}; its images whose own score "
        f"stands out (for a class found by its place alone: how much their pixels along that place carry the "
        f"class) are then dropped by the manifest unless a curator decides otherwise.</p>"
        f"<p>{len(cs)} classes, {flagged} flagged. Click a header to sort (hover it for what it means), a class "
        f"to open its clusters and its images and decide what happens to them. Decisions are kept in this browser "
        f"until you export them (<code>unhans clean --decisions FILE</code> applies them).</p></div>"
        f"<figure><figcaption><b>Class scores</b> (dashed: the flag threshold)</figcaption>"
        f"{svg_histogram(scores, threshold)}</figure></div>"
        '<div class="controls"><label>search <input id="search" type="search" placeholder="class name or key">'
        '</label><label><input type="checkbox" id="flagged"> flagged only</label>'
        '<label><input type="checkbox" id="technical"> technical columns</label><span id="shown"></span></div>'
        '<div class="wide"><table id="classes"><thead><tr></tr></thead><tbody></tbody></table></div>'
        "<noscript>The class table needs JavaScript; the same table is in tables/class_scores.csv.</noscript>"
        '<h2>Decisions</h2><table id="decisions" hidden><thead><tr><th>class</th><th>what</th>'
        "<th>decision</th><th>relabel to</th><th>note</th><th></th></tr></thead><tbody></tbody></table>"
        + (
            f'<h2 id="unreadable">Unreadable files</h2><p>{len(unreadable)} files could not be read; the manifest '
            f"drops them.</p><table><thead><tr><th>file</th><th>reason</th></tr></thead><tbody>{listed}</tbody>"
            f"</table>{more}"
            if unreadable
            else ""
        )
    )
    return page(f"unhans: {common['run']}", body, data)


_DATASETS: dict[str, object] = {}
_STORES: dict[tuple[str, str], Store] = {}


def _store(url: str, score_fingerprint: str) -> Store:
    """One Store per process for the report being written (workers render many classes; opening a store and
    its relevance arrays once saves a few ms a class). Keyed by the score stage's fingerprint, which changes
    whenever anything the report reads was recomputed; only the latest is kept."""
    key = (url, score_fingerprint)
    if key not in _STORES:
        _STORES.clear()
        _STORES[key] = Store(url)
    return _STORES[key]


def _dataset(cfg):
    """One dataset object per process and dataset config (workers render many classes)."""
    key = cfg.dataset.model_dump_json()
    if key not in _DATASETS:
        _DATASETS[key] = build_dataset(cfg.dataset)
    return _DATASETS[key]


MEMBER_SCORE_DEFAULTS = {"in_group": False, "clever_hans_score": 0.0, "is_clever_hans": False}
GROUP_STRIP = 6  # members of the suspicious group shown on the overview, image above heatmap
STRIP_THUMB = 32
# the members' fields on a class page (DATA.fields), in this order
MEMBER_FIELDS = ["index", "name", "score", "source", "cluster", "group", "flag", "x", "y", "scored", "central"]


def render_class(cfg, url: str, common: dict, item: tuple) -> tuple[int, int, bool]:
    """One class page, its sprite sheets and the overview's thumbnail strip of its suspicious group;
    item = (class_scores row, its members, their samples rows in member order, its sample_scores as arrays
    (member_score_arrays)).
    Returns (members, sprite sheets, whether the strip was written)."""
    row, members, sub, scores = item
    store, c = _store(url, common["score_fingerprint"]), int(row["class_id"])
    out = Path(common["out"])
    T, P, n_proto = cfg.report.thumb_size, cfg.report.page_size, cfg.report.prototypes
    n = len(members)
    (lam, _), (all_labels, attrs), (emb, _), (vectors, _) = store.read_many(
        [layout.EIGENVALUES(c=c), layout.LABELS(c=c), layout.EMBEDDING(c=c), layout.EIGENVECTORS(c=c)]
    )
    ks, k = list(attrs["k"]), int(attrs["n_clusters"])
    labels = all_labels[ks.index(k)]
    group_k = int(row["group_k"]) if row.get("group_k") in ks else k
    scored = all_labels[ks.index(group_k)]  # the clustering the suspicious group was chosen from
    vec = vectors[:, :k].astype(np.float64)
    u = vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)  # k-means' embedding
    relevance = store.relevance(members)
    sc = _member_scores(scores, members)
    group = sc["in_group"].astype(bool)
    score = sc["clever_hans_score"].astype(np.float64)
    flag = sc["is_clever_hans"].astype(bool)

    def central(local: np.ndarray) -> np.ndarray:
        """Member positions (local) from the most central to the least (spectral embedding)."""
        d = ((u[local] - u[local].mean(0)) ** 2).sum(1)
        return local[np.argsort(d, kind="stable")]

    clusters = [(j, central(np.flatnonzero(labels == j))) for j in range(k)]
    clusters = [(j, loc) for j, loc in clusters if len(loc)]
    rank_in_cluster = np.zeros(n, int)
    for _, loc in clusters:
        rank_in_cluster[loc] = np.arange(len(loc))
    blocks = []  # (cluster id or "group", title, local members ordered by centrality)
    if group.any():
        blocks.append(("group", "most isolated group", central(np.flatnonzero(group))))
    blocks += [(j, f"cluster {j}", loc) for j, loc in clusters]
    # sprite sheets in the grid's default order, the highest sample score first: the first page
    # shown needs one sheet, and every other page or sort loads only the sheets its tiles are on
    order = np.argsort(-score, kind="stable")

    # the member tiles are the attribute stage's thumbnails (min(image size, attribute.thumbnail) px, enlarged
    # by the browser to report.thumb_size, crisp): only the prototypes and the group's strip are decoded here
    S = cfg.dataset.image_size
    view, res = min(max(96, S), 192), min(S, 192)
    tiles = np.asarray(store.array(layout.THUMBNAILS()).get_orthogonal_selection((members,)))
    tile = tiles.shape[1]
    strip = central(np.flatnonzero(group))[:GROUP_STRIP] if group.any() else np.zeros(0, int)
    strip_set = {int(i) for i in strip}
    need_full = {int(i) for _, _, loc in blocks for i in loc[:n_proto]}
    full: dict[int, np.ndarray] = {}
    small: dict[int, list[np.ndarray]] = {}
    folder = out / f"class-{c}"
    folder.mkdir(parents=True, exist_ok=True)
    shown = np.array(sorted(need_full | strip_set), int)
    for idx, x, ok, _ in iter_batches(_dataset(cfg), sub, [shown[s : s + P] for s in range(0, len(shown), P)],
                                      cfg.compute.decode_threads):  # fmt: skip
        imgs = loaded_rgb(x.numpy(), ok)
        for b, i in enumerate(idx):
            if int(i) in need_full:
                full[int(i)] = thumb(imgs[b], res)
            if int(i) in strip_set:
                small[int(i)] = [thumb(imgs[b], STRIP_THUMB), heatmap_rgb(relevance[i], STRIP_THUMB)]
    for s in range(0, n, P):  # sprite sheets in the grid's default order
        idx = order[s : s + P]
        pairs = np.concatenate([tiles[idx], heatmap_rgb(relevance[idx], tile)], axis=2)  # (b, t, 2t, 3)
        (folder / f"s{s // P}.png").write_bytes(png_bytes(pairs.reshape(-1, 2 * tile, 3)))
    if len(strip):  # image row above heatmap row
        pairs = [small[int(i)] for i in strip]
        (folder / "group.png").write_bytes(png_bytes(sprite([[p[0] for p in pairs], [p[1] for p in pairs]])))

    names = sub["source"].astype(str).to_numpy()
    lo, hi = emb.min(0), emb.max(0)
    xy = (emb - lo) / np.where(hi - lo > 0, hi - lo, 1.0)
    data = {
        "page": "class",
        "run": common["run"],
        "report_id": common["report_id"],
        "score_fingerprint": common["score_fingerprint"],
        "flagged_decision": cfg.clean.flagged,
        "class_id": c,
        "class_name": str(row["class_name"]),
        "k": k,
        "group_k": group_k,
        "thumb": T,
        "tile": tile,  # pixels of a sprite sheet's tile (shown at `thumb`)
        "page_size": P,
        "sprite_prefix": f"class-{c}/s",
        "fields": MEMBER_FIELDS,
        "members": [  # in sprite order: member p is row p % P of sheet p // P
            [
                int(members[i]),
                names[i].rsplit("/", 1)[-1],
                round(float(score[i]), 4),
                names[i],
                int(labels[i]),
                int(group[i]),
                int(flag[i]),
                round(float(xy[i, 0]), 4),
                round(float(xy[i, 1]), 4),
                int(scored[i]),
                int(rank_in_cluster[i]),
            ]  # fmt: skip
            for i in order
        ],
        "blocks": [{"cluster": cl, "size": len(loc)} for cl, _, loc in blocks],
    }
    # the prototypes: one sheet per class, a row per block (its mean map, then image and heatmap of each
    # prototype), cut by CSS; the overlay is the heatmap over the greyed image, blended by the browser
    cols = 1 + 2 * n_proto
    sheet, sections = [], []
    # every block's mean map and prototypes' maps coloured in one call: block r's are heats[at[r]:at[r + 1]]
    heats = heatmap_rgb(
        np.concatenate(
            [m for _, _, loc in blocks for m in (relevance[loc].mean(0, keepdims=True), relevance[loc[:n_proto]])]
        ),
        res,
    )
    at = np.cumsum([0] + [1 + len(loc[:n_proto]) for _, _, loc in blocks])
    for r, (cluster, title, loc) in enumerate(blocks):
        proto = loc[:n_proto]
        block_heats = heats[at[r] : at[r + 1]]
        cells = [block_heats[0]] + [a for j, i in enumerate(proto) for a in (full[int(i)], block_heats[1 + j])]
        sheet.append(cells + [np.full((res, res, 3), 255, np.uint8)] * (cols - len(cells)))
        figs = [f"<figure>{_cut(r, 0, view)}<figcaption>mean relevance</figcaption></figure>"]
        for j, i in enumerate(proto):
            image, heat = 1 + 2 * j, 2 + 2 * j
            overlay = f'<div class="overlay">{_cut(r, image, view, "grey")}{_cut(r, heat, view, "heat")}</div>'
            figs.append(
                f'<figure><div class="protos">{_cut(r, image, view)}{_cut(r, heat, view)}{overlay}</div>'
                f"<figcaption>{esc(f'#{members[i]} ' + names[i].rsplit('/', 1)[-1])}</figcaption></figure>"
            )
        sections.append(_section(cfg, row, cluster, title, len(loc), int(flag[loc].sum()), "".join(figs)))
    (folder / "prototypes.png").write_bytes(png_bytes(sprite(sheet)))
    style = (
        f"<style>.cut{{background-image:url(class-{c}/prototypes.png);background-size:{cols * view}px auto;"
        f"width:{view}px;height:{view}px}}.overlay{{width:{view}px;height:{view}px}}</style>"
    )
    summary = [f"Clever Hans score <b>{esc(_num(row.get('clever_hans_score')))}</b>"]
    summary[0] += " (flagged)" if row.get("is_clever_hans") else ""
    if group.any():
        summary.append(f"most isolated group: {int(group.sum())} of {n} samples")
        if row.get("group_probe") == "global":
            summary.append("the group's transfer comes from its global look (colour, brightness, contrast)")
        elif row.get("group_probe") == "evidence":
            summary.append("the group's transfer comes from the pasted pixels of its top relevance")
    if row.get("conductance") is not None:
        summary.append(f"conductance {esc(_num(row['conductance']))}")
    summary.append(f"the eigengap chooses k = {k} clusters")
    if group.any() and group_k != k:
        summary.append(f"the group comes from the clustering into k = {group_k}")
    place = _place_figure(store, c, row, all_labels, ks, relevance, res, view, folder)
    colour_by = "".join(
        f'<option value="{v}">{esc(t)}</option>'
        for v, t in (("scored", f"the scored clustering (k = {group_k})"), ("cluster", f"the clusters below (k = {k})"),
                     ("score", "sample score"))
    )  # fmt: skip
    head = (
        f'<nav><a href="index.html">all classes</a></nav><h1>{esc(str(row["class_name"]))} '
        f"<small>({esc(str(row['class_key']))}, class {c})</small></h1>{common['provenance']}{_toolbar(False)}"
        f"<p>{'; '.join(summary)}.</p>"
        '<div class="plots"><figure><figcaption><b>Spectrum</b> of the normalised Laplacian</figcaption>'
        f"{svg_spectrum(lam, k)}</figure>"
        '<figure class="embedding"><figcaption><b>Embedding</b> of the explanations; colour by '
        f'<select id="colour-by">{colour_by}</select>. Ringed: the isolated group. Hover a point to see '
        "its image; drag a box to select images (shift: add to the selection).</figcaption>"
        '<div id="embedding"></div><div id="embedding-legend" class="legend-row"></div></figure>'
        f"{place}</div>"
        '<div id="conflicts" class="conflicts" hidden></div>'
        '<p class="muted">Heatmaps: <span class="legend"></span> negative (blue), zero (white), positive (red) '
        "relevance, each map scaled to its own largest |value|; overlays show the heatmap over the greyed image. "
        "Prototypes: the most central members of each block in the spectral embedding.</p>"
    )
    body = style + head + "".join(sections) + _members_section(k, group.any())
    html = page(f"{row['class_name']} · unhans", body, data)
    (out / f"class-{c}.html").write_text(html, encoding="utf-8")
    return n, -(-n // P), bool(len(strip))


def _place_figure(store, c: int, row: dict, all_labels, ks: list, relevance, res: int, view: int, folder) -> str:
    """For a class whose images are ranked by the place probe (sample_probe 'place'), a figure of that place:
    the confirmed place group's mean relevance with the place's reach in green (written as place.png)."""
    if row.get("sample_probe") != "place":
        return ""
    (_, groups), (_, reach) = store.read_many([layout.PLACE(c=c), layout.PLACE_REACH(c=c)])
    k, cluster, _ = groups["groups"][int(reach["group"])]
    if k not in ks:
        return ""
    inside = all_labels[ks.index(k)] == cluster
    r = relevance.shape[-1]
    cells = np.zeros(r * r, bool)
    cells[np.asarray(reach["cells"], int)] = True
    at = thumb(np.repeat(cells.reshape(r, r, 1).astype(np.uint8) * 255, 3, -1), res)[..., 0] > 0
    rgb = heatmap_rgb(relevance[inside].mean(0), res).astype(np.float32)
    rgb[at] = 0.45 * rgb[at] + 0.55 * np.array([0, 160, 60], np.float32)
    (folder / "place.png").write_bytes(png_bytes(rgb.round().astype(np.uint8)))
    return (
        f"<figure><figcaption><b>The place</b> its images are ranked by (green): the rows or columns along the "
        f"image edge it touches, or the place itself, over the mean relevance of the {int(inside.sum())} images "
        f"whose evidence shares it. Each image's score is how much its own pixels there carry the class into "
        f'images of other classes.</figcaption><img src="class-{c}/place.png" width="{view}" height="{view}" '
        f'alt="the place of class {c}"></figure>'
    )


def _members_section(k: int, has_group: bool) -> str:
    """Every member, image by image: filters, sort, selection and per-image decisions (filled by report.js)."""
    clusters = ('<option value="group">isolated group</option>' if has_group else "") + "".join(
        f'<option value="{j}">cluster {j}</option>' for j in range(k)
    )
    return (
        '<section id="members" class="members-all"><h2>Members, image by image</h2>'
        '<p class="muted">Every member with its sample score (how much of the suspicious transfer it carries) and '
        'a <span class="badge flag">flagged</span> badge where the manifest drops it automatically. Click images '
        "to select them, then decide for the selection in the bar at the top: an image's own decision wins over "
        "its cluster's and its group's.</p>"
        '<div class="controls"><label>sort <select id="sort"><option value="score-desc">score, highest first'
        '</option><option value="score-asc">score, lowest first</option><option value="cluster">cluster, '
        'most central first</option><option value="index">sample index</option></select></label>'
        f'<label>show <select id="filter-block"><option value="">all members</option>{clusters}</select></label>'
        '<label><select id="filter-flag"><option value="">flagged or not</option><option value="1">flagged only'
        '</option><option value="0">not flagged</option></select></label>'
        '<label>score at least <input id="filter-score" type="number" step="0.1" size="5"></label>'
        '<label><select id="filter-decided"><option value="">any decision</option><option value="image">decided '
        'image by image</option><option value="none">no curator decision</option><option value="selected">'
        'selected</option></select></label><span id="members-shown"></span></div>'
        '<div class="pager"><button type="button" class="prev">previous</button><span class="page-info"></span>'
        '<button type="button" class="next">next</button></div><div class="grid members"></div></section>'
    )


def _member_scores(scores: dict[str, np.ndarray] | None, members: np.ndarray) -> dict[str, np.ndarray]:
    """The class's sample_scores columns (in_group, clever_hans_score, is_clever_hans; `scores`: those columns
    and `index`, as arrays, missing values filled) aligned with `members` (n,); a member without a row gets
    the column's default."""
    out = {c: np.full(len(members), v) for c, v in MEMBER_SCORE_DEFAULTS.items()}
    if scores is None or not len(scores["index"]):
        return out
    index = scores["index"]
    order = np.argsort(index, kind="stable")
    at = np.minimum(np.searchsorted(index[order], members), len(index) - 1)
    rows = order[at]
    found = index[rows] == members
    for c, v in MEMBER_SCORE_DEFAULTS.items():
        if c in scores:
            out[c] = np.where(found, scores[c][rows], v)
    return out


def member_score_arrays(sample_scores: pd.DataFrame) -> dict[int, dict[str, np.ndarray]]:
    """sample_scores split by class into the arrays `_member_scores` aligns (missing values filled)."""
    cols = {"index": sample_scores["index"].to_numpy()} | {
        c: sample_scores[c].fillna(v).to_numpy() for c, v in MEMBER_SCORE_DEFAULTS.items() if c in sample_scores
    }
    cls = sample_scores["class_id"].to_numpy()
    order = np.argsort(cls, kind="stable")
    ids, starts = np.unique(cls[order], return_index=True)
    bounds = np.r_[starts, len(order)]
    return {int(c): {k: v[order[bounds[i] : bounds[i + 1]]] for k, v in cols.items()} for i, c in enumerate(ids)}


_OPTIONS = '<option value="">automatic</option>' + "".join(f'<option value="{d}">{d}</option>' for d in DECISIONS)


def _section(cfg, row: dict, cluster: int | str, title: str, size: int, n_flag: int, figs: str) -> str:
    """One cluster (or the isolated group): heading, automatic decision, the curator's control,
    mean map and prototypes; its members are in the page's member grid (filtered to it on request)."""
    is_group = cluster == "group"
    colour = "#000" if is_group else PALETTE[int(cluster) % len(PALETTE)]
    if n_flag and n_flag == size:
        auto = f"automatic: {cfg.clean.flagged} (all {size} flagged)"
    else:
        auto = "automatic: keep" + (f", except {n_flag} flagged samples: {cfg.clean.flagged}" if n_flag else "")
    flagged = " (flagged)" if is_group and row.get("is_clever_hans") else ""
    return (
        f'<section class="cluster{" group" if is_group else ""}" id="block-{cluster}">'
        f'<h3><span class="swatch" style="background:{colour}"></span>{esc(title)}: {size} samples{flagged}</h3>'
        f'<p class="muted">{esc(auto)}</p>'
        f'<div class="decide"><label>decision <select class="decision">{_OPTIONS}</select></label>'
        '<label class="relabel" hidden>relabel to <select class="relabel-to"></select></label>'
        '<label>note <input class="note" type="text" size="32"></label></div>'
        f'<div class="grid">{figs}</div>'
        f'<p><button type="button" class="show-members">show its {size} members below</button></p></section>'
    )


def _num(v) -> str:
    return "n/a" if v is None else f"{float(v):.3f}"


def _cut(row: int, col: int, size: int, cls: str = "") -> str:
    """A cell of the class's prototype sheet, shown at size x size px (the page's style sets the sheet)."""
    return f'<div class="{f"cut {cls}".strip()}" style="background-position:{-col * size}px {-row * size}px"></div>'
