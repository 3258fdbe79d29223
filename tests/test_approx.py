"""Efficient MTLC approximations (mtlc.approx): incremental curves, random-design regression,
TAG test and power/agreement helpers."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlc import approx
from mtlc.errors import ConfigError, InputTableError


# ---------------------------------------------------------------------------- small trained set
@pytest.fixture(scope="module")
def small():
    import torch

    from mtlc.datasets import synthetic
    from mtlc.splits import kfold
    from mtlc.training import TrainConfig

    torch.set_num_threads(1)  # tiny networks: extra threads only contend on shared cores
    ds = synthetic(
        n_compounds=700,
        n_tasks=3,
        n_groups=1,
        group_size=2,
        shared_strength=0.0,
        group_strength=3.0,
        task_noise=0.1,
        n_features=512,
        seed=0,
    )
    folds = kfold(ds, n_folds=4, seed=0)
    cfg = TrainConfig(hidden=(16,), max_epochs=12, patience=4, batch_size=32, lr=3e-3, device="cpu")
    return ds, folds, cfg


@pytest.fixture(scope="module")
def exact_and_incremental(small):
    ds, folds, cfg = small
    kw = dict(test_folds=(0,), config=cfg, max_size=181)
    ex = approx.exact_curves(ds, folds, regime="stl", **kw)
    inc = approx.incremental_curves(ds, folds, mode="stl", epochs_per_stage=6, **kw)
    return ex, inc


def test_incremental_curves_rise_and_stay_close_to_exact(small, exact_and_incremental):
    ds, folds, cfg = small
    ex, inc = exact_and_incremental
    assert set(inc.table["task"]) == set(ex.table["task"])
    for task, d in inc.table.groupby("task"):
        d = d.sort_values("n_task")
        assert (d["stage"].diff().dropna() == 1).all()
        v = d["value"].to_numpy()
        # "monotone-ish": the curve gains from the first to the last stage, and no stage drops
        # more than 0.1 AUC below the best AUC seen so far (one test fold of ~175 compounds,
        # so single points are noisy)
        assert v[-1] > v[0], (task, v)
        assert np.all(np.maximum.accumulate(v) - v < 0.1), (task, v)
    fid = approx.curve_fidelity(ex.table, inc.table)
    assert (fid["n_sizes"] == 8).all()  # 16 .. 181: 8 sizes
    assert np.isfinite(fid["a_ref"]).all() and np.isfinite(fid["a_approx"]).all()
    # Tolerance, relative to the exact curve's own noise: the exact curves rerun with another
    # seed (other subsamples and initial weights) differ from seed 0's by a mean |AUC
    # difference| of 0.068 here (0.03-0.11 per task); the incremental curves differ from them
    # by 0.063 (0.04-0.10). Require: mean over tasks below 0.08, and at most 0.03 above the
    # exact-vs-exact difference.
    ex1 = approx.exact_curves(
        ds, folds, regime="stl", test_folds=(0,), config=cfg, max_size=181, seed=1
    )
    noise = approx.curve_fidelity(ex.table, ex1.table)["mae"].mean()
    assert fid["mae"].mean() < 0.08, fid
    assert fid["mae"].mean() < noise + 0.03, (fid, noise)


def test_costs_are_counted(exact_and_incremental):
    ex, inc = exact_and_incremental
    assert ex.cost["networks"] == 3 * 8  # one network per (task, size)
    assert inc.cost["networks"] == 3  # one network per task
    for c in (ex.cost, inc.cost):
        assert c["wall_seconds"] > 0 and c["backward"] > 0 and c["forward"] > c["backward"]
    # the warm start needs fewer optimizer steps than retraining at every size
    assert inc.cost["backward"] < ex.cost["backward"]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_incremental_is_deterministic(small, dtype):
    from dataclasses import replace

    ds, folds, cfg = small
    cfg = replace(cfg, dtype=dtype, max_epochs=2)
    kw = dict(mode="mtl", test_folds=(1,), config=cfg, max_size=45)
    a = approx.incremental_curves(ds, folds, **kw)
    b = approx.incremental_curves(ds, folds, **kw)
    pd.testing.assert_frame_equal(a.table, b.table)
    assert a.cost["backward"] == b.cost["backward"] > 0
    # mtl: one network, every task evaluated at every stage, context = the other tasks' sizes
    assert a.cost["networks"] == 1
    assert len(a.table) == 3 * 4  # 3 tasks x stages 16, 23, 32, 45
    assert (a.table["n_context"] == 2 * a.table["n_task"]).all()


def test_bad_options_raise(small):
    ds, folds, cfg = small
    with pytest.raises(ConfigError, match="mode"):
        approx.incremental_curves(ds, folds, mode="pair", config=cfg)
    with pytest.raises(ConfigError, match="regime"):
        approx.exact_curves(ds, folds, regime="random", config=cfg)
    with pytest.raises(ConfigError, match="unknown task"):
        approx.incremental_curves(ds, folds, tasks=["nope"], config=cfg)


# ---------------------------------------------------------------------------- random design fit
def _simulated_runs(
    a_src: dict[int, float], *, K: int = 4, n_runs: int = 60, noise: float = 0.004, seed: int = 0
) -> approx.CurveRun:
    """Random-design points from a known multi-partner EXP3 surface for target t0.

    P_0 = 0.9 - exp(-1 - 3 n_0 - sum_j a_j n_j) (n in thousands), other tasks: own curve only.
    """
    rng = np.random.default_rng(seed)
    grid = np.array([16, 23, 32, 45, 64, 91, 128, 181, 256, 362, 512])
    ids = [f"t{k}" for k in range(K)]
    S = grid[rng.integers(len(grid), size=(n_runs, K))]
    rows = []
    for r in range(n_runs):
        for i in range(K):
            u = -1 - 3 * S[r, i] / 1000
            if i == 0:
                u -= sum(a * S[r, j] / 1000 for j, a in a_src.items())
            p = 0.9 - np.exp(u) + noise * rng.standard_normal()
            rows.append(
                dict(
                    method="random_design",
                    fold=0,
                    run=r,
                    task=ids[i],
                    n_task=int(S[r, i]),
                    n_context=int(S[r].sum() - S[r, i]),
                    value=p,
                    note="",
                )
            )
    table = pd.DataFrame(rows)
    sizes = pd.DataFrame(np.repeat(S, K, axis=0), columns=ids)
    return approx.CurveRun(table, {"wall_seconds": 1.0}, sizes=sizes)


def test_random_design_recovers_planted_positive_contextual_transfer():
    run = _simulated_runs({1: 1.5, 2: 1.5, 3: 1.5})
    fit = approx.random_design_fit(run, model="exp3.2", n_boot=100)
    t0 = fit[fit["target"] == "t0"].iloc[0]
    assert t0["source"] == "S"
    assert t0["estimate"] > 0 and t0["ci_lo"] > 0  # planted a_S = 1.5 > 0 detected
    assert t0["estimate"] == pytest.approx(1.5, rel=0.3)
    assert t0["p_pos"] < 0.05 and t0["rho"] == pytest.approx(0.5, rel=0.3)
    # the other targets have no transfer: their intervals cover 0
    rest = fit[fit["target"] != "t0"]
    assert ((rest["ci_lo"] <= 0) & (rest["ci_hi"] >= 0)).mean() >= 2 / 3


def test_random_design_multi_partner_finds_the_one_true_partner():
    run = _simulated_runs({2: 3.0}, n_runs=80)
    fit = approx.random_design_fit(run, model="multi", ridge=1e-4, n_boot=100)
    A = approx.pair_matrix(fit, ["t0", "t1", "t2", "t3"])
    assert np.isnan(np.diag(A)).all()
    assert A[2, 0] > 1.5  # [source t2, target t0]
    assert A[2, 0] > np.nanmax(np.delete(A[:, 0], [0, 2])) + 1.0
    q = fit.set_index(["source", "target"])["q_pos"]
    assert q[("t2", "t0")] < 0.05
    # the fixed-asymptote (linear) variant finds the same partner
    lin = approx.random_design_fit(run, model="multi", ridge=1e-4, n_boot=50, c_fixed=1.0)
    L = approx.pair_matrix(lin, ["t0", "t1", "t2", "t3"])
    assert L[2, 0] > 1.0 and L[2, 0] > np.nanmax(np.delete(L[:, 0], [0, 2])) + 0.5
    assert (lin["flag"] == "c_fixed").all()
    assert lin.set_index(["source", "target"])["q_pos"][("t2", "t0")] < 0.05
    # only the first 20 runs: fewer points, same table shape
    few = approx.random_design_fit(run, model="multi", runs=20, n_boot=20)
    assert (few["n_points"] == 20).all() and len(few) == len(fit) == 12


def test_random_design_fit_needs_random_runs():
    with pytest.raises(InputTableError):
        approx.random_design_fit(approx.CurveRun(pd.DataFrame(), {}), n_boot=5)
    with pytest.raises(ConfigError):
        approx.random_design_fit(_simulated_runs({1: 1.0}), model="pow3")


def test_random_design_runs_on_a_network(small):
    from dataclasses import replace

    ds, folds, cfg = small
    run = approx.random_design_runs(
        ds, folds, n_runs=3, test_folds=(0,), config=replace(cfg, max_epochs=2), max_size=64
    )
    assert run.cost["networks"] == 3 and len(run.table) == 3 * ds.n_tasks
    assert run.sizes.shape == (len(run.table), ds.n_tasks)
    own = run.sizes.to_numpy()[np.arange(len(run.table)), [int(t[1:]) for t in run.table.task]]
    assert (own == run.table["n_task"]).all()
    assert (run.sizes.sum(axis=1) - own == run.table["n_context"]).all()
    assert set(np.unique(run.sizes)) <= {16, 23, 32, 45, 64}
    json.dumps(run.cost)  # plain numbers


# ---------------------------------------------------------------------------- TAG test, power
def _tag(history: np.ndarray) -> SimpleNamespace:
    return SimpleNamespace(history=history)


def test_tag_pair_test_flags_consistently_positive_pairs():
    rng = np.random.default_rng(0)
    K, E = 4, 10
    H = 0.01 * rng.standard_normal((E, K, K))
    H[:, 0, 1] += 0.05  # source 0 -> target 1: clearly positive in every epoch
    res = approx.tag_pair_test([_tag(H)], unit="epoch")
    assert res["p"][0, 1] < 1e-6 and res["q"][0, 1] < 0.05
    assert np.isnan(res["p"][np.diag_indices(K)]).all()
    assert (res["n"][0, 1]) == E
    called = approx.detection_rates(res["q"], np.eye(K, k=1, dtype=bool) * 0 + _only(K, 0, 1))
    assert called["tpr"] == 1.0 and called["fpr"] <= 2 / 11
    # by seed: three runs, replicate = each run's mean; first 5 epochs only
    res2 = approx.tag_pair_test([_tag(H), _tag(H + 0.001), _tag(H - 0.001)], unit="seed", epochs=5)
    assert res2["n"][0, 1] == 3 and res2["mean"][0, 1] > 0.04
    with pytest.raises(ConfigError):
        approx.tag_pair_test([_tag(H)], unit="step")


def _only(K: int, i: int, j: int) -> np.ndarray:
    m = np.zeros((K, K), dtype=bool)
    m[i, j] = True
    return m


def test_detection_rates_and_ranking_auc():
    rel = np.array([[0, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=bool)
    q = np.array([[np.nan, 0.01, 0.2], [0.5, np.nan, 0.01], [np.nan, 0.9, np.nan]])
    r = approx.detection_rates(q, rel)
    assert r == {"tpr": 0.5, "fpr": 0.25, "n_related": 2, "n_unrelated": 4, "n_called": 2}
    score = np.where(rel, 1.0, 0.0)
    assert approx.pair_ranking_auc(score, rel) == 1.0
    assert approx.pair_ranking_auc(-score, rel) == 0.0
    assert np.isnan(approx.pair_ranking_auc(score, np.zeros((3, 3), bool)))


@settings(max_examples=40, deadline=None)
@given(
    st.integers(3, 7),
    st.integers(0, 2**31 - 1),
    st.floats(-1, 1),
)
def test_rank_agreement_is_a_correlation(K, seed, mix):
    rng = np.random.default_rng(seed)
    A = rng.standard_normal((K, K))
    Z = mix * A + (1 - abs(mix)) * rng.standard_normal((K, K))
    A[0, 1] = np.nan  # missing pairs are skipped, not fatal
    r = approx.rank_agreement(A, Z)
    assert r["n_pairs"] == K * (K - 1) - 1
    vals = [r["overall"], *r["per_target"]]
    assert all(np.isnan(v) or -1 - 1e-12 <= v <= 1 + 1e-12 for v in vals)
    same = approx.rank_agreement(A, A)
    assert same["overall"] == pytest.approx(1.0)
    assert approx.rank_agreement(A, -A)["overall"] == pytest.approx(-1.0)
    with pytest.raises(InputTableError):
        approx.rank_agreement(A, Z[:-1])


def test_cost_row():
    row = approx.cost_row("tag", {"wall_seconds": 2, "networks": 1, "forward": 5, "backward": 3})
    assert row == {"method": "tag", "wall_seconds": 2.0, "networks": 1.0, "forward": 5.0,
                   "backward": 3.0}  # fmt: skip


def test_exact_pair_curves_and_gain_test(small):
    from dataclasses import replace

    ds, folds, cfg = small
    run = approx.exact_pair_curves(
        ds, folds, test_folds=(0,), config=replace(cfg, max_epochs=2), max_size=23
    )
    assert run.cost["networks"] == 6 * 2  # 3 x 2 ordered pairs x sizes 16, 23
    assert set(run.table["n_task"]) == {16, 23}
    assert (run.table["task"] != run.table["partner"]).all()
    # the gain test on hand-made tables: t1 gains from t0 at every point, t0 not from t1
    stl = pd.DataFrame(
        {"fold": 0, "task": ["t0"] * 3 + ["t1"] * 3, "n_task": [16, 23, 32] * 2, "value": 0.6}
    )
    pairs = pd.DataFrame(
        {
            "fold": 0,
            "task": ["t1"] * 3 + ["t0"] * 3,
            "partner": ["t0"] * 3 + ["t1"] * 3,
            "n_task": [16, 23, 32] * 2,
            "value": [0.70, 0.72, 0.71, 0.59, 0.61, 0.60],
        }
    )
    g = approx.pair_gain_test(pairs, stl, ["t0", "t1"])
    assert g["mean"][0, 1] == pytest.approx(0.11)  # [source t0, target t1]
    assert g["p"][0, 1] < 0.01 and g["p"][1, 0] > 0.3
    assert g["n"][0, 1] == 3 and np.isnan(g["mean"][0, 0])
