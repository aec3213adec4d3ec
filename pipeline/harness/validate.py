"""`unhans validate`: poison, train, audit, and measure detection against published detectors.

A validation spec (configs/validate/<name>.yaml) names a base config, common overrides, a list of
scenarios, each a `poison` section (pipeline/data/artifacts.py), the run seeds and optional ablations.
Every scenario is a full run of the chain up to `score` in <root>/<scenario>/seed-<N>, so a rerun
skips what is done. A scenario with `control: true` trains on the data as they are (no poisoning) and
only uses its poison section to measure how the clean model reacts to the artifact: the false-alarm
level. An ablation reruns the stages after attribute on a copy of each run with other settings
(`run_ablation`) and reports unhans there as `unhans[<name>]`.

Per run and method (the detectors of pipeline/harness/detectors/, all read through one contract, on
the same store; SCAn also gets a clean held-out set, `clean_features`):
- flip_rate: share of held-out images of the other classes, correctly classified when clean, that
  the trained model assigns to the target class once the artifact is stamped on (the model, not the
  data, makes a Clever Hans: a scenario the model ignores has nothing to find);
- mask_share: mean share of a poisoned sample's positive relevance inside its artifact's pixels,
  with `mask_area` (the mask's share of the image) as the level of no preference;
- rank of the target class among all classes by the method's class score (1 = top), its score,
  and the top score of the run;
- auroc, ap: per-sample scores inside the target class against the planted truth;
- target_flagged, other_flagged: the method's own class alarms, for methods that raise them.
"""

from __future__ import annotations

import argparse
import logging
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
import yaml
from sklearn.metrics import average_precision_score, roc_auc_score
from threadpoolctl import threadpool_limits

from unhans.pipeline.core.config import CONFIG_DIR
from unhans.pipeline.core.errors import UserError
from unhans.pipeline.core.store import Store
from unhans.pipeline.data import build_dataset
from unhans.pipeline.data.artifacts import PoisonConfig, masks, stamp
from unhans.pipeline.data.models import model_for_run, model_spec, penultimate_layer
from unhans.pipeline.harness.detectors import DETECTORS, Detector, RunView, names
from unhans.stages import Config, load_config, runner

log = logging.getLogger("unhans.validate")
SPEC_DIR = CONFIG_DIR / "validate"
FLIP_HOSTS = 2000  # held-out host images per flip-rate measurement (seeded subsample)
CLEAN_PER_CLASS = 100  # held-out images per class in the clean set handed to detectors that need one (SCAn)
FOLLOWED = 0.1  # flip rate from which a scenario counts as one the model follows (summary lines)


@dataclass
class Scenario:
    name: str
    poison: dict[str, Any]
    control: bool = False
    set: list[str] = field(default_factory=list)


@dataclass
class Ablation:
    """unhans rerun on a finished run with other settings of the stages after attribute (same model,
    same maps): e.g. distances.metric=euclidean. Reported as the method `unhans[<name>]` (the label
    issues do not depend on the stages an ablation may change)."""

    name: str
    set: list[str]
    scenarios: list[str] = field(default_factory=list)  # empty: every scenario


@dataclass
class Spec:
    name: str
    base: str
    set: list[str]
    flip_split: str  # test: the dataset's held-out split; train: unpoisoned training images
    scenarios: list[Scenario]
    seeds: list[int]  # run seeds: each scenario is trained and audited once per seed
    ablations: list[Ablation] = field(default_factory=list)


