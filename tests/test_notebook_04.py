"""The executed comparison chapter (book/executed/04_pairwise_and_tag.ipynb): glued numbers.

Reads the executed copy made by ``make executed``; skips with a reason when it is absent
(fails in CI, where ``make test`` always executes first). Profile-aware: the full profile's KIBA
part reads the stored paper-scale runs (every kiba244 task, at least three test folds, bootstrap
intervals); the smoke profile computes a small live subset.
"""

from __future__ import annotations

import numpy as np
import pytest

from mtlc.report import is_number, read_glue

METHODS = (
    "exact_stl",
    "exact_mtl",
    "exact_pair",
    "incremental_stl",
    "incremental_mtl",
    "random_design",
    "tag",
)


@pytest.fixture(scope="module")
def g(executed) -> dict:
    return read_glue(executed("04_pairwise_and_tag"))


def test_costs_positive_and_counted(g):
    for m in METHODS:
        for c in ("wall_seconds", "forward", "backward", "networks"):
            v = g[f"cost_{m}_{c}"]
            assert is_number(v) and v > 0, (m, c, v)
        assert g[f"cost_{m}_forward"] >= g[f"cost_{m}_backward"]
    # one network per curve (incremental) vs one per point (exact)
    # (one STL network per task and test fold, one MTL network per test fold)
    assert (
        g["cost_incremental_stl_networks"] == g["syn_n_tasks"] * g["cost_incremental_mtl_networks"]
    )
    assert g["cost_incremental_mtl_networks"] < g["cost_exact_mtl_networks"]
    assert g["cost_incremental_stl_networks"] < g["cost_exact_stl_networks"]
    assert g["cost_tag_networks"] >= 1


def test_incremental_fidelity_reported(g):
    for k in ("stl", "mtl"):
        mae = g[f"inc_{k}_mae"]
        assert is_number(mae) and 0 <= mae < 0.15, (k, mae)
        assert g[f"inc_{k}_a_abs_err_median"] >= 0


def test_correlations_are_correlations(g):
    for k in (
        "spearman_a_vs_Z",
        "spearman_rho_vs_Z",
        "spearman_a_vs_truth",
        "spearman_Z_vs_truth",
        "kiba_spearman_a_vs_Z",
        "rho_S_spearman_exact_vs_incremental",
        "spearman_exact_gain_vs_Z",
        "spearman_exact_gain_vs_a",
    ):
        v = g[k]
        assert v is None or (is_number(v) and (np.isnan(v) or -1 <= v <= 1)), (k, v)
    per = g["spearman_a_vs_Z_per_target"]
    assert len(per) == g["syn_n_tasks"]
    assert all(v is None or -1 <= v <= 1 for v in per)
    assert -1 <= g["ari_tag"] <= 1 and -1 <= g["ari_random_design"] <= 1


def test_planted_pair_detection_reported(g):
    assert g["syn_n_related_pairs"] > 0
    for m in ("random_design", "random_design_c1", "exact_pair", "tag"):
        for k in ("tpr", "fpr", "ranking_auc"):
            v = g[f"power_{m}_{k}"]
            assert is_number(v) and 0 <= v <= 1, (m, k, v)
        assert g[f"power_{m}_backward"] > 0
    # the verdict is stated either way, with its numbers
    assert isinstance(g["acceptance_random_design_as_good_as_tag"], bool)
    assert "ranking AUC" in g["acceptance_verdict"]


def test_tag_finds_the_planted_pairs(g):
    # TAG ranks same-group pairs above unrelated ones on this strongly planted set (relatedness
    # 0.97 vs 0); a failure here means the comparison chapter compares against a broken TAG
    assert g["power_tag_ranking_auc"] > 0.7


def test_kiba_scale_by_profile(g):
    K = g["kiba_n_tasks"]
    if g["profile"] == "full":
        # the stored paper-scale study: every kiba244 task, scaffold folds 0-2 at least
        assert K >= 201
        assert g["kiba_rd_split"] == "scaffold"
        assert g["kiba_rd_n_folds"] >= 3
        assert g["kiba_rd_networks"] >= 100 * g["kiba_rd_n_folds"]
        assert g["kiba_tag_n_folds"] >= 1  # whatever TAG folds are stored, said in the text
        # every target has points from every network where its test fold has both classes
        assert g["kiba_rd_points_per_target"] >= 0.9 * g["kiba_rd_networks"]
    else:
        assert 3 <= K <= 12
        assert g["kiba_rd_n_folds"] == 2 and g["kiba_tag_n_folds"] == 2
    assert isinstance(g["kiba_tag_same_split"], bool)


