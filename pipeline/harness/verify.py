"""`unhans verify`: does removing the found shortcut make the model stop following it?

For a finished run (audited up to `clean`; the chain is run first where needed) three models are
measured:

- original: the model the run explained (model_for_run);
- retrained on cleaned: the same architecture trained from scratch with the train stage's settings and
  seed (pipeline.method.training.fit) on `tables/cleaned`, under its labels (relabelled samples under
  their new label), less the samples the original held out; only for models the train stage trains;
- P-ClArC: the original with the flagged classes' artifact directions projected out of its last
  Linear layer's input, no retraining (pipeline/harness/pclarc.py; exported to files/pclarc.pt).

With a known artifact (the config's dataset.poison, or a validation scenario), per model: the artifact
flip rate (as validate.flip_rate: the share of held-out images of the other classes, correctly
classified when clean, that the model assigns to the poison target once the artifact is stamped on;
same host selection, subsample and stamping seeds) and the clean accuracy on held-out images of all
classes: the dataset's test split (flip_split "test"), or the training images that carry no artifact
and keep their label (flip_split "train", e.g. the digits, which have no test split). Without one (a
user's own data), there is no flip rate; the accuracy is on the images the train stage held out, and the
re-audit below says whether the shortcut is gone.

Re-audit, for any dataset (no known artifact needed): the Clever Hans score of each flagged class
(and each --class-id) recomputed under each model. The run's evidence (each member's top relevance
cells under the original model: where it looked) is pasted into the same hosts as in the transfer stage,
the transfer is measured with the model under test (a screened run's candidate class again on every
host), and the class is scored over the same clusters (pipeline/method/statistics.py, transfer_score).
Under the original model this reproduces the score stage's score; a model that no longer follows the
shortcut gives the group no excess transfer. The attribution is not recomputed under the new models
(that would be a new audit: `unhans audit` with the new weights).
"""

from __future__ import annotations

import io
import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from unhans.pipeline.core import layout
from unhans.pipeline.core.compute import resolve_device
from unhans.pipeline.core.errors import UserError
from unhans.pipeline.data import build_dataset
from unhans.pipeline.data.artifacts import PoisonConfig
from unhans.pipeline.data.models import model_for_run, model_spec, trained_by_run
from unhans.pipeline.harness.pclarc import apply_pclarc, fit_pclarc
from unhans.pipeline.harness.validate import flips, held_out, labelled_batches, load_spec, scenario_config
from unhans.pipeline.method.probes import class_transfer, host_pool, probed_in_full
from unhans.pipeline.method.statistics import class_clusters, combined, transfer_score
from unhans.pipeline.method.training import fit
from unhans.stages import Config, load_config, runner

log = logging.getLogger("unhans.verify")


def default_flip_split(cfg: Config) -> str:
    """test when the dataset has a test split (idx files), else train."""
    return "test" if cfg.dataset.kind == "idx" else "train"


def resolve(
    config: str, overrides: list[str], run_dir: str | None, poison_from: str | None
) -> tuple[Config, PoisonConfig | None, str]:
    """(run config, artifact, flip split) from a config or a validation scenario `SPEC:SCENARIO` (the run of
    the spec's first seed). Without a known artifact: (config, None, "heldout")."""
    if poison_from:
        if ":" not in poison_from:
            raise UserError(f"--poison-from {poison_from!r}: give SPEC:SCENARIO, e.g. demo:checker-fixed")
        spec_name, sc_name = poison_from.rsplit(":", 1)
        spec = load_spec(spec_name)
        sc = next((s for s in spec.scenarios if s.name == sc_name), None)
        if sc is None:
            raise UserError(f"no scenario {sc_name!r} in {spec.name}; known: {[s.name for s in spec.scenarios]}")
        cfg, poison = scenario_config(spec, sc, Path(f"runs/validate/{spec.name}"), overrides)
        split = spec.flip_split
    else:
        cfg = load_config(config, overrides)
        poison = cfg.dataset.poison
        split = default_flip_split(cfg) if poison is not None else "heldout"
    if run_dir:
        cfg.run_dir = run_dir
    return cfg, poison, split


