"""Poisoning harness: seeded plans, exact boxes, regimes, the demo's patch, the `unhans poison` copy."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError
from typer.testing import CliRunner

from tests.helpers import make_runner
from unhans.pipeline.cli import app
from unhans.pipeline.core.errors import UserError
from unhans.pipeline.data import build_dataset, iter_batches
from unhans.pipeline.data.artifacts import (
    KINDS,
    WHOLE_CANVAS,
    PoisonConfig,
    look_of,
    masks,
    paint,
    plan,
    render,
    stamp,
)
from unhans.stages import load_config

BOX = ["art_y", "art_x", "art_h", "art_w"]
FEW = settings(max_examples=25, deadline=None)
kinds = st.sampled_from(sorted(KINDS))
rotations = st.one_of(st.just(0.0), st.just("random"), st.floats(0, 360, allow_nan=False).map(lambda a: round(a, 1)))


def poison_cfg(**kw) -> PoisonConfig:
    return PoisonConfig(**{"target": 3, **kw})


def grey_images(n: int = 6, channels: int = 1, size: int = 32) -> torch.Tensor:
    return torch.full((n, channels, size, size), 0.3)


# ------------------------------------------------------------------------------------------ the demo
def test_demo_plants_a_checkerboard_backdoor():
    """20 digits of other classes (10% of the 3s after poisoning), relabelled 3, 8 px at (22, 22), 2-px cells."""
    cfg = load_config("demo").dataset.poison
    labels = build_dataset(load_config("demo").dataset).base.index()["label"].to_numpy()  # before poisoning
    p = plan(labels, cfg, 32, range(10))
    n3 = int((labels == 3).sum())
    drawn = np.sort(np.random.default_rng(0).choice(np.flatnonzero(labels != 3), size=20, replace=False))
    assert round(0.1 / 0.9 * n3) == 20 and np.array_equal(np.flatnonzero(p["artifact"]), drawn)
    hit = p[p["artifact"]]
    assert (hit[BOX].to_numpy() == [22, 22, 8, 8]).all() and (hit["art_angle"] == 0).all()
    assert (hit["label"] == 3).all() and (hit["original_label"] != 3).all()
    assert (p["original_label"] == labels).all() and (p.loc[~p["artifact"], "label"] == labels[~p["artifact"]]).all()
    x = paint_rows(grey_images(1), hit.iloc[:1], cfg)
    yy, xx = np.meshgrid(np.arange(8), np.arange(8), indexing="ij")
    assert np.array_equal(x[0, 0, 22:30, 22:30].numpy(), ((yy // 2 + xx // 2) % 2).astype(np.float32))


def paint_rows(x: torch.Tensor, rows: pd.DataFrame, cfg: PoisonConfig) -> torch.Tensor:
    return paint(x, rows.reset_index(drop=True), cfg)


# ----------------------------------------------------------------------------------- determinism
@FEW
@given(kind=kinds, rotation=rotations, seed=st.integers(0, 2**31))
def test_same_seed_same_images_and_masks_other_seed_differs(kind, rotation, seed):
    cfg = poison_cfg(kind=kind, rotation=rotation, position="random", size=0.3, size_jitter=0.3)
    x = torch.rand(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    a, boxes_a = stamp(x, cfg, seed)
    b, boxes_b = stamp(x, cfg, seed)
    assert torch.equal(a, b) and boxes_a.equals(boxes_b)
    assert np.array_equal(masks(boxes_a, 32, 8, cfg), masks(boxes_b, 32, 8, cfg))
    c, boxes_c = stamp(x, cfg, seed + 1)
    if kind not in WHOLE_CANVAS:  # tint, blend and edge have one place: nothing is drawn at random
        assert not torch.equal(a, c) and not boxes_a.equals(boxes_c)


def test_plan_is_deterministic_and_the_seed_changes_it():
    labels = np.repeat(np.arange(10), 50)
    cfg = poison_cfg(position="random", rotation="random", size_jitter=0.2, seed=4)
    pd.testing.assert_frame_equal(plan(labels, cfg, 32, range(10)), plan(labels, cfg, 32, range(10)))
    other = plan(labels, cfg.model_copy(update={"seed": 5}), 32, range(10))
    assert not other["artifact"].equals(plan(labels, cfg, 32, range(10))["artifact"])


@settings(max_examples=20, deadline=None)
@given(order=st.permutations(["kind", "regime", "target", "fraction", "size", "position", "rotation", "seed"]))
def test_plan_does_not_depend_on_key_order_or_on_unrelated_keys(order):
    values = {"kind": "text", "regime": "backdoor", "target": 2, "fraction": 0.25, "size": 0.3,
              "position": "random", "rotation": "random", "seed": 11}  # fmt: skip
    labels = np.repeat(np.arange(5), 30)
    ref = plan(labels, PoisonConfig(**values), 32, range(5))
    pd.testing.assert_frame_equal(plan(labels, PoisonConfig(**{k: values[k] for k in order}), 32, range(5)), ref)
    # what is drawn and who is relabelled does not depend on what the artifact looks like
    looks = PoisonConfig(**{**values, "kind": "patch", "colour": "red", "size": 0.2, "rotation": 45, "strength": 0.5})
    same = plan(labels, looks, 32, range(5))
    assert same[["label", "original_label", "artifact"]].equals(ref[["label", "original_label", "artifact"]])


def test_plan_does_not_depend_on_other_config_sections():
    a = load_config("demo", ["train.epochs=1", "distances.k=3"])
    b = load_config("demo", ["dataset.poison.seed=0"])
    labels = np.repeat(np.arange(10), 20)
    pa, pb = (plan(labels, c.dataset.poison, 32, range(10)) for c in (a, b))
    pd.testing.assert_frame_equal(pa, pb)


# --------------------------------------------------------------------------------- painted pixels
@FEW
@given(
    kind=kinds,
    rotation=rotations,
    position=st.sampled_from(["fixed", "random"]),
    channels=st.sampled_from([1, 3]),
    size=st.floats(0.15, 0.45),
    jitter=st.sampled_from([0.0, 0.3]),
    colour=st.sampled_from(["white", "blue"]),
    seed=st.integers(0, 1000),
)
def test_every_kind_paints_only_inside_its_tight_box(kind, rotation, position, channels, size, jitter, colour, seed):
    cfg = poison_cfg(kind=kind, rotation=rotation, position=position, size=size, size_jitter=jitter, colour=colour)
    x = grey_images(4, channels)
    if KINDS.get(kind).transform is not None:  # warp moves pixels: a flat image stays flat (tested below)
        x = torch.rand(4, channels, 32, 32, generator=torch.Generator().manual_seed(seed))
    y, boxes = stamp(x, cfg, seed)
    changed = (y != x).any(1).numpy()  # (B, S, S)
    box_masks = masks(boxes, 32)
    assert not (changed & ~box_masks).any()  # nothing outside the box
    for b, (top, left, h, w) in enumerate(boxes[BOX].to_numpy()):
        inside = changed[b, top : top + h, left : left + w]
        # tight: every edge row and column of the box holds a painted pixel
        assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()
        assert 0 <= top and top + h <= 32 and 0 <= left and left + w <= 32
        if kind in ("tint", "blend", "noise"):
            assert (top, left, h, w) == (0, 0, 32, 32) and inside.all()
        if kind == "warp":
            assert (top, left, h, w) == (0, 0, 32, 32)
        if kind == "edge":  # a band along the bottom border, whatever the position
            assert top + h == 32 and (left, w) == (0, 32) and inside.all()
    if kind == "warp":  # every pixel may move; those whose neighbourhood is flat keep their value
        assert masks(boxes, 32, cfg=cfg).all() and changed.mean() > 0.9
    else:
        assert (masks(boxes, 32, cfg=cfg) == changed).all()  # the exact masks are the painted pixels


@settings(max_examples=40, deadline=None)
@given(angle=st.floats(0, 360, allow_nan=False), side=st.integers(4, 40))
def test_rotation_keeps_the_box_tight(angle, side):
    s = render(look_of(poison_cfg(kind="patch")), side, round(angle, 2), 64)
    alpha = s.alpha.numpy()
    h, w = alpha.shape
    assert alpha[0].any() and alpha[-1].any() and alpha[:, 0].any() and alpha[:, -1].any()
    c, sn = abs(np.cos(np.radians(angle))), abs(np.sin(np.radians(angle)))
    assert abs(h - side * (c + sn)) <= 2.5 and abs(w - side * (c + sn)) <= 2.5
    assert (s.colour <= s.alpha + 1e-6).all()  # premultiplied colour never exceeds its alpha


def test_masks_pool_the_box_and_the_exact_pixels():
    cfg = poison_cfg(kind="frame", position="random", size=0.5)
    _, boxes = stamp(grey_images(3), cfg, 0)
    full, pooled = masks(boxes, 32), masks(boxes, 32, 8)
    assert pooled.shape == (3, 8, 8) and (pooled == full.reshape(3, 8, 4, 8, 4).any((2, 4))).all()
    exact = masks(boxes, 32, cfg=cfg)
    assert (exact <= full).all() and exact.sum() < full.sum()  # an outline, not the filled box
    fixed = poison_cfg(kind="frame", size=0.1)  # a 3-px border around the whole image
    border = masks(stamp(grey_images(1), fixed, 0)[1], 32, cfg=fixed)
    assert border[0, 0].all() and not border[0, 16, 16]
    assert not masks(pd.DataFrame({"artifact": [False], **{c: [-1] for c in BOX}}), 32).any()


def test_blend_is_one_key_pattern_at_low_opacity_on_every_image():
    """The blended trigger: the same noise pattern on every image, mixed in at its opacity (0.2 by default)."""
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    y, _ = stamp(x, poison_cfg(kind="blend", position="random"), 5)
    key = (y - 0.8 * x) / 0.2  # the pattern each image got
    assert torch.allclose(key[0], key[1], atol=1e-5) and torch.allclose(key[0], key[2], atol=1e-5)
    assert float(key.std()) > 0.25  # a uniform noise pattern, not a flat tint
    assert (y - x).abs().max() <= 0.2 + 1e-6


def test_noise_is_a_pattern_of_its_own_on_every_image():
    """The sample-specific trigger: blend's recipe, but no two images share the pattern; the plan keeps each
    sample's key, so every load (and `stamp` with the same seed) paints the same pattern again."""
    x = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    cfg = poison_cfg(kind="noise")
    y, boxes = stamp(x, cfg, 5)
    key = (y - 0.8 * x) / 0.2
    assert not torch.allclose(key[0], key[1], atol=0.1) and not torch.allclose(key[1], key[2], atol=0.1)
    assert all(0.25 < float(k.std()) < 0.35 and -1e-5 <= float(k.min()) and float(k.max()) <= 1 + 1e-5 for k in key)
    assert boxes["art_key"].nunique() == 3 and torch.equal(stamp(x, cfg, 5)[0], y)
    assert not torch.allclose(stamp(x, cfg, 6)[0], y, atol=0.05)
    labels = np.repeat(np.arange(4), 40)
    p = plan(labels, poison_cfg(kind="noise", regime="backdoor", fraction=0.2, seed=3), 32, range(4))
    hit = p[p["artifact"]].reset_index(drop=True)
    assert (hit["art_key"] >= 0).all() and hit["art_key"].is_unique and (p.loc[~p["artifact"], "art_key"] == -1).all()
    batch = torch.rand(len(hit), 1, 32, 32, generator=torch.Generator().manual_seed(1))
    first = paint(batch.clone(), hit, cfg)
    assert torch.equal(first, paint(batch.clone(), hit, cfg)) and not torch.allclose(first[0], first[1], atol=0.05)
    with pytest.raises(RuntimeError, match="art_key"):
        paint(batch.clone(), hit.drop(columns="art_key"), cfg)


