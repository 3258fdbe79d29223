"""The executed curve-fitting chapter (book/executed/03_curve_fits.ipynb): glued numbers.

Reads the executed copy made by ``make executed``; skips with a reason when it is absent.
"""

from __future__ import annotations

import pytest

from mtlc.report import read_glue


@pytest.fixture(scope="module")
def g(executed) -> dict:
    return read_glue(executed("03_curve_fits"))


def test_source_is_named(g):
    assert g["source"] in {"study", "synthetic"}


def test_exp3_fits(g):
    assert g["n_stl_curves"] > 0
    assert 0.0 <= g["share_flagged_stl"] < 0.5  # most curves must be fittable
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
