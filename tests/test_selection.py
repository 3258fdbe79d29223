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


def test_fold_estimators_cached_and_fold_local(ds, tmp_path):
    """One TAG run per fold on its training compounds, stored with its cost and read back."""
    folds = kfold(ds, n_folds=3, seed=0)
    cfg = TrainConfig(hidden=(16,), max_epochs=2, batch_size=64, device="cpu")
    e0 = sel.fold_estimators(ds, folds, 0, config=cfg, epochs=2, cache=tmp_path)
    assert e0["tag"].shape == e0["cosine"].shape == (ds.n_tasks, ds.n_tasks)
    assert e0["seconds"] > 0
    assert len(list(tmp_path.glob("tag-*.npz"))) == 1
    again = sel.fold_estimators(ds, folds, 0, config=cfg, epochs=2, cache=tmp_path)
    np.testing.assert_array_equal(again["tag"], e0["tag"])
    assert again["seconds"] == e0["seconds"]  # the stored cost of the run, not the read
    e1 = sel.fold_estimators(ds, folds, 1, config=cfg, epochs=2, cache=tmp_path)
    assert len(list(tmp_path.glob("tag-*.npz"))) == 2  # another fold: another run
    assert not np.allclose(np.nan_to_num(e1["tag"]), np.nan_to_num(e0["tag"]))


def test_run_selection_folds_and_cli(ds, tmp_path, capsys):
    import argparse

    from mtlc.commands import foundation as cmd

    folds = kfold(ds, n_folds=3, seed=0)
    cfg = TrainConfig(hidden=(16,), max_epochs=3, patience=2, device="cpu")
    res = sel.run_selection_folds(
        ds,
        folds,
        ["t00"],
        store=tmp_path / "st",
        config=cfg,
        k=1,
        fold_subset=[0],
        sizes="auto",
        max_size=64,
        size_ratio=2.0,
        tag_epochs=2,
        extra_estimators={"oracle": ds.truth["relatedness"]},
    )
    assert set(res["sets"][0]["t00"]) == {
        "none", "top1:tag", "top1:cosine", "top1:oracle", "random1:s0", "all"
    }  # fmt: skip
    assert res["estimator_seconds"]["tag"] > 0 and res["estimator_seconds"]["oracle"] == 0
    df = ResultsStore(tmp_path / "st").read()
    assert sorted(df["n_task"].unique()) == [16, 32, 64]  # ratio-2 grid up to max_size
    assert (tmp_path / "st_estimators").is_dir()
    parser = argparse.ArgumentParser()
    cmd.register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "foundation", "--selection", "--dataset", "synthetic", "--split", "compound",
            "--targets", "t00", "--folds", "3", "--fold-subset", "0", "--sizes", "16,32",
            "--hidden", "16", "--epochs", "2", "--k", "2", "--tag-epochs", "2",
            "--device", "cpu", "--store", str(tmp_path / "cli"),
        ]
    )  # fmt: skip
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "top2:tag" in out and "random2" in out and "all" in out
