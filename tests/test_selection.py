"""Task selection (mtlc.selection): partner ranking, sets, and a tiny end-to-end comparison."""

from __future__ import annotations

import numpy as np
import pytest

from mtlc import selection as sel
from mtlc.datasets import synthetic
from mtlc.errors import ConfigError
from mtlc.splits import kfold
from mtlc.store import ResultsStore
from mtlc.training import TrainConfig


def test_top_partners_order_ties_and_nan():
    S = np.array(
        [
            [0.0, 0.1, 0.9, 0.0],
            [0.5, 0.0, 0.2, 0.0],
            [0.5, np.nan, 0.0, 0.0],
            [0.9, 0.3, np.nan, 0.0],
        ]
    )  # [source, target]
    assert sel.top_partners(S, 0, 3) == [3, 1, 2]  # 0.9, then the 0.5 tie by lower index
    assert sel.top_partners(S, 1, 3) == [3, 0, 2]  # NaN ranks last
    assert sel.top_partners(S, 2, 1) == [0]
    with pytest.raises(ConfigError):
        sel.top_partners(S, 0, 4)
    with pytest.raises(ConfigError):
        sel.top_partners(S[:3], 0, 1)


@pytest.fixture(scope="module")
def ds():
    return synthetic(
        n_compounds=600,
        n_tasks=6,
        n_groups=2,
        group_size=2,
        n_features=256,
        bits_per_compound=20,
        density=0.8,
        seed=3,
    )


def test_partner_sets_from_truth(ds):
    truth = ds.truth["relatedness"]
    sets = sel.partner_sets(ds, ["t00", "t02"], {"oracle": truth}, k=1, n_random=2)
    assert sets["t00"]["top1:oracle"] == [1] and sets["t02"]["top1:oracle"] == [3]
    assert sets["t00"]["none"] == [] and sets["t00"]["all"] == [1, 2, 3, 4, 5]
    for s in ("random1:s0", "random1:s1"):
        assert len(sets["t00"][s]) == 1 and 0 not in sets["t00"][s]
    with pytest.raises(ConfigError):
        sel.partner_sets(ds, ["t00"], {"bad": truth[:3]}, k=1)


def test_run_selection_and_table(ds, tmp_path):
    folds = kfold(ds, n_folds=3, seed=0)
    sets = sel.partner_sets(ds, ["t00"], {"oracle": ds.truth["relatedness"]}, k=1)
    cfg = TrainConfig(hidden=(16,), max_epochs=4, patience=2, device="cpu")
    summ = sel.run_selection(
        ds, folds, sets, store=tmp_path, config=cfg, fold_subset=[0], sizes=[16, 32, 5000]
    )
    assert summ.done == 2 * len(sets["t00"]) and summ.failed == 0
    assert any(s["n"] == 5000 for s in summ.design_skipped)  # too large: reported, not run
    again = sel.run_selection(
        ds, folds, sets, store=tmp_path, config=cfg, fold_subset=[0], sizes=[16, 32]
    )
    assert again.skipped == again.total and again.done == 0
    df = ResultsStore(tmp_path).read()
    tab = sel.selection_table(df, estimator_cost={"oracle": 1.5})
    assert set(tab["set"]) == {"none", "top1:oracle", "random1", "all"}
    assert tab["set"].iloc[0] == "none" and tab["set"].iloc[-1] == "all"
    row = tab.set_index("set")
    assert row.loc["all", "d_full"] == pytest.approx(0.0)
    assert row.loc["top1:oracle", "estimator_seconds"] == 1.5
    assert (row["n_models"] == 2).all()
    assert row.loc["none", "n_context_pairs"] == 0
    assert row.loc["all", "n_context_pairs"] > row.loc["top1:oracle", "n_context_pairs"] > 0
    assert ((tab["auc_full"] > 0) & (tab["auc_full"] <= 1)).all()
