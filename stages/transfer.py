"""transfer: ask the model how far each sample's evidence carries its class (pipeline.scores).

Per analysed class c, for every member: its evidence transfer (its top `transfer.top` relevance
cells pasted into `transfer.hosts` correctly classified images of other classes), its global
transfer (its per-channel mean and spread imposed on the first `transfer.global_hosts` of them) and
its self-confidence p(c | member). Written to classes/<c>/{transfer_evidence, transfer_global,
self_confidence} and classes/<c>/transfer (the larger of the two transfers, what the score stage
scores), the last one stamped with the stage fingerprint after its data, so a killed run resumes
by class. These model forward passes are the expensive part of scoring (`transfer.hosts` +
`transfer.global_hosts` + 1 per sample); the score stage that reads them is statistics only, so
its settings can be changed and rerun without the model.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import torch

from pipeline.compute import resolve_device, worker_device
from pipeline.datasets import build_dataset, iter_batches
from pipeline.models import MODELS, model_for_run
from pipeline.runner import Context, stage
from pipeline.scores import evidence_masks, host_probability, transfer
from pipeline.store import Store

_CACHE: dict = {}  # per process: the run's model and dataset, built once for all its classes

DONOR_CHUNK = 256  # donor images (and their masks) held in memory at a time: bounded for 224-px classes
ARRAYS = ("transfer_evidence", "transfer_global", "self_confidence")  # Transfers' fields, in order


def _model_and_data(cfg, url: str):
    key = (url, cfg.model.model_dump_json(), cfg.dataset.model_dump_json())
    if key not in _CACHE:
        _CACHE.clear()
        store = Store(url)
        ds = build_dataset(cfg.dataset)
        device = worker_device(resolve_device(cfg.compute.device))
        model = model_for_run(cfg, store, len(ds.classes), ds.channels).to(device)
        mean, std = (t.to(device) for t in MODELS.get(cfg.model.arch).norm(ds.channels))
        _CACHE[key] = (model, ds, lambda x: (x - mean) / std)
    return _CACHE[key]


def _images(cfg, ds, samples: pd.DataFrame, idx: np.ndarray) -> torch.Tensor:
    batches = [idx[s : s + DONOR_CHUNK] for s in range(0, len(idx), DONOR_CHUNK)]
    parts = [x for _, x, _, _ in iter_batches(ds, samples, batches, cfg.poison, cfg.attribute.num_workers)]
    return torch.cat(parts) if parts else torch.zeros(0)


class Transfers(NamedTuple):
    evidence: np.ndarray  # (n,) pasted evidence (pipeline.scores, evidence probe)
    global_: np.ndarray  # (n,) per-channel statistics (global probe; zeros when transfer.global_hosts = 0)
    confidence: np.ndarray  # (n,) p(label | member)

    @property
    def combined(self) -> np.ndarray:
        """The transfer the class is scored on."""
        return np.maximum(self.evidence, self.global_)


def class_transfer(
    cfg, store, samples, model, normalise, ds, c: int, members: np.ndarray, hosts: np.ndarray
) -> Transfers:
    """Class c's members' transfers under `model` (pipeline.scores.transfer: each member's evidence,
    from its stored relevance map, pasted into the hosts; its global look imposed on the first
    `transfer.global_hosts` hosts) and their self-confidence p(c | member), one more forward pass each."""
    host_images = _images(cfg, ds, samples, hosts)
    n_global = min(cfg.transfer.global_hosts, len(host_images))
    base = host_probability(model, normalise, host_images, c)  # once per class, for both probes
    t, g, conf = (np.zeros(len(members)) for _ in range(3))
    dev = next(model.parameters()).device
    for start in range(0, len(members), DONOR_CHUNK):  # donors in chunks: memory independent of class size
        part, at = members[start : start + DONOR_CHUNK], slice(start, start + DONOR_CHUNK)
        masks = evidence_masks(torch.as_tensor(store.relevance(part)), cfg.transfer.top, cfg.dataset.image_size)
        donors = _images(cfg, ds, samples, part)
        t[at] = transfer(model, normalise, donors, host_images, c, masks, base)
        if n_global:
            g[at] = transfer(model, normalise, donors, host_images[:n_global], c, None, base[:n_global])
        with torch.no_grad():
            conf[at] = torch.softmax(model(normalise(donors.to(dev))), 1)[:, c].cpu().numpy()
    return Transfers(t, g, conf)


def stored_transfers(store, c: int) -> Transfers:
    """Class c's transfers as the stage wrote them."""
    return Transfers(*(store.array(f"classes/{c}/{a}")[:].astype(np.float64) for a in ARRAYS))


def host_pool(cfg, store, ids: list[int]) -> dict[int, np.ndarray]:
    """Per class, `transfer.hosts` seeded images of the other classes that the model gets right."""
    samples = store.read_table("samples")
    pred = store.array("attribution/prediction")[:]
    status = store.array("attribution/status")[:]
    labels = samples["label"].to_numpy()
    # chosen as a user's run chooses them, blind to a poisoned run's ground truth (artifact column)
    right = (status == 0) & (pred == labels)
    m = cfg.transfer.hosts
    out = {}
    for c in ids:
        ok = right & (labels != c)
        if not ok.any():
            ok = labels != c
        rng = np.random.default_rng([cfg.seed, c])
        # stratified over the other classes (round robin in a seeded order), so no single class that
        # looks like c can dominate the hosts; kept in that order, so the first few (the global
        # probe's) come from different classes too
        by_class = [rng.permutation(np.flatnonzero(ok & (labels == o))) for o in rng.permutation(np.unique(labels[ok]))]
        picks = [p[r] for r in range(max(map(len, by_class), default=0)) for p in by_class if r < len(p)][:m]
        out[c] = np.array(picks, dtype=np.int64)
    return out


def transfer_one(cfg, url: str, fingerprint: str, item: tuple[int, np.ndarray]) -> int:
    """One class (id, host sample indices): its members' transfers, stored; returns the member count."""
    c, hosts = item
    store = Store(url)
    samples = store.read_table("samples")
    members = store.array(f"classes/{c}/members")[:]
    model, ds, normalise = _model_and_data(cfg, url)
    tr = class_transfer(cfg, store, samples, model, normalise, ds, c, members, hosts)
    for array, values in zip(ARRAYS, tr):
        store.write_array(f"classes/{c}/{array}", values)
    store.write_array(f"classes/{c}/transfer", tr.combined, {"fingerprint": fingerprint})  # last: marks done
    return len(members)


@stage("transfer", sections=["transfer"], inputs=["distances", "attribute"])
def run(ctx: Context) -> dict:
    """Model probes per sample: evidence and global transfer, self-confidence."""
    ids = list(ctx.store.group["classes"].attrs["ids"])
    done = ctx.finished_classes(ids, "transfer")
    hosts = host_pool(ctx.cfg, ctx.store, ids)
    todo = [(c, hosts[c]) for c in ids if c not in done]
    sizes = ctx.tasks.map(transfer_one, todo, "transfer", ctx.cfg, ctx.url, ctx.fingerprint)
    return {"classes": len(ids), "samples": int(sum(sizes)), "classes_resumed": len(done)}
