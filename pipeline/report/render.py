"""Small renderers for static HTML reports: PNG data URIs and files, signed heatmaps, sprite
sheets, inline SVG plots, and JSON that is safe inside an HTML <script> element."""

from __future__ import annotations

import html
import json
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image

esc = html.escape

# characters that could end a <script> element, open an HTML comment, or end a JS string line
_JSON_UNSAFE = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}


def safe_json(obj: Any) -> str:
    """JSON text to embed inline in HTML (`<script type="application/json">`) or in a .js file.

    `<`, `>` and `&` are written as \\u escapes, so no data string can close the element (`</`)
    or open a comment (`<!--`); JSON.parse reads the escapes back as the original characters."""
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False, default=_json_default)
    for ch, rep in _JSON_UNSAFE.items():
        text = text.replace(ch, rep)
    return text


def _json_default(v: Any) -> Any:
    if isinstance(v, np.generic):
        return v.item()
    if isinstance(v, np.ndarray):
        return v.tolist()
    raise TypeError(f"not JSON-serialisable: {type(v).__name__}")


def png_bytes(rgb: np.ndarray) -> bytes:
    """(H, W, 3) or (H, W) uint8 -> PNG file bytes: every row unfiltered (filter type 0) and one zlib
    stream at level 1. The report writes a PNG per page of every class; PIL's encoder, even at level 1,
    tries filters row by row: slower, for somewhat smaller files (benchmarks/costs.py measures the
    report stage)."""
    a = np.ascontiguousarray(rgb, np.uint8)
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] != 3):
        raise ValueError(f"png_bytes takes (H, W, 3) or (H, W) uint8, got shape {a.shape}")
    h, w = a.shape[:2]
    rows = np.zeros((h, 1 + a[0].size), np.uint8)  # each row: filter byte 0, then its pixels
    rows[:, 1:] = a.reshape(h, -1)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 8, 2 if a.ndim == 3 else 0, 0, 0, 0)  # 8 bits, RGB or grey
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(rows.tobytes(), 1))
        + chunk(b"IEND", b"")
    )


def image_rgb(x: np.ndarray) -> np.ndarray:
    """(..., C, S, S) float in [0, 1] -> (..., S, S, 3) uint8 (one image or a batch)."""
    a = np.clip(x, 0, 1)
    a = np.repeat(a, 3, -3) if a.shape[-3] == 1 else a[..., :3, :, :]
    return (np.moveaxis(a, -3, -1) * 255).round().astype(np.uint8)


GREY = 128  # the tile of an image that could not be read or was not attributed


def loaded_rgb(x: np.ndarray, ok) -> np.ndarray:
    """A loaded batch (b, C, S, S) in [0, 1] -> (b, S, S, 3) uint8, grey where `ok` is false (unreadable)."""
    rgb = image_rgb(x)
    rgb[~np.asarray(ok, bool)] = GREY
    return rgb


def upscale(rgb: np.ndarray, size: int) -> np.ndarray:
    """Nearest-neighbour resize of an (h, w, 3) uint8 image to (size, size, 3)."""
    if rgb.shape[0] == size:
        return rgb
    return np.asarray(Image.fromarray(rgb).resize((size, size), Image.NEAREST))


def thumb(rgb: np.ndarray, size: int) -> np.ndarray:
    """Resize an (h, w, 3) uint8 image to (size, size, 3): nearest when enlarging (pixels stay
    crisp), area-averaging when shrinking (no aliasing)."""
    if rgb.shape[0] == size and rgb.shape[1] == size:
        return rgb
    method = Image.NEAREST if size >= rgb.shape[0] else Image.BOX
    return np.asarray(Image.fromarray(rgb).resize((size, size), method))


