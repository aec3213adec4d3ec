"""Compare two run stores: every array (values, dtype, shape, attributes), every table (columns,
dtypes, values) and every file under files/. Stage records (timings, fingerprints) are not compared.

Standalone on purpose (zarr, pandas, numpy; no unhans import), so it compares stores written by
two versions of the code, e.g. before and after a refactoring:

    python scripts/compare_stores.py runs/before runs/after
    python scripts/compare_stores.py A B --drop-columns class_scores:n_artifact,artifact_auroc \
        --ignore-attr store_version

Exit code 0 when equal (after the declared drops), 1 with one line per difference otherwise.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import zarr

# array attributes that record how or when an array was written, not what it holds
VOLATILE_ATTRS = {"fingerprint"}


def _arrays(group: zarr.Group, prefix: str = "") -> dict[str, zarr.Array]:
    out = {}
    for name, node in group.members():
        path = f"{prefix}{name}"
        if isinstance(node, zarr.Group):
            out.update(_arrays(node, path + "/"))
        else:
            out[path] = node
    return out


def _groups(group: zarr.Group, prefix: str = "", ignore: frozenset = frozenset()) -> dict[str, dict]:
    out = {prefix or "/": {k: v for k, v in group.attrs.items() if k not in VOLATILE_ATTRS | ignore}}
    for name, node in group.members():
        if isinstance(node, zarr.Group):
            out.update(_groups(node, f"{prefix}{name}/", ignore))
    return out


def compare_arrays(a: Path, b: Path, ignore_attrs: frozenset = frozenset()) -> list[str]:
    ga = zarr.open_group(str(a / "store.zarr"), mode="r")
    gb = zarr.open_group(str(b / "store.zarr"), mode="r")
    diffs = []
    sa, sb = _groups(ga, ignore=ignore_attrs), _groups(gb, ignore=ignore_attrs)
    for name in sorted(set(sa) | set(sb)):
        if sa.get(name) != sb.get(name):
            diffs.append(f"group {name}: attributes differ: {sa.get(name)} != {sb.get(name)}")
    aa, ab = _arrays(ga), _arrays(gb)
    for name in sorted(set(aa) ^ set(ab)):
        diffs.append(f"array {name}: only in {'first' if name in aa else 'second'}")
    for name in sorted(set(aa) & set(ab)):
        x, y = aa[name], ab[name]
        if x.shape != y.shape or x.dtype != y.dtype:
            diffs.append(f"array {name}: {x.shape} {x.dtype} != {y.shape} {y.dtype}")
            continue
        xa = {k: v for k, v in x.attrs.items() if k not in VOLATILE_ATTRS}
        ya = {k: v for k, v in y.attrs.items() if k not in VOLATILE_ATTRS}
        if xa != ya:
            diffs.append(f"array {name}: attributes differ: {xa} != {ya}")
        u, v = x[...], y[...]
        if not np.array_equal(u, v, equal_nan=u.dtype.kind == "f"):
            bad = np.flatnonzero(~((u == v) | (np.isnan(u) & np.isnan(v)) if u.dtype.kind == "f" else u == v))
            diffs.append(f"array {name}: {len(bad)} of {u.size} values differ (first at flat index {bad[0]})")
    return diffs


def compare_tables(a: Path, b: Path, drop: dict[str, list[str]]) -> list[str]:
    diffs = []
    ta = {p.stem for p in (a / "tables").glob("*.parquet")}
    tb = {p.stem for p in (b / "tables").glob("*.parquet")}
    for name in sorted(ta ^ tb):
        diffs.append(f"table {name}: only in {'first' if name in ta else 'second'}")
    for name in sorted(ta & tb):
        x = pd.read_parquet(a / "tables" / f"{name}.parquet")
        y = pd.read_parquet(b / "tables" / f"{name}.parquet")
        gone = drop.get(name, [])
        x = x.drop(columns=[c for c in gone if c in x])
        y = y.drop(columns=[c for c in gone if c in y])
        if list(x.columns) != list(y.columns):
            diffs.append(f"table {name}: columns {list(x.columns)} != {list(y.columns)}")
            continue
        if list(x.dtypes) != list(y.dtypes):
            diffs.append(f"table {name}: dtypes {list(x.dtypes)} != {list(y.dtypes)}")
        if not x.equals(y):
            bad = [c for c in x.columns if not x[c].equals(y[c])]
            diffs.append(f"table {name}: values differ in columns {bad}")
    return diffs


def compare_files(a: Path, b: Path) -> list[str]:
    diffs = []
    fa = {p.relative_to(a) for p in (a / "files").rglob("*") if p.is_file()} if (a / "files").exists() else set()
    fb = {p.relative_to(b) for p in (b / "files").rglob("*") if p.is_file()} if (b / "files").exists() else set()
    for name in sorted(fa ^ fb):
        diffs.append(f"file {name}: only in {'first' if name in fa else 'second'}")
    for name in sorted(fa & fb):
        if (a / name).read_bytes() != (b / name).read_bytes():
            diffs.append(f"file {name}: bytes differ")
    return diffs


def compare(
    a: Path, b: Path, drop: dict[str, list[str]] | None = None, ignore_attrs: frozenset = frozenset()
) -> list[str]:
    """Every difference between stores a and b, one line each ([] when equal)."""
    return compare_arrays(a, b, ignore_attrs) + compare_tables(a, b, drop or {}) + compare_files(a, b)


def _drops(items: list[str]) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for item in items:
        table, _, cols = item.partition(":")
        out.setdefault(table, []).extend(c for c in cols.split(",") if c)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("first", type=Path)
    ap.add_argument("second", type=Path)
    ap.add_argument("--drop-columns", action="append", default=[], metavar="TABLE:COL,COL",
                    help="table columns that are expected to be absent from one side (repeatable)")  # fmt: skip
    ap.add_argument("--ignore-attr", action="append", default=[], metavar="NAME",
                    help="a group attribute expected to differ, e.g. store_version (repeatable)")  # fmt: skip
    args = ap.parse_args(argv)
    diffs = compare(args.first, args.second, _drops(args.drop_columns), frozenset(args.ignore_attr))
    for d in diffs:
        print(d)
    n_arrays = len(_arrays(zarr.open_group(str(args.first / "store.zarr"), mode="r")))
    n_tables = len(list((args.first / "tables").glob("*.parquet")))
    print(f"{'equal' if not diffs else f'{len(diffs)} differences'}: {n_arrays} arrays, {n_tables} tables compared")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
