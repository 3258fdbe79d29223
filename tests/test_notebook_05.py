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
    for k in (*keys, "kiba_scratch_probe_gain"):
        assert math.isfinite(g[k]) and -1 < g[k] < 1, k
    assert g["kiba_all_multiplier_finetune"] > 0


def test_selection_table(g):
    k = g["sel_k"]
    for s in ("none", "all", "top_oracle", "top_tag", "top_cosine", f"random{k}"):
        for what in ("auc_small", "auc_full"):
            assert 0 < g[f"sel_{s}_{what}"] <= 1, (s, what)
        assert g[f"sel_{s}_seconds"] >= 0
    # the oracle's related partners are at least as good as random ones at full size (planted)
    assert g["sel_top_oracle_auc_full"] >= g[f"sel_random{k}_auc_full"] - 0.02
    assert 0 <= g["sel_tag_hit_rate"] <= 1 and 0 <= g["sel_cosine_hit_rate"] <= 1
    # TAG's estimate costs time; its total includes it
    assert g["sel_top_tag_seconds"] >= g["sel_tag_seconds"]
