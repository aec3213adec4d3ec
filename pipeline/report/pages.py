"""The report's HTML: the overview (index.html) and one page per class, with its sprite sheets.

Layout of a report folder (open index.html from disk; no server, no network, vanilla JS):

    index.html           every class ranked by Clever Hans score: sortable, searchable, filterable;
                         rows rendered by JS from an inline JSON array (no images), plus the
                         curator's decisions and their export
    class-<id>.html      spectrum with the eigengap, 2-D embedding by cluster, and per cluster
                         (and for the most isolated group) its size, mean relevance map,
                         prototypes, a decision control and ALL members, paged in the browser
    class-<id>/s<j>.png  sprite sheets of the members' thumbnails: row i of sheet j is member
                         j * page_size + i of the page's display order, [image | signed heatmap]
    classes.js           UNHANS_CLASSES = [[class_id, class_key, class_name], ...] (relabel targets)
    assets/              report.js and report.css, copied from pipeline/report/assets/
    report.json          what made this folder (asset hash, score fingerprint); the stage is rerun
                         when the assets change

Every string from the data is HTML-escaped in markup and embedded in JSON with `<`, `>` and `&`
escaped (render.safe_json); the JS writes data only through textContent. Curator decisions are
kept in localStorage and exported as the decisions file of docs/decisions.md.
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
    image_rgb,
    overlay_rgb,
    png_bytes,
    png_uri,
    safe_json,
    sprite,
    svg_scatter,
    svg_spectrum,
    thumb,
)

UNREADABLE_SHOWN = 200  # unreadable files listed on the overview (all are in the manifest)
# columns of class_scores shown first on the overview, in this order; any others follow as they come
KNOWN_COLUMNS = ["rank", "class_id", "class_key", "class_name", "n_samples", "n_clusters", "eigengap",
                 "group_size", "group_fraction", "clever_hans_score", "is_clever_hans"]  # fmt: skip


class ReportConfig(Section):
    """The curators' HTML report (pipeline/report/, stages/report.py)."""

    top_classes: int | None = Field(None, ge=1, description="class pages for the top-ranked only")
    prototypes: int = Field(8, ge=1, description="most central members shown large per cluster")
    thumb_size: int = Field(64, ge=16, le=256, description="side of the member thumbnails on class pages, pixels")
    page_size: int = Field(48, ge=1, le=1000, description="members per page (and per sprite sheet) of a cluster")


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
    extra = '<button type="button" id="clear">clear all</button>' if overview else ""
    return (
        '<div class="toolbar"><label>decided by <input id="decided-by" type="text" size="16" '
        'autocomplete="name" placeholder="your name"></label><span id="decision-count"></span>'
        '<button type="button" id="export">export decisions</button>'
        '<label>import <input type="file" id="import" accept=".json,application/json"></label>'
        f'{extra}<span id="message" class="message" role="status"></span></div>'
    )