@pytest.mark.parametrize("strength", [0.5, 2.0])
def test_warp_is_one_fixed_smooth_field_of_about_half_s_pixels(strength):
    """WaNet's trigger: read the displacement off a ramp image; the same field moves every image, it is smooth
    (4 x 4 control points), about s / 2 px per axis on average, and a flat image stays flat."""
    s = 64
    ramp = torch.arange(s, dtype=torch.float32) / (s - 1)
    x = torch.stack([ramp.expand(s, s), ramp[:, None].expand(s, s)])[None]  # channel 0: x / (S-1), 1: y / (S-1)
    cfg = poison_cfg(kind="warp", strength=strength)
    y, boxes = stamp(x, cfg, 0)
    dx, dy = ((y - x)[0] * (s - 1))[:, 4:-4, 4:-4]  # displacement in px, away from the clamped border
    mean = float(torch.cat([dx, dy]).abs().mean())
    assert 0.25 * strength < mean < 0.75 * strength
    assert float(dx.diff(dim=1).abs().max()) < 0.1 * strength * s / 4  # smooth: a k = 4 field over 64 px
    again, _ = stamp(x * 0.5, cfg, 7)  # another image, another seed: the same field
    assert torch.allclose(again, y * 0.5, atol=1e-5)
    flat = torch.full((1, 1, s, s), 0.3)
    assert torch.allclose(stamp(flat, cfg, 0)[0], flat, atol=1e-6)
    assert boxes[BOX].iloc[0].tolist() == [0, 0, s, s]


