"""Learning-curve designs: nested, regime-independent, stratified subsamples and complete keys."""

from __future__ import annotations

import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from standin_trainer import small_synthetic

from mtlc.designs import (
    KEY_COLUMNS,
    DesignContext,
    FoldPools,
    geometric_grid,
    make_design,
    stratified_order,
)
from mtlc.errors import ConfigError


@pytest.fixture(scope="module")
def ds():
    return small_synthetic()


@pytest.fixture(scope="module")
def folds(ds):
    return np.random.default_rng(1).integers(0, 3, ds.n_compounds)


def _pairs(spec, t=None):
    r, c = np.asarray(spec.train_rows), np.asarray(spec.train_cols)
    sel = np.ones(len(r), bool) if t is None else c == t
    return set(zip(r[sel].tolist(), c[sel].tolist(), strict=True))


def test_geometric_grid():
    g = geometric_grid(300)
    assert g[0] == 16 and g[-1] <= 300
    assert np.all(np.diff(g) > 0)
    ratios = g[1:] / g[:-1]
    assert np.allclose(ratios, np.sqrt(2), atol=0.05)
    assert len(geometric_grid(10)) == 0


@settings(max_examples=60, deadline=None)
@given(
    n_pos=st.integers(0, 80),
    n_neg=st.integers(0, 200),
    seed=st.integers(0, 2**31 - 1),
)
def test_stratified_order_keeps_class_ratio_in_every_prefix(n_pos, n_neg, seed):
    y = np.array([1] * n_pos + [0] * n_neg)
    np.random.default_rng(seed).shuffle(y)
    order = stratified_order(y, np.random.default_rng(seed))
    assert sorted(order.tolist()) == list(range(len(y)))  # a permutation
    if len(y):
        p = n_pos / len(y)
        cum = np.cumsum(y[order])
        n = np.arange(1, len(y) + 1)
        assert np.all(np.abs(cum - n * p) <= 1 + 1e-9)


def test_pools_exclude_test_fold_and_are_nested(ds, folds):
    pools = FoldPools(ds, folds, fold=0, seed=0)
    test = set(pools.test_compounds.tolist())
    assert test == set(np.flatnonzero(folds == 0).tolist())
    for t in range(ds.n_tasks):
        full = pools.take(t, pools.available[t])
        assert not test & set(ds.rows[full].tolist())
        assert np.all(ds.cols[full] == t)
        # every training pair of task t is in the pool
        assert len(full) == int(((ds.cols == t) & (folds[ds.rows] != 0)).sum())
        a, b = pools.take(t, 16), pools.take(t, 45)
        assert set(a.tolist()) <= set(b.tolist())


def test_same_compounds_for_a_task_whatever_the_regime(ds, folds):
    ctx = DesignContext(dataset="syn", config_hash="c")
    t0 = ds.tasks["task_id"].iloc[0]
    stl = make_design(ds, folds, regime="stl", fold_subset=[1], ctx=ctx, sizes=[32])
    mtl = make_design(ds, folds, regime="mtl", fold_subset=[1], ctx=ctx, sizes=[32])
    ctxd = make_design(
        ds, folds, regime="context", fold_subset=[1], ctx=ctx, sizes=[32], qs=[0.5], targets=[t0]
    )
    pair = make_design(
        ds, folds, regime="pair", fold_subset=[1], ctx=ctx, sizes=[32], pairs=[(t0, 1)]
    )
    s_stl = next(s for s in stl if s.key["target"] == t0)
    want = _pairs(s_stl, 0)
    assert len(want) == 32
    assert _pairs(mtl.specs[0], 0) == want
    assert _pairs(ctxd.specs[0], 0) == want
    assert _pairs(pair.specs[0], 0) == want
    # a task subset does not change the draw of the others
    sub = ds.subset(tasks=[0, 2])
    f_sub = folds  # subset keeps all compounds here (density 0.6 x 6 tasks): check, then compare
    if sub.n_compounds == ds.n_compounds:
        s2 = make_design(sub, f_sub, regime="stl", fold_subset=[1], ctx=ctx, sizes=[32])
        assert _pairs(s2.specs[0], 0) == want


def test_stl_keys_sizes_and_skips(ds, folds):
    ctx = DesignContext(dataset="syn", recipe="r", task_set="all", split="compound")
    d = make_design(ds, folds, regime="stl", ctx=ctx, sizes=[16, 64, 10_000], seeds=[0, 1])
    assert len(d.specs) == 2 * 3 * ds.n_tasks * 2  # seeds x folds x tasks x kept sizes
    assert len(d.skipped) == 2 * 3 * ds.n_tasks
    assert "exceeds" in d.skipped[0]["reason"]
    for s in d:
        assert tuple(s.key) == KEY_COLUMNS
        assert s.key["regime"] == "stl" and s.key["partner"] is None
        assert len(s.train_rows) == s.key["n_task"] == s.key["n_level"]
        assert set(np.asarray(s.train_cols).tolist()) == {ds.task_index(s.key["target"])}
        assert json.loads(s.key["task_sizes"]) == {s.key["target"]: s.key["n_task"]}
        assert s.key["n_context"] == 0
    ids = [s.key["job_id"] for s in d]
    assert len(set(ids)) == len(ids)


