"""``mtlc pairwise``: a_ij tables from stored random-design runs (and the approx adapters)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from mtlc import approx
from mtlc.cli import main
from mtlc.commands.pairwise import COLUMNS, pairwise_table, read_pairwise, top_partners
from mtlc.store import ResultsStore

GRID = np.array([16, 23, 32, 45, 64, 91, 128, 181, 256, 362, 512])
IDS = [f"t{k}" for k in range(5)]


def _planted_rows(*, n_runs: int = 40, folds=(0, 1), seed: int = 0) -> pd.DataFrame:
    """Store rows of random-design networks on a known surface: t0 gains from t2 only.

    P_i = 0.9 - exp(-1 - 3 n_i - [i = 0] 3 n_2) + noise (n in thousands); two metrics per task
    (the fit must use roc_auc only) and one failed network (left out, counted).
    """
    rng = np.random.default_rng(seed)
    rows = []
    for f in folds:
        for r in range(n_runs):
            S = GRID[rng.integers(len(GRID), size=len(IDS))]
            sizes = json.dumps({t: int(n) for t, n in zip(IDS, S, strict=True)})
            job = f"job-{f}-{r}"
            for i, t in enumerate(IDS):
                u = -1 - 3 * S[i] / 1000 - (3 * S[2] / 1000 if i == 0 else 0)
                p = 0.9 - np.exp(u) + 0.004 * rng.standard_normal()
                for metric, v in (("roc_auc", p), ("avg_precision", p / 2)):
                    rows.append(
                        dict(dataset="toy", recipe="", task_set="all", split="compound", fold=f,
                             seed=0, regime="random", n_level=r, task=t, metric=metric, value=v,
                             note="", status="ok", config_hash="h", job_id=job,
                             task_sizes=sizes)
                    )  # fmt: skip
    rows.append(
        dict(dataset="toy", recipe="", task_set="all", split="compound", fold=folds[0], seed=0,
             regime="random", n_level=n_runs, task=None, metric="", value=np.nan,
             note="single class", status="failed", config_hash="h", job_id="job-failed",
             task_sizes="{}")
    )  # fmt: skip
    return pd.DataFrame(rows)


@pytest.fixture()
def planted_store(tmp_path):
    store = ResultsStore(tmp_path / "runs")
    df = _planted_rows()
    store.append(df.iloc[: len(df) // 2])  # two parts, as an interrupted training leaves them
    store.append(df.iloc[len(df) // 2 :])
    return tmp_path / "runs"


def test_store_adapter_gives_the_runs_random_design_fit_takes(planted_store):
    df = ResultsStore(planted_store).read()
    run = approx.random_design_from_store(df)
    assert run.info["failed_jobs"] == 1
    assert run.info["n_runs_per_fold"] == {0: 40, 1: 40}
    assert list(run.sizes.columns) == IDS
    assert len(run.table) == len(run.sizes) == 80 * len(IDS)
    # every row's own size is its task's column of the network's size vector
    col = run.sizes.columns.get_indexer(run.table["task"])
    own = run.sizes.to_numpy()[np.arange(len(col)), col]
    np.testing.assert_array_equal(run.table["n_task"].to_numpy(), own)
    np.testing.assert_array_equal(
        run.table["n_context"].to_numpy(), run.sizes.to_numpy().sum(axis=1) - own
    )
    ok = df[(df["metric"] == "roc_auc") & (df["status"] == "ok")]
    assert sorted(run.table["value"]) == sorted(ok["value"])
    one = approx.random_design_from_store(df, fold=1)
    assert set(one.table["fold"]) == {1} and one.table["run"].max() == 39


def test_store_adapter_rejects_other_rows(planted_store):
    from mtlc.errors import InputTableError

    df = ResultsStore(planted_store).read()
    with pytest.raises(InputTableError, match="regime 'random'"):
        approx.random_design_from_store(df.assign(regime="stl"))
    with pytest.raises(InputTableError, match="mix splits"):
        approx.random_design_from_store(
            df.assign(split=np.where(df["fold"] == 0, "compound", "scaffold"))
        )
    with pytest.raises(InputTableError, match="metric 'pr'"):
        approx.random_design_from_store(df, metric="pr")
    with pytest.raises(InputTableError, match="lack column"):
        approx.random_design_from_store(df.drop(columns=["task_sizes"]))


@pytest.mark.parametrize("model", ["multi", "exp3.2"])
def test_closed_form_fit_equals_the_copied_table_fit(planted_store, model):
    run = approx.random_design_from_store(ResultsStore(planted_store).read())
    slow = approx.random_design_fit(run, model=model, n_boot=30, c_fixed=1.0, seed=4)
    fast = approx.random_design_fit_fixed_c(run, model=model, n_boot=30, c=1.0, seed=4)
    assert list(fast.columns) == list(slow.columns) and len(fast) == len(slow)
    for c in slow.columns:
        if slow[c].dtype.kind == "f":
            np.testing.assert_allclose(fast[c], slow[c], rtol=1e-8, atol=1e-12, err_msg=c)
        else:
            assert (fast[c] == slow[c]).all(), c


def test_marginal_fit_is_one_weighted_least_squares_per_partner(planted_store):
    run = approx.random_design_from_store(ResultsStore(planted_store).read())
    fit = approx.random_design_fit_fixed_c(run, model="marginal", ridge=0.0, n_boot=30)
    assert len(fit) == len(IDS) * (len(IDS) - 1) and fit["flag"].str.endswith("marginal").all()
    tab, S = run.table, run.sizes
    for target, partner in (("t0", "t2"), ("t3", "t1")):
        m = (tab["task"] == target).to_numpy()
        p = tab.loc[m, "value"].to_numpy()
        w = np.sqrt((1 - p) ** 2)
        D = np.column_stack(
            [np.ones(m.sum()), -tab.loc[m, "n_task"] / 1000, -S.loc[m, partner] / 1000]
        )
        theta = np.linalg.lstsq(D * w[:, None], np.log(1 - p) * w, rcond=None)[0]
        row = fit[(fit["target"] == target) & (fit["source"] == partner)].iloc[0]
        assert row["estimate"] == pytest.approx(theta[2], rel=1e-9)
        assert row["a"] == pytest.approx(theta[1], rel=1e-9)
    # the planted pair stands out, with an interval above 0; the others' intervals cover 0
    t0 = fit[fit["target"] == "t0"].set_index("source")
    assert t0["estimate"].idxmax() == "t2" and t0.loc["t2", "ci_lo"] > 0
    assert t0.loc["t2", "estimate"] > 1.5  # c = 1 is above the planted asymptote 0.9: shrunk
    # at the planted asymptote the marginal fit recovers the planted size: the partners left
    # out only add noise, because the design draws every size independently
    true_c = approx.random_design_fit_fixed_c(run, c=0.9, model="marginal", n_boot=5)
    est = true_c.set_index(["target", "source"])["estimate"]
    assert est[("t0", "t2")] == pytest.approx(3.0, rel=0.15)
    assert est[("t0", "t1")] == pytest.approx(0.0, abs=0.5)
    rest = fit[(fit["target"] != "t0")]
    assert ((rest["ci_lo"] <= 0) & (rest["ci_hi"] >= 0)).mean() >= 0.85


def test_closed_form_fit_in_float32_inputs_matches_float64(planted_store):
    # sizes and AUCs stored as float32 (e.g. a compact copy) give the same coefficients to
    # float32 precision: the fit itself always runs in float64
    run = approx.random_design_from_store(ResultsStore(planted_store).read())
    r32 = approx.CurveRun(
        run.table.assign(value=run.table["value"].astype(np.float32)), run.cost, sizes=run.sizes
    )
    a = approx.random_design_fit_fixed_c(run, n_boot=10)
    b = approx.random_design_fit_fixed_c(r32, n_boot=10)
    np.testing.assert_allclose(b["estimate"], a["estimate"], rtol=1e-3, atol=1e-3)


def test_fit_command_writes_the_direct_call_table_and_finds_the_planted_partner(
    planted_store, tmp_path, capsys
):
    out = tmp_path / "pairwise.parquet"
    args = ["pairwise", "fit", "--runs", str(planted_store), "--out", str(out)]
    args += ["--n-boot", "40", "--c-fixed", "1", "--by-fold", "--seed", "2"]
    assert main(args) == 0
    tab = read_pairwise(out)
    assert list(tab.columns) == COLUMNS
    assert sorted(tab["fold"].unique()) == ["0", "1", "pooled"]
    assert (tab["n_runs"][tab["fold"] == "pooled"] == 80).all()
    # equals a direct library call, fit by fit
    df = ResultsStore(planted_store).read()
    direct = approx.random_design_fit_fixed_c(
        approx.random_design_from_store(df), c=1.0, n_boot=40, seed=2
    )
    pooled = tab[tab["fold"] == "pooled"].reset_index(drop=True)
    for c in ("estimate", "ci_lo", "ci_hi", "se", "p_pos", "q_pos", "rho", "a"):
        np.testing.assert_array_equal(pooled[c].to_numpy(), direct[c].to_numpy(), err_msg=c)
    assert (pooled["partner"].to_numpy() == direct["source"].to_numpy()).all()
    fold1 = pairwise_table(
        approx.random_design_from_store(df, fold=1), fold="1", c_fixed=1.0, n_boot=40, seed=2
    )
    pd.testing.assert_frame_equal(tab[tab["fold"] == "1"].reset_index(drop=True), fold1)
    # the planted pair t2 -> t0 is the top partner of t0, and significant
    top = top_partners(pooled, k=1)
    assert top.set_index("target").loc["t0", "partner"] == "t2"
    row = pooled[(pooled["target"] == "t0") & (pooled["partner"] == "t2")].iloc[0]
    assert row["ci_lo"] > 0 and row["q_pos"] < 0.05 and row["estimate"] > 1.5
    assert "1 failed networks left out" in capsys.readouterr().err
    # --pairs prints the pair regime's argument
    assert main(["pairwise", "top", "--table", str(out), "--k", "1", "--pairs"]) == 0
    printed = capsys.readouterr().out.strip()
    assert "t0:t2" in printed.split(",") and len(printed.split(",")) == len(IDS)


def test_fit_command_resumes_and_skips_when_up_to_date(planted_store, tmp_path, capsys):
    out = tmp_path / "p.parquet"
    base = ["pairwise", "fit", "--runs", str(planted_store), "--out", str(out)]
    base += ["--n-boot", "10", "--c-fixed", "1", "--by-fold"]
    assert main(base) == 0
    first = read_pairwise(out)
    assert not out.with_name("p.parquet.partial").exists()
    capsys.readouterr()
    assert main(base) == 0
    assert "up to date" in capsys.readouterr().err
    # an interrupted run: the unit of fold 0 was written before the kill; the rerun keeps it
    # (a marked copy shows it is reused, not refit) and fits the rest
    import hashlib

    from mtlc.commands.pairwise import _atomic_write

    out.unlink()
    partial = out.with_name("p.parquet.partial")
    partial.mkdir()
    kept = first[first["fold"] == "0"].reset_index(drop=True)
    jobs = ResultsStore(planted_store).read()
    jobs = sorted(jobs.loc[jobs["regime"] == "random", "job_id"].unique().tolist())
    settings = {
        "model": "multi", "ridge": 1e-3, "n_boot": 10, "c_fixed": 1.0, "level": 0.95,
        "seed": 0, "metric": "roc_auc",
        "jobs": hashlib.sha256("\n".join(jobs).encode()).hexdigest()[:16],
    }  # fmt: skip
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    (partial / "0123456789ab-0.parquet").write_bytes(b"stale: other settings")
    _atomic_write(kept.assign(estimate=-99.0), partial / f"{key}-0.parquet", {}, float32=False)
    capsys.readouterr()
    assert main(base) == 0
    assert "0: kept from an earlier run" in capsys.readouterr().err
    again = read_pairwise(out)
    assert not partial.exists()  # the stale part (other settings) went with the folder
    assert (again.loc[again["fold"] == "0", "estimate"] == -99.0).all()  # reused, not refit
    pd.testing.assert_frame_equal(
        again[again["fold"] != "0"].reset_index(drop=True),
        first[first["fold"] != "0"].reset_index(drop=True),
    )


def test_store_alias_and_default_output_for_mtlc_study(planted_store, capsys):
    # mtlc study passes the stage's store as --store; the table goes next to it
    args = ["pairwise", "fit", "--n-boot", "5", "--c-fixed", "1", "--store", str(planted_store)]
    assert main(args) == 0
    out = planted_store.with_name(planted_store.name + "_pairwise.parquet")
    assert out.is_file() and len(read_pairwise(out)) == len(IDS) * (len(IDS) - 1)


def test_float32_output_is_half_precision_of_the_same_numbers(planted_store, tmp_path):
    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    common = ["--runs", str(planted_store), "--n-boot", "10", "--c-fixed", "1"]
    assert main(["pairwise", "fit", *common, "--out", str(a)]) == 0
    assert main(["pairwise", "fit", *common, "--out", str(b), "--float32"]) == 0
    ta, tb = read_pairwise(a), read_pairwise(b)
    assert tb["estimate"].dtype == np.float64  # read back as float64
    np.testing.assert_allclose(tb["estimate"], ta["estimate"], rtol=1e-6)
    np.testing.assert_array_equal(tb["target"], ta["target"])


def test_compact_output_reads_back_the_same_table(planted_store, tmp_path):
    from mtlc.commands.pairwise import COMPACT_BITS, DERIVED

    a, b = tmp_path / "a.parquet", tmp_path / "b.parquet"
    common = ["--runs", str(planted_store), "--n-boot", "20", "--c-fixed", "1", "--by-fold"]
    assert main(["pairwise", "fit", *common, "--out", str(a)]) == 0
    assert main(["pairwise", "fit", *common, "--out", str(b), "--compact"]) == 0
    assert not set(DERIVED) & set(pd.read_parquet(b).columns)  # not stored...
    ta, tb = read_pairwise(a), read_pairwise(b)  # ...but recomputed on read
    assert list(tb.columns) == COLUMNS
    tol = 2.0 ** -(COMPACT_BITS + 1)
    for c in ("estimate", "ci_lo", "ci_hi", "se", "a", "rho"):
        np.testing.assert_allclose(tb[c], ta[c], rtol=2.5 * tol, atol=1e-30, err_msg=c)
    np.testing.assert_allclose(tb["p_pos"], ta["p_pos"], rtol=0.05, atol=1e-4)
    np.testing.assert_allclose(tb["q_pos"], ta["q_pos"], rtol=0.05, atol=1e-4)
    assert ((tb["q_pos"] < 0.05) == (ta["q_pos"] < 0.05)).mean() > 0.95


def test_free_asymptote_fit_through_the_command(planted_store, tmp_path):
    out = tmp_path / "free.parquet"
    assert main(["pairwise", "fit", "--runs", str(planted_store), "--out", str(out),
                 "--n-boot", "10", "--model", "exp3.2"]) == 0  # fmt: skip
    tab = read_pairwise(out)
    assert (tab["partner"] == "S").all() and len(tab) == len(IDS)
    assert tab["c_fixed"].isna().all() and (tab["ridge"] == 0).all()
    t0 = tab.set_index("target").loc["t0"]
    assert t0["estimate"] > 0  # t0 gains from its context (t2 in it)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--runs", "{tmp}/nothing"], "no results store"),
        (["--n-boot", "0"], "--n-boot"),
        (["--c-fixed", "one"], "--c-fixed"),
        (["--no-pooled"], "--by-fold"),
        (["--level", "1.5"], "--level"),
        (["--model", "marginal"], "--c-fixed"),
    ],
)
def test_bad_input_is_a_one_line_error(planted_store, tmp_path, capsys, extra, message):
    args = ["pairwise", "fit", "--runs", str(planted_store), "--out", str(tmp_path / "o.pq")]
    args += [e.replace("{tmp}", str(tmp_path)) for e in extra]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_a_store_of_another_regime_is_refused(tmp_path, capsys):
    store = ResultsStore(tmp_path / "stl")
    store.append(_planted_rows(n_runs=2).assign(regime="stl"))
    args = ["pairwise", "fit", "--runs", str(tmp_path / "stl"), "--out", str(tmp_path / "o.pq")]
    assert main(args) == 2
    assert "mtlc train --regime random" in capsys.readouterr().err
    assert main(["pairwise", "top", "--table", str(tmp_path / "none.pq")]) == 2
    assert "mtlc pairwise fit" in capsys.readouterr().err
