"""Every notebook also runs with ``profile="smoke"``, and each smoke copy passes its chapter's
checks.

``make test`` executes the book with the full profile (stored paper-scale results, no
training), so this test keeps the training code paths the smoke chapters run under test: it
executes every notebook with papermill (as ``mtlc book execute --profile smoke --output-dir``
does) into a temporary folder, then runs the per-chapter checks (``tests/test_notebook_*.py``,
the findings page's consistency test, the glue roles of the prose) on those copies in a
pytest subprocess (``MTLC_EXECUTED_DIR`` points the ``executed`` fixture at them; ``CI=true``
turns a missing copy into a failure).

Cost: about 3-4 minutes of one core on a quiet machine with cold smoke caches (the smoke
studies train; ``$MTLC_STUDY_CACHE`` keeps them for the next run), so it runs on one xdist
worker while the other runs the rest of the suite.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from mtlc.notebooks import discover, execute

ROOT = Path(__file__).resolve().parents[1]

# the checks re-run on the smoke copies: every chapter's test file, plus the cross-chapter ones
CHECKS = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "tests").glob("test_notebook_*.py"))
CHECKS += [
    "tests/test_book.py::test_findings_page_repeats_the_chapters_exactly",
    "tests/test_prose_numbers.py::test_notebook_glue_roles_name_glued_keys",
]


@pytest.fixture(scope="module")
def smoke_copies(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("smoke_executed")
    # the kernels inherit the environment: one BLAS / torch thread each, as the other xdist
    # worker runs the rest of the suite on the second core
    saved = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        results = execute(profile="smoke", output_dir=out, log=None)
    finally:
        if saved is None:
            os.environ.pop("OMP_NUM_THREADS", None)
        else:
            os.environ["OMP_NUM_THREADS"] = saved
    assert [r.name for r in results] == [p.stem for p in discover()]
    return out


@pytest.mark.slow
def test_every_notebook_executes_with_the_smoke_profile(smoke_copies):
    for source in discover():
        nb = nbformat.read(str(smoke_copies / source.name), as_version=4)
        params = nb.metadata["papermill"]["parameters"]
        assert params["profile"] == "smoke", source.name
        # the findings page read these copies, not book/executed
        if "executed_dir" in params:
            assert Path(params["executed_dir"]) == smoke_copies.resolve()


@pytest.mark.slow
def test_smoke_copies_pass_the_chapter_checks(smoke_copies):
    env = {**os.environ, "MTLC_EXECUTED_DIR": str(smoke_copies), "CI": "true"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE"]
    cmd += ["-p", "no:randomly"] if _has_plugin("randomly") else []
    cmd += ["-n", "0"] if _has_plugin("xdist") else []
    proc = subprocess.run(cmd + CHECKS, cwd=ROOT, env=env, capture_output=True, text=True)
    tail = "\n".join(proc.stdout.splitlines()[-40:])
    assert proc.returncode == 0, f"chapter checks failed on the smoke copies:\n{tail}"
    passed = re.search(r"(\d+) passed", proc.stdout)
    assert passed and int(passed.group(1)) >= 30, tail


def _has_plugin(name: str) -> bool:
    import importlib.util

    module = {"randomly": "pytest_randomly", "xdist": "xdist"}[name]
    return importlib.util.find_spec(module) is not None