def measure(model: nn.Module, cfg: Config, poison: PoisonConfig | None, ds, rows, hosts, device) -> dict:
    """Flip rate on `hosts` (validate.flips, as validate measures it; NaN without a known artifact) and clean
    accuracy on `rows`."""
    model = model.to(device).eval()
    normalise = model_spec(cfg.model).normaliser(ds.channels, device)
    flip = flips(model, normalise, ds, hosts, poison, cfg.seed, device) if poison is not None else float("nan")
    correct, n_acc = 0, 0
    with torch.no_grad():
        for _, x, ok, y in labelled_batches(ds, rows, 512):
            pred = model(normalise(x.to(device))).argmax(1).cpu()
            correct += int((pred == y)[ok].sum())
            n_acc += int(ok.sum())
    return {
        "flip_rate": flip,
        "clean_accuracy": correct / n_acc if n_acc else float("nan"),
        "n_flip_hosts": len(hosts) if hosts is not None else 0,  # held-out images of other classes sampled
        "n_accuracy": n_acc,
    }


def reaudit(cfg: Config, store, model: nn.Module, class_ids: list[int], device) -> dict[int, float]:
    """Each class's Clever Hans score with the transfers measured under `model` (module docstring)."""
    if not class_ids:
        return {}
    model = model.to(device).eval()
    samples = store.read_table(layout.SAMPLES.name)
    ds = build_dataset(cfg.dataset)
    normalise = model_spec(cfg.model).normaliser(ds.channels, device)
    hosts = host_pool(cfg, store, class_ids)
    out = {}
    for c in class_ids:
        members, W, labels, ks, _ = class_clusters(store, c)
        full = probed_in_full(store, c)  # as the audit probed it: a screened run's candidate on every host
        t = combined(*class_transfer(cfg, store, samples, model, normalise, ds, c, members, hosts[c], full))
        out[c] = transfer_score(W, labels, ks, t, cfg.score).score
    return out


def heldout_of_run(store) -> np.ndarray:
    """The samples the train stage held out (never trained on), or none."""
    if not store.exists(layout.TRAINING()):
        return np.zeros(0, np.int64)
    return np.asarray(json.loads(store.read_bytes(layout.TRAINING()))["heldout"], np.int64)


def retrain_on_cleaned(cfg: Config, store, device: torch.device) -> tuple[nn.Module, int]:
    """The train stage's training (settings, seed) on tables/cleaned, less the samples the original model
    held out (so both are measured on images neither learned from); saved to files/model_cleaned.pt."""
    samples = store.read_table(layout.SAMPLES.name)
    cleaned = store.read_table(layout.CLEANED.name)
    labels = samples["label"].to_numpy(np.int64, copy=True)
    labels[cleaned["index"].to_numpy(np.int64)] = cleaned["label"].to_numpy(np.int64)
    ok = samples["status"].to_numpy() == "ok"
    usable = np.sort(cleaned["index"].to_numpy(np.int64))
    usable = np.setdiff1d(usable[ok[usable]], heldout_of_run(store))
    model = fit(cfg, build_dataset(cfg.dataset), samples, usable, torch.from_numpy(labels), device).model
    model = model.cpu().eval()
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    store.write_bytes(layout.MODEL_CLEANED(), buf.getvalue())
    return model, len(usable)


def verify(
    cfg: Config,
    poison: PoisonConfig | None,
    split: str,
    retrain: bool = True,
    class_ids: list[int] | None = None,
    direction: str = "transfer",
) -> pd.DataFrame:
    """Run the chain up to clean if needed, measure the three models, write <run>/verify.csv and .md.
    `direction`: how P-ClArC estimates the artifact direction (pclarc.DIRECTIONS)."""
    r = runner(cfg)
    with r.locked():  # held while verify writes into the store, as a stage run would
        r.run_all(until="clean")
        return _verify(r, poison, split, retrain, class_ids, direction)


