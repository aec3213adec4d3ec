"""The model probes behind the Clever Hans score: how far a sample's evidence carries its class.

A Clever Hans is a property of the model, so the score asks the model. Evidence probe: a sample's
top `transfer.top` share of positive relevance cells (dilated by one cell) is pasted into
`transfer.hosts` correctly classified images of other classes, and its transfer t is the mean rise
of p(class) over the hosts. Global probe: the sample's per-channel mean and spread are imposed on
the first `transfer.global_hosts` hosts (a tint or colour cast has no pixels to paste), giving g.
Self-confidence: p(label | sample). The statistics on these are in pipeline/method/statistics.py;
the reasoning and its measurements are in docs/methods.md.

Cost: `transfer.hosts` + `transfer.global_hosts` + 1 forward passes per sample.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field

from unhans.pipeline.core import layout
from unhans.pipeline.core.config import Section
from unhans.pipeline.data import iter_batches

DONOR_CHUNK = 256  # donor images (and their masks) held in memory at a time: bounded for 224-px classes


class TransferConfig(Section):
    """The model probes behind the Clever Hans score (pipeline/method/probes.py, stages/transfer.py)."""

    top: float = Field(0.03, gt=0, le=1, description="share of relevance cells pasted as a sample's evidence")
    hosts: int = Field(16, ge=1, description="images of other classes each sample's evidence is pasted into")
    global_hosts: int = Field(
        4, ge=0, description="of those, how many take each sample's per-channel mean and spread (0: no global probe)"
    )


def evidence_masks(maps: torch.Tensor, top: float, image_size: int) -> torch.Tensor:
    """Relevance maps (n, r, r) -> pixel masks (n, 1, S, S) of each map's top `top` share of positive
    cells, dilated by one cell, at image resolution."""
    n, r = maps.shape[0], maps.shape[-1]
    pos = maps.reshape(n, -1).clamp_min(0)
    kq = max(1, round(top * r * r))
    thr = pos.topk(kq, dim=1).values[:, -1:]
    m = ((pos >= thr) & (pos > 0)).float().reshape(n, 1, r, r)
    m = F.max_pool2d(m, 3, 1, 1)
    return F.interpolate(m, size=(image_size, image_size), mode="nearest") if r != image_size else m


def paste(x: torch.Tensor, masks: torch.Tensor, hosts: torch.Tensor) -> torch.Tensor:
    """Evidence probe: images x (b, C, S, S) through masks (b, 1, S, S) onto hosts (m, C, S, S) -> (b, m, C, S, S)."""
    return hosts[None] * (1 - masks[:, None]) + x[:, None] * masks[:, None]


def restyle(x: torch.Tensor, hosts: torch.Tensor) -> torch.Tensor:
    """Global probe: hosts (m, C, S, S) with the per-channel mean and spread of each image of x
    (b, C, S, S) -> (b, m, C, S, S), clipped to [0, 1]."""
    mu_h, sd_h = hosts.mean((2, 3), keepdim=True), hosts.std((2, 3), keepdim=True).clamp_min(1e-3)
    mu_x, sd_x = x.mean((2, 3), keepdim=True), x.std((2, 3), keepdim=True)
    return (((hosts - mu_h) / sd_h)[None] * sd_x[:, None] + mu_x[:, None]).clamp(0, 1)


def host_probability(model: torch.nn.Module, normalise, hosts: torch.Tensor, c: int) -> torch.Tensor:
    """p_c of each host (m,), the baseline both probes subtract."""
    dev = next(model.parameters()).device
    with torch.no_grad():
        return F.softmax(model(normalise(hosts.to(dev))), 1)[:, c].cpu()


def transfer(
    model: torch.nn.Module,
    normalise,
    images: torch.Tensor,
    hosts: torch.Tensor,
    c: int,
    masks: torch.Tensor | None = None,
    base: torch.Tensor | None = None,
    batch: int = 512,
) -> np.ndarray:
    """Transfer to class c of images (n, C, S, S) in [0, 1] into hosts (m, C, S, S): with masks
    (n, 1, S, S) the evidence probe t_i (pasted pixels), without them the global probe g_i. base (m,):
    the hosts' own p_c (host_probability), computed here when not given."""
    m = len(hosts)
    dev = next(model.parameters()).device
    base_mean = (host_probability(model, normalise, hosts, c) if base is None else base).mean().to(dev)
    hosts = hosts.to(dev)
    with torch.no_grad():
        out = []
        per = max(1, batch // m)
        for s in range(0, len(images), per):
            x = images[s : s + per].to(dev)
            comp = restyle(x, hosts) if masks is None else paste(x, masks[s : s + per].to(dev), hosts)
            p = F.softmax(model(normalise(comp.flatten(0, 1))), 1)[:, c].reshape(len(x), m).mean(1)
            out.append((p - base_mean).cpu())
    return torch.cat(out).numpy().astype(np.float64) if out else np.zeros(0)


class Transfers(NamedTuple):
    evidence: np.ndarray  # (n,) pasted evidence t (evidence probe)
    global_: np.ndarray  # (n,) per-channel statistics g (global probe; zeros when transfer.global_hosts = 0)
    confidence: np.ndarray  # (n,) p(label | member)

    @property
    def combined(self) -> np.ndarray:
        """The transfer the class is scored on: max(t, g)."""
        return np.maximum(self.evidence, self.global_)


def images(ds, samples: pd.DataFrame, idx: np.ndarray, decode_threads: int = 0) -> torch.Tensor:
    """Images (len(idx), C, S, S) of the given samples, loaded DONOR_CHUNK at a time."""
    batches = [idx[s : s + DONOR_CHUNK] for s in range(0, len(idx), DONOR_CHUNK)]
    parts = [x for _, x, _, _ in iter_batches(ds, samples, batches, decode_threads)]
    return torch.cat(parts) if parts else torch.zeros(0)


def class_transfer(
    cfg, store, samples, model, normalise, ds, c: int, members: np.ndarray, hosts: np.ndarray
) -> Transfers:
    """Class c's members' transfers under `model`: each member's evidence, from its stored relevance map,
    pasted into the hosts; its global look imposed on the first `transfer.global_hosts` hosts; and their
    self-confidence p(c | member), one more forward pass each. Memory is independent of the class size."""
    threads = cfg.compute.decode_threads
    host_images = images(ds, samples, hosts, threads) if len(hosts) else None
    n_global = min(cfg.transfer.global_hosts, len(hosts))
    # once per class, for both probes
    base = host_probability(model, normalise, host_images, c) if host_images is not None else None
    t, g, conf = (np.zeros(len(members)) for _ in range(3))
    dev = next(model.parameters()).device
    for start in range(0, len(members), DONOR_CHUNK):
        part, at = members[start : start + DONOR_CHUNK], slice(start, start + DONOR_CHUNK)
        donors = images(ds, samples, part, threads)
        if host_images is not None:  # without images of another class, nothing can carry the class: 0
            masks = evidence_masks(torch.as_tensor(store.relevance(part)), cfg.transfer.top, cfg.dataset.image_size)
            t[at] = transfer(model, normalise, donors, host_images, c, masks, base)
        if n_global and host_images is not None and base is not None:
            g[at] = transfer(model, normalise, donors, host_images[:n_global], c, None, base[:n_global])
        with torch.no_grad():
            conf[at] = torch.softmax(model(normalise(donors.to(dev))), 1)[:, c].cpu().numpy()
    return Transfers(t, g, conf)


def stored_transfers(store, c: int) -> Transfers:
    """Class c's transfers as the transfer stage wrote them."""
    arrays = (layout.TRANSFER_EVIDENCE, layout.TRANSFER_GLOBAL, layout.SELF_CONFIDENCE)
    return Transfers(*(store.read(a(c=c)).astype(np.float64) for a in arrays))


def host_pool(cfg, store, ids: list[int]) -> dict[int, np.ndarray]:
    """Per class, `transfer.hosts` seeded images of the other classes that the model gets right,
    stratified over those classes (round robin in a seeded order), so no single class that looks
    like c can dominate the hosts, and the first few (the global probe's) come from different classes."""
    samples = store.read_table(layout.SAMPLES.name)
    pred = store.array(layout.PREDICTION())[:]
    status = store.array(layout.STATUS())[:]
    labels = samples["label"].to_numpy()
    right = (status == 0) & (pred == labels)
    m = cfg.transfer.hosts
    out = {}
    for c in ids:
        ok = right & (labels != c)
        if not ok.any():
            ok = labels != c
        rng = np.random.default_rng([cfg.seed, c])
        by_class = [rng.permutation(np.flatnonzero(ok & (labels == o))) for o in rng.permutation(np.unique(labels[ok]))]
        picks = [p[r] for r in range(max(map(len, by_class), default=0)) for p in by_class if r < len(p)][:m]
        out[c] = np.array(picks, dtype=np.int64)
    return out
