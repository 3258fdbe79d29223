"""``mtlc tag`` and the TAG store API: stored Z equals tag_train, resume, loader, bad input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from mtlc.affinity import (
    load_tag,
    round_mantissa,
    tag_jobs,
    tag_matrix,
    tag_results_from_store,
    tag_train,
)
from mtlc.approx import tag_pair_test
from mtlc.cli import main
from mtlc.errors import ConfigError, MtlcError
from mtlc.store import ResultsStore
from mtlc.study import assign_folds, load_dataset
from mtlc.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DS_ARGS = {"n_compounds": 240, "n_tasks": 4}
BASE = ["tag", "--dataset", "synthetic", "--dataset-arg", "n_compounds=240"]
BASE += ["--dataset-arg", "n_tasks=4", "--folds", "3", "--fold-subset", "0,2", "--seeds", "2"]
BASE += ["--epochs", "3", "--every", "2", "--hidden", "16", "--batch-size", "32"]
BASE += ["--no-progress"]


def _direct(fold: int, seed: int, dtype: str) -> object:
    ds = load_dataset("synthetic", **DS_ARGS)
    folds = assign_folds(ds, n_folds=3, split="compound")
    cfg = TrainConfig(hidden=(16,), batch_size=32, max_epochs=3, dtype=dtype)
    return tag_train(ds, np.flatnonzero(folds != fold), config=cfg, epochs=3, every=2, seed=seed)


@pytest.fixture(scope="module")
def run64(tmp_path_factory):
    """A float64 run: folds 0 and 2 of 3, two seeds, per-epoch rows for fold 0 only."""
    store = tmp_path_factory.mktemp("tag") / "s"
    rc = main([*BASE, "--dtype", "float64", "--epoch-rows", "0", "--store", str(store)])
    return store, rc


def test_stored_z_equals_a_direct_tag_train_call(run64):
    store, rc = run64
    assert rc == 0
    df = load_tag(store)
    assert set(zip(df["fold"], df["seed"], strict=True)) == {(0, 0), (0, 1), (2, 0), (2, 1)}
    off = ~np.eye(4, dtype=bool)  # the store holds off-diagonal pairs only
    for fold, seed in [(0, 1), (2, 0)]:
        ref = _direct(fold, seed, "float64")
        ids = ref.task_ids
        job = df[(df["fold"] == fold) & (df["seed"] == seed)]
        # Stored as float32: exactly the float32 rounding of the float64 computation.
        got = tag_matrix(job, ids)
        want = np.where(off, ref.affinity.astype(np.float32), np.nan)
        np.testing.assert_array_equal(got, want)
        cos = tag_matrix(job, ids, value="cosine")  # mirrored from the upper triangle
        np.testing.assert_allclose(cos[off], ref.cosine[off], rtol=1e-6, atol=1e-7)
        (res,) = tag_results_from_store(job, ids)
        np.testing.assert_array_equal(res.counts[off], ref.counts[off])
        if fold == 0:  # per-epoch rows stored for fold 0 only
            h = ref.history.astype(np.float32)
            np.testing.assert_array_equal(res.history[:, off], h[:, off])
            np.testing.assert_array_equal(res.history_counts[:, off], ref.history_counts[:, off])
            np.testing.assert_allclose(
                res.cosine_history[:, off], ref.cosine_history[:, off], rtol=1e-6, atol=1e-7
            )
        else:
            assert res.history.shape == (1, 4, 4)
            np.testing.assert_array_equal(res.history[0], want)


def test_float32_run_is_stored_exactly(tmp_path):
    store = tmp_path / "s32"
    # a repeated option overrides the earlier one (argparse): fold 1, one seed, float32
    assert main([*BASE, "--fold-subset", "1", "--seeds", "1", "--store", str(store)]) == 0
    ref = _direct(1, 0, "float32")
    got = tag_matrix(load_tag(store), ref.task_ids)
    off = ~np.eye(4, dtype=bool)
    # tag_train averages the float32 probes in float64; the store keeps float32 of that mean
    np.testing.assert_array_equal(got[off], ref.affinity[off].astype(np.float32))


def test_loader_shapes_matrix_means_and_diagonal(run64):
    store, _ = run64
    df = load_tag(store)
    ids = [f"T{k}" for k in range(4)] if "T0" in set(df["source"]) else sorted(set(df["source"]))
    K = len(ids)
    whole = df[df["epoch"] == -1]
    assert len(whole) == 4 * K * (K - 1)  # every off-diagonal pair of every job
    assert (df["epoch"] >= 0).sum() == 2 * 3 * K * (K - 1)  # fold 0: 2 seeds x 3 epochs
    assert not (df["source"] == df["target"]).any()
    assert {"z", "cosine", "n_steps", "config_hash", "train_seconds", "probe_forward"} <= set(
        df.columns
    )
    assert df["config_hash"].nunique() == 1
    M = tag_matrix(df, ids)
    assert M.shape == (K, K) and np.isnan(np.diag(M)).all()
    assert np.isfinite(M[~np.eye(K, dtype=bool)]).all()
    # The mean over folds and seeds is the mean of the per-job matrices.
    per_job = [tag_matrix(df[df["job_id"] == j], ids) for j in df["job_id"].unique()]
    np.testing.assert_allclose(M, np.mean(per_job, axis=0), rtol=1e-12)
    M0 = tag_matrix(df, ids, fold=0)
    fold0 = [tag_matrix(df[df["job_id"] == j], ids) for j in df[df["fold"] == 0]["job_id"].unique()]
    np.testing.assert_allclose(M0, np.mean(fold0, axis=0), rtol=1e-12)
    # Without the whole-run rows the step-weighted per-epoch mean gives the same matrix.
    f0 = df[df["fold"] == 0]
    np.testing.assert_allclose(tag_matrix(f0[f0["epoch"] >= 0], ids), M0, rtol=1e-5)
    # Unknown ids are NaN rows; the cosine matrix is symmetric.
    M5 = tag_matrix(df, [*ids, "nope"])
    assert M5.shape == (K + 1, K + 1) and np.isnan(M5[K]).all()
    C = tag_matrix(df, ids, value="cosine")
    np.testing.assert_array_equal(C, C.T)
    with pytest.raises(ConfigError, match="value"):
        tag_matrix(df, ids, value="affinity")
    with pytest.raises(ConfigError, match="fold 1"):
        tag_matrix(df, ids, fold=1)
    with pytest.raises(ConfigError, match="mixes splits"):
        tag_matrix(pd.concat([df, df.assign(split="scaffold")]), ids)


@pytest.mark.filterwarnings("ignore:Mean of empty slice", "ignore:Degrees of freedom")
def test_pair_test_runs_from_the_store(run64):
    store, _ = run64
    df = load_tag(store)
    ids = sorted(set(df["source"]))
    res = tag_results_from_store(df, ids)
    assert [(r.settings["fold"], r.settings["seed"]) for r in res] == [
        (0, 0),
        (0, 1),
        (2, 0),
        (2, 1),
    ]
    # Folds and seeds as replicates ...
    t = tag_pair_test(res, unit="seed")
    assert (t["n"][~np.eye(4, dtype=bool)] == 4).all()
    # ... and per-epoch replicates from the jobs that stored them equal tag_train's own.
    ep = tag_pair_test(res[:2], unit="epoch")
    direct = tag_pair_test([_direct(0, 0, "float64"), _direct(0, 1, "float64")], unit="epoch")
    np.testing.assert_allclose(ep["mean"], direct["mean"], rtol=1e-6, atol=1e-12, equal_nan=True)
    np.testing.assert_allclose(ep["p"], direct["p"], rtol=1e-4, atol=1e-6, equal_nan=True)


def test_rerun_skips_every_job_and_the_study_sees_the_jobs(run64, capsys):
    store, _ = run64
    parts = sorted(p.name for p in store.glob("part-*.parquet"))
    assert len(parts) == 4
    assert main([*BASE, "--dtype", "float64", "--epoch-rows", "0", "--store", str(store)]) == 0
    err = capsys.readouterr().err
    assert "4 already in the store (skipped), 0 done, 0 failed" in err
    assert sorted(p.name for p in store.glob("part-*.parquet")) == parts
    # mtlc study counts stored jobs with ResultsStore.done_job_ids: it reads these parts too.
    assert ResultsStore(store).done_job_ids() == set(tag_jobs(store)["job_id"])
    assert (tag_jobs(store)["zero_loss_target_steps"] == 0).all()
    # Another configuration is another set of jobs.
    assert main([*BASE, "--fold-subset", "0", "--seeds", "1", "--store", str(store)]) == 0
    assert "0 already in the store (skipped), 1 done" in capsys.readouterr().err


def test_a_failed_job_is_recorded_reported_and_retried(tmp_path, monkeypatch, capsys):
    import mtlc.affinity as aff

    real = aff.tag_train
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 1:
            raise RuntimeError("simulated out of memory")
        return real(*a, **k)

    monkeypatch.setattr(aff, "tag_train", flaky)
    store = tmp_path / "f"
    args = [*BASE, "--seeds", "1", "--store", str(store)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "1 done, 1 failed" in err and "simulated out of memory" in err
    jobs = tag_jobs(store)
    assert sorted(jobs["status"]) == ["failed", "ok"]
    assert jobs.loc[jobs["status"] == "failed", "note"].item().endswith("simulated out of memory")
    assert set(load_tag(store)["fold"]) == {2}  # failed jobs have no rows
    assert main(args) == 0  # a plain rerun does not retry a failure ...
    assert "2 already in the store (skipped)" in capsys.readouterr().err
    assert main([*args, "--retry-failed"]) == 0  # ... --retry-failed does
    assert "1 already in the store (skipped), 1 done, 0 failed" in capsys.readouterr().err
    jobs = tag_jobs(store)
    assert (jobs["status"] == "ok").all() and len(jobs) == 2  # the newest part wins
    assert set(load_tag(store)["fold"]) == {0, 2}


def test_a_killed_run_keeps_finished_jobs_and_resumes(tmp_path, capsys):
    """SIGKILL in the middle of a run: every stored part is whole, the rerun does the rest."""
    import os
    import signal
    import subprocess
    import sys
    import time

    store = tmp_path / "k"
    args = [*BASE, "--fold-subset", "0,1,2", "--seeds", "3", "--epochs", "12", "--every", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "mtlc", *args, "--store", str(store)]
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while proc.poll() is None and len(list(store.glob("part-*"))) < 2 and time.time() - t0 < 120:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    before = tag_jobs(store)
    assert 2 <= len(before) < 9, "the run finished before it could be killed"
    assert (before["status"] == "ok").all()
    assert len(load_tag(store)["job_id"].unique()) == len(before)
    assert main([*args, "--store", str(store)]) == 0
    err = capsys.readouterr().err
    assert f"{len(before)} already in the store (skipped), {9 - len(before)} done" in err
    assert len(tag_jobs(store)) == 9


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--dataset", "nope"], "unknown dataset"),
        (["--fold-subset", "3"], "--fold-subset [3] outside 0..2"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--every", "0"], "--every must be at least 1"),
        (["--folds", "1"], "--folds must be at least 2"),
        (["--epoch-rows", "7"], "--epoch-rows [7] outside"),
        (["--mantissa-bits", "24"], "--mantissa-bits must be in 1..23"),
        (["--hidden", "a"], "--hidden must be comma-separated integers"),
        (["--tasks", "X9"], "unknown task"),
    ],
)
def test_bad_input_is_a_one_line_error(tmp_path, capsys, extra, message):
    assert main([*BASE, *extra, "--store", str(tmp_path / "s")]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_a_store_that_is_not_a_tag_store_is_refused(tmp_path, capsys):
    f = tmp_path / "file"
    f.write_text("x")
    assert main([*BASE, "--store", str(f)]) == 2
    assert "not a directory" in capsys.readouterr().err
    with pytest.raises(MtlcError, match="does not exist"):
        load_tag(tmp_path / "missing")
    lc = tmp_path / "lc"
    ResultsStore(lc).append(
        pd.DataFrame({"job_id": ["j"], "dataset": ["d"], "status": ["ok"]}).assign(
            recipe="",
            task_sizes="{}",
            config_hash="h",
            task_set="all",
            split="compound",
            regime="stl",
            metric="auc",
        )
    )
    with pytest.raises(MtlcError, match="not a TAG part"):
        load_tag(lc)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_mantissa_bounds_the_relative_error(dtype):
    rng = np.random.default_rng(0)
    x = (rng.standard_normal(2000) * 10.0 ** rng.integers(-8, 3, 2000)).astype(dtype)
    x[:3] = [np.nan, 0.0, -0.0]
    np.testing.assert_array_equal(round_mantissa(x, 23), x.astype(np.float32))
    for bits in (4, 10, 16):
        r = round_mantissa(x, bits)
        assert r.dtype == np.float32 and np.isnan(r[0]) and r[1] == 0
        ok = np.isfinite(x) & (x != 0)
        x32 = x.astype(np.float32)[ok].astype(np.float64)
        rel = np.abs(r[ok] - x32) / np.abs(x32)
        assert rel.max() <= 2.0 ** -(bits + 1) * (1 + 1e-6)
        assert (np.sign(r[ok]) == np.sign(x32)).all()
        # the dropped bits are zero
        assert not (r.view(np.uint32)[ok] & np.uint32((1 << (23 - bits)) - 1)).any()
    with pytest.raises(ConfigError):
        round_mantissa(x, 0)


# ------------------------------------------------------------------ the stored paper-scale runs
def _tag_stages():
    from mtlc.study_plan import plan

    return [s for s in plan("full") if s["command"] and s["command"][0] == "tag"]


@pytest.mark.parametrize("stage", _tag_stages(), ids=lambda s: s["name"])
def test_stored_tag_results_match_their_study_stage(repo_root, stage):
    """Each stored TAG store holds every job of its stage's command, all ok, same settings."""
    from mtlc.cli import build_parser

    store = repo_root / stage["store"]
    if not store.is_dir():
        pytest.skip(f"{stage['store']} not stored yet")
    args = build_parser().parse_args([*stage["command"], "--store", str(store)])
    jobs = tag_jobs(store)
    want = (
        range(args.folds)
        if args.fold_subset is None
        else [int(f) for f in args.fold_subset.split(",")]
    )
    assert sorted(zip(jobs["fold"], jobs["seed"], strict=True)) == [
        (f, s) for f in want for s in range(args.seeds)
    ]
    assert (jobs["status"] == "ok").all() and jobs["config_hash"].nunique() == 1
    assert (jobs["n_folds"] == args.folds).all() and (jobs["split"] == args.split).all()
    assert (jobs["epochs"] == args.epochs).all() and (jobs["every"] == args.every).all()
    assert (jobs["mantissa_bits"] == args.mantissa_bits).all()
    assert (jobs["zero_loss_target_steps"] >= 0).all()  # counted, not silently dropped
    assert not jobs["epoch_rows"].any() if args.epoch_rows == "none" else True
    df = load_tag(store, costs=False)
    ids = sorted(set(df["source"]))
    K = len(ids)
    assert K == jobs["n_tasks"].iloc[0] >= 190
    assert len(df) == len(jobs) * K * (K - 1) and (df["epoch"] == -1).all()
    M = tag_matrix(df, ids)
    assert np.isnan(np.diag(M)).all() and np.isfinite(M[~np.eye(K, dtype=bool)]).mean() > 0.95
    # An all-task network mostly helps: positive affinity prevails (TAG's own finding on
    # related tasks), and the gradient cosine is a cosine.
    assert np.nanmean(M) > 0
    C = tag_matrix(df, ids, value="cosine")
    assert np.nanmax(np.abs(C)) <= 1 + 1e-6


