"""P-ClArC (projective Class Artifact Compensation, Anders et al. 2022): suppress a found shortcut
without retraining.

For a flagged class c, the artifact direction v is a concept activation vector in the space of the
penultimate features h (the input of the model's last nn.Linear). Two estimates (`direction`):

- `transfer` (the default): the mean feature shift that the flagged group's evidence causes in images
  of other classes. Each of up to 64 group members' evidence (its top `transfer.top` relevance
  cells, the masks the transfer stage pastes) is pasted into the same 64 correctly classified images of
  other classes, and v = mean h(composite) - mean h(host). The hosts' own content cancels, so v is the
  artifact's own direction, also in a backdoor, where the group's images show other classes. Where
  the score stage found the group through its global look (class_scores group_probe = global: a
  tint, a colour cast), the donors' per-channel statistics are imposed on the hosts instead of
  pasting pixels (pipeline/method/probes.py, the two probes). Its reference z is the mean projection h.v
  of the clean samples (not flagged) of all classes.
- `group`: the difference between the mean stored feature (`attribution/features`) of the flagged
  group and that of the rest of class c (the CAV of the P-ClArC paper), with the rest of class c's
  mean projection as z. In a backdoor it also carries what the group's images show, and moving
  inputs along it can make the shortcut stronger.

The corrected model replaces, at inference, the last Linear layer's input h by

    h - (h.v - z) v

so every sample looks, along v, like an average clean sample, and every component orthogonal to v
is kept. Several classes are applied one after the other in the order stored. What a shortcut
moves along v, the class it points to may need too: the projection can cost accuracy (measured).

Both are differences of means, not a linear SVM or logistic-regression normal: the flagged group is
often a few dozen samples in a 128- to 2048-dimensional feature space, where a max-margin direction
fits noise in the orthogonal dimensions; a difference of means has no hyperparameter. Measured on
the poisoning harness with `unhans verify` (docs/validation.md#verification).

Export: `files/pclarc.pt` in the run store, a torch file (loadable with weights_only=True) holding
{arch, layer, class, direction_method, direction (K, D), reference (K,)}. Load the corrected model of a run with

    from unhans.stages import load_config
    from unhans.pipeline.harness.pclarc import corrected_model
    model = corrected_model(load_config("demo"))          # eval mode, on CPU

or put the correction on a model of the same architecture you built yourself with
`apply_pclarc(model, torch.load(path, weights_only=True))`.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import torch
from torch import nn

from unhans.pipeline.core import layout
from unhans.pipeline.core.errors import UserError
from unhans.pipeline.core.store import Store
from unhans.pipeline.data import build_dataset, iter_batches
from unhans.pipeline.data.models import model_for_run, model_spec, penultimate_layer
from unhans.pipeline.method.probes import evidence_masks, paste, restyle


class Projection(nn.Module):
    """h -> h - (h.v_k - z_k) v_k for each stored direction k in turn (unit v_k)."""

    def __init__(self, directions: torch.Tensor, references: torch.Tensor) -> None:
        super().__init__()
        directions = torch.as_tensor(directions, dtype=torch.float32).reshape(-1, directions.shape[-1])
        self.register_buffer("directions", directions / directions.norm(dim=1, keepdim=True).clamp_min(1e-12))
        self.register_buffer("references", torch.as_tensor(references, dtype=torch.float32).reshape(-1))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        flat = h.reshape(len(h), -1)
        for v, z in zip(self.directions.to(flat.dtype), self.references.to(flat.dtype)):
            flat = flat - (flat @ v - z)[:, None] * v[None, :]
        return flat.reshape(h.shape)


def _layer_name(model: nn.Module, layer: nn.Module) -> str:
    return next(name for name, m in model.named_modules() if m is layer)


def apply_pclarc(model: nn.Module, correction: dict[str, Any]) -> nn.Module:
    """Put the correction on `model` (in place; also returned): a forward pre-hook on its last Linear
    layer projects that layer's input. The Projection becomes the submodule `model.pclarc`, so
    `.to(device)` moves it along."""
    layer = penultimate_layer(model)
    d = torch.as_tensor(correction["direction"])
    if d.shape[-1] != layer.in_features:
        raise UserError(
            f"the P-ClArC correction has {d.shape[-1]} features, the model's last Linear layer takes "
            f"{layer.in_features}; it was made for another model"
        )
    if getattr(model, "pclarc", None) is not None:
        raise UserError("the model already carries a P-ClArC correction")
    model.pclarc = Projection(d, torch.as_tensor(correction["reference"]))
    layer.register_forward_pre_hook(lambda _m, args: (model.pclarc(args[0]), *args[1:]))
    return model


def estimate(features: np.ndarray, in_group: np.ndarray) -> tuple[np.ndarray, float]:
    """Unit direction (difference of means: group minus rest) and the rest's mean projection."""
    f = np.asarray(features, np.float64)
    g = np.asarray(in_group, bool)
    if g.all() or not g.any():
        raise UserError("P-ClArC needs a flagged group and at least one other sample of its class")
    v = f[g].mean(0) - f[~g].mean(0)
    norm = np.linalg.norm(v)
    if norm == 0:
        raise UserError("the flagged group and the rest of its class have the same mean feature")
    v /= norm
    return v, float((f[~g] @ v).mean())


