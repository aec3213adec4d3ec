"""The run store: one zarr v3 group for arrays plus JSON records and tables beside it.

Layout (every path declared once, with its writer and fill value, in pipeline/core/layout.py;
docs/store.md is generated from it):

    <run>/store.zarr/          zarr v3 group: attribution/*, classes/<class id>/*
    <run>/stages/<stage>.json  fingerprint, timings and counts of each stage run
    <run>/tables/<name>.csv|.parquet  samples, class_scores, sample_scores, manifest, ...
    <run>/files/               other artefacts (model checkpoint)

The root may be a local path or any fsspec URL, so several machines can share one store.
All JSON and table writes are atomic (write a temporary file, then rename). Every array chunk is
written, even one equal to the fill value, so that a lost chunk file shows as a missing chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import itertools
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import fsspec
import numpy as np
import pandas as pd
import zarr
from fsspec.implementations.local import LocalFileSystem
from zarr.core.array_spec import ArrayConfigParams
from zarr.core.sync import sync as zarr_sync

from unhans.pipeline.core import layout
from unhans.pipeline.core.errors import UserError
from unhans.pipeline.core.layout import STORE_VERSION

WRITE_ALL_CHUNKS: ArrayConfigParams = {"write_empty_chunks": True}


def _rerun(name: str) -> str:
    stage = layout.writer_of(name)
    return f"rerun `unhans {stage} --force` to write it again" if stage else "rerun the stage that writes it"


def _declared(name: str, kind: str) -> layout.Entry:
    entry = layout.find(name)
    if entry is None or entry.kind != kind:
        raise ValueError(f"{kind} {name!r} is not declared in pipeline/core/layout.py; declare it there first")
    return entry


class Store:
    """Read and write one run's outputs; stages touch the run only through this API."""

    writes = 0  # writes through any Store of this process (the runner asks whether a stage wrote anything)

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self.fs, self.root = fsspec.core.url_to_fs(self.url)
        self.fs.makedirs(self.root, exist_ok=True)
        self._zarr_url = f"{self.url}/store.zarr"
        # arrays opened for reading, with the process's write count then: reused while nothing was created,
        # replaced or deleted since (an opening parses the array's metadata, about 1 ms; the report and the
        # probes read the relevance maps of every class)
        self._opened: dict[str, tuple[int, Any]] = {}
        try:
            self.group = zarr.open_group(self._zarr_url, mode="a", zarr_format=3)
        except Exception as exc:  # corrupted metadata, wrong format, ...
            raise UserError(
                f"the store at {self._zarr_url} cannot be opened ({exc}); move it away or pass "
                "another --run-dir to start a fresh run"
            ) from None
        if "store_version" not in self.group.attrs:
            self.group.attrs["store_version"] = STORE_VERSION
        elif self.group.attrs["store_version"] != STORE_VERSION:
            raise UserError(
                f"the store at {self.url} has layout version {self.group.attrs['store_version']}, "
                f"this unhans writes version {STORE_VERSION}; use a fresh --run-dir"
            )

    @property
    def absolute_url(self) -> str:
        """An absolute local path, or the full fsspec URL for remote stores."""
        if isinstance(self.fs, LocalFileSystem):
            return self.root
        return self.fs.unstrip_protocol(self.root)

    # ---- the run lock ------------------------------------------------------------------------
    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold `<run>/LOCK` while writing: a second run on the same store is refused.

        A lock left by a dead process on this host is taken over; one from another host must be
        removed by hand (the message says how)."""
        rel, me = "LOCK", {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        for _ in range(2):
            try:
                with self.fs.open(self.path(rel), "xb") as fh:
                    fh.write(json.dumps(me).encode())
                break
            except FileExistsError:
                other = self.read_json(rel) or {}
                if other.get("host") == me["host"] and not _pid_alive(int(other.get("pid", -1))):
                    self.delete(rel)  # stale: its process is gone
                    continue
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(other.get("since", 0)))
                raise UserError(
                    f"the run store {self.url} is in use by process {other.get('pid')} on "
                    f"{other.get('host')} (since {since}); wait for it to finish, or if that run is "
                    f"dead, delete {self.url}/LOCK"
                ) from None
        try:
            yield
        finally:
            self.delete(rel)

    # ---- paths -----------------------------------------------------------------------------
    def path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def exists(self, rel: str) -> bool:
        return self.fs.exists(self.path(rel))

    def _atomic_write(self, rel: str, data: bytes) -> None:
        Store.writes += 1
        final = self.path(rel)
        self.fs.makedirs(final.rsplit("/", 1)[0], exist_ok=True)
        tmp = f"{final}.tmp-{uuid.uuid4().hex[:8]}"
        with self.fs.open(tmp, "wb") as fh:
            fh.write(data)
        if isinstance(self.fs, LocalFileSystem):
            os.replace(tmp, final)
        else:
            self.fs.mv(tmp, final)

    # ---- JSON records ----------------------------------------------------------------------
    def write_json(self, rel: str, obj: Any) -> None:
        self._atomic_write(rel, json.dumps(obj, indent=2, sort_keys=True, default=str).encode())

    def read_json(self, rel: str) -> Any | None:
        if not self.exists(rel):
            return None
        with self.fs.open(self.path(rel), "rb") as fh:
            data = fh.read()
        try:
            return json.loads(data)
        except ValueError as exc:  # truncated or overwritten
            stage = rel[len("stages/") : -len(".json")] if rel.startswith("stages/") else ""
            fix = f"delete it and stage {stage!r} runs again (`unhans {stage}`)" if stage else "delete it"
            raise UserError(f"{self.url}/{rel} is corrupted (not JSON: {exc}); {fix}") from None

    def list(self, rel: str) -> list[str]:
        """Relative paths of the files directly under folder `rel`, sorted ([] if none)."""
        if not self.exists(rel):
            return []
        return sorted(f"{rel}/{p.rsplit('/', 1)[1]}" for p in self.fs.ls(self.path(rel), detail=False))

    def delete(self, rel: str) -> None:
        if self.exists(rel):
            Store.writes += 1
            self.fs.rm(self.path(rel), recursive=True)

    # ---- bytes (checkpoints) ----------------------------------------------------------------
    def write_bytes(self, rel: str, data: bytes) -> None:
        _declared(rel, "file")
        self._atomic_write(rel, data)

    def read_bytes(self, rel: str) -> bytes:
        with self.fs.open(self.path(rel), "rb") as fh:
            return fh.read()

    # ---- tables ------------------------------------------------------------------------------
    def write_table(self, name: str, df: pd.DataFrame, csv: bool = True) -> None:
        """Write `tables/<name>.parquet` (typed) and `tables/<name>.csv` (for people)."""
        _declared(name, "table")
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        self._atomic_write(f"tables/{name}.parquet", buf.getvalue())
        if csv:
            self._atomic_write(f"tables/{name}.csv", df.to_csv(index=False).encode())

    def read_table(self, name: str) -> pd.DataFrame:
        rel = f"tables/{name}.parquet"
        if not self.exists(rel):
            raise UserError(f"table {name!r} is missing from {self.url}; run the stage that writes it")
        try:
            with self.fs.open(self.path(rel), "rb") as fh:
                return pd.read_parquet(fh)
        except (OSError, ValueError) as exc:  # truncated or overwritten
            raise UserError(f"table {name!r} at {self.url}/{rel} cannot be read ({exc}); {_rerun(name)}") from None

    def has_table(self, name: str) -> bool:
        return self.exists(f"tables/{name}.parquet")

    # ---- arrays -----------------------------------------------------------------------------
    def create_array(
        self, name: str, shape: tuple[int, ...], chunks: tuple[int, ...], attrs: dict | None = None
    ) -> zarr.Array:
        """Create (replacing any old one) a chunked array of a declared path, with its dtype and fill value."""
        entry = _declared(name, "array")
        Store.writes += 1
        arr = self.group.create_array(
            name, shape=shape, chunks=chunks, dtype=entry.dtype, fill_value=entry.fill, overwrite=True
        )
        if attrs:
            arr.attrs.update(attrs)
        return arr.with_config(WRITE_ALL_CHUNKS)

    def write_array(self, name: str, data: np.ndarray, attrs: dict | None = None) -> zarr.Array:
        """Write a small array whole, as one chunk; its attributes last, so an array killed mid-write
        never carries the attributes (e.g. a fingerprint) of a finished one."""
        data = np.asarray(data)
        entry = _declared(name, "array")
        if data.dtype != np.dtype(entry.dtype):
            raise TypeError(f"array {name!r} is declared {entry.dtype} in pipeline/core/layout.py, got {data.dtype}")
        arr = self.create_array(name, data.shape, data.shape or (1,))
        if data.size:
            arr[...] = data
        if attrs:
            arr.attrs.update(attrs)
        return arr

    def _node(self, name: str) -> Any:
        try:
            return self.group[name]
        except KeyError:
            raise
        except Exception as exc:  # corrupted zarr.json of the array or a group above it
            raise UserError(f"array {name!r} in {self._zarr_url} is corrupted ({exc}); {_rerun(name)}") from None

    def array(self, name: str) -> zarr.Array:
        """A stored array, opened for chunked reads and writes."""
        try:
            node = self._node(name)
        except KeyError:
            raise UserError(f"array {name!r} is missing from {self.url}; run the stage that writes it") from None
        return node.with_config(WRITE_ALL_CHUNKS)

    def read(self, name: str) -> np.ndarray:
        """A whole array, refused when a chunk file is missing (it would read as the fill value)."""
        return self.read_with_attrs(name)[0]

    def read_with_attrs(self, name: str) -> tuple[np.ndarray, dict]:
        """A whole array (as `read`) and its attributes, from one opening of the array."""
        arr = self.array(name)
        with self._reading(name):
            data = np.asarray(arr[...])
        if _holds_fill(data, arr.fill_value):  # only then can a chunk file be lost: list them
            self._check_chunks(name, arr)
        return data, dict(arr.attrs)

    def read_many(self, names: Sequence[str]) -> Sequence[tuple[np.ndarray, dict]]:
        """Whole arrays with their attributes (as `read_with_attrs`), opened and read concurrently: one
        round trip to zarr's event loop instead of two per array (the report reads four a class)."""

        async def one(name: str) -> tuple[Any, np.ndarray]:
            arr = await self._open_async(name)
            with self._reading(name):
                return arr, np.asarray(await arr.getitem(...))

        async def gather() -> Sequence[tuple[Any, np.ndarray]]:
            return await asyncio.gather(*(one(name) for name in names))

        out = []
        for name, (arr, data) in zip(names, zarr_sync(gather())):
            if _holds_fill(data, arr.metadata.fill_value):
                self._check_chunks(name, self.array(name))
            out.append((data, dict(arr.attrs)))
        return out

    async def _open_for_reading(self, name: str) -> Any:
        """`_open_async`, the opened array kept for later reads until a write through any Store of this
        process (chunk writes leave an array's metadata as it is; creating, replacing or deleting one counts)."""
        kept = self._opened.get(name)
        if kept is not None and kept[0] == Store.writes:
            return kept[1]
        arr = await self._open_async(name)
        self._opened[name] = (Store.writes, arr)
        return arr

    async def _open_async(self, name: str) -> Any:
        """The array opened on zarr's event loop (for concurrent reads), with `array`'s errors."""
        try:
            return await self.group._async_group.getitem(name)
        except KeyError:
            raise UserError(f"array {name!r} is missing from {self.url}; run the stage that writes it") from None
        except Exception as exc:  # corrupted zarr.json of the array or a group above it
            raise UserError(f"array {name!r} in {self._zarr_url} is corrupted ({exc}); {_rerun(name)}") from None

    def _check_chunks(self, name: str, arr: zarr.Array) -> None:
        """A UserError naming the rows of any chunk file of `arr` that is missing (a lost file reads as fill)."""
        if arr.nchunks_initialized == arr.nchunks:
            return
        missing = [
            idx
            for idx in itertools.product(*(range(n) for n in arr.cdata_shape))
            if not self.exists(f"store.zarr/{name}/{arr.metadata.encode_chunk_key(idx)}")
        ]
        rows = arr.chunks[0]
        where = ", ".join(
            f"{i * rows}..{min((i + 1) * rows, arr.shape[0]) - 1}" for i in sorted({m[0] for m in missing})
        )
        raise UserError(
            f"array {name!r} in {self._zarr_url} has lost the chunk files of rows {where} (zarr would read them as "
            f"its fill value); {_rerun(name)}"
        )

    @contextlib.contextmanager
    def _reading(self, name: str) -> Iterator[None]:
        """Turn a chunk file that does not decode (garbled, truncated) into a UserError naming the array."""
        try:
            yield
        except (RuntimeError, ValueError) as exc:
            raise UserError(
                f"array {name!r} in {self._zarr_url} has a chunk that cannot be read ({exc}); {_rerun(name)}"
            ) from None

    def relevance(self, indices: np.ndarray) -> np.ndarray:
        """Relevance maps (n, r, r) float32 of the given samples (stored as float16 x scale). A map or
        scale read as the fill value NaN comes from a lost chunk file: a UserError, like a garbled one."""
        name, scale_name = layout.RELEVANCE(), layout.RELEVANCE_SCALE()

        async def select(array: str, selection: tuple) -> np.ndarray:
            arr = await self._open_for_reading(array)
            with self._reading(array):
                return np.asarray(await arr.get_orthogonal_selection(selection))

        async def both() -> list[np.ndarray]:  # maps and scales read concurrently
            return list(
                await asyncio.gather(select(name, (indices, slice(None), slice(None))), select(scale_name, (indices,)))
            )

        maps, scale = zarr_sync(both())
        lost = np.isnan(scale) | np.isnan(maps).any(axis=(1, 2))
        if lost.any():
            raise UserError(
                f"the relevance maps of samples {np.asarray(indices)[lost][:5].tolist()} are missing from "
                f"{self._zarr_url}/{name} (a chunk file was lost); {_rerun(name)}"
            )
        return maps.astype(np.float32) * scale[:, None, None]

    def check_attribution(self) -> None:
        """Lost chunk files of the attribute stage's arrays (zarr reads a missing chunk as its fill value,
        silently), and status counts that disagree with the stage's record: one UserError naming the
        array and the rerun. Status codes as in stages/attribute.py: 0 ok, 1 skipped, 2 failed."""
        if not self.has_array(layout.STATUS()):
            return
        for entry in layout.outputs("attribute"):
            if entry.kind == "array" and self.has_array(entry()):
                self._check_chunks(entry(), self.array(entry()))
        with self._reading(layout.STATUS()):
            status = np.asarray(self.array(layout.STATUS())[:])
        counts = (self.read_json("stages/attribute.json") or {}).get("counts", {})
        recorded = {"attributed": 0, "skipped_at_index": 1, "decode_failed": 2}
        for key, code in recorded.items():
            if key in counts and int((status == code).sum()) != counts[key]:
                raise UserError(
                    f"{layout.STATUS()} in {self._zarr_url} holds {int((status == code).sum())} samples with "
                    f"status {code} ({key}) where the attribute stage recorded {counts[key]}; "
                    f"{_rerun(layout.STATUS())}"
                )

    def has_array(self, name: str) -> bool:
        try:
            self._node(name)
        except KeyError:
            return False
        return True

    def delete_array(self, name: str) -> None:
        if self.has_array(name):
            Store.writes += 1
            del self.group[name]


def _holds_fill(data: np.ndarray, fill: Any) -> bool:
    """Whether any element equals the array's fill value: what a lost chunk file reads as. The fill values
    of pipeline/core/layout.py are never written as data, so an array without one has every chunk."""
    if data.dtype.kind == "f" and np.isnan(fill):
        return bool(np.isnan(data).any())
    return bool((data == fill).any())


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
