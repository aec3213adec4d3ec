"""The docs that are generated from the code are current, the README stays short, and every path and
relative link the docs mention exists (a moved module must not leave a stale pointer behind)."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# a repository path as the docs write it (not a template like tests/data/test_<kind>.py, not <run>/stages/...)
PATH = r"(?<![\w/.])((?:pipeline|stages|tests|benchmarks|scripts|configs|docs)/[\w./-]*\w)(?![\w<{])"


def make_docs():
    spec = importlib.util.spec_from_file_location("make_docs", ROOT / "scripts" / "make_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("name", ["docs/store.md", "docs/configuration.md", "README.md"])
def test_generated_docs_are_current(name):
    want = make_docs().generated()[ROOT / name]
    assert (ROOT / name).read_text() == want, f"{name} is out of date: run python scripts/make_docs.py"


def test_the_readme_is_short():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_paths_and_links_in_the_docs_exist(doc):
    text = doc.read_text()
    paths = set(
        re.findall(r"(?<![\w/.])((?:pipeline|stages|tests|benchmarks|scripts|configs|docs)/[\w./-]*\w)(?![\w<{])", text)
    )
    missing = [p for p in sorted(paths) if not (ROOT / p).exists()]
    links = re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", text)
    broken = [link for link in links if "://" not in link and not (doc.parent / link).exists()]
    assert missing == [] and broken == []
