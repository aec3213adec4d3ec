"""Class-folder datasets: ImageNet layout, wnid names, and bad files recorded, never fatal."""

import numpy as np
import pytest
from PIL import Image

from tests.helpers import make_runner
from unhans.pipeline.core.errors import UserError
from unhans.pipeline.data import build_dataset
from unhans.pipeline.data.folder import imagenet_classes
from unhans.pipeline.data.photos import natural_photos
from unhans.stages import load_config


def folder_cfg(path, *extra):
    return load_config("imagenet", [f"dataset.path={path}", *extra]).dataset


def test_imagenet_table_is_complete_and_ordered():
    classes = imagenet_classes()
    assert len(classes) == 1000
    assert [c.id for c in classes] == list(range(1000))
    assert [c.key for c in classes] == sorted(c.key for c in classes)
    by_key = {c.key: c for c in classes}
    assert by_key["n02123045"].id == 281 and "tabby" in by_key["n02123045"].name
    assert by_key["n01440764"].id == 0 and "tench" in by_key["n01440764"].name


def test_imagenet_layout_resolves_wnids_to_model_indices(imagenet_folder):
    ds = build_dataset(folder_cfg(imagenet_folder))
    assert ds.class_index == "imagenet" and len(ds.classes) == 1000
    df = ds.index()
    assert len(df) == 8 and (df["status"] == "ok").all()
    assert set(df["label"]) == {281, 967, 812, 985}
    x, ok, reasons = ds.load(df["source"].tolist()[:3])
    assert x.shape == (3, 3, 224, 224) and ok.all() and 0 <= float(x.min()) and float(x.max()) <= 1


def test_plain_folders_are_sorted_classes(tmp_path):
    for name in ("zebra", "apple"):
        (tmp_path / name).mkdir()
        Image.fromarray(np.full((40, 50, 3), 128, np.uint8)).save(tmp_path / name / "a.png")
    ds = build_dataset(folder_cfg(tmp_path, "dataset.class_index=auto"))
    assert ds.class_index == "sorted" and [c.key for c in ds.classes] == ["apple", "zebra"]


