"""attribute: LRP relevance maps for every sample, written chunk by chunk, resumable (LRP itself:
pipeline/method/attribution.py; the arrays: the attribute entries of pipeline/core/layout.py).

Each map is stored divided by its largest |value| (relevance_scale), so float16 keeps full relative
precision even where a model's biases absorb most of the relevance (Store.relevance undoes it).
A chunk is `attribute.chunk_size` rows, computed in batches of `attribute.batch_size`: its rows
are written first and its `done` flag last, so a killed run resumes at the first chunk not
marked done and the result equals an uninterrupted run.
The explained pass also gives each sample's p(label), its self-confidence for the score stage.
It also stores each image's thumbnail (attribute.thumbnail px, RGB), the report's member tiles: the images
are decoded here anyway, so the report decodes only its prototypes.
Cost: one forward and one modified backward pass per sample (about 3 forward passes of FLOPs with
the z+ rule: pipeline/method/lrp.py), the thumbnails in threads beside it; O(N (r^2 + 3 t^2))
storage (at 64 px 12 KiB an RGB image before compression, 2 KiB its map).
"""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pandas as pd
import torch

from unhans.pipeline.core import layout
from unhans.pipeline.core.compute import progress, resolve_device, worker_device
from unhans.pipeline.core.errors import UserError
from unhans.pipeline.core.runner import Context, stage
from unhans.pipeline.core.store import Store
from unhans.pipeline.data import build_dataset, iter_batches
from unhans.pipeline.data.models import model_for_run, model_spec, penultimate_layer, trained_by_run
from unhans.pipeline.method.attribution import LRP, sum_pool
from unhans.pipeline.method.training import chance, quality_warnings
from unhans.pipeline.report.render import GREY, loaded_rgb, thumbs

OK, SKIPPED, FAILED = 0, 1, 2  # attribution/status codes
# the per-sample arrays, chunked by attribute.chunk_size rows (their dtypes and fills: pipeline/core/layout.py)
ROWS = {"relevance": layout.RELEVANCE, "relevance_scale": layout.RELEVANCE_SCALE, "logit": layout.LOGIT,
        "label_probability": layout.LABEL_PROBABILITY, "relevance_sum": layout.RELEVANCE_SUM,
        "prediction": layout.PREDICTION, "target": layout.TARGET, "status": layout.STATUS,
        "features": layout.FEATURES, "thumbnails": layout.THUMBNAILS}  # fmt: skip
THUMBNAIL_ROWS = 64  # at most this many thumbnails a zarr chunk