def load_spec(name_or_path: str) -> Spec:
    p = Path(name_or_path)
    path = p if p.suffix in {".yaml", ".yml"} else SPEC_DIR / f"{name_or_path}.yaml"
    if not path.exists():
        known = ", ".join(sorted(q.stem for q in SPEC_DIR.glob("*.yaml")))
        raise UserError(f"no validation spec {name_or_path!r}; known: {known} (or give a YAML path)")
    data = yaml.safe_load(path.read_text()) or {}
    unknown = set(data) - {"name", "base", "set", "flip_split", "scenarios", "seeds", "ablations"}
    if unknown or "base" not in data or not data.get("scenarios"):
        raise UserError(
            f"{path}: needs base and scenarios (allowed keys: name, base, set, flip_split, scenarios, seeds, ablations)"
        )
    scenarios = []
    for i, s in enumerate(data["scenarios"]):
        extra = set(s) - {"name", "poison", "control", "set"}
        if extra or "name" not in s or "poison" not in s:
            raise UserError(f"{path}: scenario {i} needs name and poison (allowed: name, poison, control, set)")
        scenarios.append(Scenario(str(s["name"]), dict(s["poison"]), bool(s.get("control", False)), s.get("set", [])))
    names = [s.name for s in scenarios]
    if len(set(names)) != len(names):
        raise UserError(f"{path}: scenario names must be unique")
    split = data.get("flip_split", "test")
    if split not in ("test", "train"):
        raise UserError(f"{path}: flip_split must be test or train")
    seeds = data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(x, int) and x >= 0 for x in seeds):
        raise UserError(f"{path}: seeds must be a list of non-negative integers, e.g. [0, 1, 2]")
    if len(set(seeds)) != len(seeds):
        raise UserError(f"{path}: seeds must be unique")
    ablations = []
    for i, a in enumerate(data.get("ablations") or []):
        if not isinstance(a, dict) or set(a) - {"name", "set", "scenarios"} or "name" not in a or not a.get("set"):
            raise UserError(f"{path}: ablation {i} needs name and set (allowed: name, set, scenarios)")
        if set(a.get("scenarios") or []) - set(names):
            raise UserError(f"{path}: ablation {a['name']} names unknown scenarios; known: {names}")
        if not str(a["name"]).replace("-", "").replace("_", "").isalnum():
            raise UserError(f"{path}: ablation name {a['name']!r}: letters, digits, - and _ only")
        ablations.append(Ablation(str(a["name"]), [str(x) for x in a["set"]], list(a.get("scenarios") or [])))
    if len({a.name for a in ablations}) != len(ablations):
        raise UserError(f"{path}: ablation names must be unique")
    name = str(data.get("name", path.stem))
    return Spec(name, str(data["base"]), list(data.get("set", [])), split, scenarios, list(seeds), ablations)


def scenario_config(
    spec: Spec, sc: Scenario, root: Path, extra: list[str], seed: int | None = None, ablation: Ablation | None = None
) -> tuple[Config, PoisonConfig]:
    """The run's config (poison applied unless control; run seed `seed`, default the spec's first) and
    the scenario's artifact. The run lives in <root>/<scenario>/seed-<seed>. The seed sets the
    training (initialisation, batch order), the score's hosts and the clusterings; the planted
    artifact (poison.seed) is the same for every seed, so seeds are replicates on the same data. An
    ablation's run lives beside it in seed-<seed>-<ablation>."""
    cfg = load_config(spec.base, spec.set + sc.set + extra + (ablation.set if ablation else []))
    poison = PoisonConfig.model_validate(sc.poison)
    cfg.seed = spec.seeds[0] if seed is None else seed
    tail = f"-{ablation.name}" if ablation else ""
    cfg.name = f"{spec.name}-{sc.name}-seed{cfg.seed}{tail}"
    run = root / sc.name / f"seed-{cfg.seed}{tail}"
    cfg.run_dir = str(run)
    cfg.report_dir = str(run / "report")
    cfg.dataset.poison = None if sc.control else poison
    return cfg, poison


# ---------------------------------------------------------------------------------------- metrics


