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
"""

from __future__ import annotations

import numpy as np

from unhans.pipeline.core import layout
from unhans.pipeline.core.compute import resolve_device, worker_device
from unhans.pipeline.core.runner import Context, stage
from unhans.pipeline.core.store import Store
from unhans.pipeline.data import build_dataset
from unhans.pipeline.data.models import model_for_run, model_spec
from unhans.pipeline.method.probes import class_place, class_transfer, host_pool
from unhans.pipeline.method.statistics import combined

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


def transfer_one(cfg, url: str, fingerprint: str, item: tuple[int, np.ndarray]) -> int:
    """One class (id, host sample indices): its members' transfers, stored; returns the member count."""
    c, hosts = item
    store = Store(url)
    samples = store.read_table(layout.SAMPLES.name)
    members = store.read(layout.MEMBERS(c=c))
    model, ds, normalise = _model_and_data(cfg, url)
    t, g = class_transfer(cfg, store, samples, model, normalise, ds, c, members, hosts)
    place = class_place(cfg, store, samples, model, normalise, ds, c, members, hosts)
    store.write_array(layout.TRANSFER_EVIDENCE(c=c), t)
    store.write_array(layout.TRANSFER_GLOBAL(c=c), g)
    store.write_array(layout.PLACE(c=c), place.transfers, {"groups": place.groups})
    store.write_array(layout.PLACE_REACH(c=c), place.reach, {"group": place.reach_group, "cells": place.reach_cells})
    store.write_array(layout.TRANSFER(c=c), combined(t, g), {"fingerprint": fingerprint})  # last: marks done
    return len(members)


@stage("transfer", sections=["transfer"], inputs=["cluster", "attribute"])
def run(ctx: Context) -> dict:
    """Model probes: evidence and global transfer per sample; place probe per group, and along a confirmed place."""
    ids = list(ctx.store.group["classes"].attrs["ids"])
    done = ctx.finished_classes(ids, layout.TRANSFER)
    hosts = host_pool(ctx.cfg, ctx.store, ids)
    for c in ids:
        if not len(hosts[c]):
            ctx.warn(f"class {c} has no image of another class to paste its evidence into: its transfer is 0")
    todo = [(c, hosts[c]) for c in ids if c not in done]
    sizes = ctx.tasks.map(transfer_one, todo, "transfer", ctx.cfg, ctx.url, ctx.fingerprint)
    return {"classes": len(ids), "samples": int(sum(sizes)), "classes_resumed": len(done)}
