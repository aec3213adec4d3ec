"""The model probes behind the Clever Hans score: how far a sample's evidence carries its class.

A Clever Hans is a property of the model, so the score asks the model. Evidence probe: a sample's
top `transfer.top` share of positive relevance cells (dilated by one cell) is pasted into
`transfer.probes` of its class's `transfer.hosts` correctly classified images of other classes, and
its transfer t is the mean rise of p(class) over those hosts. Global probe: the sample's per-channel
mean and spread are imposed on `transfer.global_probes` of the first `transfer.global_hosts` hosts
(a tint or colour cast has no pixels to paste), giving g. Each sample draws its own hosts from the
class's pool (`host_assignment`), so the host a probe happens to use is noise that averages out over a
group and over a sample's explanation neighbours, not a bias the whole class shares. With fewer probes
than hosts, what each host adds to every probe on it (some hosts take any evidence more readily) is
removed first (`without_host_effects`). Place probe: for the groups of a class whose evidence shares a
place (a stamp, a frame: `group_places`), members of the group and of the rest paste their own pixels
at that place into the hosts (`class_place`); a shared artifact carries the class only from the group,
and where it does, every member is probed there (along the image edge it touches), for the per-sample
score. The score also divides by
each sample's self-confidence p(label | sample), which the attribute stage stores from its explained
pass (no forward pass here). The statistics on these are in
pipeline/method/statistics.py; the reasoning and its measurements are in docs/methods.md.

Cost: `transfer.probes` + `transfer.global_probes` forward passes per sample, plus `transfer.hosts`
per class (the hosts' own p(class)), plus at most `transfer.place_groups` x 2 `transfer.place_donors` x
`transfer.place_hosts` per class for the place probe, and `transfer.place_hosts` per member of a class with
a group whose place carries the class (`transfer.place_confirm`). Fewer probes than hosts cost detection
on the validation specs (benchmarks/transfer_budget.py; docs/methods.md, "Cost").
"""

from __future__ import annotations

