"""Does a group's excess transfer come from every host, or from hosts that look like the class? A diagnosis
for the alarm (issue 19): a natural sub-style of a class and a weakly followed shortcut can score alike.

Reads finished `unhans validate` runs (tables, stored relevance, models; nothing is written). For the top
class of every control run and the target class of every poisoned run, it pastes the evidence of each
member (the transfer stage's evidence probe: top relevance of its stored map) into every host of the
class's pool and measures p(class) on each composite less the host's own, so each member gets one
transfer per host. For the class's chosen group G and the rest R it prints the class score, the mean excess
(mean over G minus mean over R) over all hosts, and how that excess is spread over the hosts' classes:
the share of host classes where G's excess is positive, the smallest and largest excess of a host class,
and the share of the excess that the top two host classes carry (a trigger pasted anywhere should carry
the class everywhere; a style of the class may carry it only into classes that already look like it);
and how much more confidently G's members than R's are another class once their evidence is cut out.

    python benchmarks/host_spread.py --spec demo
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from unhans.pipeline.core import layout
from unhans.pipeline.core.store import Store
from unhans.pipeline.data import build_dataset
from unhans.pipeline.harness.validate import _run_model, markdown_table, runs_from_argv, scenario_config
from unhans.pipeline.method.probes import evidence_masks, host_pool, host_probability, images, transfer


def per_host(cfg, store: Store, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(members, hosts, t (n, m), other (n,)): each member's evidence transfer to class c in each host of c's
    pool, and the largest probability of a class other than c once its evidence is cut out of it (the
    masked pixels set to the image's median: a backdoored image of another class should then be that
    class again; a member whose evidence is the object itself is left with little)."""
    samples = store.read_table(layout.SAMPLES.name)
    ds = build_dataset(cfg.dataset)
    model, normalise = _run_model(cfg, len(ds.classes), ds.channels, torch.device("cpu"))
    members = store.read(layout.MEMBERS(c=c))
    hosts = host_pool(cfg, store, [c])[c]
    host_images = images(ds, samples, hosts)
    base = host_probability(model, normalise, host_images, c)
    masks = evidence_masks(torch.as_tensor(store.relevance(members)), cfg.transfer.top, cfg.dataset.image_size)
    donors = images(ds, samples, members)
    t = transfer(model, normalise, donors, host_images, c, masks, base, per_host=True)
    fill = donors.flatten(2).median(2).values[:, :, None, None]
    with torch.no_grad():
        p = torch.softmax(model(normalise(donors * (1 - masks) + fill * masks)), 1)
    p[:, c] = 0
    return members, hosts, t, p.max(1).values.numpy().astype(np.float64)


def spread(t: np.ndarray, in_group: np.ndarray, host_labels: np.ndarray) -> dict[str, float]:
    excess = t[in_group].mean(0) - t[~in_group].mean(0)  # (m,) per host
    by_class = pd.Series(excess).groupby(host_labels).mean()
    pos = by_class.clip(lower=0).sort_values(ascending=False)
    return {
        "excess": float(excess.mean()),
        "host classes > 0": float((by_class > 0).mean()),
        "min class": float(by_class.min()),
        "max class": float(by_class.max()),
        "top-2 share": float(pos.iloc[:2].sum() / pos.sum()) if pos.sum() > 0 else float("nan"),
    }


def main() -> None:
    spec, root, runs = runs_from_argv(__doc__)
    rows = []
    for sc, seed, run in runs:
        cfg, poison = scenario_config(spec, sc, root, [], seed)
        store = Store(cfg.run_url)
        cs = store.read_table(layout.CLASS_SCORES.name).set_index("class_id")
        c = int(cs["clever_hans_score"].idxmax()) if sc.control else int(poison.target)
        members, hosts, t, other = per_host(cfg, store, c)
        ss = store.read_table(layout.SAMPLE_SCORES.name).set_index("index")
        in_group = ss["in_group"].reindex(members).fillna(False).to_numpy(bool)
        if not in_group.any() or in_group.all():
            continue
        labels = store.read_table(layout.SAMPLES.name)["label"].to_numpy()
        flip = float(pd.read_csv(run / "validation.csv")["flip_rate"].iloc[0])
        row = {"scenario": sc.name, "seed": seed, "class": c, "flip rate": flip,
               "score": float(cs.at[c, "clever_hans_score"]), "flagged": bool(cs.at[c, "is_clever_hans"]),
               "group": int(in_group.sum())}  # fmt: skip
        row.update(spread(t, in_group, labels[hosts]))
        row["cut-out other: G - R"] = float(other[in_group].mean() - other[~in_group].mean())
        rows.append(row)
        print(row, flush=True)
    table = pd.DataFrame(rows)
    print("\n" + markdown_table(table))


if __name__ == "__main__":
    main()
