"""Provenance of a report: what produced it (model, composite, settings, fingerprints, versions)."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

from unhans.pipeline.core import layout
from unhans.pipeline.core.config import fingerprint_of
from unhans.pipeline.report.render import esc

from unhans._version import __version__


def provenance(cfg, store) -> dict:
    """What produced this report: model, composite, distance settings, fingerprints, versions."""
    records = {p.rsplit("/", 1)[1][:-5]: store.read_json(p) for p in store.list("stages") if p.endswith(".json")}
    records = {k: v for k, v in records.items() if isinstance(v, dict)}
    rel = dict(store.array(layout.RELEVANCE()).attrs) if store.has_array(layout.RELEVANCE()) else {}
    dist = (records.get("distances") or {}).get("settings", {}).get("distances") or cfg.distances.model_dump()
    metric = dist.get("metric", cfg.distances.metric)
    dist_settings = ", ".join(f"{k}={v}" for k, v in dist.items() if k != "metric")
    cluster = cfg.cluster
    score_settings = ", ".join(f"{k}={v}" for k, v in cfg.score.model_dump().items())
    transfer_settings = ", ".join(f"{k}={v}" for k, v in cfg.transfer.model_dump().items())
    config = cfg.model_dump(mode="json", exclude={"run_dir", "report_dir", "compute"})
    stage_fps = {name: rec.get("fingerprint", "") for name, rec in sorted(records.items())}
    weights = rel.get("weights") or cfg.model.weights or "trained or packaged weights"
    return {
        "run": cfg.name,
        "dataset": ", ".join(f"{k}={v}" for k, v in cfg.dataset.model_dump(mode="json", exclude_none=True).items()),
        "model": f"{rel.get('model', cfg.model.arch)} ({weights})",
        "composite": str(rel.get("composite", cfg.attribute.composite)),
        "target": str(rel.get("target_rule", cfg.attribute.target)),
        "relevance maps": f"{rel.get('resolution', cfg.attribute.resolution)} px",
        "distance": f"{metric} ({dist_settings})",
        "clustering": f"{cluster.n_eigenvectors} eigenvectors, k <= {cluster.k_max}, embedding {cluster.embedding}",
        "transfer": transfer_settings,
        "score": score_settings,
        "config fingerprint": fingerprint_of(config),
        "stage fingerprints": ", ".join(f"{k} {v}" for k, v in stage_fps.items()),
        "code versions": ", ".join(f"{k} {v.get('code_version', '')}" for k, v in sorted(records.items())),
        "unhans": __version__,
        "git commit": _git_commit() or "unknown",
        "store": store.absolute_url,
        "made": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _git_commit() -> str | None:
    """The commit of the unhans checkout this code runs from (+dirty), or None outside git."""
    root = Path(__file__).resolve().parents[2]
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if head.returncode:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5)  # fmt: skip
        return head.stdout.strip()[:12] + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return None


def provenance_html(p: dict) -> str:
    short = ["model", "composite", "distance", "config fingerprint", "unhans", "git commit", "made"]
    line = " · ".join(f"{esc(k)}: {esc(str(p[k]))}" for k in short)
    rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(str(v))}</td></tr>" for k, v in p.items())
    return f'<details class="provenance"><summary>{line}</summary><table>{rows}</table></details>'