DIRECTIONS = ("transfer", "group")
TRANSFER_PAIRS = 64  # donors from the group and hosts from other classes: 64 x 64 composites per class


def transfer_direction(cfg, store, model: nn.Module, c: int, group: np.ndarray, probe: str = "evidence") -> np.ndarray:
    """Mean penultimate-feature shift caused by pasting group members' evidence into other classes'
    correctly classified images, or by imposing their global look (`probe` global), seeded choice of
    donors and hosts; unnormalised."""
    ds = _dataset(cfg)
    samples = store.read_table(layout.SAMPLES.name)
    labels = samples["label"].to_numpy()
    ok = store.array(layout.STATUS())[:] == 0
    right = ok & (store.array(layout.PREDICTION())[:] == labels) & (labels != c)
    if not right.any():
        raise UserError(f"P-ClArC for class {c}: no correctly classified image of another class to paste into")
    rng = np.random.default_rng([cfg.seed, c])
    hosts = np.sort(rng.choice(np.flatnonzero(right), min(TRANSFER_PAIRS, int(right.sum())), replace=False))
    donors = np.sort(rng.choice(group, min(TRANSFER_PAIRS, len(group)), replace=False))
    normalise = model_spec(cfg.model).normaliser(ds.channels)
    batches = list(iter_batches(ds, samples, [hosts, donors], cfg.compute.decode_threads))
    [(_, x_host, _, _), (_, x_don, _, _)] = batches
    masks = evidence_masks(torch.as_tensor(store.relevance(donors)), cfg.transfer.top, cfg.dataset.image_size)
    grabbed: list[torch.Tensor] = []
    handle = penultimate_layer(model).register_forward_pre_hook(lambda _m, a: grabbed.append(a[0].flatten(1)))
    try:
        with torch.no_grad():
            model.eval()
            model(normalise(x_host))
            f_host = grabbed.pop().double().mean(0)
            shift = torch.zeros_like(f_host)
            for x, m in zip(x_don, masks):
                comp = restyle(x[None], x_host[None]) if probe == "global" else paste(x[None], m[None], x_host[None])
                model(normalise(comp[0]))
                shift += grabbed.pop().double().mean(0) - f_host
    finally:
        handle.remove()
    return (shift / len(donors)).numpy()


REFERENCE_SAMPLES = 50_000  # clean samples whose mean feature is the transfer direction's reference


def clean_mean_feature(cfg, store, sample_scores) -> np.ndarray:
    """Mean stored penultimate feature of the attributed samples not flagged, over all classes (a seeded
    subsample of at most REFERENCE_SAMPLES)."""
    status = store.array(layout.STATUS())[:]
    flagged = np.zeros(len(status), bool)
    flagged[sample_scores.loc[sample_scores["is_clever_hans"].astype(bool), "index"].to_numpy(np.int64)] = True
    clean = np.flatnonzero((status == 0) & ~flagged)
    if len(clean) > REFERENCE_SAMPLES:
        clean = np.sort(np.random.default_rng(cfg.seed).choice(clean, REFERENCE_SAMPLES, replace=False))
    f = store.array(layout.FEATURES()).get_orthogonal_selection((clean, slice(None)))
    return f.astype(np.float64).mean(0)