def index_page(common: dict, cs: pd.DataFrame, linked: set[int]) -> str:
    cols = [c for c in KNOWN_COLUMNS if c in cs] + [c for c in cs.columns if c not in KNOWN_COLUMNS]
    rows = [[plain({"v": v})["v"] for v in r] for r in cs[cols].itertuples(index=False)]
    data = {"page": "index", "run": common["run"], "report_id": common["report_id"],
            "score_fingerprint": common["score_fingerprint"], "columns": cols, "rows": rows,
            "pages": sorted(linked)}  # fmt: skip
    flagged = int(cs["is_clever_hans"].sum()) if "is_clever_hans" in cs else 0
    warnings = "".join(f"<li>{esc(w)}</li>" for w in common.get("warnings", []))
    unreadable = common.get("unreadable", [])
    listed = "".join(f"<tr><td>{esc(str(s))}</td><td>{esc(str(r))}</td></tr>" for s, r in unreadable[:UNREADABLE_SHOWN])
    more = (
        f"<p>... and {len(unreadable) - UNREADABLE_SHOWN} more (tables/manifest.csv).</p>"
        if len(unreadable) > UNREADABLE_SHOWN
        else ""
    )
    body = (
        f"<h1>Clever Hans audit: {esc(common['run'])}</h1>{common['provenance']}"
        f'<p class="model">{esc(common.get("model_line", ""))}</p>'
        + (f'<div class="warnings" role="alert"><b>Warnings</b><ul>{warnings}</ul></div>' if warnings else "")
        + f"{_toolbar(True)}"
        f"<p>{len(cs)} classes ranked by Clever Hans score (1: the class holds a group of samples "
        f"explained alike and cut off from the rest of the class); {flagged} flagged, in red. "
        f"Click a header to sort, a class name to open its clusters and decide what happens to them. "
        f"Decisions are kept in this browser until you export them (<code>unhans clean --decisions "
        f"FILE</code> applies them).</p>"
        '<div class="controls"><label>search <input id="search" type="search" placeholder="class name or key">'
        '</label><label><input type="checkbox" id="flagged"> flagged only</label><span id="shown"></span></div>'
        '<div class="wide"><table id="classes"><thead><tr></tr></thead><tbody></tbody></table></div>'
        "<noscript>The class table needs JavaScript; the same table is in tables/class_scores.csv.</noscript>"
        '<h2>Decisions</h2><table id="decisions" hidden><thead><tr><th>class</th><th>cluster</th>'
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


def _dataset(cfg):
    """One dataset object per process and dataset config (workers render many classes)."""
    key = cfg.dataset.model_dump_json()
    if key not in _DATASETS:
        _DATASETS[key] = build_dataset(cfg.dataset)
    return _DATASETS[key]


def render_class(cfg, url: str, common: dict, item: tuple) -> tuple[int, int]:
    """One class page and its sprite sheets; item = (class_scores row, samples of its members in
    member order, its sample_scores rows). Returns (members, sprite sheets)."""
    row, sub, scores = item
    store, c = Store(url), int(row["class_id"])
    out = Path(common["out"])
    T, P, n_proto = cfg.report.thumb_size, cfg.report.page_size, cfg.report.prototypes
    members = store.read(layout.MEMBERS(c=c))
    n = len(members)
    lam = store.read(layout.EIGENVALUES(c=c))
    lab = store.array(layout.LABELS(c=c))
    ks, k = list(lab.attrs["k"]), int(lab.attrs["n_clusters"])
    labels = store.read(layout.LABELS(c=c))[ks.index(k)]
    emb = store.read(layout.EMBEDDING(c=c))
    vec = store.read(layout.EIGENVECTORS(c=c))[:, :k].astype(np.float64)
    u = vec / np.maximum(np.linalg.norm(vec, axis=1, keepdims=True), 1e-12)  # k-means' embedding
    relevance = store.relevance(members)
    sc = _member_scores(scores, members)
    group = sc["in_group"].to_numpy(bool)

    def central(local: np.ndarray) -> np.ndarray:
        """Member positions (local) from the most central to the least (spectral embedding)."""
        d = ((u[local] - u[local].mean(0)) ** 2).sum(1)
        return local[np.argsort(d, kind="stable")]

    clusters = [(j, central(np.flatnonzero(labels == j))) for j in range(k)]
    clusters = [(j, loc) for j, loc in clusters if len(loc)]
    order = np.concatenate([loc for _, loc in clusters]) if clusters else np.zeros(0, int)
    pos_of = np.empty(n, int)
    pos_of[order] = np.arange(len(order))
    blocks = []  # (cluster id or "group", title, local members ordered by centrality)
    if group.any():
        blocks.append(("group", "most isolated group", central(np.flatnonzero(group))))
    blocks += [(j, f"cluster {j}", loc) for j, loc in clusters]

    # thumbnails of every member, in display order, one sprite sheet per page of P members
    view = min(max(96, cfg.dataset.image_size), 192)
    need_full = {int(i) for _, _, loc in blocks for i in loc[:n_proto]}
    full: dict[int, np.ndarray] = {}
    folder = out / f"class-{c}"
    folder.mkdir(parents=True, exist_ok=True)
    batches = [order[s : s + P] for s in range(0, len(order), P)]
    blank = np.full((T, T, 3), 128, np.uint8)
    stream = iter_batches(_dataset(cfg), sub, batches, cfg.compute.decode_threads)
    for s, (idx, x, ok, _) in enumerate(stream):
        tiles = []
        for b, i in enumerate(idx):
            img = image_rgb(x[b].numpy()) if ok[b] else blank
            if int(i) in need_full:
                full[int(i)] = thumb(img, view)
            tiles.append([thumb(img, T), heatmap_rgb(relevance[i], T)])
        (folder / f"s{s}.png").write_bytes(png_bytes(sprite(tiles)))

    names = sub["source"].astype(str).to_numpy()
    data = {
        "page": "class",
        "run": common["run"],
        "report_id": common["report_id"],
        "score_fingerprint": common["score_fingerprint"],
        "class_id": c,
        "class_name": str(row["class_name"]),
        "thumb": T,
        "page_size": P,
        "sprite_prefix": f"class-{c}/s",
        "members": [
            [int(members[i]), names[i].rsplit("/", 1)[-1], round(float(sc["clever_hans_score"].iat[i]), 4), names[i]]
            for i in order
        ],
        "blocks": [{"cluster": cl, "positions": pos_of[loc].tolist()} for cl, _, loc in blocks],
    }
    flag = sc["is_clever_hans"].to_numpy(bool)
    sections = []
    for cluster, title, loc in blocks:
        figs = [_figure([heatmap_rgb(relevance[loc].mean(0), view)], "mean relevance")]
        for i in loc[:n_proto]:
            img, heat = full[int(i)], heatmap_rgb(relevance[i], view)
            figs.append(_figure([img, heat, overlay_rgb(img, heat)], f"#{members[i]} {names[i].rsplit('/', 1)[-1]}"))
        sections.append(_section(cfg, row, cluster, title, len(loc), int(flag[loc].sum()), "".join(figs)))
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
    legend = "".join(
        f'<span><span class="swatch" style="background:{PALETTE[j % len(PALETTE)]}"></span>cluster {j}</span> '
        for j in range(k)
    )
    head = (
        f'<nav><a href="index.html">all classes</a></nav><h1>{esc(str(row["class_name"]))} '
        f"<small>({esc(str(row['class_key']))}, class {c})</small></h1>{common['provenance']}{_toolbar(False)}"
        f"<p>{'; '.join(summary)}.</p>"
        '<div class="plots"><figure><figcaption><b>Spectrum</b> of the normalised Laplacian</figcaption>'
        f"{svg_spectrum(lam, k)}</figure><figure><figcaption><b>Embedding</b> by cluster "
        f"(ringed: the isolated group)</figcaption>{svg_scatter(emb, labels, group)}<div>{legend}</div></figure></div>"
        '<p class="muted">Heatmaps: <span class="legend"></span> negative (blue), zero (white), positive (red) '
        "relevance, each map scaled to its own largest |value|; overlays show the heatmap over the greyed image. "
        "Members are ordered from the most central (the prototypes) to the least central in the spectral "
        "embedding.</p>"
    )
    html = page(f"{row['class_name']} · unhans", head + "".join(sections), data)
    (out / f"class-{c}.html").write_text(html, encoding="utf-8")
    return n, len(batches)


def _member_scores(scores: pd.DataFrame | None, members: np.ndarray) -> pd.DataFrame:
    """sample_scores rows aligned with `members` (in_group, clever_hans_score, is_clever_hans)."""
    cols = {"in_group": False, "clever_hans_score": 0.0, "is_clever_hans": False}
    if scores is None:
        return pd.DataFrame({c: np.full(len(members), v) for c, v in cols.items()})
    s = scores.set_index("index").reindex(members)
    return pd.DataFrame({c: s[c].fillna(v).to_numpy() if c in s else np.full(len(members), v) for c, v in cols.items()})


_OPTIONS = '<option value="">automatic</option>' + "".join(f'<option value="{d}">{d}</option>' for d in DECISIONS)


def _section(cfg, row: dict, cluster: int | str, title: str, size: int, n_flag: int, figs: str) -> str:
    """One cluster (or the isolated group): heading, automatic decision, the curator's control,
    mean map and prototypes; the member grid and its pager are filled in by report.js."""
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
        '<div class="pager"><button type="button" class="prev">previous</button><span class="page-info"></span>'
        '<button type="button" class="next">next</button></div><div class="grid members"></div></section>'
    )


def _num(v) -> str:
    return "n/a" if v is None else f"{float(v):.3f}"


def _figure(images: list[np.ndarray], caption: str) -> str:
    """Images (S, S, 3) uint8 side by side with an escaped caption."""
    imgs = "".join(f'<img src="{png_uri(a)}" width="{a.shape[1]}" height="{a.shape[0]}" alt="">' for a in images)
    return f"<figure>{imgs}<figcaption>{esc(caption)}</figcaption></figure>"