@stage("attribute", sections=["model", "attribute"], inputs=["index", "train"])
def run(ctx: Context) -> dict:
    """Explain every sample's target logit with LRP; store pooled maps, logits, p(label) and features."""
    cfg, store = ctx.cfg, ctx.store
    acfg = cfg.attribute
    size, res = cfg.dataset.image_size, acfg.resolution
    if size % res:
        raise UserError(f"attribute.resolution={res} must divide dataset.image_size={size}")
    n = len(store.read_table(layout.SAMPLES.name))
    n_chunks = -(-n // acfg.chunk_size)
    fresh = not ctx.resume or not store.has_array(layout.DONE())
    ds = build_dataset(cfg.dataset) if fresh or not ctx.tasks.distributed else None
    if fresh:
        _create_arrays(ctx, n, n_chunks, model_for_run(cfg, store, len(ds.classes), ds.channels))
    done = store.array(layout.DONE())[:]
    todo = [c for c in range(n_chunks) if not done[c]]
    if ctx.tasks.distributed and todo:
        # contiguous ranges of chunks, a few per worker so a slow or restarted worker does not hold up the end
        shards = np.array_split(np.asarray(todo), min(len(todo), 4 * ctx.tasks.worker_count()))
        ctx.tasks.map(attribute_chunks, [s.tolist() for s in shards], "attribute", cfg, ctx.url)
    else:
        attribute_chunks(cfg, ctx.url, todo, ctx.device, ds)
    status = store.array(layout.STATUS())[:]
    failed = [r for rel in store.list(layout.FAILURE_CHUNKS()) for r in store.read_json(rel)]
    store.write_table(layout.ATTRIBUTE_FAILURES.name, pd.DataFrame(failed, columns=["index", "source", "reason"]))
    if failed:
        ctx.warn(f"{len(failed)} images could not be decoded; they are dropped (tables/attribute_failures)")
    ok = status == OK
    labels = store.read_table(layout.SAMPLES.name)["label"].to_numpy()[ok]
    acc = float((store.array(layout.PREDICTION())[:][ok] == labels).mean()) if ok.any() else float("nan")
    if not trained_by_run(cfg):  # a given model: the train stage measured none on held-out images
        where = "on these images (it may have been trained on them)"
        for w in quality_warnings(acc, float("nan"), chance(labels), "the model", where):
            ctx.warn(w)
    return {
        "samples": n,
        "attributed": int((status == OK).sum()),
        "skipped_at_index": int((status == SKIPPED).sum()),
        "decode_failed": int((status == FAILED).sum()),
        "chunks_resumed_from": n_chunks - len(todo),
        "chunks": n_chunks,
        "accuracy": round(acc, 4) if np.isfinite(acc) else None,
        "device": str(ctx.device),
    }


def attribute_chunks(cfg, url: str, chunks: list[int], device: torch.device | None = None, ds=None) -> int:
    """LRP for the samples of the given chunks, each chunk written whole (its `done` flag last).

    Runs in the driver, or as one Dask task per contiguous shard of chunks: every chunk's batches are
    the same either way, so the store does not depend on how the chunks were shared out. `ds`: the
    dataset when the caller has it open already (else it is opened here)."""
    store = Store(url)
    acfg = cfg.attribute
    samples = store.read_table(layout.SAMPLES.name)
    ds = ds if ds is not None else build_dataset(cfg.dataset)
    spec = model_spec(cfg.model)
    device = device or worker_device(resolve_device(cfg.compute.device))
    model = model_for_run(cfg, store, len(ds.classes), ds.channels)
    n, bs, cs, res = len(samples), acfg.batch_size, acfg.chunk_size, acfg.resolution
    index_ok = samples["status"].to_numpy() == "ok"
    labels = torch.from_numpy(samples["label"].to_numpy(np.int64, copy=True))
    # each chunk's usable samples, in batches of `bs`
    plan = {c: np.flatnonzero(index_ok[c * cs : (c + 1) * cs]) + c * cs for c in chunks}
    batches = [(c, ix[i : i + bs]) for c, ix in plan.items() for i in range(0, len(ix), bs)]
    pin = device.type == "cuda"
    arrays = {name: store.array(ROWS[name]()) for name in _empty_rows(0, res, store)} | {
        "done": store.array(layout.DONE())
    }

    def write_chunk(c: int, rows: dict, failures: list, thumbnailing: list | None = None) -> None:
        """Rows first (its thumbnails finished), the chunk's done flag last: a chunk is either complete or redone."""
        for job in thumbnailing or ():
            job.result()
        for name, values in rows.items():
            arrays[name][c * cs : c * cs + len(values)] = values
        if failures:
            store.write_json(f"{layout.FAILURE_CHUNKS()}/{c:08d}.json", failures)
        arrays["done"][c] = True

    # one writer thread overlaps compression and I/O with the next chunk's LRP, the thumbnails are drawn in
    # threads of their own (about 1 ms an image at 224 px: more than one thread's worth beside a GPU); all
    # queued writes finish even if the run is stopped, so every chunk flagged done is complete
    writer, pending = ThreadPoolExecutor(1), []
    thumbnailer = ThreadPoolExecutor(max(1, cfg.compute.decode_threads))
    try:
        with LRP(model, spec, acfg.composite, ds.channels, device, acfg.features, acfg.precision,
                 acfg.channels_last) as lrp:  # fmt: skip
            stream = iter_batches(ds, samples, [b for _, b in batches], cfg.compute.decode_threads, pin)
            remaining = Counter(c for c, _ in batches)
            chunk_rows = {}
            bar = progress(stream, "attribute", total=len(batches), unit="batch")
            for c in chunks:  # chunks with no usable sample are written straight away
                if not remaining[c]:
                    pending.append(writer.submit(write_chunk, c, _new_rows(c, n, cs, res, store), []))
            for (c, _), (idx, x, ok, reasons) in zip(batches, bar):
                if c not in chunk_rows:  # a chunk's rows are made at its first batch, not at every batch
                    chunk_rows[c] = (_new_rows(c, n, cs, res, store), [], [])
                rows, failures, thumbnailing = chunk_rows[c]
                out = lrp(x, labels[idx] if acfg.target == "label" else None)
                _fill_rows(rows, idx - c * cs, ok, out, res, labels[idx])
                thumbnailing.append(thumbnailer.submit(_fill_thumbnails, rows["thumbnails"], idx - c * cs, x, ok))
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
        thumbnailer.shutdown()
    return len(chunks)


def _create_arrays(ctx: Context, n: int, n_chunks: int, model: torch.nn.Module) -> None:
    """Fresh arrays, chunked by `attribute.chunk_size` rows: each chunk is written whole, by one writer."""
    cfg, store = ctx.cfg, ctx.store
    res, cs = cfg.attribute.resolution, cfg.attribute.chunk_size
    attrs = {
        "model": cfg.model.arch,
        "weights": cfg.model.weights or ("trained" if model_spec(cfg.model).trainable else "default"),
        "composite": cfg.attribute.composite,
        "target_rule": cfg.attribute.target,
        "resolution": res,
        "image_size": cfg.dataset.image_size,
    }
    store.create_array(layout.RELEVANCE(), (n, res, res), (cs, res, res), attrs)
    for name in ("relevance_scale", "logit", "label_probability", "relevance_sum", "prediction", "target", "status"):
        store.create_array(ROWS[name](), (n,), (cs,))
    t = min(cfg.attribute.thumbnail, cfg.dataset.image_size)
    # rows a zarr chunk of thumbnails: the largest divisor of the chunk size up to 64, so a class of a few images
    # reads (decompresses) 64 of them, not a chunk's 1,024 (12 KiB each at 64 px), and each zarr chunk still
    # lies in one attribute chunk, written by one writer
    rows = max(d for d in range(1, min(cs, THUMBNAIL_ROWS) + 1) if cs % d == 0)
    store.create_array(layout.THUMBNAILS(), (n, t, t, 3), (rows, t, t, 3), {"side": t})
    if cfg.attribute.features:
        dim = penultimate_layer(model).in_features
        store.create_array(layout.FEATURES(), (n, dim), (cs, dim))
    else:
        store.delete_array(layout.FEATURES())
    store.create_array(layout.DONE(), (n_chunks,), (1,))
    store.delete(layout.FAILURE_CHUNKS())


def _fill_rows(
    rows: dict[str, np.ndarray], local: np.ndarray, ok: np.ndarray, out: dict, res: int, labels: torch.Tensor
) -> None:
    """Put one batch's LRP output into its chunk's rows; failed samples keep zeros / -1. The softmax at
    each sample's label is its self-confidence, which the score stage reads (no forward pass of its own)."""
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
    p_label = torch.softmax(logits, 1).gather(1, labels[:, None])[:, 0].numpy()
    rows["label_probability"][local] = np.where(ok, p_label, 0.0)
    rows["prediction"][local] = np.where(ok, logits.argmax(1).numpy(), -1)
    rows["target"][local] = np.where(ok, tgt.numpy(), -1)
    rows["status"][local] = np.where(ok, OK, FAILED)
    if "features" in rows:
        rows["features"][local] = out["features"].float().cpu().numpy() * ok[:, None]


def _fill_thumbnails(thumbnails: np.ndarray, local: np.ndarray, x: torch.Tensor, ok: np.ndarray) -> None:
    """One batch's thumbnails (images x as loaded, in [0, 1]), area-averaged as the report draws them."""
    thumbnails[local] = thumbs(loaded_rgb(x.numpy(), ok), thumbnails.shape[1])


def _new_rows(c: int, n: int, cs: int, res: int, store: Store) -> dict[str, np.ndarray]:
    """Rows of chunk c before any batch is filled in: every sample marked skipped."""
    rows = _empty_rows(min(n, (c + 1) * cs) - c * cs, res, store)
    rows["status"][:] = SKIPPED
    rows["thumbnails"][:] = GREY
    return rows


def _empty_rows(m: int, res: int, store: Store) -> dict[str, np.ndarray]:
    rows = {
        "relevance": np.zeros((m, res, res), np.float16),
        "relevance_scale": np.ones(m, np.float32),
        "logit": np.zeros(m, np.float32),
        "label_probability": np.zeros(m, np.float32),
        "relevance_sum": np.zeros(m, np.float32),
        "prediction": -np.ones(m, np.int32),
        "target": -np.ones(m, np.int32),
        "status": np.zeros(m, np.uint8),
    }
    if store.has_array(layout.FEATURES()):
        rows["features"] = np.zeros((m, store.array(layout.FEATURES()).shape[1]), np.float16)
    t = store.array(layout.THUMBNAILS()).shape[1]
    rows["thumbnails"] = np.zeros((m, t, t, 3), np.uint8)
    return rows