def _verify(
    runner, poison: PoisonConfig | None, split: str, retrain: bool, class_ids: list[int] | None, direction: str
) -> pd.DataFrame:
    cfg = runner.cfg
    store = runner.store
    device = resolve_device(cfg.compute.device)
    samples = store.read_table(layout.SAMPLES.name)
    if poison is not None:
        ds, rows, hosts = held_out(cfg, poison, samples, split)
        where = "test split" if split == "test" else "unpoisoned training images"
    else:  # no known artifact: accuracy on the images the train stage held out; the re-audit says the rest
        ds, hosts = build_dataset(cfg.dataset), None
        rows = samples.iloc[heldout_of_run(store)]
        where = "the train stage's held-out images" if len(rows) else "none (the model was not trained here)"
    n_classes, channels = len(ds.classes), ds.channels
    n_train = int((samples["status"] == "ok").sum()) - len(heldout_of_run(store))
    out = []

    flagged = store.read_table(layout.CLASS_SCORES.name)
    audit_ids = sorted({int(c) for c in flagged.loc[flagged["is_clever_hans"].astype(bool), "class_id"]}
                       | set(class_ids or []))  # fmt: skip

    def row(name: str, model: nn.Module | None, trained_on: int | None, note: str) -> None:
        m = measure(model, cfg, poison, ds, rows, hosts, device) if model is not None else {}
        scores = reaudit(cfg, store, model, audit_ids, device) if model is not None else {}
        out.append(
            {
                "model": name,
                "flip_rate": m.get("flip_rate", float("nan")),
                "clean_accuracy": m.get("clean_accuracy", float("nan")),
                "reaudit_score": max(scores.values()) if scores else float("nan"),
                "reaudit": "; ".join(f"{c}: {v:.3f}" for c, v in scores.items()),
                "n_flip_hosts": m.get("n_flip_hosts", 0),
                "n_accuracy": m.get("n_accuracy", 0),
                "trained_on": trained_on,
                "held_out": where,
                "note": note,
            }
        )

    original = model_for_run(cfg, store, n_classes, channels)
    row("original", original, n_train if trained_by_run(cfg) else None, "")

    trainable = trained_by_run(cfg)
    if not retrain:
        row("retrained on cleaned", None, None, "skipped (--no-retrain)")
    elif not trainable:
        row("retrained on cleaned", None, None, "skipped: the model is not trained by the train stage")
    else:
        log.info("verify: retraining on the cleaned list")
        model, n = retrain_on_cleaned(cfg, store, device)
        row("retrained on cleaned", model, n, f"{n_train - n} samples left out")

    correction = fit_pclarc(cfg, store, class_ids, original, direction)
    classes = correction["class"]
    if classes:
        corrected = apply_pclarc(model_for_run(cfg, store, n_classes, channels), correction)
        note = f"classes {', '.join(map(str, classes))}, {direction} direction; saved to files/pclarc.pt"
        row("P-ClArC", corrected, None, note)
    else:
        row("P-ClArC", None, None, "skipped: no flagged class (choose one with --class-id)")

    table = pd.DataFrame(out)
    store.write_bytes(layout.VERIFY_CSV(), table.to_csv(index=False).encode())
    store.write_bytes(layout.VERIFY_MD(), summary(table, cfg, poison).encode())
    return table


def summary(table: pd.DataFrame, cfg: Config, poison: PoisonConfig | None) -> str:
    def num(v: float) -> str:
        return "-" if pd.isna(v) else f"{v:.3f}"

    artifact = (
        f"artifact {poison.kind} {poison.regime} -> class {poison.target}"
        if poison is not None
        else "no known artifact (no flip rate; the re-audit scores say whether the shortcut is gone)"
    )
    lines = [
        f"run {cfg.name}: {artifact}; held out: {table['held_out'].iloc[0]}",
        "",
        "| model | flip rate | clean accuracy | re-audit score (class: score) | trained on | note |",
        "|---|---|---|---|---|---|",
    ]
    for _, r in table.iterrows():
        trained = "-" if pd.isna(r["trained_on"]) else str(int(r["trained_on"]))
        lines.append(
            f"| {r['model']} | {num(r['flip_rate'])} | {num(r['clean_accuracy'])} | {r['reaudit'] or '-'} | "
            f"{trained} | {r['note']} |"
        )
    lines += ["", f"re-audit: the flagged classes' scores with the transfers measured under each model "
              f"(the score stage flags a class from {cfg.score.flag_threshold:g}, or from {cfg.score.min_score:g} when "
              f"its q-value against the run's classes is at most {cfg.score.fdr:g})"]  # fmt: skip
    return "\n".join(lines) + "\n"
