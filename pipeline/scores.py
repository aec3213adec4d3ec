"""Clever Hans scores: does a class hold a separate group whose evidence the model follows on its own?

A Clever Hans is a property of the model, not of the data: a group of explanations that stands
apart is only a shortcut if the pixels the model relies on there carry the class by themselves.
So the score asks the model (measured on the poisoning harness; `unhans validate`):

- Transfer (per sample i of class c): the sample's evidence is its top `transfer.top` share of
  positive relevance cells, dilated by one cell, as a pixel mask M_i. Paste those pixels of image i
  into `transfer.hosts` images of other classes that the model classifies correctly (a fixed,
  seeded set per class) and measure how much the model's probability of c rises:
  t_i = mean_h [p_c(h (1 - M_i) + x_i M_i) - p_c(h)], in [-1, 1]. An artifact (a patch, a stamp,
  a trigger) is a small, self-contained cue: pasted anywhere, it drags the prediction to c. The
  typical evidence of a class (an object's parts) transfers much less out of its context.
- Global transfer (the second probe): a shortcut spread over the whole image (a tint, a colour cast,
  an exposure or contrast change) has no small set of pixels to paste. The donor's per-channel mean
  and spread are imposed on `transfer.global_hosts` host images (each host standardised per channel, then
  rescaled to the donor's statistics: the host's shapes stay, the donor's global look travels), and
  g_i is the mean rise of p_c as above. Images of a class differ little in these statistics, so g
  is close to 0 for almost every sample (the clean controls' top scores of `unhans validate` did not
  change when it came in) and large where a global look carries the class on its own (the digits'
  tint backdoor: rank 8 and per-sample AUROC 0.49 with pasted evidence alone, rank 1, score 3.1 and
  AUROC 1.0 with both). A sample's transfer is max(t_i, g_i).
- Class score: over the spectral clusterings of the class (k = 2..k_max, cluster stage) and their
  clusters G no larger than `max_group_fraction` of the class, the largest
      (mean t over G - mean t over the rest) / max(sd of t over the rest, min_spread) x (1 - conductance(G)),
  the group's excess transfer in units of the spread of the class's usual transfer, times how cut off
  the group is in the explanation graph. Both factors are scale-free (a standardised difference and a
  share of affinity), so the score compares across classes of any size; a class whose groups all
  transfer alike scores near 0. Chosen on the harness (`unhans validate`) over the raw excess, the
  median excess and a pooled-sd effect size: classes whose own evidence transfers well (a T-shirt's
  sleeves make a shirt a T-shirt) have large raw excesses but also a wide spread, while a planted
  artifact's group stands out from a class's usual transfer by more than twice as many spreads.
  min_spread (`score.min_spread`, 0.1) is the least spread a class's usual transfer is taken to
  have, so a group must lie `flag_threshold` x 0.1 = 15 probability points above the rest of its class
  to be flagged however tight that class's own transfers are: in a class whose evidence hardly
  transfers (the digits' 1s, a thin stroke) a natural sub-style raising p(class) by 9 points was 4
  spreads above the rest. Chosen on the digits harness, where it was the smallest of 0.02, 0.05 and
  0.1 that flagged no class but the poisoned one over its 27 runs (10, 4 and 0 others flagged);
  Fashion-MNIST played no part in the choice.
- Significance: the score is also compared with its own null, the best group score when the
  class's transfers are randomly permuted over its members (`permutations` draws; a Gumbel tail
  fitted to them gives p-values below 1 / draws), and the p-values of all classes are turned into
  Benjamini-Hochberg q-values. A small class can hold a chance group whose standardised excess is
  large (1 of 1,000 random classes of 8 images crossed 1.5 with a group of 3: benchmarks/
  imagenet_scale.py); its null is as wide, so its q-value is not small. Large classes always have
  some structure that goes with transfer (p <= 0.025 for every class of every Fashion-MNIST
  validation scenario), so there
  the score's threshold decides: a class is flagged when score >= `flag_threshold` and q <= `fdr`.
- Sample score: the transfer relative to the sample's own confidence, r = t / max(p(c | x), f),
  f = `confidence_floor` (0.5), spread over the class's explanation graph (label spreading, Zhou et
  al. 2004): s = (1 - a) r + a P s, P the row-normalised kNN affinity, a = `smoothing`.
  Relative: a backdoor the model has only half learned leaves training images of other classes
  that the model gives c a small probability, yet their trigger, pasted into foreign images,
  carries c as far as a bag's handle carries "bag" (Fashion-MNIST's random patch backdoor: median
  t 0.44 on the planted images, 0.47 on the clean bags, whose own p is 0.995 against 0.29). Per
  unit of c that the sample itself carries, the trigger carries more; a genuine member of c, sure
  of its class, keeps its transfer (divided by p close to 1). The floor caps the gain at 2, so a
  mislabelled image whose evidence hardly transfers stays low. Spread: samples whose explanations
  are alike share a strategy, and a shortcut's group is one strategy: a member's own transfer is
  a noisy reading of it (a partly learned artifact moves the prediction of some hosts only), its
  neighbours' readings average that noise out. benchmarks/sample_score.py prints both sweeps.
  a = 0.75 was chosen on the digits harness and checked on Fashion-MNIST, which played no part in
  it. f was chosen on the digits too (the README's Methods give the numbers), but the weakness it
  fixes was found on Fashion-MNIST, whose numbers for every f were seen before the choice. The class score stays on
  t (a group's mean already averages, and a class's confusable members must not raise it). A sample is
  flagged when its class is flagged and its score stands out: it lies `flag_threshold` spreads
  above the median score of the class's members outside the chosen group (spread: their scaled
  median absolute deviation, at least `min_spread`), the class's criterion for one sample.

Cost: one forward pass per (sample, host): `transfer.hosts` + `transfer.global_hosts` forward passes
per image, in the transfer stage (the score stage is statistics on what it stored). One LRP pass
costs about six forward passes in FLOPs (VGG-16 and ResNet-50, benchmarks/costs.py), so the default
16 + 4 hosts cost about 3.3 LRP passes: on a GPU the transfer stage is the most expensive one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from scipy.special import gammaln

from pipeline.spectral import conductance

MIN_SPREAD = 0.1  # score.min_spread's default


@dataclass
class ClassScore:
    score: float  # standardised excess transfer x separation of the chosen group (0 when none qualifies)
    k: int  # the clustering the group comes from
    cluster: int  # the group's label in that clustering
    group_size: int
    conductance: float
    group_transfer: float  # mean transfer inside the group
    rest_transfer: float  # mean transfer in the rest of the class
    group: np.ndarray  # (n,) bool
    p_value: float = float("nan")  # under the permutation null (score_class with permutations)


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


def relative_transfer(t: np.ndarray, confidence: np.ndarray, floor: float) -> np.ndarray:
    """Transfers t (n,) over the samples' own p(class) (n,), each at least `floor` (1: t unchanged):
    how much of class c a sample's evidence carries into foreign images for each unit of class c
    the whole sample carries for the model."""
    return np.asarray(t, np.float64) / np.maximum(np.asarray(confidence, np.float64), floor)


def spread(W: sp.csr_matrix, t: np.ndarray, alpha: float, tol: float = 1e-10, max_iter: int = 1000) -> np.ndarray:
    """Label spreading of t (n,) over the affinity W (n, n): the fixed point s = (1 - alpha) t + alpha P s,
    P = D^-1 W (a sample without edges keeps its own value). alpha = 0 returns t. O(nnz(W)) a step,
    converging as alpha^steps."""
    t = np.asarray(t, np.float64)
    if alpha == 0 or W.shape[0] == 0:
        return t.copy()
    deg = np.asarray(W.sum(1)).ravel()
    lonely = deg <= 0
    P = sp.diags(np.where(lonely, 0.0, 1.0 / np.where(lonely, 1.0, deg))) @ W + sp.diags(lonely.astype(np.float64))
    s = t.copy()
    for _ in range(max_iter):
        nxt = (1 - alpha) * t + alpha * (P @ s)
        if np.max(np.abs(nxt - s)) <= tol:
            return nxt
        s = nxt
    return s


def stands_out(s: np.ndarray, reference: np.ndarray, threshold: float, min_spread: float = MIN_SPREAD) -> np.ndarray:
    """(n,) bool: scores s (n,) at least `threshold` spreads above the median of the `reference`
    members (n,) bool (all when none), the spread being their median absolute deviation scaled to
    a normal's sd (1.4826), at least min_spread: robust to the artifact samples among them."""
    s = np.asarray(s, np.float64)
    ref = s[reference] if np.any(reference) else s
    if not len(ref):
        return np.zeros(len(s), bool)
    med = float(np.median(ref))
    sd = max(1.4826 * float(np.median(np.abs(ref - med))), min_spread)
    return s >= med + threshold * sd


