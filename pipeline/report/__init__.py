"""The curators' report: static HTML pages (pages.py), their pixels and plots (render.py), provenance,
and the JavaScript and CSS in assets/. The report stage (stages/report.py) calls these."""

from __future__ import annotations

import hashlib
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
ASSET_DIR = PACKAGE_DIR / "assets"
ASSETS = ("report.js", "report.css")


def assets_hash() -> str:
    """Hash of the JS/CSS assets and of this package's code: a change makes a written report out of date."""
    h = hashlib.sha256()
    for p in [*(ASSET_DIR / a for a in ASSETS), *sorted(PACKAGE_DIR.glob("*.py"))]:
        h.update(p.read_bytes())
    return h.hexdigest()[:16]
