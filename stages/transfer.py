"""transfer: ask the model how far each sample's evidence carries its class (the probes:
pipeline/method/probes.py).

Per analysed class, for every member: its evidence transfer and its global transfer, written to
classes/<c>/{transfer_evidence, transfer_global}; for the class's groups whose evidence shares a place
(from the cluster stage's clusterings), the place probe of drawn members, classes/<c>/place, and where a
group's place carries the class, every member's probe along it, classes/<c>/place_reach; and
classes/<c>/transfer (the larger transfer, what the score stage scores), the last one stamped with the
stage fingerprint after its data, so a killed run resumes by class. These forward passes are
the expensive part of scoring; the score stage that reads them is statistics only, so its settings
can be changed and rerun without the model.

Screened run (`transfer.candidates` K > 0 with fewer probes than hosts): the above at the configured
probes is the screening of every class (its max(t, g) kept in classes/<c>/transfer_screen); each
class is scored on it with the score stage's statistics (so the `score` section enters this stage's
fingerprint), and the K classes with the highest scores have every member probed again on every host
(classes/<c>/transfer then holds the full probe, `in_full`), the others keep their screening transfers.
The score stage takes the flags' p-values on every class's screening score, one fidelity for all.
The place probe of a screened run runs on the candidates (with their full probes) and on
`transfer.place_reference` classes drawn at random before any score (with their screening), whose place
scores are the place way's null with the candidates'; the other classes' places are stored as not probed.
"""

from __future__ import annotations

import numpy as np

from unhans.pipeline.core import layout
from unhans.pipeline.core.compute import resolve_device, worker_device
from unhans.pipeline.core.runner import Context, stage
from unhans.pipeline.core.store import Store
from unhans.pipeline.data import build_dataset
from unhans.pipeline.data.models import model_for_run, model_spec
from unhans.pipeline.method.probes import class_place, class_transfer, host_pool, images
from unhans.pipeline.method.statistics import class_clusters, combined, transfer_score

_CACHE: dict = {}  # per process: the run's model and dataset, built once for all its classes


def _model_and_data(cfg, url: str):
    key = (url, cfg.model.model_dump_json(), cfg.dataset.model_dump_json())
    if key not in _CACHE:
        _CACHE.clear()
        store = Store(url)
        ds = build_dataset(cfg.dataset)
        device = worker_device(resolve_device(cfg.compute.device))
        model = model_for_run(cfg, store, len(ds.classes), ds.channels).to(device)
        _CACHE[key] = (model, ds, model_spec(cfg.model).normaliser(ds.channels, device))
    return _CACHE[key]


def transfer_one(cfg, url: str, fingerprint: str, item: tuple[int, np.ndarray, bool]) -> dict:
    """One class (id, host sample indices, whether to probe its place) at the configured probes, with its place
    probe where asked (stored as not probed elsewhere); screened: classes/<c>/transfer_screen last, else
    classes/<c>/transfer. Returns its member count and forward passes."""
    return _probe(cfg, url, fingerprint, item, full=False)


def full_one(cfg, url: str, fingerprint: str, item: tuple[int, np.ndarray, bool]) -> dict:
    """One candidate class of a screened run: every member probed on every host, stored over its screening
    transfers (classes/<c>/transfer_screen stays), and its place probed unless the screening did (a reference
    class); returns its member count and forward passes."""
    return _probe(cfg, url, fingerprint, item, full=True)


def _probe(cfg, url: str, fingerprint: str, item: tuple[int, np.ndarray, bool], full: bool) -> dict:
    """A class's evidence and global probes (full: on every host), its place probe, and the stored arrays, the
    class's transfer last (it marks the class done)."""
    c, hosts, with_place = item
    store = Store(url)
    samples = store.read_table(layout.SAMPLES.name)
    members = store.read(layout.MEMBERS(c=c))
    model, ds, normalise = _model_and_data(cfg, url)
    host_images = images(ds, samples, hosts, cfg.compute.decode_threads) if len(hosts) else None  # once, for both
    t, g = class_transfer(cfg, store, samples, model, normalise, ds, c, members, hosts, full=full,
                          host_images=host_images)  # fmt: skip
    passes = 0
    if with_place or not full:  # the screening stores every class's place, probed or not; a candidate its own
        passes = _place(cfg, store, samples, model, normalise, ds, c, members, hosts, host_images, with_place)
    store.write_array(layout.TRANSFER_EVIDENCE(c=c), t)
    store.write_array(layout.TRANSFER_GLOBAL(c=c), g)
    last = layout.TRANSFER_SCREEN if screened(cfg) and not full else layout.TRANSFER
    store.write_array(last(c=c), combined(t, g), {"fingerprint": fingerprint, "in_full": full})  # last: marks done
    return {"samples": len(members), "passes": _passes(cfg, len(members), len(hosts), full) + passes}