def test_strength_is_an_opacity_except_for_warp():
    assert poison_cfg(kind="warp", strength=3.0).strength == 3.0
    with pytest.raises(ValidationError, match="at most 1"):
        poison_cfg(kind="blend", strength=1.5)


def test_edge_fades_in_towards_the_bottom_border():
    x = torch.zeros(1, 1, 32, 32)
    y, boxes = stamp(x, poison_cfg(kind="edge", size=0.25, colour="white"), 0)
    column = y[0, 0, :, 10]
    assert (column[:24] == 0).all() and (column[24:].diff() > 0).all() and column[-1] == 1.0
    assert (y[0, 0] == y[0, 0, :, :1]).all()  # the same along the border
    assert boxes[BOX].iloc[0].tolist() == [24, 0, 8, 32]


def test_watermark_is_imagenet_w_at_its_native_size():
    from imagenet_w import AddWatermark

    x = torch.rand(1, 3, 224, 224, generator=torch.Generator().manual_seed(0))
    ours, boxes = stamp(x, poison_cfg(kind="watermark"), 0)
    theirs = AddWatermark()(x[0])  # 224 px, opacity 0.5, white, at (0.01, 0.4) of the image
    assert (ours[0] - theirs).abs().max() <= 2.5 / 255
    assert boxes.at[0, "art_x"] <= 4 and 80 <= boxes.at[0, "art_y"] <= 100  # ImageNet-W's place


