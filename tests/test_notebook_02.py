"""Checks on the executed learning-curve chapter (book/executed/02_learning_curves.ipynb).

The full profile adds kinase200 beside KIBA (paired summaries, ``k200_*`` and
``kiba_paired_*`` keys); the smoke profile glues the kinase200 keys as NaN. The unit tests of
:func:`mtlc.study.paired_curve_summary` at the end need no executed notebook.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from mtlc.report import read_glue
from mtlc.study import paired_curve_summary


@pytest.fixture(scope="module")
def g(executed) -> dict:
    return read_glue(executed("02_learning_curves"))


def test_aucs_are_probabilities_and_mostly_informative(g):
    # summaries are glued, not the ~40k values of the full profile
    assert g["n_auc_values"] >= 100
    assert 0 <= g["auc_min"] <= g["auc_median"] <= g["auc_max"] <= 1
    assert g["auc_max"] > g["auc_min"]  # not one constant value
    assert g["n_auc_undefined"] >= 0
    assert g["frac_auc_above_half"] > 0.5
    assert g["auc_median"] > 0.5  # the median model is better than chance
    assert g["n_failed"] <= 0.05 * g["n_models"]


def test_scaffold_split_is_harder_than_compound_split(g):
    assert g["auc_scaffold_mean"] < g["auc_compound_mean"]
    assert g["split_gap_stl"] > 0


@pytest.mark.parametrize("split", ["compound", "scaffold"])
@pytest.mark.parametrize("regime", ["stl", "mtl"])
def test_more_data_helps_on_average(g, split, regime):
    assert g["largest_size"] > g["smallest_size"]
    assert g[f"auc_{split}_{regime}_largest"] > g[f"auc_{split}_{regime}_smallest"] + 0.02


def test_design_covers_the_tasks_and_folds(g):
    assert g["n_tasks"] >= 8
    assert g["n_folds"] >= 3
    assert g["profile_used"] in ("smoke", "full", "smoke (fallback)")


def test_two_engines_train_the_same_networks(g):
    """The chapter's engine comparison (one kiba cell, the study's configuration): every model
    stops at the same epoch with both engines and the test AUCs agree to float rounding."""
    assert g["engine_models"] >= 10
    assert g["engine_models"] + g["engine_skipped"] == g["engine_tasks"]  # none lost silently
    assert g["engine_epochs_equal"] == 1.0
    assert g["engine_max_auc_diff"] < 1e-3
    a_torch, a_compiled = g["engine_mean_auc"]
    assert 0.6 < a_torch < 1 and abs(a_torch - a_compiled) < 1e-3
    assert g["engine_speedup"] > 0  # a measured ratio (benchmarks/ asserts the speed)


# ------------------------------------------------------------------ paired summaries, kinase200

DATASETS = ["kiba_paired", "k200"]


def _need_k200(g) -> None:
    if not g["have_kinase200"]:
        assert g["profile_used"] != "full", "the full profile must read the kinase200 study"
        pytest.skip(f"profile {g['profile_used']!r}: no kinase200 study in this run")


def _prefixes(g) -> list[str]:
    return DATASETS if g["have_kinase200"] else DATASETS[:1]


def test_kinase200_keys_are_nan_without_the_study(g):
    if g["have_kinase200"]:
        pytest.skip("kinase200 was read")
    for k in ("k200_n_tasks", "k200_mtl_gain_scaffold", "k200_auc_scaffold_stl_ref"):
        assert math.isnan(g[k]), k
    assert g["k200_mtl_word_scaffold"] == "not measured"


def test_full_profile_reads_both_stored_studies(g):
    _need_k200(g)
    # the stored kinase200 study: 198 tasks, 10 folds, both splits, stl + mtl (results/README.md)
    assert g["k200_n_tasks"] == 198 and g["k200_n_folds"] == 10
    assert g["k200_n_models"] > 40_000
    assert g["k200_n_failed"] <= 0.02 * g["k200_n_models"]
    assert 0 <= g["k200_auc_min"] <= g["k200_auc_median"] <= g["k200_auc_max"] <= 1
    assert g["k200_frac_auc_above_half"] > 0.8
    # paired sets: at least three quarters of the tasks by construction
    for p in DATASETS:
        assert g[f"{p}_n_tasks_ref"] >= 0.75 * g[f"{p}_n_tasks"]
        assert g[f"{p}_ref_size"] >= 256


@pytest.mark.parametrize("p", DATASETS)
def test_paired_aucs_in_range(g, p):
    if p not in _prefixes(g):
        pytest.skip("no kinase200 in this run")
    for split in ("compound", "scaffold"):
        for regime in ("stl", "mtl"):
            for at in ("small", "ref"):
                v = g[f"{p}_auc_{split}_{regime}_{at}"]
                assert 0.45 < v < 1, (p, split, regime, at, v)


@pytest.mark.parametrize("p", DATASETS)
def test_paired_scaffold_below_compound(g, p):
    if p not in _prefixes(g):
        pytest.skip("no kinase200 in this run")
    assert g[f"{p}_split_gap_stl"] > 0
    assert g[f"{p}_split_gap_mtl"] > 0


@pytest.mark.parametrize("p", DATASETS)
@pytest.mark.parametrize("split", ["compound", "scaffold"])
@pytest.mark.parametrize("regime", ["stl", "mtl"])
def test_paired_more_data_helps(g, p, split, regime):
    if p not in _prefixes(g):
        pytest.skip("no kinase200 in this run")
    gain = g[f"{p}_auc_{split}_{regime}_ref"] - g[f"{p}_auc_{split}_{regime}_small"]
    assert gain > 0.05, (p, split, regime, gain)


@pytest.mark.parametrize("split", ["compound", "scaffold"])
def test_all_task_vs_single_task_direction_as_measured(g, split):
    _need_k200(g)
    # measured on the stored studies (full profile): on both data sets and both splits,
    # all-task training is ahead on average over the paired sizes and for most paired tasks
    # at the reference size; the words in the prose follow the sign
    for p in DATASETS:
        assert g[f"{p}_mtl_gain_{split}"] > 0.02, (p, split)
        assert g[f"{p}_n_mtl_better_{split}"] > g[f"{p}_n_tasks_ref"] / 2, (p, split)
    gain = g[f"k200_mtl_gain_{split}"]
    assert g[f"k200_mtl_word_{split}"] == ("raises" if gain > 0 else "lowers")


# ------------------------------------------------------------------ paired_curve_summary itself


def _frame(values: dict[tuple[str, str, str, int], float], n_folds: int = 2) -> pd.DataFrame:
    rows = [
        dict(split=s, regime=r, task=t, n_task=n, fold=f, value=v, metric="roc_auc", status="ok")
        for (s, r, t, n), v in values.items()
        for f in range(n_folds)
    ]
    return pd.DataFrame(rows)


def test_paired_summary_uses_one_task_set():
    # task A reaches 64, task B only 32: a task-averaged curve would mix A alone at 64 with
    # A and B below; the paired summary's reference size is the largest size both reach
    vals = {}
    for s, off in (("compound", 0.05), ("scaffold", 0.0)):
        for r, mt in (("stl", 0.0), ("mtl", 0.02)):
            for t, sizes in (("A", (16, 32, 64)), ("B", (16, 32))):
                for n in sizes:
                    vals[(s, r, t, n)] = 0.6 + 0.1 * np.log2(n / 16) + off + mt
    out = paired_curve_summary(_frame(vals), min_share=1.0)
    assert out["ref_size"] == 32 and out["n_tasks_ref"] == 2 and out["sizes"] == [16, 32]
    assert out["auc_scaffold_stl_small"] == pytest.approx(0.6)
    assert out["auc_scaffold_stl_ref"] == pytest.approx(0.7)
    assert out["split_gap_stl"] == pytest.approx(0.05)
    assert out["mtl_gain_scaffold"] == pytest.approx(0.02)
    assert out["n_mtl_better_compound"] == 2
    # with a lower share, task A alone carries the reference size 64
    out = paired_curve_summary(_frame(vals), min_share=0.5)
    assert out["ref_size"] == 64 and out["tasks_ref"] == ["A"]


def test_paired_summary_leaves_out_failed_and_nan():
    vals = {
        (s, r, "A", n): 0.7
        for s in ("compound", "scaffold")
        for r in ("stl", "mtl")
        for n in (16, 32)
    }
    df = _frame(vals)
    bad = df.iloc[[0]].assign(value=0.0, status="failed")
    nan = df.iloc[[1]].assign(value=np.nan)
    out = paired_curve_summary(pd.concat([df, bad, nan]))
    assert out["auc_compound_stl_small"] == pytest.approx(0.7)
