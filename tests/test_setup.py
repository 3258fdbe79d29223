"""Set-up: the two-command bootstrap is idempotent, the README opens with the two commands,
CI runs `make test`, and the console script works."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def sandbox(tmp_path: Path) -> Path:
    """A copy of the Makefile and pyproject with a fake venv, for `make -n` dry runs."""
    shutil.copy(ROOT / "Makefile", tmp_path)
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    (tmp_path / "notebooks").mkdir()
    return tmp_path


def _dry(folder: Path, target: str) -> str:
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS", "PROFILE"}}
    proc = subprocess.run(
        ["make", "-n", target], cwd=folder, capture_output=True, text=True, env=env, check=True
    )
    return proc.stdout


def test_bootstrap_runs_once(sandbox):
    fresh = _dry(sandbox, "venv")
    assert "-m venv .venv" in fresh
    assert 'pip install -e ".[dev]"' in fresh
    assert "ipykernel install --sys-prefix --name mtlc" in fresh
    assert "touch .venv/.installed" in fresh
    assert "uv " not in fresh  # the machine's pip (local torch wheel), never uv

    (sandbox / ".venv" / "bin").mkdir(parents=True)
    stamp = sandbox / ".venv" / ".installed"
    stamp.touch()
    later = time.time() + 5
    os.utime(stamp, (later, later))  # stamp newer than pyproject.toml
    assert "pip install" not in _dry(sandbox, "venv")
    for target in ["book", "test"]:
        out = _dry(sandbox, target)
        assert "pip install" not in out, f"`make {target}` reinstalls although the stamp is fresh"
        assert "mtlc book execute --profile full" in out  # the stored paper-scale results
        assert "jupyter-book build -W --keep-going ." in out
    assert "pytest -n 2" in _dry(sandbox, "test")

    # editing pyproject.toml (new pins) makes the next run reinstall
    old = time.time() - 60
    os.utime(stamp, (old, old))
    assert "pip install" in _dry(sandbox, "venv")


def test_profile_is_a_make_variable(sandbox):
    env = {k: v for k, v in os.environ.items() if k not in {"MAKEFLAGS", "MFLAGS"}}
    out = subprocess.run(
        ["make", "-n", "executed", "PROFILE=smoke"],
        cwd=sandbox,
        capture_output=True,
        text=True,
        env=env,
        check=True,
    ).stdout
    assert "mtlc book execute --profile smoke" in out


def test_readme_opens_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```(?:bash|sh|console)?\n(.*?)```", text, flags=re.S)
    assert blocks, "README has no code block"
    first = [line.strip() for line in blocks[0].splitlines() if line.strip()]
    assert first == ["make book", "make test"]
    # the first code block comes before any other content section
    assert text.index("```") < text.index("\n## ")
    for word in ["make lab", "mtlc book execute", "book/executed", "_build/html"]:
        assert word in text


def test_ci_script_runs_make_test():
    script = (ROOT / ".ci" / "run").read_text()
    assert script.startswith("#!/usr/bin/env bash")
    assert "set -euo pipefail" in script
    assert re.search(r"^make test$", script, flags=re.M)
    assert "if [ ! -x /usr/bin/chromium ]" in script and "apt-get install -y chromium" in script
    assert os.access(ROOT / ".ci" / "run", os.X_OK)
    proc = subprocess.run(["bash", "-n", str(ROOT / ".ci" / "run")], capture_output=True)
    assert proc.returncode == 0, proc.stderr


def test_environment_yml_wraps_the_venv_path():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    assert "python=3.11" in env["dependencies"] and "pip" in env["dependencies"]
    pip = next(d for d in env["dependencies"] if isinstance(d, dict))["pip"]
    assert pip == ['-e ".[dev]"'] or pip == ["-e .[dev]"]


def test_console_script_version():
    from mtlc import __version__

    exe = Path(sys.executable).with_name("mtlc")
    proc = subprocess.run([str(exe), "--version"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"mtlc {__version__}"


def test_book_command_help():
    exe = Path(sys.executable).with_name("mtlc")
    proc = subprocess.run([str(exe), "book", "execute", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0 and "--profile" in proc.stdout and "{smoke,full}" in proc.stdout
