"""The executed foundation chapter (book/executed/05_foundation_context.ipynb): glued numbers.

Reads the executed copy made by ``make executed``; skips with a reason when it is absent.
"""

from __future__ import annotations

import math

import pytest

from mtlc.report import read_glue


@pytest.fixture(scope="module")
def g(executed) -> dict:
    return read_glue(executed("05_foundation_context"))


def test_planted_partner_beats_unrelated(g):
    # the same thresholds as tests/test_foundation.py on the same planted design
    assert g["syn_n_targets"] == 4
    assert g["syn_related_beats_unrelated"] >= 3
    assert g["syn_related_pair_gain"] - g["syn_unrelated_pair_gain"] > 0.03


def test_planted_context_and_leave_one_out(g):
    assert g["syn_all_gain"] > 0.03
    # removing the unrelated task changes the all-context gain little, and less than the planted
    # shared context is worth
    assert g["syn_loo_unrelated_change"] < g["syn_all_gain"] / 2
    assert g["syn_all_multiplier_finetune"] > 0


def test_kiba_scaffold_numbers(g):
    assert g["kiba_split"] == "scaffold"
    assert g["kiba_n_targets"] >= (20 if g["profile"] == "full" else 1)
    keys = ("kiba_all_gain_probe", "kiba_all_gain_finetune", "kiba_pair_rel_gain_finetune")
    for reg in ("probe", "finetune"):
        for kind in ("pair_unrel", "loo_rel", "loo_unrel"):
            assert math.isfinite(g[f"kiba_{kind}_gain_{reg}"]), (kind, reg)
    for k in (*keys, "kiba_scratch_probe_gain"):
        assert math.isfinite(g[k]) and -1 < g[k] < 1, k
    assert g["kiba_all_multiplier_finetune"] > 0
    assert g["kiba_shift_rows"] == g["kiba_n_targets"] * 11  # 6 contexts x 2 modes - reference


def test_kiba_intervals_by_profile(g):
    """Full: at least 3 folds, so every shift has a fold-to-fold interval; smoke: one fold."""
    if g["profile"] == "full":
        assert g["kiba_n_folds"] >= 3
        assert g["kiba_shift_rows_with_interval"] == g["kiba_shift_rows"]
        for reg in ("probe", "finetune"):
            lo, mid, hi = (g[f"kiba_all_gain_{reg}{s}"] for s in ("_lo", "", "_hi"))
            assert lo <= mid <= hi, reg
            assert 0 <= g[f"kiba_all_ci_above_0_{reg}"] <= g["kiba_n_targets"]
    else:
        assert g["kiba_n_folds"] == 1
        assert g["kiba_shift_rows_with_interval"] == 0


def test_kiba_decomposition(g):
    for reg in ("probe", "finetune"):
        for k in ("excess_median", "own_all_gain_median", "related_drop_median"):
            assert math.isfinite(g[f"kiba_{k}_{reg}"]), (k, reg)
            assert -1 < g[f"kiba_{k}_{reg}"] < 1, (k, reg)  # AUC points
        assert math.isfinite(g[f"kiba_related_pair_median_{reg}"])
        assert 0 <= g[f"kiba_excess_positive_{reg}"] <= g["kiba_n_targets"]


def test_kiba_selection_table(g):
    k = g["kiba_sel_k"]
    full = g["profile"] == "full"
    assert g["kiba_sel_n_targets"] >= (20 if full else 3)
    assert g["kiba_sel_n_folds"] >= (3 if full else 1)
    for s in ("none", "all", "top_tag", "top_cosine", "top_mtlc", f"random{k}"):
        for what in ("auc_small", "auc_full"):
            assert 0 < g[f"kiba_sel_{s}_{what}"] <= 1, (s, what)
        assert g[f"kiba_sel_{s}_total_seconds"] > 0
    assert g["kiba_sel_all_d_full"] == 0  # the reference of the differences
    # the rankings' cost includes the runs that produced them
    assert g["kiba_sel_top_tag_total_seconds"] >= g["kiba_sel_tag_seconds"] > 0
    assert g["kiba_sel_top_mtlc_total_seconds"] >= g["kiba_sel_mtlc_seconds"] > 0
    # the MTLC ranking: mtlc_runs networks per inner fold, per test fold
    per_fold = g["kiba_sel_mtlc_runs"] * g["kiba_sel_mtlc_inner_folds"]
    assert g["kiba_sel_mtlc_networks"] == per_fold * g["kiba_sel_n_folds"]
    assert g["kiba_sel_mtlc_runs"] == (160 if full else 4)
    assert g["kiba_sel_mtlc_candidates"] == 20
    for key in ("tag_cosine", "tag_mtlc"):
        assert 0 <= g[f"kiba_sel_{key}_overlap"] <= 1, key
    for est in ("tag", "cosine", "mtlc"):  # the same estimator's top set across folds
        stab = g[f"kiba_sel_{est}_fold_stability"]
        assert (0 <= stab <= 1) if full else math.isnan(stab), est
    if full:  # fold-to-fold intervals of the differences to all tasks
        for s in ("none", "top_tag", "top_cosine", "top_mtlc", f"random{k}"):
            for at in ("small", "full"):
                lo, hi = g[f"kiba_sel_{s}_d_{at}_lo"], g[f"kiba_sel_{s}_d_{at}_hi"]
                assert lo <= g[f"kiba_sel_{s}_d_{at}"] <= hi, (s, at)
    assert 0 <= g["kiba_sel_related_in_tag_top"] <= 1
    assert 0 <= g["kiba_sel_related_in_mtlc_top"] <= 1


def test_selection_table(g):
    k = g["sel_k"]
    for s in ("none", "all", "top_oracle", "top_tag", "top_cosine", "top_mtlc", f"random{k}"):
        for what in ("auc_small", "auc_full"):
            assert 0 < g[f"sel_{s}_{what}"] <= 1, (s, what)
        assert g[f"sel_{s}_seconds"] >= 0
    # the oracle's related partners are at least as good as random ones at full size (planted)
    assert g["sel_top_oracle_auc_full"] >= g[f"sel_random{k}_auc_full"] - 0.02
    assert 0 <= g["sel_tag_hit_rate"] <= 1 and 0 <= g["sel_cosine_hit_rate"] <= 1
    # TAG's estimate costs time; its total includes it
    assert g["sel_top_tag_seconds"] >= g["sel_tag_seconds"]
    assert g["sel_top_mtlc_seconds"] >= g["sel_mtlc_seconds"] > 0
    assert g["sel_mtlc_networks"] == 80 * 3  # runs per inner fold x inner folds
    # the MTLC ranking finds the planted partners above chance (k of K - 1 = 2 of 7); the same
    # design over all three folds is tested in tests/test_selection.py (threshold 0.6)
    assert g["sel_chance_hit_rate"] == pytest.approx(2 / 7)
    assert g["sel_mtlc_hit_rate"] >= 0.5 > g["sel_chance_hit_rate"]
