"""Shared fixtures: small real runs made once per session, and an ImageNet-layout folder (helpers: tests/helpers.py)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from hypothesis import settings

from tests.helpers import FAST_DEMO, make_imagenet_folder, make_runner
from unhans.pipeline.core.runner import Runner

# `make test` draws the same property-test examples on every run, so a landing never hangs on a lucky draw;
# HYPOTHESIS_PROFILE=explore draws new ones (run it when changing a property-tested module).
settings.register_profile("repeatable", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "repeatable"))


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> Runner:
    """The demo audited end to end once per test session (read-only for tests)."""
    r = make_runner(tmp_path_factory.mktemp("demo"), overrides=FAST_DEMO)
    r.run_all()
    return r


@pytest.fixture
def imagenet_folder(tmp_path) -> Path:
    return make_imagenet_folder(tmp_path / "train")


@pytest.fixture
def copy_of():
    """Copy a store directory so a test may modify it."""

    def copy(src: str, dst: Path) -> Path:
        shutil.copytree(src, dst)
        return dst

    return copy
