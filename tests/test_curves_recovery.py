"""Statistical acceptance of the curve fits on simulated studies with known parameters.

Noise model (see :func:`mtlc.curves.simulate_curves`): every fold draws its own parameters
``theta_f = theta + N(0, sd^2)`` (fold-to-fold variation of training), and every point gets
independent ``N(0, 0.01^2)`` noise (AUC sampling noise of a test fold). Sizes: the study's grid,
16 * sqrt(2)^k up to 2048; 10 folds; AUC-like values 0.55-0.86.
Single-task points have n_S = 0; all-task points n_S = 50 n (the context grows with the grid).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from mtlc import curves as C
from mtlc import stats as S

GRID = C.size_grid(2048)
N2 = np.concatenate([GRID, GRID])
CTX = np.concatenate([np.zeros_like(GRID), 50 * GRID])  # n_S: 0 (single-task), 50 n (all-task)
PARTNER = np.concatenate([np.zeros_like(GRID), GRID])  # n_j: 0 (single-task), n (pair)
SD = {"c": 0.005, "b": 0.1, "a": 0.3, "a_S": 0.005, "a_ij": 0.3}
BASE = {"c": 0.85, "b": np.log(0.3), "a": 2.0}


def _coverage(summary, truth):
    out = {}
    for prm, g in summary.groupby("param"):
        out[prm] = float(((g.ci_lo <= truth[prm]) & (g.ci_hi >= truth[prm])).mean())
    return out


@pytest.mark.parametrize("a_s", [0.02, 0.0])
def test_exp32_interval_coverage(a_s):
    truth = {**BASE, "a_S": a_s}
    df = C.simulate_curves(
        "exp3.2", truth, N2, CTX, n_folds=10, n_repeats=400, param_sd=SD, noise_sd=0.01, seed=11
    )
    fits = C.fit_exp32(df, by=["repeat"])
    assert (fits["flag"] == "").mean() > 0.97
    summ = S.fold_summary(fits, ["c", "b", "a", "a_S"], by=["repeat"], n_boot=200)
    cov = _coverage(summ, truth)
    for prm, v in cov.items():
        assert 0.90 <= v <= 0.98, (prm, cov)


def test_exp3_interval_coverage_float32():
    df = C.simulate_curves(
        "exp3", BASE, GRID, n_folds=10, n_repeats=400, param_sd=SD, noise_sd=0.01, seed=12
    )
    df["value"] = df["value"].astype(np.float32)
    df["n_task"] = df["n_task"].astype(np.float32)
    fits = C.fit_exp3(df, by=["repeat"])
    summ = S.fold_summary(fits, ["c", "b", "a"], by=["repeat"], n_boot=200, wilcoxon=False)
    cov = _coverage(summ, BASE)
    for prm, v in cov.items():
        assert 0.90 <= v <= 0.98, (prm, cov)


def _mixed_study(model, name, effect, n_each=100, seed=0):
    """n_each tasks with a planted transfer coefficient, n_each with none."""
    frames = []
    for k, val in enumerate((effect, 0.0)):
        d = C.simulate_curves(
            model,
            {**BASE, name: val},
            N2,
            CTX if name == "a_S" else PARTNER,
            n_folds=10,
            n_repeats=n_each,
            param_sd=SD,
            noise_sd=0.01,
            seed=seed + k,
        )
        d["task"] = d["repeat"] + k * n_each
        d["planted"] = val != 0
        frames.append(d)
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize(
    "model,name,effect",
    [("exp3.2", "a_S", 0.01), ("pairwise", "a_ij", 0.4)],
)
def test_planted_transfer_is_detected_and_null_is_not(model, name, effect):
    # realistic effect sizes: rho_S = 0.005 (one context sample is worth 1/200 of an own
    # sample, context 50x larger), rho_ij = 0.2 for a related partner of equal size.
    df = _mixed_study(model, name, effect)
    planted = df.groupby("task")["planted"].first()
    fits = C.fit_curves(df, model, by=["task"], context="n_context")
    summ = S.fold_summary(fits, [name], by=["task"], n_boot=100).set_index("task")
    sig = summ["q"] < 0.05
    right_sign = np.sign(summ["estimate"]) == np.sign(effect)
    power = float((sig & right_sign)[planted].mean())
    false_pos = float(sig[~planted].mean())
    assert power >= 0.8, power
    assert false_pos <= 0.05, false_pos


def test_nested_f_test_detects_contextual_transfer():
    df = _mixed_study("exp3.2", "a_S", 0.02, n_each=30, seed=4)
    planted = df.groupby("task")["planted"].first()
    ft = S.nested_f_test(df, by=["task"]).set_index("task")
    assert (ft["q"][planted] < 0.05).mean() >= 0.9
    assert np.all(ft["rss1"] <= ft["rss0"] * (1 + 1e-6))
