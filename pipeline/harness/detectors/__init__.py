"""Detectors compared by `unhans validate` on the same store, one module each (the contract:
pipeline/harness/detectors/base.py). Every module of this package is imported, so a new detector is
one new file (docs/howto.md)."""

from __future__ import annotations

import importlib
import pkgutil

from unhans.pipeline.harness.detectors.base import DETECTORS, Detection, Detector, RunView, detector

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")


def names() -> list[str]:
    """The detectors in report order: unhans' own first, then the peers by name."""
    return sorted(DETECTORS.names(), key=lambda n: (not n.startswith("unhans"), n))


__all__ = ["DETECTORS", "Detection", "Detector", "RunView", "detector", "names"]
