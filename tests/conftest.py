"""Shared fixtures: repository paths, executed notebooks, and the CI flag.

Tests that read an executed notebook skip with a reason when ``make executed`` has not run; in
CI (``CI=true``) ``make test`` always executes first, so those skips cannot hide there.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# MTLC_EXECUTED_DIR points the notebook tests at another set of executed copies (e.g. the smoke
# profile's, executed into a temporary folder by tests/test_smoke_profile.py)
EXECUTED = Path(os.environ.get("MTLC_EXECUTED_DIR") or ROOT / "book" / "executed")
HTML = ROOT / "_build" / "html"
IN_CI = os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def executed_notebook(name: str) -> Path:
    """Path of ``book/executed/<name>.ipynb``; skip (fail in CI) when it has not been executed."""
    path = EXECUTED / f"{name}.ipynb"
    if not path.exists():
        where = path.relative_to(ROOT) if path.is_relative_to(ROOT) else path
        msg = f"{where} missing: run `make executed` (or `mtlc book execute {name}`)"
        if IN_CI:
            pytest.fail(msg)
        pytest.skip(msg)
    return path


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def in_ci() -> bool:
    return IN_CI


@pytest.fixture(scope="session")
def executed():
    """The :func:`executed_notebook` helper, as a fixture: ``executed("01_data") -> Path``."""
    return executed_notebook


@pytest.fixture(scope="module")
def one_torch_thread():
    """Run a module on one torch thread, then restore the count.

    Tiny networks gain nothing from a second thread on the shared 2-core machine; it only
    contends with the other xdist worker.
    """
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
