"""How few probes per sample the transfer stage can afford: detection against the number of hosts each
sample's evidence (and global look) is measured on.

Reads finished `unhans validate` runs (their models, maps and clusterings; nothing is written there). Per run,
every class's probes are measured once on every host of the class's pool (`transfer.hosts` evidence,
`transfer.global_hosts` global), one column per host; then each budget (k evidence probes and k_g
global probes per sample, the hosts drawn per sample as the transfer stage draws them, several draws)
is scored from those columns with the score stage's statistics, so all budgets see the same model,
maps and hosts; the hosts' effects are removed as the stage removes them (`--raw`: kept). `--smooth a`
also scores each class on its transfers spread over the class graph with weight a (the score stage's
`score.group_smoothing`) instead of the raw ones; `--confirm M` and `--candidates K`: see `evaluate`.
Prints per scenario, over its runs and draws: the target's rank, its score and the highest other class's
score, whether it is flagged, flags in other classes, and the target's per-sample AUROC; then, over the runs
whose model follows the artifact (flip rate >= 0.2), the share ranked first and in the top two, the share
flagged, the median AUROC, the share whose screening score would be among the K best of 1,000 classes
(`--of-1000`, default 10: a screened run's candidates at ImageNet; projected: 1 + 999 x the share above
it of the Gumbel law fitted to the other classes' screening scores, the law the p-values assume), and the
flags in other classes per run of every scenario.

    python benchmarks/transfer_budget.py --spec demo --draws 3 --budgets 16/4 2/1 1/1 --smooth 0 0.75 --confirm 0 32
    python benchmarks/transfer_budget.py --spec fashion-mnist --draws 2 --budgets 16/4 2/1 1/1 --smooth 0 0.75
    python benchmarks/transfer_budget.py --spec demo --draws 3 --budgets 16/4 2/1 --candidates 1 2 --null mixed screen
    python benchmarks/transfer_budget.py --spec demo --draws 3 --budgets 2/1 1/1 2/0 --smooth 0 0.75 --of-1000 10 20 40
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from sklearn.metrics import roc_auc_score

from unhans.pipeline.core import layout
from unhans.pipeline.core.store import Store
from unhans.pipeline.data import build_dataset
from unhans.pipeline.harness.validate import _run_model, finished_runs, load_spec, scenario_config
from unhans.pipeline.method.probes import (
    DONOR_CHUNK,
    evidence_masks,
    host_assignment,
    host_pool,
    host_probability,
    images,
    stored_transfers,
    transfer,
    without_host_effects,
)
from unhans.pipeline.method.statistics import (
    class_clusters,
    flag_classes,
    gumbel_fits_without_each,
    relative_transfer,
    score_class,
    spread,
)


def per_host(cfg, store, samples, model, normalise, ds, c, members, hosts) -> tuple[np.ndarray, np.ndarray]:
    """Class c's members' transfers on each host alone: evidence (n, H) and global (n, H_g)."""
    tcfg = cfg.transfer
    host_images = images(ds, samples, hosts)
    n_global = min(tcfg.global_hosts, len(hosts))
    base = host_probability(model, normalise, host_images, c)
    E, G = np.zeros((len(members), len(hosts))), np.zeros((len(members), n_global))
    for start in range(0, len(members), DONOR_CHUNK):
        part, at = members[start : start + DONOR_CHUNK], slice(start, start + DONOR_CHUNK)
        donors = images(ds, samples, part)
        masks = evidence_masks(torch.as_tensor(store.relevance(part)), tcfg.top, cfg.dataset.image_size)
        one = np.zeros((len(part), 1), np.int64)
        for j in range(len(hosts)):
            E[at, j] = transfer(model, normalise, donors, host_images, c, masks, base, one + j)
        for j in range(n_global):
            G[at, j] = transfer(model, normalise, donors, host_images[:n_global], c, None, base[:n_global], one + j)
    return E, G


def probed(V: np.ndarray, a: np.ndarray, centre: bool) -> np.ndarray:
    """Each sample's mean over its hosts a (n, k) of the columns V (n, m); `centre`: less the hosts'
    effects, as the transfer stage removes them (probes.without_host_effects)."""
    vals = np.take_along_axis(V, a, 1)
    return (without_host_effects(vals, a, V.shape[1]) if centre else vals).mean(1)


def budget_transfers(E: np.ndarray, G: np.ndarray, k: int, kg: int, rng: np.random.Generator, centre: bool = True):
    """(t, g) of k evidence and kg global probes per sample, hosts drawn and their effects removed as the
    transfer stage does (centre=False: kept)."""
    n = len(E)
    t = probed(E, host_assignment(n, E.shape[1], k, rng), centre)
    if not kg or not G.shape[1]:
        return t, np.zeros(n)
    return t, probed(G, host_assignment(n, G.shape[1], kg, rng), centre)


def evaluate(
    classes: dict,
    cfg,
    target: int,
    truth: np.ndarray,
    t_g: dict,
    smooth: float = 0.0,
    confirm: int = 0,
    cols=None,
    candidates: int = 0,
    null: str = "mixed",
) -> dict:
    """Class scores, flags and the target's per-sample AUROC for one set of per-class (t, g); `smooth`:
    the class score on the transfers spread over the class graph with this weight (0: as the score
    stage scores). `confirm` M > 0: the transfers screen; each class's best group on them is confirmed
    on every host (`cols`: the per-host columns) for M of its members and M of the rest, and the class
    scored on those: (mean of the confirmed group members - mean of the confirmed rest) / max(their sd,
    min_spread) x separation; every confirmed sample keeps its confirmed transfer. `candidates` K > 0: the
    transfers screen; the K classes with the best screening scores are probed in full (every member on every
    host: their scores and per-sample scores are the full budget's), the others keep their screening scores;
    `null`: the flags' p-values on those scores ("mixed") or on every class's screening score ("screen",
    flag_classes' reference, as the transfer stage's `transfer.candidates` does). Adds the forward passes a
    sample that took beyond the screening's (as the stage does it: a candidate's members again on every host;
    the self-confidence comes from the attribute stage)."""
    p = cfg.score

    def scored(d: dict, t: np.ndarray):
        return score_class(d["W"], d["labels"], d["ks"], spread(d["W"], t, smooth) if smooth else t, p)

    screened = {c: scored(d, np.maximum(*t_g[c])) for c, d in classes.items()}
    full = set(sorted(screened, key=lambda c: -screened[c].score)[:candidates])
    scores, target_scores, passes, n_all = {}, None, 0.0, 0
    for c, d in classes.items():
        t, best = np.maximum(*t_g[c]), screened[c]
        if c in full:
            E, G = cols[c]  # every host, as the full budget's row scores it
            t = np.maximum(*budget_transfers(E, G, E.shape[1], G.shape[1], np.random.default_rng([cfg.seed, c, 1])))
            best = scored(d, t)
            passes += len(t) * (E.shape[1] + G.shape[1])
        scores[c] = best.score
        n_all += len(t)
        if confirm and best.group.any():
            E, G = cols[c]
            rng = np.random.default_rng([cfg.seed, c, 2])
            pick = [
                rng.choice(np.flatnonzero(m), min(confirm, int(m.sum())), replace=False)
                for m in (best.group, ~best.group)
            ]
            both = np.concatenate(pick)
            t = t.copy()
            t[both] = np.maximum(E[both].mean(1), G[both].mean(1) if G.shape[1] else 0.0)
            inside, rest = t[pick[0]], t[pick[1]]
            sd = rest.std() if len(rest) > 1 else 0.0
            scores[c] = max(0.0, (inside.mean() - rest.mean()) / max(sd, p.min_spread) * (1 - best.conductance))
            passes += len(both) * (E.shape[1] + G.shape[1])
        if c == target:
            rel = relative_transfer(t, d["confidence"], p.confidence_floor)
            target_scores = spread(d["W"], rel, p.smoothing)
    ids = sorted(scores, key=lambda c: -scores[c])
    s = np.array([scores[c] for c in ids])
    # the target among 1,000 classes, projected: its screening score against the Gumbel law fitted to the other
    # classes' screening scores (as class_p_values fits it), 1 + 999 x the share of that law above it
    at_screen = list(classes).index(target)
    mu, beta = gumbel_fits_without_each(np.array([screened[c].score for c in classes]))
    z = (screened[target].score - mu[at_screen]) / beta[at_screen]
    rank_1000 = 1 + 999 * -np.expm1(-np.exp(-z))
    reference = np.array([screened[c].score for c in ids]) if null == "screen" and candidates else None
    _, _, flags = flag_classes(s, p, cfg.seed, reference=reference)
    at = ids.index(target)
    others = np.arange(len(ids)) != at
    return {
        "rank": at + 1,
        "score": float(s[at]),
        "top_other": float(s[others].max()),
        "flagged": bool(flags[at]),
        "other_flags": int(flags[others].sum()),
        "auroc": roc_auc_score(truth, target_scores) if 0 < truth.sum() < len(truth) else np.nan,
        "confirm_passes": passes / max(n_all, 1),
        "rank_1000": float(rank_1000),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", default="demo")
    ap.add_argument("--root", default=None)
    ap.add_argument("--budgets", nargs="+", default=["16/4", "3/1", "2/1", "1/1"], help="k/k_g per sample")
    ap.add_argument("--draws", type=int, default=3, help="host draws per budget (the first is the stage's own)")
    ap.add_argument("--scenario", action="append", help="only these scenarios")
    ap.add_argument("--cache", default=None, help="keep the per-host transfers here, to score other budgets again")
    ap.add_argument(
        "--confirm",
        nargs="+",
        type=int,
        default=[0],
        help="also confirm each class's best group: M of its members and M of the rest on every host",
    )
    ap.add_argument(
        "--candidates",
        nargs="+",
        type=int,
        default=[0],
        help="also probe the K classes with the best screening scores in full (every member on every host)",
    )
    ap.add_argument("--null", nargs="+", choices=["mixed", "screen"], default=["screen"],
                    help="with --candidates: the flags' p-values on the scores as ranked (mixed), or on every "
                    "class's screening score (screen, as the stage)")  # fmt: skip
    ap.add_argument("--of-1000", nargs="+", type=int, default=[10], metavar="K",
                    help="report the share of followed runs whose screening score would rank in the top K of 1,000 "
                    "classes (projected), for each K (a screened run's candidates at ImageNet)")  # fmt: skip
    ap.add_argument("--raw", action="store_true", help="keep the hosts' effects (the stage before it removed them)")
    ap.add_argument("--smooth", nargs="+", type=float, default=[0.0],
                    help="class scores also on transfers spread over the class graph with these weights")  # fmt: skip
    args = ap.parse_args()
    torch.set_num_threads(1)
    spec = load_spec(args.spec)
    root = Path(args.root or f"runs/validate/{spec.name}")
    out = []
    for sc, seed, run in finished_runs(spec, root):
        if args.scenario and sc.name not in args.scenario:
            continue
        cfg, poison = scenario_config(spec, sc, root, [], seed)
        store = Store(cfg.run_url)
        samples = store.read_table(layout.SAMPLES.name)
        ds = build_dataset(cfg.dataset)
        model, normalise = _run_model(cfg, len(ds.classes), ds.channels, torch.device("cpu"))
        ids = list(store.group["classes"].attrs["ids"])
        pools = host_pool(cfg, store, ids)
        flip = float(pd.read_csv(run / "validation.csv")["flip_rate"].iloc[0])
        classes, cols = {}, {}
        for c in ids:
            members, W, labels, ks, n_clusters = class_clusters(store, c)
            conf = stored_transfers(store, c).confidence
            classes[c] = dict(members=members, W=W, labels=labels, ks=ks, confidence=conf)
            cached = Path(args.cache) / spec.name / sc.name / f"seed-{seed}-class-{c}.npz" if args.cache else None
            if cached and cached.exists():
                z = np.load(cached)
                cols[c] = (z["E"], z["G"])
            else:
                cols[c] = per_host(cfg, store, samples, model, normalise, ds, c, members, pools[c])
                if cached:
                    cached.parent.mkdir(parents=True, exist_ok=True)
                    np.savez(cached, E=cols[c][0], G=cols[c][1])
        target = poison.target
        truth = samples["artifact"].to_numpy(bool)[classes[target]["members"]] if not sc.control else None
        truth = truth if truth is not None else np.zeros(len(classes[target]["members"]), bool)
        for b in args.budgets:
            k, kg = (int(x) for x in b.split("/"))
            for d in range(args.draws if k < cfg.transfer.hosts else 1):
                t_g = {}
                for c in ids:
                    rng = np.random.default_rng([cfg.seed, c, 1] if d == 0 else [cfg.seed, c, 1, d])
                    t_g[c] = budget_transfers(*cols[c], k, kg, rng, not args.raw)
                for sm in args.smooth:
                    runs = [(m, 0, "mixed") for m in args.confirm]
                    runs += [(0, kc, nu) for kc in args.candidates if kc for nu in args.null]
                    for m, kc, nu in runs:
                        if k >= cfg.transfer.hosts and (m or kc):
                            continue
                        r = evaluate(classes, cfg, target, truth, t_g, sm, m, cols, kc, nu)
                        name = f"{b} s{sm:g}" + (f" c{m}" if m else "") + (f" K{kc} {nu}" if kc else "")
                        passes = k + kg + r.pop("confirm_passes")
                        out.append({"scenario": sc.name, "seed": seed, "control": sc.control, "flip": flip,
                                    "budget": name, "draw": d, "passes": passes} | r)  # fmt: skip
                        print(out[-1], flush=True)
    df = pd.DataFrame(out)
    pd.set_option("display.width", 200)
    agg = df.groupby(["scenario", "budget"], sort=False).agg(
        runs=("seed", "size"), flip=("flip", "mean"), rank=("rank", "mean"), first=("rank", lambda r: (r == 1).mean()),
        score=("score", "median"), top_other=("top_other", "median"), flagged=("flagged", "mean"),
        other_flags=("other_flags", "sum"), auroc=("auroc", "median"),
    )  # fmt: skip
    print(agg.round(3).to_string())
    followed = df[(df["flip"] >= 0.2) & ~df["control"]]
    summary = followed.groupby("budget", sort=False).agg(
        passes=("passes", "mean"), runs=("rank", "size"), first=("rank", lambda r: (r == 1).mean()),
        top2=("rank", lambda r: (r <= 2).mean()), flagged=("flagged", "mean"), auroc=("auroc", "median"),
        top_other=("top_other", "median"),
        **{f"top{k}_of_1000": ("rank_1000", lambda r, k=k: (r <= k).mean()) for k in args.of_1000},
    )  # fmt: skip
    alarms = df.groupby("budget", sort=False)["other_flags"].agg(["sum", "size"])
    summary["false_flags_per_run"] = alarms["sum"] / alarms["size"]
    print("\nfollowed runs (flip rate >= 0.2; runs x draws; top_other: the median highest score of another class;"
          " topK_of_1000: the share whose screening score would rank in the top K of 1,000 classes, projected"
          " from the Gumbel law of the other classes' screening scores), and flags in other classes per run of"
          " every scenario:")  # fmt: skip
    print(summary.round(3).to_string())


if __name__ == "__main__":
    main()