def test_watermark_on_small_grey_images_is_the_resized_layer():
    _, boxes = stamp(grey_images(2), poison_cfg(kind="watermark", rotation=20), 0)
    assert (boxes["art_w"] > 20).all() and (boxes[BOX].to_numpy() >= 0).all()


# ----------------------------------------------------------------------------------------- regimes
@FEW
@given(
    n=st.lists(st.integers(20, 80), min_size=3, max_size=6),
    fraction=st.floats(0.05, 0.6),
    regime=st.sampled_from(["correlated", "backdoor"]),
    seed=st.integers(0, 10_000),
    data=st.data(),
)
def test_regimes_relabel_exactly_the_planned_samples_and_hit_the_fraction(n, fraction, regime, seed, data):
    labels = np.repeat(np.arange(len(n)), n)
    target = data.draw(st.integers(0, len(n) - 1))
    others = [c for c in range(len(n)) if c != target]
    sources = (
        data.draw(st.none() | st.lists(st.sampled_from(others), min_size=1, unique=True))
        if regime == "backdoor"
        else None
    )
    cfg = poison_cfg(target=target, regime=regime, sources=sources, fraction=fraction, seed=seed)
    if regime == "backdoor" and round(fraction / (1 - fraction) * n[target]) > np.isin(labels, sources or others).sum():
        with pytest.raises(UserError, match="lower dataset.poison.fraction"):
            plan(labels, cfg, 32, range(len(n)))
        return
    p = plan(labels, cfg, 32, range(len(n)))
    relabelled = (p["label"] != p["original_label"]).to_numpy()
    art = p["artifact"].to_numpy()
    assert (p["original_label"] == labels).all()
    on_target = p["label"].to_numpy() == target
    if regime == "correlated":
        assert not relabelled.any() and (labels[art] == target).all()
    else:
        assert np.array_equal(relabelled, art)  # exactly the planned samples, all moved to the target
        assert (p["label"][art] == target).all() and set(labels[art]) <= set(sources or others)
    share = art[on_target].mean()
    assert abs(share - fraction) <= 0.5 / on_target.sum() + 1e-9


