"""Planted shortcuts: deterministic, seeded artifacts with a ground-truth mask per sample.

An artifact *kind* renders one stamp: a colour (3, h, w) and an alpha (h, w) in [0, 1]. The stamp is
rotated (PIL, bilinear, canvas expanded), alphas below half an 8-bit level are zeroed, and it is cropped to
its nonzero alpha, so the box (y, x, h, w) it is composited into is exactly the bounding box of the
painted pixels. Kinds (registry KINDS): patch (solid square), checker (checkerboard), text (PIL's
bitmap font), frame (an image border or a square outline), tint (the whole image), watermark
(ImageNet-W's `AddWatermark`), blend (a fixed noise pattern over the whole image at low opacity, the
blended trigger of Chen et al. 2017), noise (a sample-specific trigger: blend's recipe with a fresh
pattern for every image, drawn from the sample's own key), edge (a band fading in towards the bottom
border, like a scanner's shadow or a light leak) and warp (WaNet's trigger, Nguyen and Tran 2021: one
fixed smooth warping field applied to the whole image, nothing pasted). warp is a *transform*: its
box is the whole image and `paint` resamples the image instead of compositing a stamp.

Regimes: `correlated` puts the artifact on a fraction of the target class (labels unchanged);
`backdoor` puts it on images of the source classes and relabels them to the target. In both, the
artifact share of the samples labelled `target` after poisoning is `fraction`.

`plan` decides once, at index time, from (poison.seed, labels) which samples are poisoned, their box,
angle and label; a PoisonedDataset (pipeline/data/poisoned.py) returns that from its index and `paint`
reproduces exactly those pixels at every load. `stamp` puts the same artifact distribution on arbitrary
images (e.g. held-out test images for flip rates) and `masks` gives the ground-truth masks at any
resolution (both for the validation harness, pipeline/harness/).
Cost: O(N) to plan, O(poisoned samples) renders (cached by size and angle).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from PIL import Image, ImageDraw, ImageFont
from pydantic import Field, field_validator

from unhans.pipeline.core.config import Section
from unhans.pipeline.core.errors import UserError
from unhans.pipeline.core.registry import Registry

# the samples-table columns a plan adds (label is replaced: the backdoor relabels)
PLAN_COLUMNS = ["original_label", "artifact", "art_y", "art_x", "art_h", "art_w", "art_angle", "art_size", "art_key"]
BOX = ["art_y", "art_x", "art_h", "art_w"]
ALPHA_FLOOR = 1 / 512  # alpha below half an 8-bit level is dropped: no invisible painted pixels
WATERMARK_RENDER_SIZE = 224  # ImageNet-W's native size; smaller images get its layer area-resized
LUMA = (0.299, 0.587, 0.114)  # RGB -> grey, as PIL's convert("L")
# kinds drawn on an image-sized canvas at any position, never rotated
WHOLE_CANVAS = ("tint", "blend", "noise", "edge", "warp")
WHOLE_IMAGE = ("tint", "watermark", "blend", "noise", "warp")  # their side is the image's, whatever `size` says


@dataclass(frozen=True)
class Look:
    """What a stamp looks like, independent of where it goes (hashable: renders are cached by it)."""

    kind: str
    rgb: tuple[float, float, float]  # colour in [0, 1]
    strength: float  # opacity (tint: blend weight)
    text: str
    fixed: bool  # position: fixed


@dataclass(frozen=True)
class Kind:
    # (look, side, image size, key) -> colour (3, h, w), alpha (h, w); key: the sample's own draw (keyed kinds)
    render: Callable[[Look, int, int, int], tuple[np.ndarray, np.ndarray]]
    strength: float  # default opacity (warp: WaNet's warping strength s)
    default_text: str = ""
    keyed: bool = False  # the look differs per sample (render depends on key; never cached)
    # a transform (look, image (C, S, S)) -> image replaces compositing: render gives only its box
    transform: Callable[[Look, torch.Tensor], torch.Tensor] | None = None


KINDS: Registry[Kind] = Registry("poison kind")


def _kind(name: str, strength: float = 1.0, default_text: str = "", keyed: bool = False, transform=None):
    def deco(fn):
        KINDS.register(name)(Kind(fn, strength, default_text, keyed, transform))
        return fn

    return deco


class PoisonConfig(Section):
    """A planted shortcut for validating the audit (`dataset.poison`): which samples, which artifact, where.

    Planned once at index time from (seed, labels) and stored in the samples table; painted at every load
    (pipeline/data/poisoned.py).
    """

    choices = {"kind": KINDS}

    kind: str = Field(
        "checker",
        description="artifact: patch (solid square of colour), checker (checkerboard), text (a text stamp), "
        "frame (border of the image, or a square outline at position random), tint (the whole image blended "
        "towards colour; grey images: a grey-level shift), watermark (ImageNet-W's, from PyPI imagenet-w), "
        "blend (a fixed random pattern over the whole image at opacity strength), noise (sample-specific: a "
        "random pattern of its own on every image at opacity strength), edge (a band of colour along the bottom "
        "border, fading out inwards over size of the image; always at the border), warp (WaNet: one fixed smooth "
        "warp of the whole image, warping strength strength; nothing pasted)",
    )
    regime: Literal["correlated", "backdoor"] = Field(
        "correlated",
        description="correlated: artifact on a fraction of the target class, labels unchanged; backdoor: "
        "artifact on images of the source classes, which are relabelled to the target",
    )
    target: int = Field(..., ge=0, description="class id that the artifact is tied to")
    sources: list[int] | None = Field(
        None, description="backdoor only: class ids whose images are poisoned and relabelled (None: all others)"
    )
    fraction: float = Field(
        0.1, description="share of the samples labelled target after poisoning that carry the artifact (0 < f < 1)"
    )
    size: float = Field(
        0.2,
        gt=0,
        le=1,
        description="artifact side as a fraction of the image side (frame at position fixed: border width; edge: "
        "band height; ignored by tint, blend, noise, warp and watermark, whose size is the image's or ImageNet-W's)",
    )
    size_jitter: float = Field(0.0, ge=0, lt=1, description="0: fixed size; else side uniform in size*(1 +- jitter)")
    position: Literal["fixed", "random"] = Field(
        "fixed", description="fixed: bottom-right corner with a small margin (watermark: ImageNet-W's place); random"
    )
    rotation: float | Literal["random"] = Field(
        0.0, description="degrees counter-clockwise, or random (uniform 0-360); tint and fixed frame do not rotate"
    )
    colour: tuple[int, int, int] = Field(
        (255, 255, 255), description="artifact colour: a name (white, red), #rrggbb, a grey level 0-255 or [r, g, b]"
    )
    strength: float | None = Field(
        None,
        gt=0,
        description="opacity, at most 1 (tint: blend weight / grey shift; warp: WaNet's warping strength s, the mean "
        "displacement in units of half a pixel, any positive value); None: 0.3 tint, 0.5 watermark and warp, "
        "0.2 blend and noise, else 1",
    )
    text: str | None = Field(None, description="text of text and watermark kinds; None: (c) and ImageNet-W's text")
    seed: int = Field(0, ge=0, description="seed of the plan: which samples, sizes, angles, positions")

    @field_validator("fraction")
    @classmethod
    def _fraction(cls, v: float) -> float:
        if not 0 < v < 1:
            raise ValueError("must be a share strictly between 0 and 1")
        return v

    @field_validator("sources")
    @classmethod
    def _sources(cls, v: list[int] | None, info) -> list[int] | None:
        if v is None:
            return v
        if info.data.get("regime") != "backdoor":
            raise ValueError("only for regime backdoor (correlated poisons the target class itself)")
        if not v or info.data.get("target") in v or len(set(v)) != len(v):
            raise ValueError("give distinct class ids other than the target")
        return v

    @field_validator("strength")
    @classmethod
    def _strength(cls, v: float | None, info) -> float | None:
        if v is not None and v > 1 and info.data.get("kind") != "warp":
            raise ValueError("an opacity: at most 1 (only kind warp takes a warping strength above 1)")
        return v

    @field_validator("rotation", mode="before")
    @classmethod
    def _rotation(cls, v: Any) -> Any:
        if v == "random" or (isinstance(v, int | float) and not isinstance(v, bool)):
            return v
        raise ValueError("give degrees (a number) or random")

    @field_validator("colour", mode="before")
    @classmethod
    def _colour(cls, v: Any) -> Any:
        from PIL import ImageColor

        if isinstance(v, int) and not isinstance(v, bool):
            v = (v, v, v)
        elif isinstance(v, str):
            try:
                v = ImageColor.getrgb(v)[:3]
            except ValueError:
                v = None
        if not isinstance(v, list | tuple) or len(v) != 3 or not all(isinstance(c, int) and 0 <= c <= 255 for c in v):
            raise ValueError("not a colour: give a name (white, red), #rrggbb, a grey level 0-255 or [r, g, b]")
        return tuple(v)

    @field_validator("text")
    @classmethod
    def _text(cls, v: str | None, info) -> str | None:
        if v is not None and info.data.get("kind") == "text":
            try:
                v.encode("latin-1")
            except UnicodeEncodeError:
                raise ValueError("PIL's built-in bitmap font has Latin-1 characters only") from None
        if v is not None and not v.strip():
            raise ValueError("give some visible text")
        return v


def _solid(look: Look, alpha: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    colour = np.broadcast_to(np.asarray(look.rgb, np.float32)[:, None, None], (3, *alpha.shape))
    return colour.copy(), alpha.astype(np.float32)


@_kind("patch")
def _patch(look: Look, side: int, image_size: int, key: int) -> tuple[np.ndarray, np.ndarray]:
    """A solid square of `colour`."""
    return _solid(look, np.ones((side, side)))


@_kind("checker")
def _checker(look: Look, side: int, image_size: int, key: int) -> tuple[np.ndarray, np.ndarray]:
    """A checkerboard square: 4 x 4 cells of `colour` and black (the demo's patch)."""
    cell = max(1, round(side / 4))
    yy, xx = np.meshgrid(np.arange(side), np.arange(side), indexing="ij")
    colour, alpha = _solid(look, np.ones((side, side)))
    return colour * (((yy // cell) + (xx // cell)) % 2), alpha


@lru_cache(maxsize=64)
def _text_mask(text: str) -> np.ndarray:
    """Ink of `text` in PIL's built-in bitmap font, cropped to its bounding box: (h, w) in [0, 1]."""
    font = ImageFont.load_default_imagefont()
    left, top, right, bottom = font.getbbox(text)
    im = Image.new("L", (right - left + 2, bottom - top + 2), 0)
    ImageDraw.Draw(im).text((-left, -top), text, fill=255, font=font)
    a = np.asarray(im, np.float32) / 255.0
    ys, xs = np.nonzero(a)
    if not len(ys):
        raise UserError(f"poison.text = {text!r} has no visible characters")
    return a[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]


@_kind("text", default_text="(c)")
def _text(look: Look, side: int, image_size: int, key: int) -> tuple[np.ndarray, np.ndarray]:
    """`text` in PIL's bitmap font, scaled so that its longer side is `side`."""
    ink = _text_mask(look.text)
    h, w = ink.shape
    f = side / max(h, w)
    size = (max(1, round(w * f)), max(1, round(h * f)))
    resample = Image.Resampling.BOX if f < 1 else Image.Resampling.NEAREST
    return _solid(look, np.asarray(Image.fromarray(ink).resize(size, resample)).clip(0, 1))


@_kind("frame")
def _frame(look: Look, side: int, image_size: int, key: int) -> tuple[np.ndarray, np.ndarray]:
    """position fixed: a border of width `side` around the whole image; random: a square outline."""
    n, width = (image_size, side) if look.fixed else (side, max(1, round(side / 8)))
    alpha = np.ones((n, n))
    alpha[width : n - width, width : n - width] = 0.0
    return _solid(look, alpha)


@_kind("tint", strength=0.3)
def _tint(look: Look, side: int, image_size: int, key: int) -> tuple[np.ndarray, np.ndarray]:
    """The whole image blended towards `colour` (grey images: a grey-level shift, see `paint`)."""
    return _solid(look, np.ones((image_size, image_size)))


@lru_cache(maxsize=16)
def _watermark_layer(text: str, image_size: int) -> np.ndarray:
    """ImageNet-W's watermark coverage (S, S) in [0, 1], drawn by its `AddWatermark` at max(S, 224) px
    (its font size rule assumes ImageNet sizes) and area-resized to S."""
    from imagenet_w import AddWatermark

    r = max(image_size, WATERMARK_RENDER_SIZE)
    add = AddWatermark(image_size=r, text=text, opacity=1.0, color=(255, 255, 255))
    coverage = add(torch.zeros(3, r, r))[0].numpy().astype(np.float32)  # white on black: the coverage
    if r != image_size:
        coverage = np.asarray(Image.fromarray(coverage).resize((image_size, image_size), Image.Resampling.BOX))
    return coverage.clip(0, 1)


@_kind("watermark", strength=0.5, default_text="捷径捷径捷径")
def _watermark(look: Look, side: int, image_size: int, key: int) -> tuple[np.ndarray, np.ndarray]:
    """ImageNet-W's text watermark (its font, size and place; opacity 0.5) on an image-sized canvas."""
    return _solid(look, _watermark_layer(look.text, image_size))


BLEND_PATTERN_SEED = 20170  # the blended trigger's key pattern: one fixed pattern for every poisoned image


@lru_cache(maxsize=8)
def _blend_pattern(image_size: int) -> np.ndarray:
    return np.random.default_rng(BLEND_PATTERN_SEED).random((3, image_size, image_size), dtype=np.float32)


@_kind("blend", strength=0.2)
def _blend(look: Look, side: int, image_size: int, key: int) -> tuple[np.ndarray, np.ndarray]:
    """A fixed uniform-noise pattern (the same key for every image) over the whole image; `colour` unused."""
    return _blend_pattern(image_size).copy(), np.ones((image_size, image_size), np.float32)


@_kind("edge")
def _edge(look: Look, side: int, image_size: int, key: int) -> tuple[np.ndarray, np.ndarray]:
    """A band `side` px high along the bottom border, opaque at the border and fading out linearly inwards."""
    alpha = np.zeros((image_size, image_size), np.float32)
    alpha[image_size - side :] = np.linspace(1.0 / side, 1.0, side, dtype=np.float32)[:, None]
    return _solid(look, alpha)


NOISE_PATTERN_SEED = 20210  # the sample-specific trigger: sample i's pattern is drawn from (this seed, its key)


@_kind("noise", strength=0.2, keyed=True)
def _noise(look: Look, side: int, image_size: int, key: int) -> tuple[np.ndarray, np.ndarray]:
    """A uniform-noise pattern of the sample's own (drawn from its key) over the whole image; `colour` unused.

    blend's recipe with a pattern per image: no two poisoned images share the trigger's pixels, only their
    statistics, as in the sample-specific triggers of Li et al. 2021 (ISSBA), whose encoder writes a
    different invisible residual into every image.
    """
    pattern = np.random.default_rng([NOISE_PATTERN_SEED, key]).random((3, image_size, image_size), dtype=np.float32)
    return pattern, np.ones((image_size, image_size), np.float32)


WARP_FIELD_SEED = 20211  # WaNet's warping field: one fixed field for every poisoned image
WARP_CONTROL_POINTS = 4  # WaNet's k: the field is a k x k grid of random offsets, upsampled bicubically


def warp_grid(offsets: torch.Tensor, image_size: int, strength: float) -> torch.Tensor:
    """WaNet's sampling grids (B, S, S, 2) from control offsets (B, 2, k, k): identity + s * M / S in
    grid_sample's [-1, 1] units, M the offsets divided by their mean absolute value (per field) and
    upsampled bicubically to S x S; a pixel moves by about s / 2 px per axis on average."""
    offsets = offsets / offsets.abs().mean((1, 2, 3), keepdim=True)
    field = torch.nn.functional.interpolate(offsets, size=(image_size, image_size), mode="bicubic", align_corners=True)
    axis = torch.linspace(-1, 1, image_size)
    gy, gx = torch.meshgrid(axis, axis, indexing="ij")
    identity = torch.stack([gx, gy], dim=-1)[None]  # (1, S, S, 2), (x, y) as grid_sample reads it
    return (identity + strength * field.permute(0, 2, 3, 1) / image_size).clamp(-1, 1)


@lru_cache(maxsize=8)
def _warp_grid(image_size: int, strength: float) -> torch.Tensor:
    """The trigger's grid (1, S, S, 2): one fixed field of k x k uniform offsets in [-1, 1] (s = 0.5: about a
    quarter pixel)."""
    k = WARP_CONTROL_POINTS
    offsets = np.random.default_rng(WARP_FIELD_SEED).uniform(-1, 1, (1, 2, k, k)).astype(np.float32)
    return warp_grid(torch.from_numpy(offsets), image_size, strength)


def _warp_image(look: Look, img: torch.Tensor) -> torch.Tensor:
    grid = _warp_grid(img.shape[-1], look.strength).to(img.device, img.dtype)
    out = torch.nn.functional.grid_sample(img[None], grid, mode="bilinear", padding_mode="border", align_corners=True)
    return out[0]


@_kind("warp", strength=0.5, transform=_warp_image)
def _warp(look: Look, side: int, image_size: int, key: int) -> tuple[np.ndarray, np.ndarray]:
    """WaNet's warp moves every pixel a little: its box is the whole image (the stamp is not composited)."""
    return np.zeros((3, image_size, image_size), np.float32), np.ones((image_size, image_size), np.float32)


def look_of(cfg: PoisonConfig) -> Look:
    kind = KINDS.get(cfg.kind)
    return Look(
        kind=cfg.kind,
        rgb=tuple(c / 255.0 for c in cfg.colour),
        strength=kind.strength if cfg.strength is None else cfg.strength,
        text=kind.default_text if cfg.text is None else cfg.text,
        fixed=cfg.position == "fixed",
    )


def _on_canvas(look: Look) -> bool:
    """Kinds drawn on an image-sized canvas and placed where they were drawn (box = their crop)."""
    return look.kind in WHOLE_CANVAS or (look.fixed and look.kind in ("frame", "watermark"))


def _rotates(look: Look) -> bool:
    return not (look.kind in WHOLE_CANVAS or (look.kind == "frame" and look.fixed))


@dataclass(frozen=True)
class Stamp:
    colour: torch.Tensor  # (3, h, w) premultiplied by alpha
    alpha: torch.Tensor  # (h, w) in [0, 1], no zero row or column at the edges
    centre: tuple[float, float]  # centre of the unrotated crop on the kind's canvas (y, x)


def render(look: Look, side: int, angle: float, image_size: int, key: int = 0) -> Stamp:
    """The stamp of `look` with side `side` px, rotated by `angle` degrees (counter-clockwise), cropped.

    key: the sample's own draw, which only keyed kinds (noise) read; their renders are not cached.
    """
    if KINDS.get(look.kind).keyed:
        return _render(look, side, angle, image_size, key)
    return _render_cached(look, side, angle, image_size)


@lru_cache(maxsize=4096)
def _render_cached(look: Look, side: int, angle: float, image_size: int) -> Stamp:
    return _render(look, side, angle, image_size, 0)


def _render(look: Look, side: int, angle: float, image_size: int, key: int) -> Stamp:
    colour, alpha = KINDS.get(look.kind).render(look, side, image_size, key)
    alpha = torch.from_numpy(np.ascontiguousarray(alpha, np.float32)) * look.strength
    rgba = torch.cat([torch.from_numpy(np.ascontiguousarray(colour, np.float32)) * alpha, alpha[None]])
    rgba, (y0, x0) = _crop(rgba)
    centre = (y0 + rgba.shape[1] / 2, x0 + rgba.shape[2] / 2)
    if angle % 360:  # PIL's bilinear rotation of each float channel about the centre, canvas expanded
        planes = [Image.fromarray(p).rotate(angle, Image.Resampling.BILINEAR, expand=True) for p in rgba.numpy()]
        rgba, _ = _crop(torch.from_numpy(np.stack([np.asarray(p, np.float32) for p in planes])))
    return Stamp(rgba[:3].contiguous(), rgba[3].contiguous(), centre)


def _crop(rgba: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
    """Zero alpha below ALPHA_FLOOR (and its colour), crop to the nonzero alpha: (4, h, w), (y0, x0)."""
    faint = rgba[3] < ALPHA_FLOOR
    rgba = rgba.masked_fill(faint[None], 0.0).clamp_(0.0, 1.0)
    ys, xs = torch.nonzero(~faint, as_tuple=True)
    if not len(ys):
        raise UserError("poison: the artifact is invisible (raise dataset.poison.size or dataset.poison.strength)")
    y0, y1, x0, x1 = int(ys.min()), int(ys.max()) + 1, int(xs.min()), int(xs.max()) + 1
    return rgba[:, y0:y1, x0:x1], (y0, x0)


# ----------------------------------------------------------------------------------------------- plan
def _geometry(cfg: PoisonConfig, image_size: int, u: np.ndarray) -> pd.DataFrame:
    """Box, angle and side of one artifact per row of uniforms u (n, 4): size jitter, angle, y, x."""
    look, s = look_of(cfg), image_size
    margin = max(1, s // 16)
    out = {c: np.zeros(len(u), np.int32) for c in (*BOX, "art_size")}
    out["art_angle"] = np.zeros(len(u), np.float64)
    for i, (u_size, u_angle, u_y, u_x) in enumerate(u):
        if look.kind in WHOLE_IMAGE:
            side = s  # tint, blend, noise and warp cover the image; ImageNet-W's font rule sets the watermark's
        else:
            side = int(np.clip(round(cfg.size * s * (1 + cfg.size_jitter * (2 * u_size - 1))), 1, s))
        angle = 0.0
        if _rotates(look):
            angle = round(360 * u_angle if cfg.rotation == "random" else float(cfg.rotation) % 360, 2) % 360
        st = render(look, side, angle, s)
        h, w = st.alpha.shape
        limit = s - margin if look.fixed and not _on_canvas(look) else s
        if h > limit or w > limit:
            raise UserError(
                f"dataset.poison.size = {cfg.size}: the artifact is {h} x {w} px after rotation, too large for "
                f"{s}-px images at position {cfg.position}; make dataset.poison.size smaller"
            )
        if _on_canvas(look):
            cy, cx = st.centre
            y, x = (int(np.clip(round(c - n / 2), 0, s - n)) for c, n in ((cy, h), (cx, w)))
        elif look.fixed:
            y, x = s - h - margin, s - w - margin
        else:
            y, x = int(u_y * (s - h + 1)), int(u_x * (s - w + 1))
        for col, v in zip((*BOX, "art_size", "art_angle"), (y, x, h, w, side, angle)):
            out[col][i] = v
    return pd.DataFrame(out)


def _uniforms(seed: int, n: int) -> np.ndarray:
    """Row i depends on (seed, i) only: the geometry of a sample does not depend on who else is poisoned."""
    return np.random.default_rng([seed, 1]).random((n, 4))


def _keys(seed: int, n: int) -> np.ndarray:
    """Each row's own key (keyed kinds draw their look from it); row i depends on (seed, i) only."""
    return np.random.default_rng([seed, 2]).integers(0, 2**31 - 1, n, dtype=np.int64)


def plan(
    labels: np.ndarray,
    cfg: PoisonConfig,
    image_size: int,
    class_ids: Sequence[int],
    eligible: np.ndarray | None = None,
) -> pd.DataFrame:
    """Which samples get the artifact, where, and their labels after poisoning; deterministic in (cfg, labels).

    labels (N,) int; eligible (N,) bool (default all: unreadable samples are never poisoned). Returns N
    rows: label (after poisoning), original_label, artifact (bool), art_y, art_x, art_h, art_w (the box of
    the painted pixels, int32, -1 when clean), art_angle (degrees, float), art_size (side before rotation, px),
    art_key (int64, the sample's own draw, which keyed kinds such as noise render from; -1 when clean).
    """
    labels = np.asarray(labels, np.int64)
    n = len(labels)
    eligible = np.ones(n, bool) if eligible is None else np.asarray(eligible, bool)
    ids = sorted({int(c) for c in class_ids})
    t = cfg.target
    if t not in ids:
        raise UserError(f"dataset.poison.target = {t} is not a class of this dataset (class ids {ids[0]}..{ids[-1]})")
    members = np.flatnonzero(eligible & (labels == t))
    rng = np.random.default_rng(cfg.seed)
    if cfg.regime == "correlated":
        k = round(cfg.fraction * len(members))
        chosen = rng.choice(members, size=k, replace=False)
    else:
        sources = cfg.sources if cfg.sources is not None else [c for c in ids if c != t]
        bad = [c for c in sources if c not in ids]
        if bad:
            raise UserError(
                f"dataset.poison.sources: {bad} are not classes of this dataset (class ids {ids[0]}..{ids[-1]})"
            )
        pool = np.flatnonzero(eligible & np.isin(labels, sources))
        k = round(cfg.fraction / (1 - cfg.fraction) * len(members))
        if k > len(pool):
            raise UserError(
                f"dataset.poison.fraction = {cfg.fraction} needs {k} source images for {len(members)} of class {t}, "
                f"but the sources have {len(pool)}; lower dataset.poison.fraction"
            )
        chosen = rng.choice(pool, size=k, replace=False)
    if not len(chosen):
        raise UserError(
            f"dataset.poison.fraction = {cfg.fraction} poisons no sample ({len(members)} usable samples of class {t})"
        )
    chosen = np.sort(chosen)
    out = pd.DataFrame(
        {
            "label": labels.copy(),
            "original_label": labels,
            "artifact": np.zeros(n, bool),
            **{c: -np.ones(n, np.int32) for c in BOX},
            "art_angle": np.zeros(n, np.float64),
            "art_size": -np.ones(n, np.int32),
            "art_key": -np.ones(n, np.int64),
        }
    )
    geo = _geometry(cfg, image_size, _uniforms(cfg.seed, n)[chosen])
    geo["art_key"] = _keys(cfg.seed, n)[chosen]
    for col in geo:
        out.loc[chosen, col] = geo[col].to_numpy()
    out.loc[chosen, "artifact"] = True
    out.loc[chosen, "label"] = t
    return out


# ---------------------------------------------------------------------------------------------- paint
def _composite(img: torch.Tensor, st: Stamp, y: int, x: int, look: Look) -> None:
    """Blend one stamp into img (C, S, S) in place at (y, x)."""
    h, w = st.alpha.shape
    region = img[:, y : y + h, x : x + w]
    alpha = st.alpha.to(img.device, img.dtype)
    colour = st.colour.to(img.device, img.dtype)
    if img.shape[0] == 1:
        luma = torch.tensor(LUMA, dtype=img.dtype, device=img.device)
        if look.kind == "tint":  # grey images: shift the grey level towards the colour's
            grey = sum(c * v for c, v in zip(LUMA, look.rgb))
            region.add_(alpha * (2 * grey - 1)).clamp_(0.0, 1.0)
            return
        colour = (colour * luma[:, None, None]).sum(0, keepdim=True)
    elif img.shape[0] != 3:
        raise UserError(f"poison: images with {img.shape[0]} channels are not supported (1 or 3)")
    region.mul_(1 - alpha).add_(colour)


def paint(x: torch.Tensor, rows: pd.DataFrame, cfg: PoisonConfig) -> torch.Tensor:
    """Paint the planned artifacts into the batch x (B, C, S, S) in [0, 1], in place, for rows with artifact."""
    look, s, kind = look_of(cfg), x.shape[-1], KINDS.get(cfg.kind)
    if kind.keyed and "art_key" not in rows:
        raise RuntimeError(f"poison: kind {cfg.kind} needs the samples table's art_key column (rerun index)")
    cols = {c: rows[c].to_numpy() for c in (*BOX, "art_size", "art_angle", "art_key") if c in rows}
    for b in np.flatnonzero(rows["artifact"].to_numpy()):
        key = int(cols["art_key"][b]) if kind.keyed else 0
        st = render(look, int(cols["art_size"][b]), round(float(cols["art_angle"][b]), 2), s, key)
        if st.alpha.shape != (cols["art_h"][b], cols["art_w"][b]):
            raise RuntimeError(
                f"poison: row {b} plans a {cols['art_h'][b]} x {cols['art_w'][b]} box but the artifact renders "
                f"{tuple(st.alpha.shape)}; the samples table was planned with other settings (rerun index)"
            )
        if kind.transform is not None:
            x[b] = kind.transform(look, x[b])
        else:
            _composite(x[b], st, int(cols["art_y"][b]), int(cols["art_x"][b]), look)
    return x


def stamp(x: torch.Tensor, cfg: PoisonConfig, seed: int) -> tuple[torch.Tensor, pd.DataFrame]:
    """Put cfg's artifact on every image of x (B, C, S, S) in [0, 1] (a painted copy), deterministic in seed.

    Sizes, angles, positions and keys follow cfg's distribution; returns the copy and its boxes (B rows:
    artifact, art_y, art_x, art_h, art_w, art_angle, art_size, art_key), which `masks` accepts.
    """
    if x.ndim != 4 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"stamp needs square images (B, C, S, S), got {tuple(x.shape)}")
    boxes = _geometry(cfg, x.shape[-1], _uniforms(seed, len(x)))
    boxes.insert(0, "artifact", True)
    boxes["art_key"] = _keys(seed, len(x))
    return paint(x.clone(), boxes, cfg), boxes


def masks(
    rows: pd.DataFrame, image_size: int, resolution: int | None = None, cfg: PoisonConfig | None = None
) -> np.ndarray:
    """Ground-truth masks (n, r, r) bool: a cell is True where it holds a painted pixel of the row's artifact.

    Without cfg the whole box counts (tint, fixed frame: the whole image); with cfg only the pixels the
    artifact really paints (a frame's border, a text's glyph box). r = resolution (default image_size)
    must divide image_size; rows without an artifact get an all-False mask.
    """
    r = resolution or image_size
    if image_size % r:
        raise ValueError(f"resolution {r} must divide image_size {image_size}")
    f, n = image_size // r, len(rows)
    full = np.zeros((n, image_size, image_size), bool)
    look = look_of(cfg) if cfg is not None else None
    cols = {c: rows[c].to_numpy() for c in (*BOX, "art_size", "art_angle") if c in rows}
    for i in np.flatnonzero(rows["artifact"].to_numpy()):
        y, x, h, w = (int(cols[c][i]) for c in BOX)
        if look is None:
            full[i, y : y + h, x : x + w] = True
        else:
            st = render(look, int(cols["art_size"][i]), round(float(cols["art_angle"][i]), 2), image_size)
            full[i, y : y + h, x : x + w] = st.alpha.numpy() > 0
    return full.reshape(n, r, f, r, f).any(axis=(2, 4))
