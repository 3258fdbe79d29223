"""Results store: atomic parts, schema checks, resumable runs that survive SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from standin_trainer import StandInConfig, centroid_trainer, small_synthetic

from mtlc.designs import DesignContext, make_design
from mtlc.errors import MtlcError
from mtlc.store import SCHEMA, ResultsStore
from mtlc.study import curve_matrix, learning_curves, run_design

TESTS = Path(__file__).resolve().parent


def _rows(job: str, n: int = 2, value: float = 0.7) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "dataset": "syn",
            "recipe": "",
            "task_set": "all",
            "split": "compound",
            "fold": 0,
            "seed": 0,
            "regime": "stl",
            "target": "t00",
            "partner": None,
            "q": np.nan,
            "n_level": 16,
            "task": "t00",
            "n_task": 16,
            "n_context": 0,
            "metric": ["roc_auc", "avg_precision"][:n],
            "value": value,
            "note": "",
            "status": "ok",
            "config_hash": "c",
            "job_id": job,
            "task_sizes": '{"t00": 16}',
        }
    )


def test_append_read_roundtrip_with_schema(tmp_path):
    st = ResultsStore(tmp_path / "s")
    assert st.read().empty and st.done_job_ids() == set()
    p1 = st.append(_rows("a"))
    st.append(_rows("b", value=0.8))
    assert p1.exists() and not st.stale_temporaries()
    df = st.read()
    assert list(df.columns) == list(SCHEMA)
    assert len(df) == 4 and st.done_job_ids() == {"a", "b"}
    assert df["n_test_pos"].tolist() == [-1] * 4  # missing ints are -1, not NaN
    assert df["partner"].isna().all()
    assert str(df["fold"].dtype) == "int64" and str(df["value"].dtype) == "float64"


def test_newest_part_wins_and_compact(tmp_path):
    st = ResultsStore(tmp_path)
    fail = _rows("a", n=1).assign(status="failed", metric="", value=np.nan, note="one class")
    st.append(fail)
    assert st.failed_job_ids() == {"a"}
    st.append(_rows("a", value=0.9))
    st.append(_rows("b"))
    df = st.read()
    assert st.last_read["replaced_rows"] == 1
    assert set(df.loc[df.job_id == "a", "status"]) == {"ok"}
    assert st.failed_job_ids() == set()
    before = df.sort_values(["job_id", "metric"]).reset_index(drop=True)
    st.compact()
    assert len(st.parts()) == 1
    after = st.read().sort_values(["job_id", "metric"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(before, after)


def test_truncated_or_foreign_part_names_the_file(tmp_path):
    st = ResultsStore(tmp_path)
    p = st.append(_rows("a"))
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(MtlcError, match=f"{p.name}.*delete"):
        st.read()
    with pytest.raises(MtlcError, match="unreadable"):
        st.done_job_ids()
    p.unlink()
    bad = tmp_path / "part-00000000000000000001-x.parquet"
    pd.DataFrame({"job_id": ["z"], "value": ["oops"]}).to_parquet(bad)
    with pytest.raises(MtlcError, match="does not match the store schema"):
        st.read()


def test_stale_temporary_is_ignored(tmp_path):
    st = ResultsStore(tmp_path)
    st.append(_rows("a"))
    (tmp_path / ".tmp-part-123-part-x.parquet").write_bytes(b"half a file")
    assert len(st.read()) == 2
    assert len(st.stale_temporaries()) == 1
    st.compact()
    assert st.stale_temporaries() == []


def test_store_path_must_be_a_directory(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(MtlcError, match="not a directory"):
        ResultsStore(f)


@pytest.fixture(scope="module")
def design_setup():
    ds = small_synthetic()
    folds = np.random.default_rng(0).integers(0, 3, ds.n_compounds)
    ctx = DesignContext(dataset=ds.name, config_hash="standin0")
    return ds, folds, ctx


def test_run_design_resumes_and_records_failures(tmp_path, design_setup):
    ds, folds, ctx = design_setup
    d = make_design(ds, folds, regime="stl", ctx=ctx, sizes=[16, 32], fold_subset=[0, 1])
    cfg = StandInConfig()
    s1 = run_design(
        ds, d.specs[:10], tmp_path, cfg, chunk_size=3, trainer=centroid_trainer, progress=False
    )
    assert s1.done == 10 and s1.skipped == 0 and s1.failed == 0
    s2 = run_design(ds, d, tmp_path, cfg, chunk_size=3, trainer=centroid_trainer, progress=False)
    assert s2.skipped == 10 and s2.done == len(d) - 10
    df = ResultsStore(tmp_path).read(status="ok")
    assert df["job_id"].nunique() == len(d)
    auc = df[df.metric == "roc_auc"]["value"]
    assert auc.between(0, 1).all() and auc.mean() > 0.6
    # a crash in one model fails that job only
    bad = StandInConfig(fail_task="t01")
    d2 = make_design(ds, folds, regime="stl", ctx=ctx, sizes=[45], fold_subset=[0])
    s3 = run_design(
        ds, d2, tmp_path / "f", bad, chunk_size=4, trainer=centroid_trainer, progress=False
    )
    assert s3.failed == 1 and s3.done == len(d2) - 1
    assert "planted failure" in str(s3)
    st = ResultsStore(tmp_path / "f")
    failed = st.read(status="failed")
    assert failed["task"].tolist() == ["t01"] and "RuntimeError" in failed["note"].iloc[0]
    s4 = run_design(ds, d2, st, bad, trainer=centroid_trainer, progress=False)
    assert s4.skipped == len(d2) and s4.done == 0  # failures are not retried by default
    s5 = run_design(
        ds, d2, st, StandInConfig(), trainer=centroid_trainer, progress=False, retry_failed=True
    )
    assert s5.done == 1 and st.failed_job_ids() == set()


def test_one_class_training_subsample_is_a_recorded_failure(tmp_path, design_setup):
    ds, folds, ctx = design_setup
    # a data set whose task t00 has a single active: small subsamples are one-class
    keep = ~((ds.cols == 0) & (ds.y == 1))
    keep[np.flatnonzero((ds.cols == 0) & (ds.y == 1))[:1]] = True
    ds1 = type(ds)(
        ds.name,
        ds.compounds,
        ds.tasks,
        ds.rows[keep],
        ds.cols[keep],
        ds.y[keep],
        ds.value[keep],
        X=ds.X,
        info=ds.info,
    )
    d = make_design(ds1, folds, regime="stl", ctx=ctx, sizes=[16], fold_subset=[0], targets=[0])
    s = run_design(ds1, d, tmp_path, StandInConfig(), trainer=centroid_trainer, progress=False)
    assert s.failed == 1 and "one class" in s.failures[0][2]


def test_learning_curves_and_curve_matrix(tmp_path, design_setup):
    ds, folds, ctx = design_setup
    d = make_design(ds, folds, regime="stl", ctx=ctx, sizes=[16, 32, 64], targets=[0, 1])
    d = d + make_design(ds, folds, regime="mtl", ctx=ctx, sizes=[16, 32, 64])
    run_design(ds, d, tmp_path, StandInConfig(), trainer=centroid_trainer, progress=False)
    df = ResultsStore(tmp_path).read()
    cur = learning_curves(df)
    stl = cur[(cur.regime == "stl") & (cur.task == "t00")]
    assert stl["n_task"].tolist() == [16, 32, 64]
    assert (stl["n_folds"] == 3).all()
    sizes, scores = curve_matrix(df, task="t00", regime="stl")
    assert sizes.tolist() == [16, 32, 64] and scores.shape == (3, 3)
    np.testing.assert_allclose(np.nanmean(scores, axis=1), stl["mean"].to_numpy())
    mtl = cur[cur.regime == "mtl"]
    assert set(mtl["task"]) == set(ds.tasks["task_id"])
    # all-task rows carry each task's own size and the summed size of the others
    row = df[(df.regime == "mtl") & (df.n_level == 32) & (df.fold == 0)].iloc[0]
    assert row["n_task"] == 32 and row["n_context"] == 32 * (ds.n_tasks - 1)


_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import numpy as np
    from standin_trainer import StandInConfig, centroid_trainer, small_synthetic
    from mtlc.designs import DesignContext, make_design
    from mtlc.study import run_design
    ds = small_synthetic()
    folds = np.random.default_rng(0).integers(0, 3, ds.n_compounds)
    ctx = DesignContext(dataset=ds.name, config_hash="standin0")
    d = make_design(ds, folds, regime="stl", ctx=ctx, sizes=[16, 32, 64])
    s = run_design(ds, d, sys.argv[1], StandInConfig(sleep=float(sys.argv[2])), chunk_size=4,
                   trainer=centroid_trainer, progress=False)
    print(s.skipped, s.done, s.failed)
    """
)