def _dataset(cfg):
    return build_dataset(cfg.dataset)


def fit_pclarc(
    cfg, store, class_ids: list[int] | None = None, model: nn.Module | None = None, direction: str = "transfer"
) -> dict[str, Any]:
    """The correction of a finished run for `class_ids` (default: all flagged classes; may be empty);
    written to files/pclarc.pt and returned. A class without an isolated group is an error. `model`:
    the run's model if already built; `direction`: transfer or group (module docstring)."""
    if direction not in DIRECTIONS:
        raise UserError(f"P-ClArC direction {direction!r}: choose one of {', '.join(DIRECTIONS)}")

    if not store.has_array(layout.FEATURES()):
        raise UserError("P-ClArC needs the penultimate features: rerun attribute with attribute.features=true")
    ss = store.read_table(layout.SAMPLE_SCORES.name)
    cs = store.read_table(layout.CLASS_SCORES.name).set_index("class_id")
    if class_ids is None:
        class_ids = [int(c) for c in cs.index[cs["is_clever_hans"].astype(bool)]]
    features = store.array(layout.FEATURES())
    if model is None:
        model = model_for_run(cfg, store, *_n_classes_channels(cfg))
    directions, references = [], []
    for c in class_ids:
        rows = ss[ss["class_id"] == c]
        if rows.empty:
            raise UserError(f"class {c} has no sample scores; choose an analysed class")
        if "in_group" not in rows or not rows["in_group"].astype(bool).any():
            raise UserError(f"class {c} has no isolated group to project out")
        idx = rows["index"].to_numpy(np.int64)
        order = np.argsort(idx)
        f = features.get_orthogonal_selection((idx[order], slice(None))).astype(np.float32)
        in_group = rows["in_group"].to_numpy(bool)[order]
        v, z = estimate(f, in_group)
        if direction == "transfer":
            probe = str(cs.at[c, "group_probe"]) if "group_probe" in cs else "evidence"
            v = transfer_direction(cfg, store, model, c, idx[order][in_group], probe)
            norm = np.linalg.norm(v)
            if norm == 0:
                raise UserError(f"P-ClArC for class {c}: pasting the group's evidence changes no feature")
            v = v / norm
            z = float(clean_mean_feature(cfg, store, ss) @ v)
        directions.append(v)
        references.append(z)
    dim = features.shape[1]
    correction = {
        "arch": cfg.model.arch,
        "direction_method": direction,
        "layer": _layer_name(model, penultimate_layer(model)),
        "class": [int(c) for c in class_ids],
        "direction": torch.tensor(np.array(directions, np.float32).reshape(-1, dim)),
        "reference": torch.tensor(np.array(references, np.float32)),
    }
    buf = io.BytesIO()
    torch.save(correction, buf)
    store.write_bytes(layout.PCLARC(), buf.getvalue())
    return correction


def _n_classes_channels(cfg) -> tuple[int, int]:
    ds = _dataset(cfg)
    return len(ds.classes), ds.channels


def load_pclarc(store) -> dict[str, Any]:
    if not store.exists(layout.PCLARC()):
        raise UserError(f"no P-ClArC correction at {store.url}/{layout.PCLARC()}; run `unhans verify` first")
    return torch.load(io.BytesIO(store.read_bytes(layout.PCLARC())), map_location="cpu", weights_only=True)


def corrected_model(cfg, store=None) -> nn.Module:
    """The run's model (as model_for_run builds it) with its stored P-ClArC correction, eval mode, CPU."""
    store = store or Store(cfg.run_url)
    correction = load_pclarc(store)
    if correction["arch"] != cfg.model.arch:
        raise UserError(f"the P-ClArC correction is for {correction['arch']}, the config's model is {cfg.model.arch}")
    model = model_for_run(cfg, store, *_n_classes_channels(cfg))
    return apply_pclarc(model, correction).eval()