def detection(truth: np.ndarray, scores: np.ndarray) -> tuple[float, float]:
    """AUROC and average precision of scores against boolean truth; NaN when one side is empty."""
    truth = np.asarray(truth, bool)
    if truth.all() or not truth.any():
        return float("nan"), float("nan")
    scores = np.asarray(scores, np.float64)
    finite = np.isfinite(scores)
    low = scores[finite].min() - 1.0 if finite.any() else 0.0
    scores = np.where(finite, scores, low)  # a missing score ranks below every real one
    return float(roc_auc_score(truth, scores)), float(average_precision_score(truth, scores))


def rank_of(class_scores: pd.Series, target: int) -> int:
    """1-based rank of `target` by descending score (ties count against it: worst rank among equals)."""
    if target not in class_scores.index:
        return len(class_scores) + 1
    return int((class_scores >= class_scores.loc[target]).sum())


def mask_share(maps: np.ndarray, masks: np.ndarray) -> tuple[float, float]:
    """Mean share of positive relevance inside each mask, and the masks' mean area share."""
    pos = np.maximum(maps.reshape(len(maps), -1), 0.0)
    m = masks.reshape(len(masks), -1)
    total = pos.sum(1)
    ok = total > 0
    inside = (pos * m).sum(1)
    share = float(np.mean(inside[ok] / total[ok])) if ok.any() else float("nan")
    return share, float(m.mean()) if len(m) else float("nan")


def held_out(cfg: Config, poison: PoisonConfig, samples: pd.DataFrame, split: str):
    """(dataset, held-out rows, flip hosts): the test split (split test) or the unpoisoned training
    images (split train); hosts = a seeded subsample of the rows of the other classes. The dataset is
    the run's without its planted shortcut: the images as they are."""
    update = {"poison": None} | ({"split": split, "limit_per_class": None} if split == "test" else {})
    ds = build_dataset(cfg.dataset.model_copy(update=update))
    if split == "test":
        rows = ds.index()
        rows = rows[rows["status"] == "ok"]
    else:  # the training images that carry no artifact and keep their own label
        keep = samples["status"] == "ok"
        if "artifact" in samples:
            keep &= ~samples["artifact"].astype(bool)
        rows = samples[keep]
    hosts = rows[rows["label"] != poison.target]
    rng = np.random.default_rng(cfg.seed)
    hosts = hosts.iloc[np.sort(rng.choice(len(hosts), size=min(FLIP_HOSTS, len(hosts)), replace=False))]
    return ds, rows, hosts


def labelled_batches(ds, rows: pd.DataFrame, batch: int = 256):
    """Yield (start, images, readable mask, labels) over `rows` (columns source, label) in batches."""
    for s in range(0, len(rows), batch):
        part = rows.iloc[s : s + batch]
        x, ok, _ = ds.load(part["source"].to_numpy())
        yield s, x, torch.as_tensor(ok), torch.as_tensor(part["label"].to_numpy(np.int64, copy=True))


def flips(model, normalise, ds, hosts: pd.DataFrame, poison: PoisonConfig, seed: int, device) -> float:
    """Share of the hosts the model gets right that it assigns to poison.target once stamped."""
    n_flip, n = 0, 0
    with torch.no_grad():
        for s, x, ok, y in labelled_batches(ds, hosts):
            clean = model(normalise(x.to(device))).argmax(1).cpu()
            dirty = model(normalise(stamp(x, poison, seed=seed + s)[0].to(device))).argmax(1).cpu()
            use = ok & (clean == y)
            n_flip += int((dirty[use] == poison.target).sum())
            n += int(use.sum())
    return n_flip / n if n else float("nan")


def _run_model(cfg: Config, n_classes: int, channels: int, device: torch.device):
    model = model_for_run(cfg, Store(cfg.run_url), n_classes, channels).to(device).eval()
    return model, model_spec(cfg.model).normaliser(channels, device)


