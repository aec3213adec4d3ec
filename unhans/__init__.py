"""unhans: audit image datasets for Clever Hans shortcuts (LRP, invariant distances, SpRAy, un-Hansing).

The code lives in the repository's `pipeline/` (framework, data, method, report, harness) and `stages/`
folders; installed, they are `unhans.pipeline` and `unhans.stages`, so no other top-level name is taken.
For notebooks: `unhans.audit("demo")` or `unhans.audit("my.yaml", train={"epochs": 30})` runs the
chain and returns the run (pipeline/api.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from unhans._version import __version__

_here = Path(__file__).resolve().parent
if not (_here / "pipeline").is_dir() and (_here.parent / "pipeline" / "__init__.py").is_file():
    # a source checkout: unhans.pipeline and unhans.stages are the repository's own folders
    __path__.append(str(_here.parent))

if TYPE_CHECKING:
    from unhans.pipeline.api import Run


def audit(config: Any = "demo", **overrides: Any) -> Run:
    """Run the whole chain for a config (a name in configs/, a YAML path, a dict or a Config) with
    overrides (`train={"epochs": 30}` or `train__epochs=30`); returns the Run (pipeline/api.py)."""
    from unhans.pipeline.api import audit as _audit

    return _audit(config, **overrides)


def open_run(config: Any = "demo", **overrides: Any) -> Run:
    """The Run of an audit done before (from the command line, say), running nothing."""
    from unhans.pipeline.api import open_run as _open_run

    return _open_run(config, **overrides)


__all__ = ["__version__", "audit", "open_run"]