@pytest.mark.slow
def test_sigkill_mid_run_then_resume_equals_uninterrupted(tmp_path, design_setup):
    script = tmp_path / "run.py"
    script.write_text(_SCRIPT.format(tests=str(TESTS)))
    store = tmp_path / "killed"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        [sys.executable, str(script), str(store), "0.05"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    t0 = time.time()
    while not list(store.glob("part-*.parquet")):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() - t0 < 60, "no part file after 60 s"
        time.sleep(0.02)
    time.sleep(0.1)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    st = ResultsStore(store)
    n_parts = len(st.parts())
    partial = st.done_job_ids()  # readable after the kill
    assert 0 < len(partial) < 54  # 54 jobs: 6 tasks x 3 sizes x 3 folds
    out = subprocess.run(
        [sys.executable, str(script), str(store), "0"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    skipped, done, failed = map(int, out.stdout.split())
    assert skipped == len(partial) and skipped + done == 54 and failed == 0
    assert len(st.parts()) > n_parts
    # the uninterrupted reference, in process
    ds, folds, ctx = design_setup
    d = make_design(ds, folds, regime="stl", ctx=ctx, sizes=[16, 32, 64])
    ref_store = ResultsStore(tmp_path / "ref")
    run_design(
        ds, d, ref_store, StandInConfig(), chunk_size=54, trainer=centroid_trainer, progress=False
    )
    cols = [c for c in SCHEMA if c != "train_seconds"]
    a = st.read()[cols].sort_values(["job_id", "metric"]).reset_index(drop=True)
    b = ref_store.read()[cols].sort_values(["job_id", "metric"]).reset_index(drop=True)
    assert st.last_read["replaced_rows"] == 0  # nothing was written twice
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.parametrize(
    ("regime", "options", "n_jobs"),
    [
        ("pair", {"pairs": [("t00", "t01")], "partner_sizes": [16, 32]}, 2 * 2 * 2),
        ("context", {"qs": [0.5, 1.0], "targets": ["t02"]}, 2 * 2 * 2),
        ("random", {"n_runs": 3}, 2 * 3),
        ("mtl", {}, 2 * 2),
    ],
)
def test_run_study_regimes_with_task_subset(tmp_path, regime, options, n_jobs):
    from mtlc.study import run_study

    ds = small_synthetic()
    s = run_study(
        ds, regime=regime, store=tmp_path, config=StandInConfig(), n_folds=3,
        fold_subset=[0, 2], tasks=["t00", "t01", "t02"], sizes=[16, 32],
        trainer=centroid_trainer, progress=False, **options,
    )  # fmt: skip
    assert s.done == n_jobs and s.failed == 0
    df = ResultsStore(tmp_path).read()
    assert set(df["task_set"]) == {next(iter(set(df["task_set"])))}
    assert df["task_set"].iloc[0].startswith("ids:")
    assert set(df["task"]) <= {"t00", "t01", "t02"}
    ok = df[df.metric == "roc_auc"]
    # n_task and n_context are per evaluated task, from the model's size vector
    for _, r in ok.iterrows():
        sizes = json.loads(r["task_sizes"])
        assert r["n_task"] == sizes[r["task"]]
        assert r["n_context"] == sum(sizes.values()) - sizes[r["task"]]


def test_second_run_on_a_store_waits_for_the_first(tmp_path, design_setup, capsys):
    import threading

    ds, folds, ctx = design_setup
    d = make_design(ds, folds, regime="stl", ctx=ctx, sizes=[16], fold_subset=[0])
    st = ResultsStore(tmp_path)
    out = {}
    with st.lock():
        th = threading.Thread(
            target=lambda: out.update(
                s=run_design(ds, d, st, StandInConfig(), trainer=centroid_trainer, progress=False)
            )
        )
        th.start()
        time.sleep(0.5)
        assert th.is_alive() and not st.parts()  # blocked on the lock
    th.join(timeout=60)
    assert out["s"].done == len(d)
    assert "waiting" in capsys.readouterr().err