def test_stored_tag_results_fit_the_storage_budget(repo_root):
    stores = [repo_root / s["store"] for s in _tag_stages()]
    total = sum(f.stat().st_size for d in stores if d.is_dir() for f in d.glob("part-*"))
    assert total < 4 * 1024**2


# ------------------------------------------------------------------ a target with zero loss
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_a_target_whose_loss_underflows_has_undefined_affinity(dtype):
    """Z = 1 - L'/L is 0/0 when the target's batch loss underflows: NaN, not +-1e26."""
    import scipy.sparse as sp

    from mtlc.affinity import lookahead_fast, lookahead_reference, zero_loss
    from mtlc.models import MultiTaskNet, SparseBatch

    B, F, K = 24, 40, 4
    X = sp.random(B, F, density=0.2, random_state=0, format="csr")
    X.data[:] = 1
    torch.manual_seed(0)
    net = MultiTaskNet(F, K, hidden=(8,), dropout=0.0).to(dtype)
    rng = np.random.default_rng(0)
    y = (rng.random((B, K)) < 0.5).astype(np.float64)
    y[:, 0] = 1.0
    m = np.ones((B, K))
    with torch.no_grad():  # task 0: every logit about +120, every label 1: loss ~1e-52
        net.head.weight[0] = 0.0
        net.head.bias[0] = 120.0
    batch = SparseBatch.from_csr(X, np.arange(B))
    fast = lookahead_fast(net, batch, y, m, lr=1e-2)
    ref = lookahead_reference(net, batch, y, m, lr=1e-2)
    off = ~np.eye(K, dtype=bool)
    underflows = fast.loss[0] < zero_loss(dtype)
    assert underflows == (dtype == torch.float32)  # 1e-52 is a normal float64
    for r in (fast, ref):
        assert np.isnan(r.Z[:, 0]).all() == underflows
        assert np.isfinite(r.Z[1:, 1:][off[1:, 1:]]).all()
        assert (np.abs(r.Z[off & np.isfinite(r.Z)]) < 1).all()
    if not underflows:
        np.testing.assert_allclose(fast.Z[off], ref.Z[off], rtol=1e-6, atol=1e-12)
    else:
        assert np.isnan(fast.cosine[0]).all() and np.isnan(fast.cosine[:, 0]).all()
        assert np.isnan(fast.first_order[:, 0]).all()
