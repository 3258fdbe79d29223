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


def test_pruned_estimator_cache_ranks_the_same(ds, tmp_path):
    """A TAG cache pruned to the targets' columns gives the same partners for them and is a
    miss (a new run, stored whole) for any other target."""
    folds = kfold(ds, n_folds=3, seed=0)
    cfg = TrainConfig(hidden=(16,), max_epochs=2, batch_size=64, device="cpu")
    e0 = sel.fold_estimators(ds, folds, 0, config=cfg, epochs=2, cache=tmp_path)
    (f,) = tmp_path.glob("tag-*.npz")
    sel.prune_estimator_cache(f, [0, 2])
    kept = sel.fold_estimators(ds, folds, 0, config=cfg, epochs=2, cache=tmp_path, need=[0, 2])
    assert kept["seconds"] == e0["seconds"]  # read, not rerun
    for t in (0, 2):
        np.testing.assert_array_equal(kept["tag"][:, t], e0["tag"][:, t])
        assert sel.top_partners(kept["tag"], t, 3) == sel.top_partners(e0["tag"], t, 3)
    assert np.isnan(kept["tag"][:, 1]).all()
    rerun = sel.fold_estimators(ds, folds, 0, config=cfg, epochs=2, cache=tmp_path, need=[1])
    assert np.isfinite(rerun["tag"][:, 1]).any()  # column 1 was pruned: made again
    assert "columns" not in np.load(f).files  # and stored whole


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


def test_label_overlap_counts_shared_compounds(ds):
    ov = sel.label_overlap(ds)
    assert ov.shape == (ds.n_tasks, ds.n_tasks) and (ov == ov.T).all()
    np.testing.assert_array_equal(np.diag(ov), np.bincount(ds.cols, minlength=ds.n_tasks))
    some = np.arange(0, ds.n_compounds, 2)
    assert (sel.label_overlap(ds, some) <= ov).all()


def test_fold_mtlc_fold_local_cached_and_restricted(ds, tmp_path):
    """The MTLC ranking uses the fold's training compounds only (relabelling the test fold
    changes nothing), is cached with its cost, and scores only each target's candidates."""
    folds = kfold(ds, n_folds=3, seed=0)
    cfg = TrainConfig(hidden=(8,), max_epochs=2, batch_size=64, device="cpu")
    kw = dict(config=cfg, n_runs=3, inner_folds=2, n_candidates=2, n_boot=5)
    m = sel.fold_mtlc(ds, folds, 0, ["t00", "t02"], cache=tmp_path, **kw)
    assert m["cost"]["networks"] == 3 * 2 and m["seconds"] > 0 and m["cost"]["backward"] > 0
    assert len(list(tmp_path.glob("mtlc-*.npz"))) == 1
    for t in (0, 2):
        assert np.isfinite(m["a"][:, t]).sum() == 2  # the two candidates only
        assert m["n_points"][t] > 0
    assert np.isnan(m["a"][:, [1, 3, 4, 5]]).all()  # not targets
    again = sel.fold_mtlc(ds, folds, 0, ["t00", "t02"], cache=tmp_path, **kw)
    np.testing.assert_array_equal(again["score"], m["score"])
    assert again["cost"] == m["cost"]  # the stored cost of the run, not of the read
    # relabel every test-fold pair: the ranking must not move
    flipped = ds.subset()
    test_pair = folds[flipped.rows] == 0
    flipped.y = np.where(test_pair, 1 - flipped.y, flipped.y).astype(flipped.y.dtype)
    other = sel.fold_mtlc(flipped, folds, 0, ["t00", "t02"], **kw)
    np.testing.assert_allclose(other["a"], m["a"], rtol=1e-5, atol=1e-7, equal_nan=True)
    with pytest.raises(ConfigError):
        sel.fold_mtlc(ds, folds, 0, ["t00"], config=cfg, inner_folds=1)


def test_run_selection_folds_mtlc_only(ds, tmp_path):
    folds = kfold(ds, n_folds=3, seed=0)
    cfg = TrainConfig(hidden=(8,), max_epochs=2, batch_size=64, device="cpu")
    res = sel.run_selection_folds(
        ds, folds, ["t00"], store=tmp_path / "st", config=cfg, k=1, fold_subset=[0],
        sizes=[16, 32], estimators=("mtlc",), mtlc_runs=2, mtlc_inner_folds=2,
        mtlc_candidates=3,
    )  # fmt: skip
    assert set(res["sets"][0]["t00"]) == {"none", "top1:mtlc", "random1:s0", "all"}
    assert set(res["estimator_cost"]) == {"mtlc"} and res["estimator_cost"]["mtlc"]["networks"] == 4
    assert not list((tmp_path / "st_estimators").glob("tag-*.npz"))  # no TAG run asked for
    tab = sel.selection_table(
        ResultsStore(tmp_path / "st").read(), estimator_cost=res["estimator_cost"]
    ).set_index("set")
    assert tab.loc["top1:mtlc", "estimator_networks"] == 4
    assert tab.loc["top1:mtlc", "estimator_seconds"] == pytest.approx(res["mtlc"][0]["seconds"])
    assert tab.loc["all", "estimator_seconds"] == 0
    with pytest.raises(ConfigError):
        sel.run_selection_folds(
            ds, folds, ["t00"], store=tmp_path / "x", config=cfg, estimators=("gradnorm",)
        )


def test_fold_mtlc_finds_planted_partners():
    """On planted data (chapter 05's: two groups of three related tasks, relatedness 0.83 in a
    group, 0.28 through the shared factor), the MTLC top-2 of each grouped target are its two
    planted partners. Chance: 2 random partners of 7 share 2/7 = 0.29 of the planted pair on
    average; measured 0.75 over the 3 folds x 4 targets (float32 networks, as the chapter runs
    them). Threshold 0.6; and the planted partners' mean score exceeds the others'."""
    syn = synthetic(
        n_compounds=1200, n_tasks=8, n_groups=2, group_size=3, n_features=512,
        bits_per_compound=30, density=0.7, seed=0,
    )  # fmt: skip
    folds = kfold(syn, n_folds=3, seed=0)
    cfg = TrainConfig(hidden=(32,), max_epochs=12, patience=4, batch_size=32, lr=3e-3, device="cpu")
    assert cfg.dtype == "float32"
    truth = syn.truth["relatedness"]
    targets = ["t00", "t01", "t03", "t04"]
    hits, planted, other = [], [], []
    for fold in range(3):
        m = sel.fold_mtlc(
            syn, folds, fold, targets, config=cfg, n_runs=80, inner_folds=3, max_size=256
        )
        for t in targets:
            i = syn.task_index(t)
            want = set(sel.top_partners(truth, i, 2))
            hits.append(len(set(sel.top_partners(m["score"], i, 2)) & want) / 2)
            col = m["score"][:, i]
            planted += [col[j] for j in want]
            other += [col[j] for j in range(syn.n_tasks) if j != i and j not in want]
    chance = 2 / 7  # expected share for a random top-2
    assert np.mean(hits) >= 0.6, (hits, chance)
    assert np.mean(planted) > np.mean(other)