def flip_rate(cfg: Config, poison: PoisonConfig, samples: pd.DataFrame, split: str, device: torch.device) -> float:
    """Share of correctly classified held-out images of other classes predicted `target` with the artifact."""
    ds, _, hosts = held_out(cfg, poison, samples, split)
    model, normalise = _run_model(cfg, len(ds.classes), ds.channels, device)
    return flips(model, normalise, ds, hosts, poison, cfg.seed, device)


def clean_features(model, normalise, ds, rows: pd.DataFrame, seed: int, device) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features and labels of a clean set: up to CLEAN_PER_CLASS seeded held-out rows per
    class (the small clean set SCAn assumes the defender has)."""
    rng = np.random.default_rng([seed, 7])
    pick = np.concatenate(
        [rng.choice(ix, min(CLEAN_PER_CLASS, len(ix)), replace=False) for ix in rows.groupby("label").indices.values()]
    )
    part = rows.iloc[np.sort(pick)]
    grabbed: list[torch.Tensor] = []
    handle = penultimate_layer(model).register_forward_pre_hook(lambda _m, a: grabbed.append(a[0].flatten(1).cpu()))
    feats, labels = [], []
    try:
        with torch.no_grad():
            for _, x, ok, y in labelled_batches(ds, part):
                model(normalise(x.to(device)))
                feats.append(grabbed.pop()[ok].numpy())
                labels.append(y[ok].numpy())
    finally:
        handle.remove()
    return np.concatenate(feats).astype(np.float32), np.concatenate(labels)


def evaluate(cfg: Config, poison: PoisonConfig, control: bool, flip_split: str) -> pd.DataFrame:
    """One finished run -> one row per detector (pipeline/harness/detectors/)."""
    from unhans.pipeline.core.compute import resolve_device

    store = Store(cfg.run_url)
    samples = store.read_table("samples")
    device = resolve_device(cfg.compute.device)
    ds, rows_clean, hosts = held_out(cfg, poison, samples, flip_split)
    model, normalise = _run_model(cfg, len(ds.classes), ds.channels, device)
    flip = flips(model, normalise, ds, hosts, poison, cfg.seed, device)
    clean = clean_features(model, normalise, ds, rows_clean, cfg.seed, device)
    target = poison.target
    truth = samples["artifact"].to_numpy(bool) if "artifact" in samples else np.zeros(len(samples), bool)
    poisoned = np.flatnonzero(truth)
    if len(poisoned):
        maps = store.relevance(poisoned)
        m = masks(samples.iloc[poisoned], cfg.dataset.image_size, cfg.attribute.resolution, poison)
        share, area = mask_share(maps, m)
    else:
        share = area = float("nan")
    run = RunView(store, cfg.seed, clean)
    rows = []
    for name in names():
        d = DETECTORS.get(name)
        if not d.usable(run):
            continue
        with threadpool_limits(cfg.compute.threads):  # the run's thread count for BLAS and OpenMP too
            found = detector_row(d, run, truth, control, target)
        rows.append(
            {"method": name}
            | found
            | {
                "flip_rate": flip,
                "mask_share": share,
                "mask_area": area,
                "n_poisoned": int(len(poisoned)),
                "n_target": int((samples["label"] == target).sum()),
            }
        )
    order = ["method", "rank", "target_score", "top_score", "auroc", "ap", "flip_rate", "mask_share", "mask_area"]
    order += ["n_poisoned", "n_target", "target_flagged", "other_flagged"]
    return pd.DataFrame(rows)[order]


def detector_row(d: Detector, run: RunView, truth: np.ndarray, control: bool, target: int) -> dict[str, Any]:
    """One detector on one run: the target's rank and score, the top score, per-sample AUROC and AP inside
    the target class, and the detector's own class alarms (NaN for detectors without a decision rule)."""
    found = {c: d.detect(run, c) for c in run.class_ids}
    class_scores = pd.Series({c: f.score for c, f in found.items()})
    auroc = ap = float("nan")
    if target in found:
        auroc, ap = detection(truth[run.members(target)], found[target].sample_scores)
    alarms = {c for c, f in found.items() if f.flag}
    has_alarms = any(f.flag is not None for f in found.values())
    return {
        "rank": rank_of(class_scores, target),
        "target_score": float(class_scores.get(target, np.nan)),
        "top_score": float(class_scores.max()),
        "auroc": auroc,
        "ap": ap,
        "target_flagged": (target in alarms and not control) if has_alarms else np.nan,
        "other_flagged": len(alarms - ({target} if not control else set())) if has_alarms else np.nan,
    }


