"""report: static HTML for curators under reports/<run>/ (no server, no network, all inline).

index.html ranks the classes by Clever Hans score; class-<id>.html shows the spectrum with the
eigengap, the 2-D embedding by cluster, and per cluster its size, mean relevance map and
prototypes (image, heatmap, overlay). Every string from the data is HTML-escaped.
"""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pandas as pd

from pipeline import __version__
from pipeline.artifacts import paint
from pipeline.datasets import build_dataset
from pipeline.render import (
    esc,
    heatmap_rgb,
    image_rgb,
    overlay_rgb,
    png_uri,
    svg_scatter,
    svg_spectrum,
    upscale,
)
from pipeline.runner import Context, stage

CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse}
td,th{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left}th{cursor:pointer;background:#f4f4f4}
tr.flag td{background:#fff1f0}.grid{display:flex;flex-wrap:wrap;gap:6px}.grid figure{margin:0;text-align:center;
font-size:11px}img{image-rendering:pixelated}.cluster{border:1px solid #ccc;padding:.6em;margin:.6em 0}
.cluster.group{border:2px solid #d62728}small{color:#666}"""

SORT_JS = """function sortBy(th){const t=th.closest('table'),i=[...th.parentNode.children].indexOf(th),
b=t.tBodies[0],asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';const rows=[...b.rows];
rows.sort((x,y)=>{const a=x.cells[i].dataset.v??x.cells[i].textContent,c=y.cells[i].dataset.v??y.cells[i].textContent;
const na=parseFloat(a),nc=parseFloat(c);const r=(isNaN(na)||isNaN(nc))?a.localeCompare(c):na-nc;return asc?r:-r});
rows.forEach(r=>b.appendChild(r))}
function filt(q){q=q.toLowerCase();for(const r of document.querySelectorAll('#classes tbody tr'))
r.style.display=r.textContent.toLowerCase().includes(q)?'':'none'}"""


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        f"<style>{CSS}</style><script>{SORT_JS}</script></head><body>{body}</body></html>"
    )


def _provenance(ctx: Context) -> str:
    cfg = ctx.cfg
    items = {
        "dataset": f"{cfg.dataset.kind} {cfg.dataset.path or ''}",
        "model": f"{cfg.model.arch} ({cfg.model.weights or 'trained/packaged weights'})",
        "composite": cfg.attribute.composite,
        "target": cfg.attribute.target,
        "distance": f"{cfg.distances.metric}, k={cfg.distances.k}",
        "clustering": f"{cfg.cluster.n_eigenvectors} eigenvectors, k<={cfg.cluster.k_max}",
        "unhans": __version__,
        "made": datetime.now(UTC).isoformat(timespec="seconds"),
    }
    return "<p><small>" + " · ".join(f"{esc(k)}: {esc(str(v))}" for k, v in items.items()) + "</small></p>"


@stage(
    "report", sections=["report"], inputs=["score"], outputs_exist=lambda cfg: (cfg.report_path / "index.html").exists()
)
def run(ctx: Context) -> dict:
    """Write index.html and one page per class."""
    cfg, store = ctx.cfg, ctx.store
    out = cfg.report_path
    out.mkdir(parents=True, exist_ok=True)
    class_scores = store.read_table("class_scores")
    samples = store.read_table("samples")
    ds = build_dataset(cfg.dataset)
    shown = class_scores if cfg.report.top_classes is None else class_scores.head(cfg.report.top_classes)
    for _, row in shown.iterrows():
        (out / f"class-{int(row['class_id'])}.html").write_text(_class_page(ctx, row, samples, ds))
    (out / "index.html").write_text(_index_page(ctx, class_scores, set(shown["class_id"])))
    return {"class_pages": len(shown), "path": str(out)}


def _index_page(ctx: Context, cs: pd.DataFrame, linked: set) -> str:
    cols = ["rank", "class_name", "class_key", "n_samples", "clever_hans_score", "group_size", "conductance",
            "n_clusters", "is_clever_hans"] + (["artifact_auroc"] if "artifact_auroc" in cs else [])  # fmt: skip
    head = "".join(f'<th onclick="sortBy(this)">{esc(c)}</th>' for c in cols)
    body = []
    for _, r in cs.iterrows():
        cells = []
        for c in cols:
            v = r[c]
            text = f"{v:.3f}" if isinstance(v, float) else str(v)
            if c == "class_name" and r["class_id"] in linked:
                text = f'<a href="class-{int(r["class_id"])}.html">{esc(str(v))}</a>'
            else:
                text = esc(text)
            cells.append(f'<td data-v="{esc(str(v))}">{text}</td>')
        body.append(f'<tr class="{"flag" if r["is_clever_hans"] else ""}">{"".join(cells)}</tr>')
    return _page(
        f"unhans: {ctx.cfg.name}",
        f"<h1>Clever Hans audit: {esc(ctx.cfg.name)}</h1>{_provenance(ctx)}"
        f"<p>{len(cs)} classes, ranked by Clever Hans score (1 = a group cut off from the rest of "
        f"its class). Flagged rows are red. Click a header to sort.</p>"
        f'<input placeholder="filter classes" oninput="filt(this.value)">'
        f'<table id="classes"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>',
    )


def _class_page(ctx: Context, row: pd.Series, samples: pd.DataFrame, ds) -> str:
    store, c = ctx.store, int(row["class_id"])
    members = store.array(f"classes/{c}/members")[:]
    lam = store.array(f"classes/{c}/eigenvalues")[:]
    lab = store.array(f"classes/{c}/labels")
    ks, k = lab.attrs["k"], lab.attrs["n_clusters"]
    labels = lab[:][ks.index(k)]
    emb = store.array(f"classes/{c}/embedding")[:]
    vec = store.array(f"classes/{c}/eigenvectors")[:, :k]
    relevance = store.relevance(members)
    group_labels = lab[:][ks.index(int(row["group_k"]))]
    group = group_labels == int(row["group_cluster"])
    size = ctx.cfg.dataset.image_size
    view = max(64, size)
    parts = [
        f"<p><a href='index.html'>all classes</a></p><h1>{esc(str(row['class_name']))} "
        f"<small>({esc(str(row['class_key']))})</small></h1>{_provenance(ctx)}",
        f"<p>Clever Hans score <b>{row['clever_hans_score']:.3f}</b>; most isolated group: "
        f"{int(row['group_size'])} of {len(members)} samples (conductance {row['conductance']:.3f}, "
        f"from k={int(row['group_k'])}). Eigengap chooses k={k}.</p>",
        "<h2>Spectrum</h2>" + svg_spectrum(lam, k),
        "<h2>Embedding</h2>" + svg_scatter(emb, labels, group),
    ]
    # clusters of the eigengap's clustering, the suspicious group as an extra block first
    blocks = [("suspicious group", group, True)] + [(f"cluster {j}", labels == j, False) for j in range(k)]
    n_proto = ctx.cfg.report.prototypes
    for title, mask, is_group in blocks:
        pos = np.flatnonzero(mask)
        if not len(pos):
            continue
        mean_map = relevance[pos].mean(0)
        centre = vec[pos].mean(0)
        proto = pos[np.argsort(((vec[pos] - centre) ** 2).sum(1))[:n_proto]]
        figs = [_figure([heatmap_rgb(mean_map, view)], "mean relevance")]
        for p in proto:
            i = int(members[p])
            x, _ = ds.load_one(samples["source"].iat[i])
            if x is not None and "artifact" in samples and samples["artifact"].iat[i]:
                paint(x[None], samples.iloc[[i]], ctx.cfg.dataset.artifact.kind)
            img = image_rgb(x.numpy()) if x is not None else np.zeros((size, size, 3), np.uint8)
            img = upscale(img, view)
            heat = heatmap_rgb(relevance[p], view)
            name = str(samples["source"].iat[i]).rsplit("/", 1)[-1]
            figs.append(_figure([img, heat, overlay_rgb(img, heat)], f"#{i} {name}"))
        parts.append(
            f'<div class="cluster{" group" if is_group else ""}"><h3>{esc(title)}: {len(pos)} samples</h3>'
            f'<div class="grid">{"".join(figs)}</div></div>'
        )
    return _page(f"{row['class_name']} — unhans", "".join(parts))


def _figure(images: list[np.ndarray], caption: str) -> str:
    """Images (S, S, 3) uint8 side by side with an escaped caption."""
    imgs = "".join(f'<img src="{png_uri(a)}" width="{a.shape[1]}" alt="">' for a in images)
    return f"<figure>{imgs}<figcaption>{esc(caption)}</figcaption></figure>"