def candidate_groups(
    W: sp.csr_matrix, labels: np.ndarray, ks: list[int], max_group_fraction: float, min_group: int = 3
) -> tuple[list[tuple[int, int]], np.ndarray, np.ndarray, np.ndarray]:
    """The clusters that may be a Clever Hans group: (k, cluster) ids, member masks G (n, m) bool, their
    separation 1 - conductance (m,) and conductance (m,). In clustering order (k, then cluster)."""
    n = W.shape[0]
    ids, cols, phis = [], [], []
    for k, lab in zip(ks, labels):
        for c in range(k):
            g = lab == c
            if min_group <= g.sum() <= max_group_fraction * n:
                ids.append((k, c))
                cols.append(g)
                phis.append(conductance(W, g))
    G = np.stack(cols, 1) if cols else np.zeros((n, 0), bool)
    phi = np.asarray(phis, np.float64)
    return ids, G, 1.0 - phi, phi


def group_scores(T: np.ndarray, G: np.ndarray, separation: np.ndarray, min_spread: float = MIN_SPREAD) -> np.ndarray:
    """Scores (B, m) of the m candidate groups for B transfer vectors T (B, n): (mean inside - mean of
    the rest) / max(sd of the rest, min_spread) x separation."""
    Gf = G.astype(np.float64)
    size = Gf.sum(0)
    rest = G.shape[0] - size
    inside, inside_sq = T @ Gf, (T * T) @ Gf
    total, total_sq = T.sum(1, keepdims=True), (T * T).sum(1, keepdims=True)
    mean_g, mean_r = inside / size, (total - inside) / rest
    sd_r = np.sqrt(np.maximum((total_sq - inside_sq) / rest - mean_r**2, 0.0))
    return (mean_g - mean_r) / np.maximum(sd_r, min_spread) * separation


