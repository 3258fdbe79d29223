"""Checks on the executed learning-curve chapter (book/executed/02_learning_curves.ipynb)."""

from __future__ import annotations

from pathlib import Path

import pytest

from mtlc.report import read_glue

EXECUTED = Path(__file__).resolve().parents[1] / "book" / "executed" / "02_learning_curves.ipynb"


@pytest.fixture(scope="module")
def g():
    if not EXECUTED.exists():
        pytest.skip(f"{EXECUTED} does not exist: run `make executed` (or `mtlc book execute 02`)")
    return read_glue(EXECUTED)


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
