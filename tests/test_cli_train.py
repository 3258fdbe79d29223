"""``mtlc train``: clear errors, and a SIGKILLed run resumes to the uninterrupted result."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import pandas as pd
import pytest

from mtlc.cli import main
from mtlc.store import SCHEMA, ResultsStore

pytest.importorskip("mtlc.fleet", reason="the training engine (mtlc.fleet) has not landed")

SYN = [
    "--dataset", "synthetic",
    "--dataset-arg", "n_compounds=300",
    "--dataset-arg", "n_tasks=4",
    "--dataset-arg", "n_groups=1",
    "--dataset-arg", "group_size=2",
]  # fmt: skip
TRAIN = [
    *SYN,
    "--folds", "2",
    "--regime", "stl",
    "--sizes", "16,32",
    "--max-epochs", "3",
    "--hidden", "16",
    "--chunk-size", "4",
    "--no-progress",
]  # fmt: skip


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--regime", "pair"], "--pairs"),
        (["--regime", "stl", "--sizes", "16,x"], "--sizes"),
        (["--regime", "stl", "--folds", "1"], "--folds"),
        (["--regime", "stl", "--dataset-arg", "oops"], "KEY=VALUE"),
    ],
)
def test_bad_options_are_one_line_errors(tmp_path, capsys, args, message):
    code = main(["train", *SYN, "--store", str(tmp_path / "s"), *args])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err


def test_unknown_dataset(tmp_path, capsys):
    code = main(["train", "--dataset", "nope", "--regime", "stl", "--store", str(tmp_path)])
    assert code == 2 and "unknown dataset" in capsys.readouterr().err


def _cmd(store):
    return [sys.executable, "-m", "mtlc", "train", *TRAIN, "--store", str(store)]


@pytest.mark.slow
def test_kill_9_then_rerun_equals_uninterrupted_run(tmp_path):
    killed, ref = tmp_path / "killed", tmp_path / "ref"
    proc = subprocess.Popen(_cmd(killed), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    t0 = time.time()
    while not list(killed.glob("part-*.parquet")):
        if proc.poll() is not None:
            pytest.fail(f"mtlc train ended before the kill: {proc.stderr.read().decode()}")
        assert time.time() - t0 < 120, "no part file after 120 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    st = ResultsStore(killed)
    n_done = len(st.done_job_ids())  # readable right after the kill
    assert 0 < n_done < 16  # 4 tasks x 2 sizes x 2 folds
    out = subprocess.run(_cmd(killed), capture_output=True, text=True, check=True)
    assert f"{n_done} already in the store (skipped)" in out.stderr
    assert "0 failed" in out.stderr
    assert main(["train", *TRAIN, "--store", str(ref)]) == 0  # uninterrupted, in process
    cols = [c for c in SCHEMA if c != "train_seconds"]
    a = st.read()[cols].sort_values(["job_id", "metric"]).reset_index(drop=True)
    b = ResultsStore(ref).read()[cols].sort_values(["job_id", "metric"]).reset_index(drop=True)
    assert len(a) == 16 * 2
    pd.testing.assert_frame_equal(a, b, check_exact=False, atol=1e-6, rtol=0)
    auc = a[a.metric == "roc_auc"]["value"]
    assert auc.between(0, 1).all()


def test_engine_option_same_jobs_same_numbers(tmp_path, capsys):
    """``--engine compiled`` writes the same jobs (the engine is not part of the configuration
    hash) with the same epochs and, in float32, the same AUCs up to float rounding."""
    tables = {}
    for engine in ("torch", "compiled"):
        store = tmp_path / engine
        assert main(["train", *TRAIN, "--engine", engine, "--store", str(store)]) == 0
        tables[engine] = ResultsStore(store).read().sort_values(["job_id", "task", "metric"])
    a, b = tables["torch"], tables["compiled"]
    assert len(a) > 0 and list(a["job_id"]) == list(b["job_id"])
    assert (a["epochs"].to_numpy() == b["epochs"].to_numpy()).all()
    diff = a["value"].to_numpy() - b["value"].to_numpy()
    assert abs(pd.Series(diff)).max() < 1e-3
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:  # argparse: usage and the choices, no traceback
        main(["train", *TRAIN, "--engine", "jax", "--store", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "choose from 'torch', 'compiled'" in err
