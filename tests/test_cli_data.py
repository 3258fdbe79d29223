"""``mtlc data summary`` and ``mtlc data folds``, in process and through the console script."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from mtlc.cli import main


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MTLC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "mtlc_cache"))
        yield


def test_summary_kiba_json(capsys):
    assert main(["data", "summary", "--dataset", "kiba", "--json"]) == 0
    s = json.loads(capsys.readouterr().out)
    st = s["counts"]["structure_available"]
    assert (st["tasks"], st["pairs"], st["compounds"]) == (201, 144_733, 3_816)
    full = s["counts"]["full_matrix"]
    assert (full["tasks"], full["pairs"], full["compounds"]) == (244, 228_399, 51_097)
    f = s["featurize"]
    assert f["merged_compounds"] > 0 and f["merged_pairs_removed"] > 0
    assert s["compounds"] == 3_816 - f["merged_compounds"]
    assert s["pairs"] == 144_733 - f["merged_pairs_removed"]


def test_summary_text(capsys):
    assert main(["data", "summary", "--dataset", "davis", "--no-features"]) == 0
    out = capsys.readouterr().out
    assert "68 compounds, 410 tasks" in out
    assert "excluded tasks (single class): 32" in out


def test_folds_csv(tmp_path, capsys):
    out = tmp_path / "f" / "davis_folds.csv"
    rc = main(
        ["data", "folds", "--dataset", "davis", "--split", "scaffold", "--folds", "5"]
        + ["--seed", "2", "--out", str(out)]
    )
    assert rc == 0
    df = pd.read_csv(out, dtype={"compound_id": str})
    assert list(df.columns) == ["compound_id", "smiles", "fold"]
    assert len(df) == 68 and sorted(df["fold"].unique()) == [0, 1, 2, 3, 4]
    assert df["fold"].value_counts().max() - df["fold"].value_counts().min() <= 1
    assert "wrote 68 compounds in 5 folds" in capsys.readouterr().out


def test_cli_errors_in_process(capsys, tmp_path):
    assert main(["data", "summary", "--dataset", "nosuch"]) == 2
    assert "known datasets: kiba, kinase200, davis, synthetic" in capsys.readouterr().err
    assert main(["data", "summary", "--dataset", "kiba", "--recipe", "x"]) == 2
    assert "known recipes" in capsys.readouterr().err
    assert main(["data", "summary", "--dataset", "davis", "--smiles", "x.csv"]) == 2
    assert main(["data", "folds", "--dataset", "davis", "--folds", "100"]) == 2
    assert "at most 68 folds" in capsys.readouterr().err


def test_console_script_bad_input_one_line_exit_2():
    exe = Path(sys.executable).with_name("mtlc")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "mtlc"]
    r = subprocess.run(
        cmd + ["data", "summary", "--dataset", "kiba", "--recipe", "kiba999"],
        capture_output=True,
        text=True,
        env=dict(os.environ),
        timeout=120,
    )
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mtlc: error: unknown KIBA recipe")
