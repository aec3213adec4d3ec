"""Provenance of a report: what produced it (model, composite, settings, fingerprints, versions)."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

from unhans._version import __version__
from unhans.pipeline.core import layout
from unhans.pipeline.core.config import fingerprint_of
from unhans.pipeline.report.render import esc


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
        "torch threads": f"{cfg.compute.threads or 'all cores'} (another thread count can round differently)",
        "machine": _machines(records),
        "config fingerprint": fingerprint_of(config),
        "stage fingerprints": ", ".join(f"{k} {v}" for k, v in stage_fps.items()),
        "code versions": ", ".join(f"{k} {v.get('code_version', '')}" for k, v in sorted(records.items())),
        "unhans": __version__,
        "git commit": _git_commit() or "unknown",
        "store": store.absolute_url,
        "made": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def _machines(records: dict) -> str:
    """Which CPU trained the model and which explained it (another CPU trains another model from the same seed)."""
    parts = [f"{verb} on {records[st]['machine']}" for st, verb in (("train", "trained"), ("attribute", "explained"))
             if "machine" in records.get(st, {})]  # fmt: skip
    return ", ".join(parts) or "not recorded (the stages ran before their records kept it)"


def model_line(cfg, store) -> str:
    """One sentence on the explained model and how good it is on these data."""
    train = (store.read_json("stages/train.json") or {}).get("counts", {})
    attribute = (store.read_json("stages/attribute.json") or {}).get("counts", {})
    if train.get("heldout_accuracy") is not None:
        return (
            f"Model: {cfg.model.arch}, trained here for {train.get('epochs')} epochs (kept: epoch "
            f"{train.get('best_epoch')}); accuracy {train['heldout_accuracy']:.2f} on {train.get('held_out')} "
            f"held-out images, {train.get('train_accuracy', float('nan')):.2f} on its training images "
            f"(guessing the commonest class: {train.get('chance', float('nan')):.2f})."
        )
    weights = cfg.model.weights or ("trained here" if train else "packaged weights")
    acc = attribute.get("accuracy")
    return f"Model: {cfg.model.arch} ({weights})" + (f"; accuracy {acc:.2f} on the audited images." if acc else ".")


def unreadable(samples, failures) -> list[tuple[str, str]]:
    """(file, reason) of every sample that could not be read: skipped at index or failed to decode."""
    skipped = samples.loc[samples["status"] != "ok", ["source", "reason"]]
    return [*map(tuple, skipped.to_numpy().tolist()), *map(tuple, failures[["source", "reason"]].to_numpy().tolist())]


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