ABLATED_STAGES = ("distances", "cluster", "transfer", "score")  # what an ablation may change


def run_ablation(spec: Spec, sc: Scenario, root: Path, extra: list[str], seed: int, ab: Ablation) -> Path:
    """Rerun the stages after attribute of a finished run with the ablation's settings, in a copy of the
    run (its model, maps and features are reused: the copied stage records keep their fingerprints);
    write the copy's validation.csv: the base run's unhans row, scored on the copy. Returns the copy."""
    base_cfg, _ = scenario_config(spec, sc, root, extra, seed)
    cfg, poison = scenario_config(spec, sc, root, extra, seed, ab)
    base, run = Path(base_cfg.run_url), Path(cfg.run_url)
    if not (run / "stages").exists():
        shutil.copytree(base, run, ignore=shutil.ignore_patterns("report", "validation.csv"), dirs_exist_ok=True)
    r = runner(cfg)
    changed = [s for s in ("index", "train", "attribute") if r.state(s) not in ("done", "disabled")]
    if changed:
        raise UserError(
            f"ablation {ab.name}: its settings change the {', '.join(changed)} stage(s); an ablation may only "
            f"change the stages after attribute ({', '.join(ABLATED_STAGES)})"
        )
    r.run_all(until="score")
    rows = pd.read_csv(base / "validation.csv")
    store = Store(cfg.run_url)
    samples = store.read_table("samples")
    truth = samples["artifact"].to_numpy(bool) if "artifact" in samples else np.zeros(len(samples), bool)
    view = RunView(store, seed)
    row = rows[rows["method"] == "unhans"].iloc[0].to_dict()  # flip rate, mask share: the same model
    row.update(detector_row(DETECTORS.get("unhans"), view, truth, sc.control, poison.target))
    row["method"] = f"unhans[{ab.name}]"
    pd.DataFrame([row], columns=rows.columns).to_csv(run / "validation.csv", index=False)
    return run


# ---------------------------------------------------------------------------------------- driver


def describe(p: PoisonConfig, control: bool) -> str:
    if control:
        return f"none (probe: {p.kind})"
    where = p.position + (", rotated" if p.rotation else "") + (", size jitter" if p.size_jitter else "")
    return f"{p.kind} {p.regime} -> {p.target}, {p.fraction:.0%}, {where}"


def randomised(p: PoisonConfig) -> bool:
    """The artifact's position or size varies from image to image."""
    return p.position == "random" or p.size_jitter > 0


