"""The HTML report: every page written, every member on a sprite sheet, every string from the data
escaped (in markup and in inline JSON), and a report that goes out of date with its assets."""

import io
import json
import math
import re
import shutil
from pathlib import Path

import numpy as np
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from tests.helpers import FAST_DEMO, make_runner
from unhans.pipeline.core.compute import machine
from unhans.pipeline.report import assets_hash
from unhans.pipeline.report.render import png_bytes, safe_json
from unhans.stages import load_config, runner

EVIL = "<img src=x onerror=alert(1)>"


def page_data(path: Path) -> dict:
    """The JSON a report page embeds for its script."""
    m = re.search(r'<script type="application/json" id="unhans-data">(.*?)</script>', path.read_text(), re.S)
    assert m, f"{path} has no inline data"
    return json.loads(m.group(1))


def make_evil_run(tmp: Path):
    """A two-class folder dataset whose class and file names are HTML, audited end to end."""
    rng = np.random.default_rng(0)
    for cls in (EVIL, "plain"):
        (tmp / "data" / cls).mkdir(parents=True)
        for i in range(6):
            img = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
            Image.fromarray(img).save(tmp / "data" / cls / f"{EVIL}<b>{i}.png")
    r = make_runner(tmp, "imagenet", [f"dataset.path={tmp / 'data'}", "dataset.class_index=sorted",
                                      "dataset.image_size=16", "dataset.resize=16", "model.arch=small_cnn",
                                      "train.enabled=true", "train.epochs=1", "attribute.resolution=16",
                                      "compute.decode_threads=0", "distances.k=3", "cluster.k_max=3"])  # fmt: skip
    r.run_all()
    return r


def test_demo_report_has_an_index_and_a_page_per_class(demo_run):
    out = demo_run.cfg.report_path
    index = page_data(out / "index.html")
    assert index["page"] == "index" and index["pages"] == list(range(10)) and len(index["rows"]) == 10
    assert index["columns"][:3] == ["rank", "class_name", "clever_hans_score"]
    assert all(index["headers"][c]["help"] for c in index["columns"])  # every column explained
    assert 3 in index["strips"] and Image.open(out / "class-3" / "group.png").size[1] == 64  # image over heatmap
    assert (out / "assets" / "report.js").exists() and (out / "classes.js").exists()
    page = (out / "class-3.html").read_text()
    assert "<svg" in page and "most isolated group" in page
    # the prototypes: one sheet, a row per block (mean map, then image and heatmap of each prototype)
    data, cfg = page_data(out / "class-3.html"), demo_run.cfg
    res = min(cfg.dataset.image_size, 192)
    sheet = Image.open(out / "class-3" / "prototypes.png").size
    assert sheet == ((1 + 2 * cfg.report.prototypes) * res, len(data["blocks"]) * res)
    assert page.count('class="cut"') == len(data["blocks"]) * (1 + 2 * cfg.report.prototypes)
    assert "epsilon_plus_flat" in page and "wasserstein" in page  # provenance: composite, distance
    assert "config fingerprint" in page and "git commit" in page
    assert f"trained on {machine()}, explained on {machine()}" in page  # another CPU trains another model
    overview = (out / "index.html").read_text()
    assert "<img src=" not in overview and "histogram of class scores" in overview  # thumbnails load lazily


def test_every_member_is_on_a_sprite_sheet_by_falling_score(demo_run):
    out, store = demo_run.cfg.report_path, demo_run.store
    T, P = demo_run.cfg.report.thumb_size, demo_run.cfg.report.page_size
    scores = store.read_table("sample_scores").set_index("index")
    for c in range(10):
        data = page_data(out / f"class-{c}.html")
        members = [dict(zip(data["fields"], m)) for m in data["members"]]
        assert sorted(m["index"] for m in members) == sorted(store.array(f"classes/{c}/members")[:].tolist())
        score = [m["score"] for m in members]
        assert score == sorted(score, reverse=True)  # sprite order: the first page shows the highest scores
        assert [m["score"] for m in members] == [round(scores.at[m["index"], "clever_hans_score"], 4) for m in members]
        assert [bool(m["group"]) for m in members] == [bool(scores.at[m["index"], "in_group"]) for m in members]
        assert [m["cluster"] for m in members] == [scores.at[m["index"], "cluster"] for m in members]
        group = [m for m in members if m["group"]]
        assert len({m["scored"] for m in group}) <= 1  # the group is one cluster of the scored clustering
        sizes = {b["cluster"]: b["size"] for b in data["blocks"]}
        assert sum(v for k, v in sizes.items() if k != "group") == len(members) and sizes.get("group", 0) == len(group)
        sheets = sorted((out / f"class-{c}").glob("s*.png"))
        assert len(sheets) == math.ceil(len(members) / P)
        dims = [Image.open(s).size for s in sheets]
        tile = min(T, demo_run.cfg.dataset.image_size)  # small images are stored at their own size
        assert data["tile"] == tile and data["thumb"] == T
        assert all(w == 2 * tile for w, _ in dims) and sum(h for _, h in dims) == len(members) * tile


def test_the_report_goes_out_of_date_when_its_assets_change(demo_run, tmp_path):
    report = tmp_path / "report"
    shutil.copytree(demo_run.cfg.report_path, report)
    r = runner(load_config("demo", FAST_DEMO + [f"run_dir={demo_run.store.url}", f"report_dir={report}"]))
    assert r.state("report") == "done"
    stamp = json.loads((report / "report.json").read_text())
    assert stamp["assets"] == assets_hash()
    (report / "report.json").write_text(json.dumps({**stamp, "assets": "older"}))
    assert r.state("report") == "missing"