def _place(cfg, store, samples, model, normalise, ds, c, members, hosts, host_images, probe: bool) -> int:
    """Class c's place probe, stored (classes/<c>/place, classes/<c>/place_reach; without `probe` stored as not
    probed: attribute `probed` false, the score stage gives the class no place score); returns its forward
    passes."""
    if not probe:
        n = len(members)
        store.write_array(layout.PLACE(c=c), np.zeros((0, n)), {"groups": [], "probed": False})
        store.write_array(layout.PLACE_REACH(c=c), np.full(n, np.nan), {"group": -1, "cells": []})
        return 0
    place = class_place(cfg, store, samples, model, normalise, ds, c, members, hosts, host_images)
    store.write_array(layout.PLACE(c=c), place.transfers, {"groups": place.groups, "probed": True})
    store.write_array(layout.PLACE_REACH(c=c), place.reach, {"group": place.reach_group, "cells": place.reach_cells})
    probed = int(np.isfinite(place.transfers).sum() + np.isfinite(place.reach).sum()) + (1 if place.groups else 0)
    return min(cfg.transfer.place_hosts, len(hosts)) * probed


def _passes(cfg, n: int, m: int, full: bool) -> int:
    """Forward passes of a class's evidence and global probes: n members, m hosts (and the hosts' own)."""
    tcfg, n_global = cfg.transfer, min(cfg.transfer.global_hosts, m)
    if not m:
        return 0
    per = (m + n_global) if full else min(tcfg.probes, m) + min(tcfg.global_probes, n_global)
    return n * per + m


def screened(cfg) -> bool:
    """Whether the run screens: candidates set and fewer probes than hosts (else every class is probed as
    configured and none again)."""
    t = cfg.transfer
    return t.candidates > 0 and (t.probes < t.hosts or t.global_probes < min(t.global_hosts, t.hosts))


def screening_score(cfg, url: str, c: int) -> float:
    """Class c's class score on its screening transfers (the score stage's statistics, cfg.score)."""
    store = Store(url)
    _, W, labels, ks, _ = class_clusters(store, c)
    return transfer_score(W, labels, list(ks), store.read(layout.TRANSFER_SCREEN(c=c)), cfg.score).score


def place_reference(cfg, ids: list[int]) -> set[int]:
    """The classes whose place the screening probes: all of them unless the run screens; then
    `transfer.place_reference` classes drawn at random (seeded, blind to any score), the place way's null with
    the candidates', whose places are probed with their full probes."""
    if not screened(cfg):
        return set(ids)
    rng = np.random.default_rng([cfg.seed, 3])
    return {int(c) for c in rng.choice(ids, min(cfg.transfer.place_reference, len(ids)), replace=False)}


def candidates(cfg, scores: dict[int, float]) -> list[int]:
    """The `transfer.candidates` classes with the highest screening scores (ties: the lower class id)."""
    return sorted(scores, key=lambda c: (-scores[c], c))[: cfg.transfer.candidates]


@stage(
    "transfer", sections=["transfer", "score"], inputs=["cluster", "attribute"],
    reads_when={"score": screened},  # a screened run chooses its candidates with the score stage's statistics
)  # fmt: skip
def run(ctx: Context) -> dict:
    """Model probes: evidence and global transfer per sample; place probe per group, and along a confirmed place."""
    ids = list(ctx.store.group["classes"].attrs["ids"])
    screen = screened(ctx.cfg)
    done = ctx.finished_classes(ids, layout.TRANSFER_SCREEN if screen else layout.TRANSFER)
    hosts = host_pool(ctx.cfg, ctx.store, ids)
    for c in ids:
        if not len(hosts[c]):
            ctx.warn(f"class {c} has no image of another class to paste its evidence into: its transfer is 0")
    reference = place_reference(ctx.cfg, ids)
    todo = [(c, hosts[c], c in reference) for c in ids if c not in done]
    parts = ctx.tasks.map(transfer_one, todo, "transfer", ctx.cfg, ctx.url, ctx.fingerprint)
    counts = {"classes": len(ids), "samples": sum(p["samples"] for p in parts), "classes_resumed": len(done)}
    passes = sum(p["passes"] for p in parts)
    if screen:
        if ctx.cfg.transfer.candidates >= len(ids):
            ctx.warn(f"transfer.candidates ({ctx.cfg.transfer.candidates}) covers all {len(ids)} classes: each is "
                     "screened and then probed on every host; set transfer.candidates=0 with transfer.probes = "
                     "transfer.hosts to probe every class in full once")  # fmt: skip
        scores = dict(zip(ids, ctx.tasks.map(screening_score, ids, "screening", ctx.cfg, ctx.url), strict=True))
        chosen = candidates(ctx.cfg, scores)
        finished = ctx.finished_classes(chosen, layout.TRANSFER)
        todo = [(c, hosts[c], c not in reference) for c in chosen if c not in finished]
        full = ctx.tasks.map(full_one, todo, "candidates", ctx.cfg, ctx.url, ctx.fingerprint)
        passes += sum(p["passes"] for p in full)
        for c in ids:
            if c not in chosen:  # a screened class is scored on its screening transfers
                ctx.store.write_array(layout.TRANSFER(c=c), ctx.store.read(layout.TRANSFER_SCREEN(c=c)),
                                      {"fingerprint": ctx.fingerprint, "in_full": False})  # fmt: skip
        counts["candidates"] = [int(c) for c in chosen]
    # the forward passes this run made, per analysed sample (a resumed run: those made since it resumed)
    analysed = sum(ctx.store.array(layout.MEMBERS(c=c)).shape[0] for c in ids)
    counts["passes_per_sample"] = round(passes / analysed, 2) if analysed else 0.0
    return counts