from collections.abc import Iterator
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
    hosts: int = Field(16, ge=1, description="images of other classes a class's evidence is pasted into (its pool)")
    probes: int = Field(
        16, ge=1, description="of those, how many each sample's evidence is pasted into (at most hosts)"
    )
    global_hosts: int = Field(
        4,
        ge=0,
        description="of the hosts, how many may take a sample's per-channel mean and spread (0: no global probe)",
    )
    global_probes: int = Field(
        4, ge=0, description="of those, how many each sample's mean and spread are imposed on (at most global_hosts)"
    )
    candidates: int = Field(
        0,
        ge=0,
        description="with fewer probes than hosts: the classes with the highest class scores on those probes (a "
        "screening of every class) whose members are then probed on every host and global host, the others "
        "keeping their screening transfers (0: none, every class stays at its probes)",
    )
    place_groups: int = Field(
        3, ge=0, description="a class's groups whose evidence has a place of its own that are probed (0: none)"
    )
    place_donors: int = Field(
        32, ge=1, description="members of such a group, and of the rest of its class, whose pixels there are pasted"
    )
    place_hosts: int = Field(
        16,
        ge=1,
        description="of the hosts, how many (the first) the place probe and its reach paste into (at most hosts)",
    )
    place_reference: int = Field(
        40,
        ge=0,
        description="in a screened run (candidates): the place probe runs on the candidates and on this many other "
        "classes drawn at random (seeded), whose place scores are the place way's null with the candidates' (the "
        "rest are not probed there); unscreened runs probe every class's place",
    )
    place_agree: float = Field(
        0.5, gt=0, le=1, description="share of a group's evidence masks a pixel must lie in to be part of its place"
    )
    place_confirm: float = Field(
        0.1,
        ge=0,
        description="rise of p(class) by which a group's drawn members' pixels at its place must carry more than the "
        "rest's for every member of the class to be probed there, along the one image edge it touches (per-sample "
        "scores by place)",
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
    """Evidence probe: images x (b, C, S, S) through masks (b, 1, S, S) onto each image's hosts
    (b, k, C, S, S) -> (b, k, C, S, S)."""
    return hosts * (1 - masks[:, None]) + x[:, None] * masks[:, None]


def restyle(x: torch.Tensor, hosts: torch.Tensor) -> torch.Tensor:
    """Global probe: each image's hosts (b, k, C, S, S) with the per-channel mean and spread of that
    image of x (b, C, S, S) -> (b, k, C, S, S), clipped to [0, 1]."""
    mu_h, sd_h = hosts.mean((3, 4), keepdim=True), hosts.std((3, 4), keepdim=True).clamp_min(1e-3)
    mu_x, sd_x = x.mean((2, 3), keepdim=True), x.std((2, 3), keepdim=True)
    return ((hosts - mu_h) / sd_h * sd_x[:, None] + mu_x[:, None]).clamp(0, 1)


def host_assignment(n: int, m: int, k: int, rng: np.random.Generator) -> np.ndarray:
    """(n, min(k, m)) positions in a pool of m hosts for n samples: each sample's k hosts spaced m // k
    apart from an offset of its own, drawn uniformly, so every host serves about n k / m samples; k >= m
    gives every sample the whole pool (in pool order)."""
    if k >= m:
        return np.broadcast_to(np.arange(m), (n, m)).copy()
    offsets = rng.integers(0, m, size=n)
    return (offsets[:, None] + (m // k) * np.arange(k)[None]) % m


def without_host_effects(vals: np.ndarray, assign: np.ndarray, m: int) -> np.ndarray:
    """Transfers vals (n, k) measured on the hosts assign (n, k) of a pool of m, less each host's effect:
    the median of what the samples that probed that host measured there, relative to the mean of those
    medians over the pool (so the class's level stays). A sample on every host (k = m) shares the
    effects with every other: returned unchanged."""
    vals = np.asarray(vals, np.float64)
    if assign.shape[1] >= m:
        return vals
    med = np.full(m, np.nan)
    for h in np.unique(assign):
        med[h] = np.median(vals[assign == h])
    return vals - (med - np.nanmean(med))[assign]


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
    assign: np.ndarray | None = None,
    batch: int = 512,
    per_host: bool = False,
) -> np.ndarray:
    """Transfer to class c of images (n, C, S, S) in [0, 1] into hosts (m, C, S, S): with masks
    (n, 1, S, S) the evidence probe t_i (pasted pixels), without them the global probe g_i. base (m,):
    the hosts' own p_c (host_probability), computed here when not given. assign (n, k): the positions
    of each image's hosts (host_assignment; default every host for every image); t_i is the mean p_c
    over its k composites less the mean base of its k hosts. per_host: (n, k), each composite's p_c
    less its host's base, instead of their mean."""
    m, n = len(hosts), len(images)
    assign = np.broadcast_to(np.arange(m), (n, m)) if assign is None else assign
    k = assign.shape[1]
    dev = next(model.parameters()).device
    base = (host_probability(model, normalise, hosts, c) if base is None else base).to(dev)
    hosts = hosts.to(dev)
    with torch.no_grad():
        out = []
        per = max(1, batch // k)
        for s in range(0, n, per):
            x = images[s : s + per].to(dev)
            at = torch.as_tensor(np.array(assign[s : s + per]), device=dev)  # a copy: assign may be a read-only view
            mine = hosts[at]  # (b, k, C, S, S)
            comp = restyle(x, mine) if masks is None else paste(x, masks[s : s + per].to(dev), mine)
            p = F.softmax(model(normalise(comp.flatten(0, 1))), 1)[:, c].reshape(len(x), k)
            out.append((p.double() - base[at].double() if per_host else p.mean(1) - base[at].mean(1)).cpu())
    if not out:
        return np.zeros((0, k) if per_host else 0)
    return torch.cat(out).numpy().astype(np.float64)


class Transfers(NamedTuple):
    """A class's members' probes as the score stage reads them."""

    evidence: np.ndarray  # (n,) pasted evidence t (evidence probe)
    global_: np.ndarray  # (n,) per-channel statistics g (global probe; zeros when transfer.global_hosts = 0)
    confidence: np.ndarray  # (n,) p(label | member), from the attribute stage


def chunks(ds, samples: pd.DataFrame, idx: np.ndarray, decode_threads: int = 0) -> Iterator[tuple[int, torch.Tensor]]:
    """(start, images (b, C, S, S)) of the given samples, DONOR_CHUNK at a time, in order; with decode threads
    the next two chunks decode while the caller probes this one (on a GPU worker the decoding hides behind
    the forward passes), so at most three chunks are held."""
    starts = range(0, len(idx), DONOR_CHUNK)
    batches = [idx[s : s + DONOR_CHUNK] for s in starts]
    for s, (_, x, _, _) in zip(starts, iter_batches(ds, samples, batches, decode_threads), strict=True):
        yield s, x


def images(ds, samples: pd.DataFrame, idx: np.ndarray, decode_threads: int = 0) -> torch.Tensor:
    """Images (len(idx), C, S, S) of the given samples, loaded DONOR_CHUNK at a time."""
    parts = [x for _, x in chunks(ds, samples, idx, decode_threads)]
    return torch.cat(parts) if parts else torch.zeros(0)


def class_transfer(
    cfg, store, samples, model, normalise, ds, c: int, members: np.ndarray, hosts: np.ndarray, full: bool = False,
    host_images: torch.Tensor | None = None,
) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
    """Class c's members' transfers (t, g) under `model`: each member's evidence, from its stored relevance
    map, pasted into `transfer.probes` of the hosts; its global look imposed on `transfer.global_probes`
    of the first `transfer.global_hosts` hosts (full: every member on every host and global host, a
    screened run's candidate class). The hosts each member gets are drawn from (run seed, class), not from
    the model: the same for the audited and a retrained model. Memory is independent of the class size.
    host_images: the hosts' images where the caller has decoded them already (else decoded here)."""
    tcfg, threads = cfg.transfer, cfg.compute.decode_threads
    if host_images is None and len(hosts):
        host_images = images(ds, samples, hosts, threads)
    n_global = min(tcfg.global_hosts, len(hosts))
    probes, global_probes = (len(hosts), n_global) if full else (tcfg.probes, tcfg.global_probes)
    rng = np.random.default_rng([cfg.seed, c, 1])
    assign = host_assignment(len(members), len(hosts), probes, rng) if len(hosts) else None
    assign_g = host_assignment(len(members), n_global, global_probes, rng) if n_global and global_probes else None
    # once per class, for both probes
    base = host_probability(model, normalise, host_images, c) if host_images is not None else None
    # with fewer probes than hosts each sample's probes are kept per host until the hosts' effects are known
    k = assign.shape[1] if assign is not None else len(hosts)
    k_g = assign_g.shape[1] if assign_g is not None else n_global
    partial, partial_g = k < len(hosts), k_g < n_global
    t = np.zeros((len(members), k) if partial else len(members))
    g = np.zeros((len(members), k_g) if partial_g else len(members))
    for start, donors in chunks(ds, samples, members, threads):
        part, at = members[start : start + DONOR_CHUNK], slice(start, start + DONOR_CHUNK)
        if host_images is not None and assign is not None:  # without images of another class, nothing carries c
            masks = evidence_masks(torch.as_tensor(store.relevance(part)), tcfg.top, cfg.dataset.image_size)
            t[at] = transfer(model, normalise, donors, host_images, c, masks, base, assign[at], per_host=partial)
        if assign_g is not None and host_images is not None and base is not None:
            g[at] = transfer(
                model, normalise, donors, host_images[:n_global], c, None, base[:n_global], assign_g[at],
                per_host=partial_g,
            )  # fmt: skip
    if partial and assign is not None:
        t = without_host_effects(t, assign, len(hosts)).mean(1)
    if partial_g and assign_g is not None:
        g = without_host_effects(g, assign_g, n_global).mean(1)
    return t, g


PLACE_GROUP_SIZES = (3, 0.5)  # groups the place probe considers: at least 3 members, at most half the class


def group_places(
    masks: torch.Tensor, W, labels: np.ndarray, ks: list[int], m: int, agree: float
) -> list[tuple[int, int, np.ndarray, torch.Tensor]]:
    """Up to m groups of a class whose evidence has a place of its own: (k, cluster, members (n,) bool,
    place (r, r) bool) from the members' evidence masks (n, r, r) bool and the k-means labels (len(ks), n).
    A group's place is the cells at least `agree` of its members have in their evidence; groups are taken
    in decreasing contrast, the mean over their place of the share of the group's masks there less the
    share of the rest's (a stamp the group shares: about 1; the class's own evidence, which the rest has
    at the same place: about 0). A group without a place (its evidence moves with the object) is skipped."""
    from unhans.pipeline.method.statistics import candidate_groups

    ids, G, _, _ = candidate_groups(W, labels, ks, PLACE_GROUP_SIZES[1], PLACE_GROUP_SIZES[0])
    if not ids:
        return []
    flat = masks.reshape(len(masks), -1).double().numpy()
    Gf = G.astype(np.float64)
    size = Gf.sum(0)[:, None]
    inside = Gf.T @ flat  # (groups, r * r) members of each group with the cell in their evidence
    share_g, share_r = inside / size, (flat.sum(0)[None] - inside) / (len(flat) - size)
    place = share_g >= agree
    cells = place.sum(1)
    contrast = np.where(cells > 0, ((share_g - share_r) * place).sum(1) / np.maximum(cells, 1), -np.inf)
    out: list[tuple[int, int, np.ndarray, torch.Tensor]] = []
    for j in np.argsort(-contrast, kind="stable"):
        if len(out) >= m or not cells[j]:
            break
        if any(np.array_equal(G[:, j], o[2]) for o in out):
            continue
        out.append((*ids[j], G[:, j], torch.as_tensor(place[j].reshape(masks.shape[1:]))))
    return out


def edge_reach(place: torch.Tensor) -> torch.Tensor:
    """Where a place (r, r) bool lies along one edge of the image: the run of rows (columns) it covers
    from that edge inward, across the whole image; elsewhere (inside the image, or in a corner, where it
    touches two edges) the place itself. A stamp, frame or watermark along a border may lie anywhere on
    it, and the place's cells further in (the objects near the border of the group that found it) are
    left out; a corner's place is not extended (along which edge would be a guess)."""
    r = len(place)
    bands = []
    for axis in (0, 1):  # rows (top and bottom edges), then columns (left and right)
        covered = place.any(1 - axis).int()
        first, last = int(torch.cumprod(covered, 0).sum()), int(torch.cumprod(covered.flip(0), 0).sum())
        for at in (slice(0, first), slice(r - last, r)):
            if at.stop > at.start:  # the place touches this edge
                band = torch.zeros_like(place)
                if axis == 0:
                    band[at, :] = True
                else:
                    band[:, at] = True
                bands.append(band)
    return bands[0] if len(bands) == 1 else place.clone()


class PlaceProbe(NamedTuple):
    """A class's place probe (class_place)."""

    transfers: np.ndarray  # (P, n): each probed group's drawn members' transfers at its place, NaN for the others
    groups: list[list[int]]  # per probed group: [k, cluster, cells of its place]
    reach: np.ndarray  # (n,): every member's transfer at the confirmed group's reach (all NaN: none)
    reach_group: int  # the confirmed group's row in transfers (-1: none)
    reach_cells: list[int]  # the reach's cells, flat indices into the (r, r) relevance map
    reach_usage: np.ndarray  # (n,): each member's relevance along the reach, relative to an even spread (NaN: none)


def relevance_usage(maps: np.ndarray, cells: list[int]) -> np.ndarray:
    """Each map's (n, r, r) share of its positive relevance at the flat cells, divided by the cells' share of
    the map (n,): 1 where the map puts as much there as anywhere, 0 where nothing (and for a map with none)."""
    pos = np.maximum(np.asarray(maps, np.float64).reshape(len(maps), -1), 0.0)
    total = pos.sum(1)
    share = np.where(total > 0, pos[:, cells].sum(1) / np.where(total > 0, total, 1.0), 0.0)
    return share / (len(cells) / pos.shape[1]) if len(cells) else np.full(len(maps), np.nan)


def class_place(
    cfg, store, samples, model, normalise, ds, c: int, members: np.ndarray, hosts: np.ndarray,
    host_images: torch.Tensor | None = None,
) -> PlaceProbe:  # fmt: skip
    """Place probe of class c: for each of its first `transfer.place_groups` groups whose evidence has a
    place of its own (group_places), up to `transfer.place_donors` seeded members of the group and as many
    of the rest of the class paste their own pixels at the group's place into the class's first
    `transfer.place_hosts` hosts (every host by default). A
    stamp, frame or watermark the group shares carries the class from the group's members and not from the
    rest's pixels there; evidence of the class itself at that place carries it from both. The group whose
    drawn members carry the most more than the rest's, at least `transfer.place_confirm`, is confirmed:
    every member of the class pastes its pixels at that group's place, extended along the one image edge it
    touches (edge_reach), into the same hosts: what ranks the samples of a class found by its place.
    host_images: all the hosts' images where the caller has decoded them already (else decoded here)."""
    tcfg = cfg.transfer
    n = len(members)
    none = PlaceProbe(np.zeros((0, n)), [], np.full(n, np.nan), -1, [], np.full(n, np.nan))
    if not tcfg.place_groups or not len(hosts) or not n:
        return none
    from unhans.pipeline.method.statistics import class_clusters

    _, W, labels, ks, _ = class_clusters(store, c)
    maps = torch.as_tensor(store.relevance(members))
    masks = evidence_masks(maps, tcfg.top, maps.shape[-1])[:, 0] > 0  # (n, r, r), at map resolution
    groups = group_places(masks, W, labels, list(ks), tcfg.place_groups, tcfg.place_agree)
    if not groups:
        return none
    rng = np.random.default_rng([cfg.seed, c, 2])
    out, meta = np.full((len(groups), n), np.nan), list[list[int]]()
    host_images = (images(ds, samples, hosts[: tcfg.place_hosts], cfg.compute.decode_threads) if host_images is None
                   else host_images[: tcfg.place_hosts])  # fmt: skip
    base = host_probability(model, normalise, host_images, c)
    carried = np.full(len(groups), -np.inf)
    drawn = [np.concatenate([rng.choice(np.flatnonzero(g), min(tcfg.place_donors, int(g.sum())), replace=False),
                             rng.choice(np.flatnonzero(~g), min(tcfg.place_donors, int((~g).sum())), replace=False)])
             for _, _, g, _ in groups]  # fmt: skip
    # a group's donors decode while the previous group's are probed
    decoded = iter_batches(ds, samples, [members[d] for d in drawn], cfg.compute.decode_threads)
    for j, ((k, cluster, g, place), donors, (_, x, _, _)) in enumerate(zip(groups, drawn, decoded, strict=True)):
        out[j, donors] = _place_transfer(cfg, model, normalise, x, host_images, c, place, base)
        if (~g).any():
            carried[j] = np.nanmean(out[j, g]) - np.nanmean(out[j, ~g])
        meta.append([int(k), int(cluster), int(place.sum())])
    j = int(np.argmax(carried))
    if carried[j] < tcfg.place_confirm:
        return PlaceProbe(out, meta, none.reach, -1, [], none.reach_usage)
    reach = edge_reach(groups[j][3])
    row = np.concatenate([
        _place_transfer(cfg, model, normalise, x, host_images, c, reach, base)
        for _, x in chunks(ds, samples, members, cfg.compute.decode_threads)
    ])  # fmt: skip
    cells = torch.flatten(reach).nonzero().ravel().tolist()
    return PlaceProbe(out, meta, row, j, cells, relevance_usage(maps.numpy(), cells))


def _place_transfer(cfg, model, normalise, x: torch.Tensor, host_images, c: int, place, base):
    """Transfer to c of the donors' (images x) own pixels at a place (r, r) bool into every host."""
    side = cfg.dataset.image_size
    pixels = F.interpolate(place[None, None].float(), size=(side, side), mode="nearest")
    return transfer(model, normalise, x, host_images, c, pixels.expand(len(x), 1, side, side), base)


def stored_transfers(store, c: int) -> Transfers:
    """Class c's transfers as the transfer stage wrote them, with its members' self-confidence."""
    t, g = (store.read(a(c=c)).astype(np.float64) for a in (layout.TRANSFER_EVIDENCE, layout.TRANSFER_GLOBAL))
    members = store.read(layout.MEMBERS(c=c))
    p = store.array(layout.LABEL_PROBABILITY()).get_orthogonal_selection((members,))
    return Transfers(t, g, np.asarray(p, np.float64))


def stored_screening(store, c: int) -> np.ndarray | None:
    """Class c's screening transfers (n,) where the transfer stage screened this run (transfer.candidates:
    classes/<c>/transfer_screen written by the run that wrote classes/<c>/transfer), else None."""
    at = layout.TRANSFER_SCREEN(c=c)
    if not store.has_array(at):
        return None
    screen, attrs = store.read_with_attrs(at)
    final = store.array(layout.TRANSFER(c=c)).attrs.get("fingerprint")
    return screen.astype(np.float64) if attrs.get("fingerprint") == final else None


def probed_in_full(store, c: int) -> bool:
    """Whether class c was a screened run's candidate (every member probed on every host)."""
    return bool(store.array(layout.TRANSFER(c=c)).attrs.get("in_full", False))


def stored_place(store, c: int) -> PlaceProbe | None:
    """Class c's place probe as the transfer stage wrote it, with its members' relevance along the reach
    (reach_usage, from their relevance maps, where a place was confirmed); None where the stage did not probe
    the class's place (a screened run's class neither candidate nor reference, stages/transfer.py)."""
    transfers, attrs = store.read_with_attrs(layout.PLACE(c=c))
    if not attrs.get("probed", True):
        return None
    reach, at = store.read_with_attrs(layout.PLACE_REACH(c=c))
    cells = list(at["cells"])
    usage = (relevance_usage(store.relevance(store.read(layout.MEMBERS(c=c))), cells) if int(at["group"]) >= 0
             else np.full(len(reach), np.nan))  # fmt: skip
    return PlaceProbe(transfers, attrs["groups"], reach, int(at["group"]), cells, usage)


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