@given(st.text())
def test_safe_json_cannot_close_a_script_and_reads_back(s):
    text = safe_json({"name": s, "list": [s, 1, None]})
    assert "</" not in text and "<!--" not in text and "<" not in text
    assert json.loads(text) == {"name": s, "list": [s, 1, None]}


@given(
    st.integers(1, 40),
    st.integers(1, 40),
    st.booleans(),
    st.integers(0, 2**32 - 1),
)
def test_png_bytes_decode_to_the_same_pixels(h, w, grey, seed):
    """The report's own PNG writer: what any decoder (here PIL's) reads back is the array written."""
    a = np.random.default_rng(seed).integers(0, 256, (h, w) if grey else (h, w, 3), dtype=np.uint8)
    back = Image.open(io.BytesIO(png_bytes(a)))
    assert back.mode == ("L" if grey else "RGB")
    assert np.array_equal(np.asarray(back), a)


def test_names_from_the_data_are_escaped(tmp_path):
    make_evil_run(tmp_path)
    html = "".join(p.read_text() for p in (tmp_path / "report").glob("*.html"))
    assert EVIL not in html and "<b>0.png" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "&lt;b&gt;0.png" in html
    data = page_data(next((tmp_path / "report").glob("class-*.html")))
    assert any(m[1] == f"{EVIL}<b>{i}.png" for m in data["members"] for i in range(6))


def test_a_class_ranked_by_its_place_shows_that_place_on_its_page(tmp_path):
    from unhans.pipeline.core import layout
    from unhans.pipeline.core.store import Store
    from unhans.pipeline.report.pages import _place_figure
    from unhans.pipeline.report.render import heatmap_rgb

    store = Store(str(tmp_path / "run"))
    n, r = 6, 8
    store.write_array(layout.PLACE(c=0), np.zeros((1, n)), {"groups": [[2, 1, 4]]})
    bottom = [i * r + j for i in range(r - 2, r) for j in range(r)]  # the two bottom rows
    store.write_array(layout.PLACE_REACH(c=0), np.zeros(n), {"group": 0, "cells": bottom})
    labels = np.array([[0, 0, 0, 1, 1, 1]])
    relevance = np.zeros((n, r, r), np.float32)
    relevance[3:, -1, 2] = 1.0  # the group's evidence sits on the bottom edge
    row = {"sample_probe": "place"}
    html = _place_figure(store, 0, row, labels, [2], relevance, 16, 96, tmp_path)
    assert "The place" in html and "3 images" in html and 'src="class-0/place.png"' in html
    rgb = np.asarray(Image.open(tmp_path / "place.png"))
    assert rgb.shape == (16, 16, 3)
    plain = heatmap_rgb(relevance[3:].mean(0), 16)  # the group's mean map; the reach (bottom 4 px) tinted green

    def greener(a: np.ndarray) -> np.ndarray:
        return a[..., 1].astype(int) - a[..., 0]

    assert np.array_equal(rgb[:-4], plain[:-4]) and (greener(rgb[-4:]) - greener(plain[-4:]) > 30).all()
    assert _place_figure(store, 0, {"sample_probe": "transfer"}, labels, [2], relevance, 16, 96, tmp_path) == ""


def test_the_member_tiles_are_the_stored_thumbnails_and_only_prototypes_are_decoded(demo_run, tmp_path, copy_of,
                                                                                    monkeypatch):  # fmt: skip
    import unhans.pipeline.report.pages as pages

    run = copy_of(demo_run.store.url, tmp_path / "run")
    r = runner(load_config("demo", FAST_DEMO + [f"run_dir={run}", f"report_dir={tmp_path / 'report'}"]))
    loaded: list[str] = []
    real = pages._dataset

    def counting(cfg):
        ds = real(cfg)  # one object per process: wrapped once
        if not hasattr(ds, "counted"):
            load = ds.load
            monkeypatch.setattr(ds, "load", lambda sources: (loaded.extend(sources), load(sources))[1])
            monkeypatch.setattr(ds, "counted", True, raising=False)
        return ds

    monkeypatch.setattr(pages, "_dataset", counting)
    r.run("report", force=True)
    out, P = tmp_path / "report", r.cfg.report.page_size
    thumbnails = r.store.array("attribution/thumbnails")
    assert thumbnails.shape[1:] == (32, 32, 3)  # the demo's 32-px images at their own size
    bound = 0
    for c in range(10):
        data = page_data(out / f"class-{c}.html")
        order = [m[data["fields"].index("index")] for m in data["members"]]
        sheet = np.asarray(Image.open(out / f"class-{c}" / "s0.png").convert("RGB"))
        tile = data["tile"]
        first = order[:P]
        assert np.array_equal(sheet[:, :tile].reshape(len(first), tile, tile, 3), thumbnails[sorted(first)][
            np.argsort(np.argsort(first))])  # fmt: skip
        bound += len(data["blocks"]) * r.cfg.report.prototypes + pages.GROUP_STRIP
    # images are decoded for the prototypes and the group's strip only, never for the member grid
    assert 0 < len(loaded) <= bound < len(r.store.read_table("samples"))
    # equal to a tile drawn from the decoded image, as the report drew them before
    ds = pages.build_dataset(r.cfg.dataset)
    from unhans.pipeline.data import iter_batches
    from unhans.pipeline.report.render import image_rgb, thumbs

    samples = r.store.read_table("samples")
    idx = np.arange(0, len(samples), 97)
    ((_, x, _, _),) = iter_batches(ds, samples, [idx])
    assert np.array_equal(thumbs(image_rgb(x.numpy()), 32), thumbnails[idx])
