"""Unit tests of mtlc.stats against scipy references."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from mtlc import stats as S
from mtlc.errors import InputTableError


def test_bh_matches_scipy_and_ignores_nan():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=50) ** 3
    np.testing.assert_allclose(S.bh(p), sps.false_discovery_control(p), rtol=1e-12)
    pn = np.r_[p, np.nan]
    q = S.bh(pn)
    assert np.isnan(q[-1])
    np.testing.assert_allclose(q[:-1], sps.false_discovery_control(p))
    assert np.all(np.isnan(S.bh([np.nan, np.nan])))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_t_summary_matches_scipy(dtype):
    rng = np.random.default_rng(1)
    e = (0.3 + rng.standard_normal((5, 10))).astype(dtype)
    e[2, 3] = np.nan
    ts = S.t_summary(e)
    for r in range(5):
        v = e[r][np.isfinite(e[r])].astype(np.float64)
        ref = sps.ttest_1samp(v, 0.0)
        ci = ref.confidence_interval(0.95)
        assert ts["p_t"][r] == pytest.approx(ref.pvalue, rel=1e-6)
        assert ts["ci_lo"][r] == pytest.approx(ci.low, rel=1e-6)
        assert ts["ci_hi"][r] == pytest.approx(ci.high, rel=1e-6)
        assert ts["n_folds"][r] == v.size


def test_t_summary_degenerate_rows():
    e = np.array([[1.0, np.nan, np.nan], [0.0, 0.0, 0.0], [2.0, 2.0, 2.0]])
    ts = S.t_summary(e)
    assert np.isnan(ts["p_t"][0]) and np.isnan(ts["ci_lo"][0])  # one fold: no interval
    assert ts["p_t"][1] == 1.0
    assert ts["p_t"][2] == 0.0


def test_bootstrap_interval_contains_mean_and_is_seeded():
    rng = np.random.default_rng(2)
    e = rng.standard_normal((4, 10))
    lo, hi = S.bootstrap_interval(e, n_boot=500, seed=3)
    m = e.mean(axis=1)
    assert np.all(lo < m) and np.all(m < hi)
    lo2, hi2 = S.bootstrap_interval(e, n_boot=500, seed=3)
    np.testing.assert_array_equal(lo, lo2)
    const = np.full((1, 10), 0.7)
    lo, hi = S.bootstrap_interval(const)
    assert lo[0] == pytest.approx(0.7) and hi[0] == pytest.approx(0.7)


def test_wilcoxon_matches_scipy():
    rng = np.random.default_rng(4)
    e = rng.standard_normal((3, 10)) + 0.5
    p = S.wilcoxon_p(e)
    for r in range(3):
        assert p[r] == pytest.approx(sps.wilcoxon(e[r]).pvalue)


def _fits():
    rng = np.random.default_rng(5)
    rows = []
    for t in range(6):
        for f in range(10):
            val = (0.5 if t < 3 else 0.0) + 0.2 * rng.standard_normal()
            rows.append({"task": f"T{t}", "fold": f, "a_S": val, "flag": ""})
    df = pd.DataFrame(rows)
    null = df.task.isin(["T3", "T4", "T5"])
    # null tasks: centre each on exactly 0 so that the test outcome does not hinge on a seed
    df.loc[null, "a_S"] -= df[null].groupby("task")["a_S"].transform("mean")
    df.loc[(df.task == "T5") & (df.fold < 2), ["a_S", "flag"]] = [np.nan, "too_few_points"]
    return df


def test_fold_summary_table():
    s = S.fold_summary(_fits(), ["a_S"], by=["task"], n_boot=300).set_index("task")
    assert list(s.index) == [f"T{t}" for t in range(6)]
    assert (s.loc[["T0", "T1", "T2"], "q"] < 0.05).all()
    assert (s.loc[["T3", "T4", "T5"], "q"] > 0.05).all()
    assert s.loc["T5", "n_folds"] == 8 and s.loc["T5", "n_excluded"] == 2
    assert s.loc["T5", "flag"] == "flagged_folds:2"
    assert s.loc["T0", "flag"] == ""
    assert (s["ci_lo"] < s["estimate"]).all() and (s["boot_hi"] > s["estimate"]).all()
    np.testing.assert_allclose(s["q"], S.bh(s["p_t"].to_numpy()))


def test_fold_summary_single_fold_is_flagged():
    df = _fits()
    one = df[df.fold == 0]
    s = S.fold_summary(one, ["a_S"], by=["task"])
    assert s["flag"].str.startswith("too_few_folds").all()
    assert s["p_t"].isna().all() and s["q"].isna().all()


def test_fold_summary_missing_column():
    with pytest.raises(InputTableError, match="a_ij"):
        S.fold_summary(_fits(), ["a_ij"], by=["task"])


def test_fold_summary_two_keys_only_existing_groups():
    df = _fits().rename(columns={"task": "partner"})
    df["task"] = np.where(df["partner"].isin(["T0", "T1", "T2"]), "A", "B")
    df.loc[df.partner == "T4", "a_S"] = np.nan  # a group with no usable fold is kept, counted
    s = S.fold_summary(df, ["a_S"], by=["task", "partner"], n_boot=100)
    assert len(s) == 6  # not the 2 x 6 product of the key levels
    t4 = s[s.partner == "T4"].iloc[0]
    assert t4["n_folds"] == 0 and t4["n_excluded"] == 10 and np.isnan(t4["estimate"])
