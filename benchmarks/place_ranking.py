"""How a class found by its place should rank its images: the alternatives behind `sample_probe`, measured.

For issue 15's folder (`tests/helpers.py`, make_shapes_folder; `unhans init` and `unhans audit` with no
manual choice) at the given placements, and for named digits validation runs (`--run scenario:seed`,
finished runs under runs/validate/demo), this prints for the class with the planted stamp the per-sample
AUROC and the sample flags (planted / clean images that stand out) of:
- transfer: the transfer's score (relative and spread; what ranks a class found by its transfer);
- reach, not spread: every member's transfer along the confirmed place group's place, extended along
  the one image edge it touches (`probes.edge_reach`), relative and not spread (what ranks a class found by
  its place); reach: the same, spread over the explanation graph like the transfer (not adopted);
- place: at the confirmed group's place itself, not extended, spread (not adopted);
- max z: the larger of the robust standings (spreads above each probe's reference) by transfer and by
  place, not adopted;
and, for the stamp along the border that has no fixed place, two per-sample signals that separate it
but need a choice nothing in the data makes yet: the share of positive relevance in the bottom `rows` rows,
and the best place group's feature signature (group minus rest at the place) matched at every position
of each ReLU's output (maximum projection), listed by layer.

    python benchmarks/place_ranking.py --placement bottom-right --placement bottom-border \
        --run blend-backdoor:2 --run watermark-backdoor:0        # about 4 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.metrics import roc_auc_score

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.helpers import CORNERS, make_shapes_folder  # noqa: E402
from unhans.pipeline.core import layout  # noqa: E402
from unhans.pipeline.core.store import Store  # noqa: E402
from unhans.pipeline.data import build_dataset  # noqa: E402
from unhans.pipeline.harness.validate import _run_model, load_spec, scenario_config  # noqa: E402
from unhans.pipeline.method.probes import (  # noqa: E402
    class_place,
    evidence_masks,
    group_places,
    host_pool,
    images,
    stored_place,
    stored_transfers,
    transfer,
)  # fmt: skip
from unhans.pipeline.method.statistics import (  # noqa: E402
    class_clusters,
    combined,
    place_score,
    relative_transfer,
    score_class,
    spread,
)  # fmt: skip
from unhans.stages import load_config  # noqa: E402

UNHANS = str(Path(sys.executable).with_name("unhans"))


def standing(s: np.ndarray, reference: np.ndarray, min_spread: float) -> np.ndarray:
    """Robust spreads above the reference members' median (statistics.stands_out's scale)."""
    ref = s[reference] if reference.any() else s
    med = float(np.median(ref))
    return (s - med) / max(1.4826 * float(np.median(np.abs(ref - med))), min_spread)


def rankings(cfg, store: Store, c: int, truth: np.ndarray, place, at_place: np.ndarray) -> dict:
    """The rankings of class c's members (see the module's docstring); place: its probes.PlaceProbe,
    at_place (n,): every member's transfer at the confirmed group's place itself."""
    members, W, labels, ks, _ = class_clusters(store, c)
    p = cfg.score
    tr = stored_transfers(store, c)
    t = combined(tr.evidence, tr.global_)
    s = score_class(W, labels, ks, t, p)
    best = place_score(place.transfers, place.groups, W, labels, list(ks), p.min_spread)
    k, cluster, _ = place.groups[place.reach_group]
    rest = labels[list(ks).index(k)] != cluster

    def ranked(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
        return standing(spread(W, relative_transfer(x, tr.confidence, p.confidence_floor), p.smoothing), reference,
                        p.min_spread)  # fmt: skip

    by_t, by_reach, by_place = ranked(t, ~s.group), ranked(place.reach, rest), ranked(at_place, rest)
    own = standing(relative_transfer(place.reach, tr.confidence, p.confidence_floor), rest, p.min_spread)
    out = {"class score": round(s.score, 3), "place score": round(best["place_score"], 3)}
    for name, z in (
        ("transfer", by_t),
        ("reach", by_reach),
        ("reach, not spread", own),
        ("place", by_place),
        ("max z", np.maximum(by_t, by_place)),
    ):
        up = z >= p.sample_threshold
        out[name] = f"{roc_auc_score(truth, z):.3f} ({int(up[truth].sum())}/{int(up[~truth].sum())})"
    return out


def probe_at_place(cfg, store: Store, c: int, place) -> np.ndarray:
    """Every member's transfer at the confirmed group's place itself (the reach without its extension)."""
    members, W, labels, ks, _ = class_clusters(store, c)
    maps = torch.as_tensor(store.relevance(members))
    masks = evidence_masks(maps, cfg.transfer.top, maps.shape[-1])[:, 0] > 0
    groups = group_places(masks, W, labels, list(ks), cfg.transfer.place_groups, cfg.transfer.place_agree)
    cells = groups[place.reach_group][3]
    samples = store.read_table(layout.SAMPLES.name)
    ds = build_dataset(cfg.dataset)
    model, normalise = _run_model(cfg, len(ds.classes), ds.channels, torch.device("cpu"))
    hosts = images(ds, samples, host_pool(cfg, store, [c])[c])
    side = cfg.dataset.image_size
    pixels = F.interpolate(cells[None, None].float(), size=(side, side), mode="nearest")
    x = images(ds, samples, members)
    return transfer(model, normalise, x, hosts, c, pixels.expand(len(x), 1, side, side))


def border_signals(cfg, store: Store, c: int, truth: np.ndarray, rows: int = 4) -> dict:
    """The two separating signals for a stamp without a fixed place (see the module's docstring)."""
    members, W, labels, ks, _ = class_clusters(store, c)
    maps = torch.as_tensor(store.relevance(members))
    pos = maps.clamp_min(0)
    share = (pos[:, -rows:].flatten(1).sum(1) / pos.flatten(1).sum(1).clamp_min(1e-12)).numpy()
    masks = evidence_masks(maps, cfg.transfer.top, maps.shape[-1])[:, 0] > 0
    _, _, g, place = group_places(masks, W, labels, list(ks), 1, cfg.transfer.place_agree)[0]  # the first group
    samples = store.read_table(layout.SAMPLES.name)
    ds = build_dataset(cfg.dataset)
    model, normalise = _run_model(cfg, len(ds.classes), ds.channels, torch.device("cpu"))
    x = images(ds, samples, members, cfg.compute.decode_threads)
    out = {f"relevance share, bottom {rows} rows": round(roc_auc_score(truth, share), 3)}
    for i, relu in enumerate(m for m in model.modules() if isinstance(m, torch.nn.ReLU)):
        seen = {}
        hook = relu.register_forward_hook(lambda m, a, o: seen.__setitem__("f", o.detach().double()))
        with torch.no_grad():
            model(normalise(x))
        hook.remove()
        f = seen["f"]
        at = F.adaptive_max_pool2d(place[None, None].float(), f.shape[-2:])[0, 0] > 0
        rest = f[torch.as_tensor(~g)][:, :, at].mean((0, 2))
        signature = f[torch.as_tensor(g)][:, :, at].mean((0, 2)) - rest
        match = torch.einsum("nchw,c->nhw", f - rest[None, :, None, None], signature).flatten(1).max(1).values
        out[f"feature match, ReLU {i} {tuple(f.shape[-2:])}"] = round(roc_auc_score(truth, match.numpy()), 3)
    return out


def shapes_run(placement: str, work: Path):
    data, stamped = make_shapes_folder(work / "data", placement)
    config = work / "shapes.yaml"
    subprocess.run([UNHANS, "init", str(data), "--out", str(config), "--name", "shapes", "--force"], check=True,
                   capture_output=True, cwd=work)  # fmt: skip
    subprocess.run([UNHANS, "audit", "-c", str(config)], check=True, capture_output=True, cwd=work)
    os.chdir(work)
    cfg = load_config(str(config), [])
    store = Store(cfg.run_url)
    samples = store.read_table(layout.SAMPLES.name)
    disc = int(samples.loc[samples["class_key"] == "disc", "label"].iloc[0])
    members = store.read(layout.MEMBERS(c=disc))
    truth = samples.set_index("index").loc[members, "source"].str.rsplit("/", n=1).str[-1].isin(stamped).to_numpy()
    return cfg, store, disc, truth, stored_place(store, disc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--placement", choices=CORNERS, action="append", default=[])
    ap.add_argument("--run", action="append", default=[], help="a digits validation run, scenario:seed")
    args = ap.parse_args()
    torch.set_num_threads(1)
    home = Path.cwd()
    for placement in args.placement:
        with tempfile.TemporaryDirectory() as tmp:
            cfg, store, c, truth, place = shapes_run(placement, Path(tmp))
            print(placement, json.dumps(rankings(cfg, store, c, truth, place, probe_at_place(cfg, store, c, place))),
                  flush=True)  # fmt: skip
            if placement == "bottom-border":
                print(placement, json.dumps(border_signals(cfg, store, c, truth)), flush=True)
            os.chdir(home)
    spec = load_spec("demo")
    for run in args.run:
        name, seed = run.split(":")
        sc = next(s for s in spec.scenarios if s.name == name)
        cfg, poison = scenario_config(spec, sc, Path("runs/validate/demo"), [], int(seed))
        store, c = Store(cfg.run_url), int(poison.target)
        samples = store.read_table(layout.SAMPLES.name)
        ds = build_dataset(cfg.dataset)
        model, normalise = _run_model(cfg, len(ds.classes), ds.channels, torch.device("cpu"))
        members = store.read(layout.MEMBERS(c=c))
        place = class_place(cfg, store, samples, model, normalise, ds, c, members, host_pool(cfg, store, [c])[c])
        truth = samples.set_index("index").loc[members, "artifact"].to_numpy(bool)
        if place.reach_group < 0:
            print(run, "no place group is confirmed: the transfer ranks the class", flush=True)
            continue
        at_place = probe_at_place(cfg, store, c, place)
        print(run, json.dumps(rankings(cfg, store, c, truth, place, at_place)), flush=True)


if __name__ == "__main__":
    main()