def score_class(
    W: sp.csr_matrix,
    labels: np.ndarray,
    ks: list[int],
    t: np.ndarray,
    max_group_fraction: float,
    min_group: int = 3,
    permutations: int = 0,
    seed: int | list[int] = 0,
    min_spread: float = MIN_SPREAD,
) -> ClassScore:
    """W (n, n) sparse affinity; labels (len(ks), n) cluster labels for each k; t (n,) transfer.
    With `permutations` > 0, also the class's p-value (see `null_p_value`)."""
    n = W.shape[0]
    best = ClassScore(0.0, ks[0], -1, 0, 1.0, float("nan"), float(np.mean(t)) if n else 0.0, np.zeros(n, bool))
    ids, G, sep, phi = candidate_groups(W, labels, ks, max_group_fraction, min_group)
    if not ids:
        best.p_value = 1.0 if permutations else float("nan")
        return best
    scores = group_scores(np.asarray(t, np.float64)[None], G, sep, min_spread)[0]
    j = int(np.argmax(scores))
    if permutations:
        rng = np.random.default_rng(seed)
        null = group_scores(np.stack([rng.permutation(t) for _ in range(permutations)]), G, sep, min_spread).max(1)
        best.p_value = null_p_value(float(scores[j]), null, n, int(G[:, j].sum()))
    if scores[j] > 0:
        g = G[:, j]
        k, c = ids[j]
        best = ClassScore(
            float(scores[j]), k, c, int(g.sum()), float(phi[j]), float(t[g].mean()), float(t[~g].mean()), g,
            best.p_value,
        )  # fmt: skip
    return best


def null_p_value(observed: float, null: np.ndarray, n: int, size: int) -> float:
    """P(max group score >= observed) when the transfers are unrelated to the clusters: `null` holds
    the best group score of a class of n under random permutations of its transfers. Its tail is
    extrapolated by a Gumbel law fitted by moments (the maximum over many groups), so p-values below
    1 / len(null) stay distinct (a 1,000-class run corrected for multiple testing needs them); never
    below the share of draws that reached the observed score, nor below 1 / C(n, size): the chance
    that a permutation puts the same values into the chosen group, which gives it the same score (a
    tiny class's null is discrete and bounded, where a fitted tail would be too small)."""
    floor = max(float(np.mean(null >= observed)), float(np.exp(-_log_comb(n, size))))
    sd = float(null.std())
    if sd == 0:
        return 1.0 if observed <= float(null.mean()) else floor
    beta = sd * np.sqrt(6) / np.pi
    mu = float(null.mean()) - np.euler_gamma * beta
    return max(float(-np.expm1(-np.exp(-(observed - mu) / beta))), floor)


def _log_comb(n: int, k: int) -> float:
    return float(gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1))


def benjamini_hochberg(p: np.ndarray) -> np.ndarray:
    """q-values: the smallest false discovery rate at which each p-value would be called significant."""
    p = np.asarray(p, np.float64)
    m = len(p)
    if not m:
        return p
    order = np.argsort(p)
    q = p[order] * m / np.arange(1, m + 1)
    q = np.minimum.accumulate(q[::-1])[::-1]
    out = np.empty(m)
    out[order] = np.minimum(q, 1.0)
    return out