def test_kiba_intervals_and_counts(g):
    K = g["kiba_n_tasks"]
    n = g["kiba_n_pairs"]
    assert n == K * (K - 1)  # every directed pair has an estimate
    for k in ("kiba_n_sig_pos", "kiba_n_ci_above_0", "kiba_n_ci_below_0"):
        assert 0 <= g[k] <= n, k
    assert g["kiba_n_ci_above_0"] + g["kiba_n_ci_below_0"] <= n
    assert g["kiba_ci_width_median"] > 0  # intervals present and not degenerate
    assert np.isfinite(g["kiba_a_median"])


def test_kiba_agreement_stability_groups(g):
    for k in (
        "kiba_spearman_a_vs_Z",
        "kiba_spearman_rho_vs_Z",
        "kiba_spearman_a_vs_cosine",
        "kiba_spearman_per_target_median",
        "kiba_fold_stability_a",
        "kiba_fold_stability_Z",
    ):
        v = g[k]
        assert is_number(v) and -1 <= v <= 1, (k, v)
    assert 0 <= g["kiba_frac_targets_positive"] <= 1
    K = g["kiba_n_tasks"]
    k_top = min(5, max(1, (K - 1) // 2))
    assert 0 <= g["kiba_top5_overlap_mean"] <= k_top
    assert g["kiba_top5_overlap_chance"] == pytest.approx(k_top * k_top / (K - 1))
    assert 2 <= g["kiba_n_groups"] <= K
    assert -1 <= g["kiba_ari_a_vs_Z"] <= 1
    # the reading states the numbers it rests on
    assert f"On {K} KIBA tasks" in g["kiba_reading"]
    assert "replicate" in g["kiba_reading"]


def test_kiba_costs(g):
    for m in ("random_design", "tag"):
        assert g[f"kiba_cost_{m}_wall_seconds"] > 0, m
        assert g[f"kiba_cost_{m}_networks"] >= 1, m
    assert g["kiba_cost_random_design_networks"] == g["kiba_rd_networks"]


def test_exact_top_partner_check_by_profile(g):
    """Full: the stored exact pair runs of 8 targets (top a_ij, top TAG and random partners)."""
    gains = [g[f"kiba_top_gain_{r}"] for r in ("a_ij", "tag", "random")]
    if g["profile"] == "full":
        assert g["kiba_top_n_targets"] == 8
        assert all(is_number(v) and -0.5 < v < 0.5 for v in gains), gains
        assert "Trained exactly on 8 targets" in g["kiba_reading"]
        for r in ("a_ij", "tag", "random"):  # partner sizes behind each rule
            assert 16 <= g[f"kiba_top_partner_size_{r}"] <= 50_000, r
    else:
        assert g["kiba_top_n_targets"] == 0
        assert all(np.isnan(v) for v in gains)


def test_tag_replication_on_kinase200_vs_kiba(g):
    """Both profiles read the stored TAG runs of kiba and kinase200 (both splits each)."""
    for d in ("kiba", "kinase200"):
        assert g[f"{d}_tag_n_stores"] == 2, d
        for k in ("stability_Z", "stability_cosine", "Z_vs_cosine"):
            v = g[f"{d}_tag_{k}"]
            assert is_number(v) and -1 <= v <= 1, (d, k, v)
        assert 0 < g[f"{d}_tag_pair_share"] <= 1
    # what a probe step sees of a target: kinase200 spreads its labels over ~22x more compounds
    assert 0 < g["kinase200_tag_labelled_per_batch"] < g["kiba_tag_labelled_per_batch"] / 5
    r = g["tag_kinase200_reading"]
    assert f"{g['kinase200_tag_stability_Z']:.2f} (KIBA {g['kiba_tag_stability_Z']:.2f})" in r