def thumbs(rgb: np.ndarray, size: int, nearest: bool = False) -> np.ndarray:
    """A batch (n, h, w, 3) uint8 resized like `thumb` (or like `upscale` where nearest) to (n, size, size, 3);
    an integer enlargement repeats pixels in numpy, which is what PIL's nearest resize gives."""
    n, h, w = rgb.shape[:3]
    if h == size and w == size:
        return rgb
    if h == w and size > h and size % h == 0:
        return rgb.repeat(size // h, axis=1).repeat(size // h, axis=2)
    one = upscale if nearest else thumb
    return np.stack([one(a, size) for a in rgb]) if n else np.zeros((0, size, size, 3), np.uint8)


def sprite(tiles: list[list[np.ndarray]]) -> np.ndarray:
    """Rows of equally sized (S, S, 3) uint8 tiles -> one (rows x S, cols x S, 3) sheet."""
    return np.concatenate([np.concatenate(row, axis=1) for row in tiles], axis=0)


_POSITIVE = np.array([0.85, 0.05, 0.05], np.float32)
_NEGATIVE = np.array([0.05, 0.25, 0.85], np.float32)


def heatmap_rgb(r: np.ndarray, size: int | None = None) -> np.ndarray:
    """Signed relevance (..., h, w) -> (..., size, size, 3) uint8: blue negative, white zero, red positive,
    each map scaled to its own largest |value| (nearest-neighbour to `size`)."""
    r = r.astype(np.float32)
    m = np.abs(r).max(axis=(-2, -1), keepdims=True)
    t = np.clip(r / np.where(m > 0, m, 1.0), -1, 1)[..., None]
    colour = np.where(t >= 0, _POSITIVE, _NEGATIVE)
    out = ((1 + np.abs(t) * (colour - 1)) * 255).round().astype(np.uint8)
    if not size:
        return out
    return upscale(out, size) if out.ndim == 3 else thumbs(out, size, nearest=True)


PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
           "#bcbd22", "#17becf"]  # fmt: skip


def svg_spectrum(lam: np.ndarray, k: int, width: int = 360, height: int = 160) -> str:
    """Eigenvalues as dots, the eigengap between lam[k-1] and lam[k] marked."""
    n = len(lam)
    top = max(float(lam.max()), 1e-6)
    pad = 24
    xs = [pad + i * (width - 2 * pad) / max(n - 1, 1) for i in range(n)]
    ys = [height - pad - v / top * (height - 2 * pad) for v in lam]
    dots = "".join(
        f'<circle cx="{x:.1f}" cy="{y:.1f}" r="3" fill="{"#d62728" if i < k else "#1f77b4"}">'
        f"<title>lambda_{i + 1} = {v:.4f}</title></circle>"
        for i, (x, y, v) in enumerate(zip(xs, ys, lam))
    )
    gap = ""
    if 0 < k < n:
        gx = (xs[k - 1] + xs[k]) / 2
        gap = (
            f'<line x1="{gx:.1f}" x2="{gx:.1f}" y1="{pad / 2}" y2="{height - pad}" stroke="#999" stroke-dasharray="4"/>'
        )
        gap += f'<text x="{gx + 4:.1f}" y="{pad}" font-size="11">eigengap: k={k}</text>'
    axis = f'<line x1="{pad}" x2="{width - pad}" y1="{height - pad}" y2="{height - pad}" stroke="#333"/>'
    return f'<svg width="{width}" height="{height}" role="img" aria-label="eigenvalue spectrum">{axis}{gap}{dots}</svg>'


def svg_histogram(values: np.ndarray, threshold: float, width: int = 360, height: int = 160, bins: int = 24) -> str:
    """Histogram of class scores; bars at or above `threshold` red, the threshold a dashed line."""
    pad, top = 24, max(float(values.max()) if len(values) else 0.0, threshold * 1.25, 1e-6)
    counts, edges = np.histogram(values, bins=bins, range=(0.0, top))
    most = max(int(counts.max()) if len(counts) else 0, 1)
    x = lambda v: pad + v / top * (width - 2 * pad)  # noqa: E731
    bars = "".join(
        f'<rect x="{x(a):.1f}" y="{height - pad - n / most * (height - 2 * pad):.1f}" width="{x(b) - x(a) - 1:.1f}" '
        f'height="{n / most * (height - 2 * pad):.1f}" fill="{"#d62728" if a >= threshold else "#1f77b4"}">'
        f"<title>{n} classes scoring {a:.2f} to {b:.2f}</title></rect>"
        for n, a, b in zip(counts, edges[:-1], edges[1:])
        if n
    )
    tx = x(threshold)
    line = (
        f'<line x1="{tx:.1f}" x2="{tx:.1f}" y1="{pad / 2}" y2="{height - pad}" stroke="#333" stroke-dasharray="4"/>'
        f'<text x="{tx + 4:.1f}" y="{pad}" font-size="11">flag threshold {threshold:g}</text>'
    )
    axis = (
        f'<line x1="{pad}" x2="{width - pad}" y1="{height - pad}" y2="{height - pad}" stroke="#333"/>'
        f'<text x="{pad}" y="{height - 6}" font-size="11">0</text>'
        f'<text x="{width - pad}" y="{height - 6}" font-size="11" text-anchor="end">{top:.2f}</text>'
        f'<text x="{pad}" y="{pad / 2 + 4}" font-size="11">{most}</text>'
    )
    label = 'role="img" aria-label="histogram of class scores"'
    return f'<svg width="{width}" height="{height}" {label}>{axis}{bars}{line}</svg>'