def write_bad_files(root):
    """Every kind of bad or odd file a real crawl meets, in one class folder."""
    d = root / "n02123045"
    d.mkdir(parents=True, exist_ok=True)
    rgb = (np.random.default_rng(0).random((60, 80, 3)) * 255).astype(np.uint8)
    Image.fromarray(rgb).save(d / "good.jpg")
    (d / "empty.jpg").write_bytes(b"")
    (d / "text.jpg").write_text("this is not an image")
    full = (d / "good.jpg").read_bytes()
    (d / "truncated.jpg").write_bytes(full[: len(full) // 3])
    Image.fromarray(rgb).convert("CMYK").save(d / "cmyk.jpg")
    Image.fromarray(rgb[..., 0]).save(d / "grey.png")
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(d / "sixteen.png")
    Image.fromarray(rgb[:2, :3]).save(d / "tiny.png")
    # a genuinely large photo (24 MP): legal, decoded at reduced size (JPEG draft)
    Image.fromarray(natural_photos()["astronaut"]).resize((6000, 4000), Image.BILINEAR).save(d / "huge.jpg")
    (root / "n07920052").mkdir(exist_ok=True)  # a class folder with no images
    return d


def test_bad_files_are_recorded_and_the_rest_attributed(tmp_path):
    root = tmp_path / "train"
    write_bad_files(root)
    r = make_runner(tmp_path, "imagenet", [f"dataset.path={root}", "dataset.image_size=32", "dataset.resize=36",
                                           "model.arch=small_cnn", "train.enabled=true", "train.epochs=1",
                                           "compute.decode_threads=0", "attribute.batch_size=4",
                                           "dataset.class_index=sorted"])  # fmt: skip
    r.run_all(until="attribute")
    samples = r.store.read_table("samples").set_index("source")
    reason = {s.rsplit("/", 1)[1]: v for s, v in samples["reason"].items()}
    assert reason["empty.jpg"] == "empty file"
    assert "not an image" in reason["text.jpg"]
    assert all(reason[f] == "" for f in ["good.jpg", "cmyk.jpg", "grey.png", "sixteen.png", "tiny.png", "huge.jpg"])
    # the truncated JPEG passes the header check and fails at decoding: recorded, not fatal
    status = r.store.array("attribution/status")[:]
    names = [s.rsplit("/", 1)[1] for s in r.store.read_table("samples")["source"]]
    by_name = dict(zip(names, status))
    assert by_name["truncated.jpg"] == 2 and by_name["empty.jpg"] == 1 and by_name["good.jpg"] == 0
    assert by_name["cmyk.jpg"] == by_name["sixteen.png"] == by_name["tiny.png"] == by_name["huge.jpg"] == 0
    # the report's tiles: grey for what was not attributed (failed to decode, skipped at index), the image else
    thumbnails = dict(zip(names, r.store.array("attribution/thumbnails")[:]))
    assert (thumbnails["truncated.jpg"] == 128).all() and (thumbnails["empty.jpg"] == 128).all()
    assert thumbnails["good.jpg"].shape == (32, 32, 3) and thumbnails["good.jpg"].std() > 0
    failures = r.store.read_table("attribute_failures")
    assert list(failures["source"].str.rsplit("/", n=1).str[1]) == ["truncated.jpg"]
    classes = r.store.read_table("classes")
    assert dict(zip(classes["class_key"], classes["n_samples"]))["n07920052"] == 0
    # no unreadable file is ever kept: the manifest drops each with its reason, the report lists them
    assert any("could not be decoded" in w for w in r.warnings())
    r.run_all()
    m = r.store.read_table("manifest").set_index("source")
    m.index = m.index.str.rsplit("/", n=1).str[1]
    for bad in ("truncated.jpg", "empty.jpg", "text.jpg"):
        assert m.at[bad, "decision"] == "drop" and m.at[bad, "reason"].startswith("unreadable: "), bad
    assert "decode failed" in m.at["truncated.jpg", "reason"]
    cleaned = r.store.read_table("cleaned")["source"].str.rsplit("/", n=1).str[1]
    assert not {"truncated.jpg", "empty.jpg", "text.jpg"} & set(cleaned) and "good.jpg" in set(cleaned)
    assert r.record("clean")["counts"]["unreadable"] == 3
    page = (tmp_path / "report" / "index.html").read_text()
    assert 'id="unreadable"' in page and "truncated.jpg" in page and "3 files could not be read" in page


def test_missing_dataset_path_is_one_clear_error(tmp_path):
    with pytest.raises(UserError, match="is not a folder"):
        build_dataset(folder_cfg(tmp_path / "nowhere"))


def test_images_over_the_pixel_limit_are_skipped_at_index(tmp_path, monkeypatch):
    """PIL raises DecompressionBombError only above twice Image.MAX_IMAGE_PIXELS and merely warns
    between 1x and 2x; the header check skips everything above the limit, with the reason."""
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # read by the index stage's probe threads
    d = tmp_path / "train" / "cat"
    d.mkdir(parents=True)
    for name, (h, w) in {"fits.png": (100, 100), "over.png": (100, 150), "bomb.jpg": (200, 150)}.items():
        Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(d / name)
    r = make_runner(tmp_path, "imagenet", [f"dataset.path={tmp_path / 'train'}", "dataset.class_index=sorted"])
    with pytest.warns(Image.DecompressionBombWarning):  # over.png is in PIL's warn-only band
        r.run("index")
    samples = r.store.read_table("samples")
    got = dict(zip(samples["source"].str.rsplit("/", n=1).str[1], zip(samples["status"], samples["reason"])))
    assert got["fits.png"] == ("ok", "")
    assert got["over.png"][0] == got["bomb.jpg"][0] == "skipped"
    assert got["over.png"][1].startswith("too large: 150x100 pixels exceed the limit of 10000")
    assert got["bomb.jpg"][1].startswith("too large:") and "decompression bomb" in got["bomb.jpg"][1]
    assert r.record("index")["counts"]["skipped"] == 2


def test_class_folders_without_any_image_are_one_clear_error(tmp_path):
    root = tmp_path / "train"
    for name in ("apple", "zebra"):
        (root / name).mkdir(parents=True)
        (root / name / "notes.txt").write_text("no pictures here")
    r = make_runner(tmp_path, "imagenet", [f"dataset.path={root}", "dataset.class_index=sorted"])
    with pytest.raises(UserError, match=f"no images found under {root}: its 2 class folders hold no files ending in"):
        r.run("index")
    assert not r.store.has_table("samples")
