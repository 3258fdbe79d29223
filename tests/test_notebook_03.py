"""The executed curve-fitting chapter (book/executed/03_curve_fits.ipynb): glued numbers.

Reads the executed copy made by ``make executed``; skips with a reason when it is absent.
"""

from __future__ import annotations

import math

import pytest

from mtlc.report import read_glue


@pytest.fixture(scope="module")
def g(executed) -> dict:
    return read_glue(executed("03_curve_fits"))


def test_source_is_named(g):
    assert g["source"] in {"study", "synthetic"}


def test_exp3_fits(g):
    assert g["n_stl_curves"] > 0
    assert 0.0 <= g["share_non_monotone_stl"] <= g["share_flagged_stl"] <= 1.0
    # most fold-mean curves must be fittable; single folds of the full study are noisier (a
    # small test fold moves the AUC by more than the 0.1 that flags a curve non-monotone)
    assert 0.0 <= g["share_flagged_stl_mean"] < 0.5
    if g["source"] == "synthetic" or g["n_stl_curves"] < 1000:  # synthetic or smoke
        assert g["share_flagged_stl"] < 0.5
    assert 0.0 < g["median_rmse_exp3"] < 0.1  # AUC units
    assert g["median_r2_exp3"] > 0.3
    if g["source"] == "synthetic":
        # curves drawn from EXP3.2 with point noise sd 0.01
        assert g["median_rmse_exp3"] < 0.02
        assert g["median_r2_exp3"] > 0.8


def test_extrapolation(g):
    models = [m for m in g["extrap_models"].split(",") if m]
    if not models:
        pytest.skip("curves too short for the extrapolation comparison")
    assert g["extrap_n_train"] >= 4
    maes = {m: g[f"extrap_mae_{m}"] for m in models}
    assert all(0.0 <= v < 0.3 for v in maes.values()), maes
    assert g["best_extrapolation"] == min(maes, key=maes.get)
    if g["source"] == "synthetic":
        assert maes["exp3"] < maes["pow3"]  # the generating family extrapolates better


def test_contextual_transfer_counts(g):
    if not g["have_mtl"]:
        pytest.skip("no all-task curves in the executed results")
    n = g["n_tasks_exp32"]
    for split in ("compound", "scaffold"):
        if f"n_sig_pos_{split}" not in g:
            continue
        assert 0 <= g[f"n_sig_pos_{split}"] + g[f"n_sig_neg_{split}"] <= n
        assert 0 <= g[f"n_ftest_sig_{split}"] <= n
    if g["source"] == "synthetic":
        # 12 tasks per split, a third planted positive and a third negative (5 folds)
        for split in ("compound", "scaffold"):
            assert g[f"n_sig_pos_{split}"] >= 2 and g[f"n_sig_neg_{split}"] >= 2
            assert g[f"n_sig_pos_{split}"] <= 6 and g[f"n_sig_neg_{split}"] <= 6


def test_tasks_drawn(g):
    assert g["n_tasks_shown"] >= 1


# ------------------------------------------------------------------ kinase200 (full profile)

K200_SPLITS = ("compound", "scaffold")


def test_kinase200_fitted_in_the_full_profile_only(g):
    if not g["have_kinase200"]:
        assert math.isnan(g["k200_n_stl_curves"]) and math.isnan(g["k200_median_rho_S_scaffold"])
        pytest.skip("no kinase200 in this run (smoke profile)")
    assert g["source"] == "study"
    # 198 tasks x 2 splits x 10 folds, less the curves whose jobs all failed
    assert 0.9 * 198 * 2 * 10 <= g["k200_n_stl_curves"] <= 198 * 2 * 10
    assert g["k200_n_tasks_exp32"] == 198
    assert 0.0 < g["k200_median_rmse_exp3"] < 0.1
    assert g["k200_median_r2_exp3"] > 0.5
    assert 0.0 <= g["k200_share_flagged_stl"] <= 1.0


@pytest.mark.parametrize("split", K200_SPLITS)
def test_kinase200_contextual_transfer(g, split):
    if not g["have_kinase200"]:
        pytest.skip("no kinase200 in this run (smoke profile)")
    n = g["k200_n_tasks_exp32"]
    pos, neg = g[f"k200_n_sig_pos_{split}"], g[f"k200_n_sig_neg_{split}"]
    assert 0 <= pos + neg <= n and 0 <= g[f"k200_n_ftest_sig_{split}"] <= n
    # measured on the stored study: all-task training helps (chapter 02), and the median task
    # has a positive contextual rate with more significant positive than negative tasks
    assert g[f"k200_median_a_S_{split}"] > 0 and g[f"k200_median_rho_S_{split}"] > 0
    assert pos > neg


# ------------------------------------------------------------------ recovery of planted transfer


def test_recovery_finds_the_planted_structure(g):
    # the same design and thresholds as tests/test_recovery_pipeline.py (CI design, seed 0)
    assert g["rec_n_targets"] == 8 and g["rec_n_pairs"] == 48
    assert g["rec_n_nan"] == 0 and g["rec_n_failed"] == 0
    assert g["rec_spearman_a_within"] >= 0.6
    assert g["rec_concordance_a_within"] >= 0.8
    assert g["rec_concordance_a_S"] >= 0.8
    assert g["rec_a_S_related"] > g["rec_a_S_unrelated"]
    assert 0 < g["rec_chance_spearman"] < 0.01  # the permutation p-value, never 0
    assert -1 <= g["rec_spearman_a_pooled"] <= 1
