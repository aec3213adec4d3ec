"""attribute: LRP relevance maps for every sample, written chunk by chunk, resumable.

Writes attribution/{relevance (N, r, r) f16, relevance_scale, logit, relevance_sum (N,) f32,
prediction, target (N,) i32, status (N,) u8, features (N, D) f16, done (chunks,) bool}. Each map
is stored divided by its largest |value| (relevance_scale), so float16 keeps full relative
precision even where a model's biases absorb most of the relevance (Store.relevance undoes it).
A chunk is `attribute.chunk_size` rows, computed in batches of `attribute.batch_size`: its rows
are written first and its `done` flag last, so a killed run resumes at the first chunk not
marked done and the result equals an uninterrupted run.
Cost: one forward and one backward pass per sample; O(N r^2) storage.
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import torch

from pipeline.attribution import LRP, sum_pool
from pipeline.compute import progress, resolve_device, worker_device
from pipeline.datasets import build_dataset, iter_batches
from pipeline.errors import UserError
from pipeline.models import MODELS, model_for_run
from pipeline.runner import Context, stage
from pipeline.store import Store

OK, SKIPPED, FAILED = 0, 1, 2  # attribution/status codes


@stage("attribute", sections=["model", "attribute"], inputs=["index", "train"])
def run(ctx: Context) -> dict:
    """Explain every sample's target logit with LRP; store pooled maps, logits and features."""
    cfg, store = ctx.cfg, ctx.store
    acfg = cfg.attribute
    size, res = cfg.dataset.image_size, acfg.resolution
    if size % res:
        raise UserError(f"attribute.resolution={res} must divide dataset.image_size={size}")
    n = len(store.read_table("samples"))
    n_chunks = -(-n // acfg.chunk_size)
    if not ctx.resume or not store.has_array("attribution/done"):
        ds = build_dataset(cfg.dataset)
        _create_arrays(ctx, n, n_chunks, model_for_run(cfg, store, len(ds.classes), ds.channels))
    done = store.array("attribution/done")[:]
    todo = [c for c in range(n_chunks) if not done[c]]
    if ctx.tasks.distributed and todo:
        # contiguous ranges of chunks, a few per worker so a slow or restarted worker does not hold up the end
        shards = np.array_split(np.asarray(todo), min(len(todo), 4 * ctx.tasks.worker_count()))
        ctx.tasks.map(attribute_chunks, [s.tolist() for s in shards], "attribute", cfg, ctx.url)
    else:
        attribute_chunks(cfg, ctx.url, todo, ctx.device)
    grp = store.group["attribution"]
    status = grp["status"][:]
    failed = [r for rel in store.list("files/attribute_failures") for r in store.read_json(rel)]
    store.write_table("attribute_failures", pd.DataFrame(failed, columns=["index", "source", "reason"]))
    return {
        "samples": n,
        "attributed": int((status == OK).sum()),
        "skipped_at_index": int((status == SKIPPED).sum()),
        "decode_failed": int((status == FAILED).sum()),
        "chunks_resumed_from": n_chunks - len(todo),
        "chunks": n_chunks,
        "device": str(ctx.device),
    }


def attribute_chunks(cfg, url: str, chunks: list[int], device: torch.device | None = None) -> int:
    """LRP for the samples of the given chunks, each chunk written whole (its `done` flag last).

    Runs in the driver, or as one Dask task per contiguous shard of chunks: every chunk's batches are
    the same either way, so the store does not depend on how the chunks were shared out."""
    store = Store(url)
    acfg = cfg.attribute
    samples = store.read_table("samples")
    ds = build_dataset(cfg.dataset)
    spec = MODELS.get(cfg.model.arch)
    device = device or worker_device(resolve_device(cfg.compute.device))
    model = model_for_run(cfg, store, len(ds.classes), ds.channels)
    n, bs, cs, res = len(samples), acfg.batch_size, acfg.chunk_size, acfg.resolution
    grp = store.group["attribution"]
    index_ok = samples["status"].to_numpy() == "ok"
    labels = torch.from_numpy(samples["label"].to_numpy(np.int64, copy=True))
    # each chunk's usable samples, in batches of `bs`
    plan = {c: np.flatnonzero(index_ok[c * cs : (c + 1) * cs]) + c * cs for c in chunks}
    batches = [(c, ix[i : i + bs]) for c, ix in plan.items() for i in range(0, len(ix), bs)]
    pin = device.type == "cuda"
    arrays = {name: grp[name] for name in _empty_rows(0, res, grp)} | {"done": grp["done"]}

    def write_chunk(c: int, rows: dict, failures: list) -> None:
        """Rows first, the chunk's done flag last: a chunk is either complete or redone."""
        for name, values in rows.items():
            arrays[name][c * cs : c * cs + len(values)] = values
        if failures:
            store.write_json(f"files/attribute_failures/{c:08d}.json", failures)
        arrays["done"][c] = True

    # one writer thread overlaps compression and I/O with the next chunk's LRP; all queued
    # writes finish even if the run is stopped, so every chunk flagged done is complete
    writer, pending = ThreadPoolExecutor(1), []
    try:
        with LRP(model, spec, acfg.composite, ds.channels, device, acfg.features, acfg.precision,
                 acfg.channels_last) as lrp:  # fmt: skip
            stream = iter_batches(ds, samples, [b for _, b in batches], cfg.poison, acfg.num_workers, pin)
            remaining = Counter(c for c, _ in batches)
            chunk_rows = {}
            bar = progress(stream, "attribute", total=len(batches), unit="batch")
            for c in chunks:  # chunks with no usable sample are written straight away
                if not remaining[c]:
                    pending.append(writer.submit(write_chunk, c, _new_rows(c, n, cs, res, grp), []))
            for (c, _), (idx, x, ok, reasons) in zip(batches, bar):
                rows, failures = chunk_rows.setdefault(c, (_new_rows(c, n, cs, res, grp), []))
                out = lrp(x, labels[idx] if acfg.target == "label" else None)
                _fill_rows(rows, idx - c * cs, ok, out, res)
                failures += [
                    {"index": int(i), "source": samples["source"].iat[i], "reason": r}
                    for i, r, o in zip(idx, reasons, ok)
                    if not o
                ]
                remaining[c] -= 1
                if not remaining[c]:
                    pending.append(writer.submit(write_chunk, c, *chunk_rows.pop(c)))
                    while len(pending) > 2:
                        pending.pop(0).result()
    finally:
        for f in pending:
            f.result()
        writer.shutdown()
    return len(chunks)


def _create_arrays(ctx: Context, n: int, n_chunks: int, model: torch.nn.Module) -> None:
    """Fresh arrays, chunked by `attribute.chunk_size` rows: each chunk is written whole, by one writer."""
    cfg, store = ctx.cfg, ctx.store
    res, cs = cfg.attribute.resolution, cfg.attribute.chunk_size
    attrs = {
        "model": cfg.model.arch,
        "weights": cfg.model.weights or ("trained" if MODELS.get(cfg.model.arch).trainable else "default"),
        "composite": cfg.attribute.composite,
        "target_rule": cfg.attribute.target,
        "resolution": res,
        "image_size": cfg.dataset.image_size,
    }
    store.create_array("attribution/relevance", (n, res, res), (cs, res, res), "float16", attrs)
    for name, dtype, fill in [
        ("relevance_scale", "float32", 1.0), ("logit", "float32", 0.0), ("relevance_sum", "float32", 0.0),
        ("prediction", "int32", -1), ("target", "int32", -1), ("status", "uint8", SKIPPED),
    ]:  # fmt: skip
        store.create_array(f"attribution/{name}", (n,), (cs,), dtype, fill_value=fill)
    if cfg.attribute.features:
        from pipeline.models import penultimate_layer

        dim = penultimate_layer(model).in_features
        store.create_array("attribution/features", (n, dim), (cs, dim), "float16")
    else:
        store.delete_array("attribution/features")
    store.create_array("attribution/done", (n_chunks,), (1,), "bool", fill_value=False)
    store.delete("files/attribute_failures")


def _fill_rows(rows: dict[str, np.ndarray], local: np.ndarray, ok: np.ndarray, out: dict, res: int) -> None:
    """Put one batch's LRP output into its chunk's rows; failed samples keep zeros / -1."""
    relevance = out["relevance"].float()  # pooled and summed in float32 whatever attribute.precision is
    rel = sum_pool(relevance, res).cpu().numpy()
    tgt = out["target"].cpu()
    logits = out["logits"].float().cpu()
    scale = np.abs(rel).reshape(len(rel), -1).max(1)
    scale = np.where(ok & (scale > 0), scale, 1.0).astype(np.float32)
    rows["relevance"][local] = np.where(ok[:, None, None], rel / scale[:, None, None], 0.0)
    rows["relevance_scale"][local] = scale
    rows["relevance_sum"][local] = np.where(ok, relevance.sum((1, 2, 3)).cpu().numpy(), 0.0)
    rows["logit"][local] = np.where(ok, logits.gather(1, tgt[:, None])[:, 0].numpy(), 0.0)
    rows["prediction"][local] = np.where(ok, logits.argmax(1).numpy(), -1)
    rows["target"][local] = np.where(ok, tgt.numpy(), -1)
    rows["status"][local] = np.where(ok, OK, FAILED)
    if "features" in rows:
        rows["features"][local] = out["features"].float().cpu().numpy() * ok[:, None]


def _new_rows(c: int, n: int, cs: int, res: int, grp) -> dict[str, np.ndarray]:
    """Rows of chunk c before any batch is filled in: every sample marked skipped."""
    rows = _empty_rows(min(n, (c + 1) * cs) - c * cs, res, grp)
    rows["status"][:] = SKIPPED
    return rows


def _empty_rows(m: int, res: int, grp) -> dict[str, np.ndarray]:
    rows = {
        "relevance": np.zeros((m, res, res), np.float16),
        "relevance_scale": np.ones(m, np.float32),
        "logit": np.zeros(m, np.float32),
        "relevance_sum": np.zeros(m, np.float32),
        "prediction": -np.ones(m, np.int32),
        "target": -np.ones(m, np.int32),
        "status": np.zeros(m, np.uint8),
    }
    if "features" in grp:
        rows["features"] = np.zeros((m, grp["features"].shape[1]), np.float16)
    return rows
