"""The executed data chapter (book/executed/01_data.ipynb): its glued numbers are consistent.

Reads the executed copy made by ``make executed``; skips with a reason when it is absent
(fails in CI, where ``make test`` always executes first).
"""

from __future__ import annotations

import numpy as np
import pytest

from mtlc.report import read_glue


@pytest.fixture(scope="module")
def g(executed) -> dict:
    return read_glue(executed("01_data"))


def test_core_counts_consistent(g):
    assert g["n_tasks"] > 0 and g["n_compounds"] > 0
    assert 0 < g["n_actives"] < g["n_pairs"] <= g["n_tasks"] * g["n_compounds"]
    assert g["active_fraction"] == pytest.approx(g["n_actives"] / g["n_pairs"])
    assert (
        0
        < g["task_active_fraction_min"]
        <= g["active_fraction"]
        <= g["task_active_fraction_max"]
        < 1
    )
    assert g["task_size_min"] <= g["task_size_median"] <= g["task_size_max"]


def test_kiba244_counts(g):
    if g["dataset"] != "kiba":
        pytest.skip(f"executed with dataset={g['dataset']!r}; the kiba244 counts do not apply")
    # the paper's kiba244 on the full matrix, and the same recipe on the offline structures
    assert (g["full_matrix_tasks"], g["full_matrix_pairs"], g["full_matrix_compounds"]) == (
        244,
        228_399,
        51_097,
    )
    assert (
        g["structure_available_tasks"],
        g["structure_available_pairs"],
        g["structure_available_compounds"],
    ) == (201, 144_733, 3_816)
    # merging duplicate structures is the only step between the offline set and what is trained
    assert g["n_tasks"] == g["structure_available_tasks"]
    assert g["n_pairs"] == g["structure_available_pairs"] - g["merged_pairs_removed"]
    assert g["n_compounds"] == (
        g["structure_available_compounds"] - g["merged_compounds"] - g["excluded_compounds"]
    )
    assert g["task_size_min"] >= 100 and g["task_actives_min"] >= 10


@pytest.mark.parametrize("split", ["compound", "scaffold"])
def test_folds_partition_everything(g, split):
    comp = np.array(g[f"{split}_fold_compounds"])
    pairs = np.array(g[f"{split}_fold_pairs"])
    act = np.array(g[f"{split}_fold_actives"])
    assert len(comp) == len(pairs) == len(act) == 10
    assert comp.sum() == g["n_compounds"]
    assert pairs.sum() == g["n_pairs"]
    assert act.sum() == g["n_actives"]
    assert (act <= pairs).all() and (comp > 0).all()
    assert g[f"{split}_fold_pairs_min"] == pairs.min()
    assert 0 <= g[f"{split}_degenerate_cells"] < g["task_fold_cells"] == g["n_tasks"] * 10


def test_compound_split_balanced(g):
    comp = np.array(g["compound_fold_compounds"])
    assert comp.max() - comp.min() <= 1


def test_scaffold_statistics(g):
    assert g["scaffold_straddling"] == 0
    comp = np.array(g["scaffold_fold_compounds"])
    # greedy largest-first assignment: folds differ by at most the largest group
    assert comp.max() - comp.min() <= g["largest_scaffold_group"]
    assert g["n_scaffold_singletons"] <= g["n_scaffolds"]
    assert g["n_scaffolds"] + g["n_acyclic"] <= g["n_compounds"]
    assert g["largest_scaffold_group"] >= 1