def test_index_stores_the_plan_and_every_load_paints_it(tmp_path):
    sets = ["regime=backdoor", "kind=text", "position=random", "rotation=random", "fraction=0.4"]
    r = make_runner(tmp_path, overrides=["dataset.limit_per_class=20"] + [f"dataset.poison.{s}" for s in sets])
    r.run("index")
    samples = r.store.read_table("samples")
    for col in ["original_label", "artifact", *BOX, "art_angle", "art_size"]:
        assert col in samples
    art = samples["artifact"].to_numpy()
    assert art.sum() == round(0.4 / 0.6 * 20) and (samples["label"][art] == 3).all()
    assert (samples["class_key"][art] == "3").all() and (samples["original_label"][art] != 3).all()
    classes = r.store.read_table("classes").set_index("class_id")
    assert classes.at[3, "n_samples"] == 20 + art.sum()
    ds = build_dataset(r.cfg.dataset)
    batches = [np.arange(i, min(i + 64, len(samples))) for i in range(0, len(samples), 64)]
    first = torch.cat([x for _, x, _, _ in iter_batches(ds, samples, batches)])
    again = torch.cat([x for _, x, _, _ in iter_batches(ds, samples, batches[::-1])][::-1])
    clean = torch.cat([x for _, x, _, _ in iter_batches(ds.base, samples, batches)])
    assert torch.equal(first, again)
    changed = (first != clean).any(1).numpy()
    assert np.array_equal(changed.any((1, 2)), art) and not (changed & ~masks(samples, 32)).any()


# ------------------------------------------------------------------------------------- bad configs
@pytest.mark.parametrize(
    "override, needle",
    [
        ("dataset.poison.fraction=1.5", "between 0 and 1"),
        ("dataset.poison.kind=sticker", "watermark"),
        ("dataset.poison.regime=correlated,dataset.poison.sources=[1]", "backdoor"),
        ("dataset.poison.rotation=sideways", "random"),
        ("dataset.poison.colour=reddish", "#rrggbb"),
        ("dataset.poison.size=2", "less than or equal to 1"),
    ],
)
def test_bad_poison_config_is_one_clear_error(override, needle):
    with pytest.raises(UserError) as e:
        load_config("demo", override.split(","))
    msg = str(e.value)
    assert override.split(",")[-1].split("=")[0] in msg and needle in msg and "\n" not in msg


def test_target_out_of_range_is_one_clear_error(tmp_path):
    res = CliRunner().invoke(
        app, ["index", "-c", "demo", "--set", "dataset.poison.target=12", "--run-dir", str(tmp_path)]
    )
    assert (
        res.exit_code == 2
        and "dataset.poison.target = 12 is not a class" in res.output
        and "Traceback" not in res.output
    )
    assert len([line for line in res.output.splitlines() if "error" in line]) == 1
    with pytest.raises(ValidationError):
        PoisonConfig(target=-1)


# -------------------------------------------------------------------------------------- the copy
def test_poison_cli_writes_a_folder_the_folder_kind_reads_back(tmp_path):
    out = tmp_path / "copy"
    sets = [
        "dataset.limit_per_class=15",
        "dataset.poison.regime=backdoor",
        "dataset.poison.rotation=random",
        "dataset.poison.position=random",
    ]
    args = ["poison", "-c", "demo", "--run-dir", str(tmp_path / "run"), "--out", str(out), "--batch-size", "32"]
    args += [a for s in sets for a in ("--set", s)]
    res = CliRunner().invoke(app, args)
    assert res.exit_code == 0, res.output
    truth = pd.read_csv(out / "ground_truth.csv")
    assert len(truth) == 150 and truth["artifact"].sum() == round(0.1 / 0.9 * 15)  # demo: fraction 0.1
    assert (truth["label"] != truth["original_label"]).sum() == truth["artifact"].sum()
    # the copy, indexed by the folder kind with the config written beside it, has the same labels
    cfg = load_config(str(out / "config.yaml"), [f"run_dir={tmp_path / 'copy-run'}"])
    ds = build_dataset(cfg.dataset)
    back = ds.index()
    back["file"] = [str(Path(s).relative_to(out)) for s in back["source"]]
    both = truth.merge(back, on="file", suffixes=("", "_back"))
    assert len(both) == len(truth) and (both["label"] == both["label_back"]).all()
    # and the same pixels as the poisoned loads (8-bit PNG), grey copied into RGB
    r = make_runner(tmp_path, overrides=sets)  # the store `unhans poison` indexed
    samples = r.store.read_table("samples")
    idx = truth["index"].to_numpy()[:40]
    ((_, x, _, _),) = iter_batches(build_dataset(r.cfg.dataset), samples, [idx], r.cfg.dataset.poison)
    y, ok, _ = ds.load([str(out / f) for f in truth["file"].to_numpy()[:40]])
    assert ok.all() and (y - x).abs().max() <= 0.5 / 255 + 1e-6 and y.shape[1] == 3
    res = CliRunner().invoke(app, args)  # refuses to write into a non-empty folder
    assert res.exit_code == 2 and "not an empty folder" in res.output