def run_validation(
    spec_name: str,
    root: str | None,
    only: list[str] | None,
    extra: list[str],
    seeds: list[int] | None = None,
    collect_only: bool = False,
) -> pd.DataFrame:
    """Run every chosen scenario once per seed (the spec's seeds, or `seeds`) and evaluate each run;
    returns (and writes to <root>/results.csv, results.md) the rows of every run of the spec found.
    collect_only: run nothing, only gather the runs' evaluations (e.g. after runs in several processes)."""
    spec = load_spec(spec_name)
    if any(e.split("=", 1)[0].strip() == "seed" for e in extra):
        raise UserError("validate sets the run seed itself: use --seed N (repeatable) instead of --set seed=N")
    if seeds:
        spec.seeds = list(dict.fromkeys(seeds))
    out = Path(root or f"runs/validate/{spec.name}")
    chosen = [s for s in spec.scenarios if not only or s.name in only]
    if only and len(chosen) != len(set(only)):
        missing = set(only) - {s.name for s in spec.scenarios}
        raise UserError(f"unknown scenario(s) {', '.join(sorted(missing))}; known: {[s.name for s in spec.scenarios]}")
    for sc in [] if collect_only else chosen:
        for seed in spec.seeds:
            cfg, poison = scenario_config(spec, sc, out, extra, seed)
            log.info(
                "validate: scenario %s, seed %d (%s) in %s", sc.name, seed, describe(poison, sc.control), cfg.run_url
            )
            runner(cfg).run_all(until="score")
            df = evaluate(cfg, poison, sc.control, spec.flip_split)
            df.insert(0, "scenario", sc.name)
            df.insert(1, "seed", seed)
            df.insert(2, "poison", describe(poison, sc.control))
            df.insert(3, "control", sc.control)
            df.insert(4, "randomised", randomised(poison) and not sc.control)
            df["machine"] = trained_on(cfg)
            df.to_csv(Path(cfg.run_url) / "validation.csv", index=False)
            for ab in spec.ablations:
                if not ab.scenarios or sc.name in ab.scenarios:
                    log.info("validate: ablation %s of scenario %s, seed %d", ab.name, sc.name, seed)
                    run_ablation(spec, sc, out, extra, seed, ab)
    # the table covers every run of the spec's scenarios and seeds evaluated so far, so runs of
    # single scenarios or seeds add up
    done = [run / "validation.csv" for _, _, run in finished_runs(spec, out, ablations=True)]
    if not done:
        raise UserError(f"no evaluated run of {spec.name} under {out}: run `unhans validate --spec {spec.name}` first")
    results = pd.concat([pd.read_csv(f) for f in done], ignore_index=True)
    results.to_csv(out / "results.csv", index=False)
    (out / "results.md").write_text(summary(results))
    return results


def trained_on(cfg: Config) -> str:
    """The machine (CPU, torch) that trained the run's model, from its train stage's record: the same seed
    trains another model on another CPU, so runs from two machines are not replicates of one model."""
    rec = runner(cfg).record("train") or {}
    return str(rec.get("machine", "unknown (trained before stage records kept the machine)"))


def finished_runs(spec: Spec, root: Path, ablations: bool = False) -> list[tuple[Scenario, int, Path]]:
    """(scenario, seed, run folder) of every run of the spec under root that has been evaluated
    (its validation.csv written), in spec order; with `ablations`, the ablations' runs follow their base run."""
    tails = [""] + ([f"-{a.name}" for a in spec.ablations] if ablations else [])
    return [
        (sc, seed, run)
        for sc in spec.scenarios
        for seed in spec.seeds
        for tail in tails
        if ((run := root / sc.name / f"seed-{seed}{tail}") / "validation.csv").exists()
    ]


