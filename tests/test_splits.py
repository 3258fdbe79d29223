"""Folds (compound and scaffold), size grids, nested subsamples, inner validation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rdkit.Chem.Scaffolds import MurckoScaffold

from mtlc import datasets, splits
from mtlc.datasets import MultiTaskDataset
from mtlc.errors import ConfigError, InputTableError


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MTLC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "mtlc_cache"))
        yield


@pytest.fixture(scope="module")
def kiba():
    return datasets.kiba()


def _toy(smiles: list[str | None]) -> MultiTaskDataset:
    ids = [f"c{i:03d}" for i in range(len(smiles))]
    t = pd.DataFrame({"compound_id": ids, "task_id": "t", "label": np.arange(len(ids)) % 2})
    return MultiTaskDataset.from_long("toy", t, smiles=dict(zip(ids, smiles, strict=True)))


# --------------------------------------------------------------------------- compound split
@pytest.mark.parametrize(("n", "k"), [(10, 10), (11, 10), (3805, 10), (57, 7)])
def test_compound_folds_balanced(n, k):
    ds = _toy(["C"] * n)
    f = splits.kfold(ds, n_folds=k, split="compound", seed=3)
    sizes = np.bincount(f, minlength=k)
    assert f.shape == (n,) and set(np.unique(f)) == set(range(k))
    assert sizes.max() - sizes.min() <= 1


def test_compound_folds_seeded():
    ds = _toy(["C"] * 200)
    a = splits.kfold(ds, seed=0)
    assert np.array_equal(a, splits.kfold(ds, seed=0))
    assert not np.array_equal(a, splits.kfold(ds, seed=1))


# --------------------------------------------------------------------------- scaffold split
def test_scaffold_groups_never_straddle_folds_on_kiba(kiba):
    folds = splits.kfold(kiba, n_folds=10, split="scaffold", seed=0)
    # recompute scaffolds independently of mtlc.splits
    smi = kiba.compounds["canonical_smiles"].tolist()
    scaf = [MurckoScaffold.MurckoScaffoldSmiles(smiles=s) for s in smi]
    df = pd.DataFrame({"scaffold": scaf, "fold": folds})
    cyclic = df[df["scaffold"] != ""]
    assert (cyclic.groupby("scaffold")["fold"].nunique() == 1).all()
    sizes = np.bincount(folds, minlength=10)
    largest = cyclic["scaffold"].value_counts().max()
    # greedy largest-first: spread is bounded by the largest group
    assert sizes.max() - sizes.min() <= largest
    # and on KIBA the folds come out within 2 % of each other
    assert sizes.max() - sizes.min() <= 0.02 * len(folds)
    assert np.array_equal(folds, splits.kfold(kiba, n_folds=10, split="scaffold", seed=0))


def test_scaffold_acyclic_compounds_are_their_own_groups():
    # 20 acyclic compounds and 5 sharing a benzene scaffold: the acyclic ones spread out
    smi = ["C" * (i + 1) + "O" for i in range(20)] + ["c1ccccc1" + "C" * i for i in range(5)]
    ds = _toy(smi)
    f = splits.kfold(ds, n_folds=5, split="scaffold", seed=0)
    idx = {cid: i for i, cid in enumerate(ds.compounds["compound_id"])}
    benz = [f[idx[f"c{i:03d}"]] for i in range(20, 25)]
    assert len(set(benz)) == 1
    assert np.bincount(f, minlength=5).tolist() == [5, 5, 5, 5, 5]


def test_scaffold_seed_changes_tie_order():
    smi = [f"c1ccc(cc1){'C' * i}c1ccncc1" for i in range(1, 13)]  # 12 distinct scaffolds
    ds = _toy(smi)
    outs = {tuple(splits.kfold(ds, n_folds=3, split="scaffold", seed=s)) for s in range(6)}
    assert len(outs) > 1
    for o in outs:
        assert np.bincount(np.array(o)).tolist() == [4, 4, 4]


def test_scaffold_split_needs_smiles_and_enough_groups():
    t = pd.DataFrame({"compound_id": list("abcd"), "task_id": "t", "label": [0, 1, 0, 1]})
    with pytest.raises(InputTableError, match="without SMILES"):
        splits.kfold(MultiTaskDataset.from_long("toy", t), n_folds=2, split="scaffold")
    with pytest.raises(ConfigError, match="scaffold groups"):
        splits.kfold(_toy(["c1ccccc1C"] * 4), n_folds=2, split="scaffold")


def test_kfold_bad_options():
    ds = _toy(["C"] * 5)
    with pytest.raises(ConfigError, match="at most 5 folds"):
        splits.kfold(ds, n_folds=6)
    with pytest.raises(ConfigError, match="compound, scaffold"):
        splits.kfold(ds, split="cluster")
    with pytest.raises(ConfigError, match=">= 2"):
        splits.kfold(ds, n_folds=1)


# --------------------------------------------------------------------------- sizes
def test_size_grid_values():
    g = splits.size_grid(100)
    assert g.tolist() == [16, 23, 32, 45, 64, 91, 100]
    assert splits.size_grid(16).tolist() == [16]
    assert splits.size_grid(10).tolist() == [10]
    assert splits.size_grid(1000, start=10, ratio=10).tolist() == [10, 100, 1000]
    with pytest.raises(ConfigError):
        splits.size_grid(0)


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 200_000), st.integers(1, 64), st.floats(1.1, 4.0))
def test_size_grid_properties(n_max, start, ratio):
    g = splits.size_grid(n_max, start=start, ratio=ratio)
    assert g.dtype == np.int64
    assert g[-1] == n_max
    assert (np.diff(g) > 0).all()
    assert g[0] == min(start, n_max)
    if len(g) > 2:  # geometric apart from rounding and the appended endpoint
        r = g[1:-1] / g[:-2]
        assert (r <= ratio * 1.5 + 1).all()


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 500).flatmap(
        lambda n: st.tuples(
            st.just(n), st.lists(st.integers(0, n), min_size=1, max_size=8), st.integers(0, 99)
        )
    )
)
def test_nested_subsample_properties(args):
    n, sizes, seed = args
    idx = np.arange(1000, 1000 + n) * 3
    subs = splits.nested_subsample(idx, sizes, seed=seed)
    assert [len(s) for s in subs] == sizes
    for s in subs:
        assert np.isin(s, idx).all() and len(np.unique(s)) == len(s)
    order = np.argsort(sizes)
    for a, b in zip(order[:-1], order[1:], strict=True):
        assert np.isin(subs[a], subs[b]).all()
    again = splits.nested_subsample(idx, sizes, seed=seed)
    assert all(np.array_equal(x, y) for x, y in zip(subs, again, strict=True))


def test_nested_subsample_bad_sizes():
    with pytest.raises(ConfigError, match="0..5"):
        splits.nested_subsample(np.arange(5), [2, 6], seed=0)
    with pytest.raises(ConfigError, match="unique"):
        splits.nested_subsample([1, 1, 2], [1], seed=0)


def test_inner_validation():
    train = np.arange(50, 150)
    fit, val = splits.inner_validation(train, fraction=0.1, seed=4)
    assert len(val) == 10 and len(fit) == 90
    assert np.intersect1d(fit, val).size == 0
    assert np.array_equal(np.union1d(fit, val), train)
    fit2, val2 = splits.inner_validation(train, fraction=0.1, seed=4)
    assert np.array_equal(val, val2)
    assert len(splits.inner_validation([1, 2], seed=0)[1]) == 1
    with pytest.raises(ConfigError):
        splits.inner_validation([1], seed=0)
    with pytest.raises(ConfigError):
        splits.inner_validation(train, fraction=1.5, seed=0)
