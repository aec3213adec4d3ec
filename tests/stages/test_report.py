"""The HTML report: every page written, every string from the data escaped."""

import numpy as np
from PIL import Image

from tests.conftest import make_runner

EVIL = "<img src=x onerror=alert(1)>"


def test_demo_report_has_an_index_and_a_page_per_class(demo_run):
    out = demo_run.cfg.report_path
    index = (out / "index.html").read_text()
    assert index.count('href="class-') == 10
    page = (out / "class-3.html").read_text()
    assert "<svg" in page and "data:image/png;base64," in page and "suspicious group" in page
    assert "epsilon_plus_flat" in page  # provenance


def test_names_from_the_data_are_escaped(tmp_path):
    rng = np.random.default_rng(0)
    for cls in (EVIL, "plain"):
        (tmp_path / "data" / cls).mkdir(parents=True)
        for i in range(6):
            img = (rng.random((16, 16, 3)) * 255).astype(np.uint8)
            Image.fromarray(img).save(tmp_path / "data" / cls / f"<b>{i}.png")
    r = make_runner(tmp_path, "imagenet", [f"dataset.path={tmp_path / 'data'}", "dataset.class_index=sorted",
                                           "dataset.image_size=16", "dataset.resize=16", "model.arch=small_cnn",
                                           "train.enabled=true", "train.epochs=1", "attribute.resolution=16",
                                           "attribute.num_workers=0", "distances.k=3", "cluster.k_max=3"])  # fmt: skip
    r.run_all()
    html = "".join(p.read_text() for p in (tmp_path / "report").glob("*.html"))
    assert EVIL not in html and "<b>0.png" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html and "&lt;b&gt;0.png" in html