def runs_from_argv(doc: str, argv: list[str] | None = None) -> tuple[Spec, Path, list[tuple[Scenario, int, Path]]]:
    """The command line of a script that reads finished validation runs (benchmarks/flags.py,
    benchmarks/sample_score.py): --spec NAME and --root FOLDER -> (spec, root, finished_runs)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="demo")
    ap.add_argument("--root", default=None, help="folder of the scenario runs (default runs/validate/<spec>)")
    args = ap.parse_args(argv)
    spec = load_spec(args.spec)
    root = Path(args.root or f"runs/validate/{spec.name}")
    return spec, root, finished_runs(spec, root)


def markdown_table(table: pd.DataFrame) -> str:
    """A table of the scripts that read finished validation runs, as markdown (floats to 3 decimals)."""
    lines = ["| " + " | ".join(map(str, table.columns)) + " |", "|" + "---|" * len(table.columns)]
    for r in table.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in r) + " |")
    return "\n".join(lines)


def _seeds_note(rows: pd.DataFrame, n_seeds: int) -> str:
    """' (11 scenarios x 3 seeds)', or the range of seeds where scenarios have different numbers of runs."""
    if n_seeds <= 1 or rows.empty:
        return ""
    per = rows.groupby("scenario")["seed"].nunique()
    seeds = f"{per.min()}" if per.min() == per.max() else f"{per.min()}-{per.max()}"
    return f" ({len(per)} scenarios x {seeds} seeds)"


def _median(x: pd.Series) -> str:
    return "-" if x.isna().all() else f"{np.nanmedian(x):.3f}"


def _joined(values, fmt: str) -> str:
    """Per-seed values of one scenario, in seed order: '1/1/2'."""
    return "/".join("-" if pd.isna(v) else format(v, fmt) for v in values)


def summary(results: pd.DataFrame) -> str:
    """Markdown: one row per scenario (per-seed ranks and flip rates joined by '/', median AUROC over
    the seeds), then one line per method over all runs (a run = one scenario with one seed) and over
    the runs whose model follows the artifact (flip rate >= FOLLOWED), and the paired comparisons."""
    results = results.copy()
    if "seed" not in results:  # a results table written before seeds existed: one run per scenario
        results["seed"] = 0
    if "randomised" not in results:
        results["randomised"] = False
    results = results.sort_values("seed", kind="stable")
    methods = list(dict.fromkeys(results["method"]))
    n_seeds = results["seed"].nunique()
    head = ["scenario", "poison", "flip rate", "relevance in mask (area)"]
    for m in methods:
        head += [f"{m} rank", f"{m} AUROC"]
    head += ["unhans score (top)", "unhans flagged"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for sc, g in results.groupby("scenario", sort=False):
        u = g[g["method"] == "unhans"]
        cells = [
            sc,
            u["poison"].iloc[0],
            _joined(u["flip_rate"], ".2f"),
            f"{np.nanmedian(u['mask_share']):.2f} ({np.nanmedian(u['mask_area']):.2f})"
            if u["mask_share"].notna().any()
            else "nan (nan)",
        ]
        for m in methods:
            r = g[g["method"] == m]
            if r.empty:  # a scenario measured before this method existed
                cells += ["-", "-"]
                continue
            cells += [_joined(r["rank"].astype(int), "d"), _median(r["auroc"])]
        cells.append(f"{np.median(u['target_score']):.3f} ({u['top_score'].max():.3f})")
        cells.append(_flags(u))
        lines.append("| " + " | ".join(cells) + " |")
    poisoned = results[~results["control"].astype(bool)]
    followed = poisoned[poisoned["flip_rate"] >= FOLLOWED]
    runs = lambda d: f"{len(d)} runs" if n_seeds > 1 else f"{len(d)} scenarios"  # noqa: E731
    nf = len(followed[followed["method"] == "unhans"])
    lines.append("")
    for m in methods:
        p, f = poisoned[poisoned["method"] == m], followed[followed["method"] == m]
        line = (
            f"- {m}: target ranked first in {int((p['rank'] == 1).sum())} of {runs(p)}{_seeds_note(p, n_seeds)}; "
            f"median AUROC {_median(p['auroc'])}, median AP {_median(p['ap'])}"
        )
        if len(f):
            line += (
                f"; in the {len(f)} the model follows (flip rate >= {FOLLOWED}): first in "
                f"{int((f['rank'] == 1).sum())}, median AUROC {_median(f['auroc'])}, median AP {_median(f['ap'])}"
            )
        fr = f[f["randomised"].astype(bool)]
        if len(fr):
            line += f"; followed with random position or size: median AUROC {_median(fr['auroc'])} ({len(fr)})"
        lines.append(line)
    if nf:
        fu = followed[followed["method"] == "unhans"].set_index(["scenario", "seed"])["auroc"]
        pairs = []
        for m in methods[1:]:
            fm = followed[followed["method"] == m].set_index(["scenario", "seed"])["auroc"]
            both = pd.concat([fu, fm], axis=1, join="inner").dropna()
            if len(both):
                a, b = both.iloc[:, 0].round(3), both.iloc[:, 1].round(3)
                pairs.append(f"{m} {int((a > b).sum())} / {int((a == b).sum())} / {int((a < b).sum())}")
        if pairs:
            lines.append(
                "- unhans' per-sample AUROC against the other method's, in the followed runs (above / level "
                f"at 3 decimals / below): {', '.join(pairs)}"
            )
    ctrl = results[results["control"].astype(bool) & (results["method"] == "unhans")]
    pu = poisoned[poisoned["method"] == "unhans"]
    uf = followed[followed["method"] == "unhans"]
    if len(ctrl) and len(pu):
        line = (
            f"- unhans: control top score {ctrl['top_score'].max():.3f}; poisoned target scores "
            f"min {pu['target_score'].min():.3f}, median {pu['target_score'].median():.3f}"
        )
        if len(uf):
            top = ctrl["top_score"].max()
            line += (
                f"; followed: min {uf['target_score'].min():.3f}, median {uf['target_score'].median():.3f}, "
                f"above the control's top in {int((uf['target_score'] > top).sum())} of {len(uf)}"
            )
        lines.append(line)
    allu = results[results["method"] == "unhans"]
    if "target_flagged" in results and allu["target_flagged"].notna().any():
        strong = uf[uf["flip_rate"] >= 2 * FOLLOWED]
        lines.append(
            f"- unhans flags (a strong score or a discovery against the run's classes, docs/methods.md): the "
            f"target in {int(pu['target_flagged'].astype(bool).sum())} of {runs(pu)} "
            f"({int(uf['target_flagged'].astype(bool).sum())} of the {len(uf)} followed, "
            f"{int(strong['target_flagged'].astype(bool).sum())} of the {len(strong)} followed at least "
            f"{2 * FOLLOWED:.0%} of the time); other classes flagged: {int(allu['other_flagged'].sum())} over all "
            f"{runs(allu)}, controls included"
        )
    for m in methods[1:]:  # the peers with a class alarm of their own (SCAn)
        pm, am = poisoned[poisoned["method"] == m], results[results["method"] == m]
        if "target_flagged" not in am or am["target_flagged"].isna().all():
            continue
        fm = followed[followed["method"] == m]
        strong = fm[fm["flip_rate"] >= 2 * FOLLOWED]
        lines.append(
            f"- {m} flags (its own rule): the target in {int(pm['target_flagged'].astype(bool).sum())} of "
            f"{runs(pm)} ({int(fm['target_flagged'].astype(bool).sum())} of the {len(fm)} followed, "
            f"{int(strong['target_flagged'].astype(bool).sum())} of the {len(strong)} followed at least "
            f"{2 * FOLLOWED:.0%} of the time); other classes flagged: {int(am['other_flagged'].sum())} over all "
            f"{runs(am)}, controls included"
        )
    if "machine" in results:  # which CPU trained the models: another CPU trains other models
        trained = allu["machine"].fillna("unknown")
        lines.append(
            "- models trained on: " + "; ".join(f"{m} ({runs(allu[trained == m])})" for m in dict.fromkeys(trained))
        )
    return "\n".join(lines) + "\n"


def _flags(u: pd.DataFrame) -> str:
    """The flagged classes of one scenario's runs, in words (target in how many seeds / other classes)."""
    if "target_flagged" not in u or u["target_flagged"].isna().all():
        return "-"
    n, hit, other = len(u), int(u["target_flagged"].astype(bool).sum()), int(u["other_flagged"].sum())
    parts = ([f"target {hit}/{n}" if n > 1 else "target"] if hit else []) + ([f"{other} other"] if other else [])
    return " + ".join(parts) or "none"