def test_job_ids_are_stable_and_depend_on_config(ds, folds):
    a = make_design(ds, folds, regime="stl", ctx=DesignContext("syn", config_hash="A"), sizes=[16])
    b = make_design(ds, folds, regime="stl", ctx=DesignContext("syn", config_hash="A"), sizes=[16])
    c = make_design(ds, folds, regime="stl", ctx=DesignContext("syn", config_hash="B"), sizes=[16])
    ida = [s.key["job_id"] for s in a]
    assert ida == [s.key["job_id"] for s in b]
    assert not set(ida) & {s.key["job_id"] for s in c}
    for sa, sb in zip(a, b, strict=True):
        np.testing.assert_array_equal(sa.train_rows, sb.train_rows)


def test_mtl_caps_every_task_and_records_context(ds, folds):
    d = make_design(ds, folds, regime="mtl", fold_subset=[0], ctx=DesignContext("syn"))
    pools = FoldPools(ds, folds, 0, 0)
    levels = [s.key["n_level"] for s in d]
    assert levels == sorted(levels) and levels[0] == 16
    for s in d:
        sizes = json.loads(s.key["task_sizes"])
        n = s.key["n_level"]
        for t, tid in enumerate(ds.tasks["task_id"]):
            assert sizes[tid] == min(n, pools.available[t])
            assert len(_pairs(s, t)) == sizes[tid]
        assert sorted(np.asarray(s.eval_tasks).tolist()) == list(range(ds.n_tasks))
        assert s.key["target"] is None


def test_context_and_pair_sizes(ds, folds):
    pools = FoldPools(ds, folds, 2, 0)
    d = make_design(
        ds,
        folds,
        regime="context",
        fold_subset=[2],
        ctx=DesignContext("syn"),
        sizes=[16, 32],
        qs=[0.0, 0.5],
        targets=[3],
    )
    assert len(d) == 4
    for s in d:
        q = s.key["q"]
        others = [j for j in range(ds.n_tasks) if j != 3]
        assert s.key["n_context"] == sum(int(round(q * pools.available[j])) for j in others)
        assert s.key["partner"] == f"q={q:g}"
        assert len(_pairs(s, 3)) == s.key["n_task"]
        assert np.asarray(s.eval_tasks).tolist() == [3]
    p = make_design(
        ds,
        folds,
        regime="pair",
        fold_subset=[2],
        ctx=DesignContext("syn"),
        sizes=[16, 32],
        pairs=[(0, 1), (1, 0)],
        partner_sizes="grid",
        max_size=45,
    )
    assert len(p) == 2 * 2 * 4  # two directions x 2 target sizes x partner grid 16, 23, 32, 45
    for s in p:
        assert s.key["n_context"] == len(_pairs(s, ds.task_index(s.key["partner"])))


def test_random_design_records_per_task_sizes(ds, folds):
    d = make_design(
        ds,
        folds,
        regime="random",
        fold_subset=[0],
        ctx=DesignContext("syn"),
        n_runs=5,
        max_size=128,
    )
    assert len(d) == 5
    grid = set(geometric_grid(128).tolist())
    vectors = set()
    for s in d:
        sizes = json.loads(s.key["task_sizes"])
        assert set(sizes.values()) <= grid
        for tid, n in sizes.items():
            assert len(_pairs(s, ds.task_index(tid))) == n
        vectors.add(tuple(sorted(sizes.items())))
    assert len(vectors) > 1  # the draws vary between runs


def test_bad_inputs_raise_config_errors(ds, folds):
    with pytest.raises(ConfigError, match="unknown regime"):
        make_design(ds, folds, regime="nope")
    with pytest.raises(ConfigError, match="fold assignment"):
        FoldPools(ds, folds[:-1], 0, 0)
    with pytest.raises(ConfigError, match="unknown task"):
        make_design(ds, folds, regime="stl", targets=["zzz"])
    with pytest.raises(ConfigError, match="same task"):
        make_design(ds, folds, regime="pair", pairs=[(0, 0)])


def test_model_seeds_differ_across_folds_and_targets_not_sizes(ds, folds):
    d = make_design(ds, folds, regime="stl", ctx=DesignContext("syn"), sizes=[16, 32])
    by = {}
    for s in d:
        by.setdefault((s.key["fold"], s.key["target"]), set()).add(s.seed)
    assert all(len(v) == 1 for v in by.values())  # one seed per curve
    seeds = [next(iter(v)) for v in by.values()]
    assert len(set(seeds)) == len(seeds)  # independent across folds and tasks
