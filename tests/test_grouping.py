"""Task grouping: exact searches are exact, clustering finds planted groups at any scale.

"Equals" for the clustering heuristic: on block-structured affinities (within-block transfer
clearly above between-block transfer, plus noise) it returns the same partition as the
exhaustive search, up to group relabelling. On arbitrary matrices average linkage is greedy
and can miss the optimum; there we only check it never claims a better score than the
optimum (and report how close it gets in the benchmark).
"""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlc.errors import ConfigError
from mtlc.grouping import (
    best_of_k_groups,
    canonical_labels,
    cluster_order,
    cluster_tasks,
    exhaustive_partition,
    group_score,
    symmetrize,
)


def _planted(sizes, *, within=1.0, between=-0.4, noise=0.25, seed=0, directed=True):
    rng = np.random.default_rng(seed)
    truth = np.repeat(np.arange(len(sizes)), sizes)
    Z = np.where(truth[:, None] == truth[None, :], within, between)
    Z = Z + noise * rng.standard_normal(Z.shape)
    if not directed:
        Z = (Z + Z.T) / 2
    perm = rng.permutation(len(truth))  # planted groups not contiguous in index order
    return Z[np.ix_(perm, perm)], canonical_labels(truth[perm])


def _all_partitions(items):
    if not items:
        yield []
        return
    first, rest = items[0], items[1:]
    for p in _all_partitions(rest):
        for i in range(len(p)):
            yield p[:i] + [[first] + p[i]] + p[i + 1 :]
        yield [[first]] + p


def _brute_force(Z, k=None):
    n = len(Z)
    best, arg = -np.inf, None
    for p in _all_partitions(list(range(n))):
        if k is not None and len(p) != k:
            continue
        lab = np.empty(n, dtype=int)
        for g, members in enumerate(p):
            lab[members] = g
        v = group_score(Z, lab)
        if v > best:
            best, arg = v, lab
    return best, arg


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_clustering_equals_exhaustive_on_planted_8_tasks(seed):
    Z, truth = _planted([3, 3, 2], seed=seed)
    ex = exhaustive_partition(Z, 3)
    ex_free = exhaustive_partition(Z)
    assert np.array_equal(ex, truth)
    assert np.array_equal(ex_free, truth)  # the free search also finds 3 groups
    assert np.array_equal(cluster_tasks(Z, 3), ex)
    assert np.array_equal(cluster_tasks(Z), ex)  # threshold 0: stops at the planted groups
    assert np.array_equal(cluster_tasks(Z, 3, refine=False), ex)
    groups, _ = best_of_k_groups(Z, 3)
    assert sorted(groups) == sorted(tuple(np.flatnonzero(truth == g)) for g in range(3))


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 7), k=st.sampled_from([None, 1, 2, 3]))
def test_exhaustive_partition_is_the_optimum(seed, n, k):
    Z = np.random.default_rng(seed).standard_normal((n, n))
    if k is not None and k > n:
        k = n
    best, _ = _brute_force(Z, k)
    lab = exhaustive_partition(Z, k)
    assert group_score(Z, lab) == pytest.approx(best, abs=1e-9)
    if k is not None:
        assert lab.max() + 1 == k
    heur = cluster_tasks(Z, k)
    assert group_score(Z, heur) <= best + 1e-9
    if k is not None:
        assert heur.max() + 1 == k


def test_group_score_uses_received_affinity_and_symmetric_part():
    Z = np.array([[9.0, 1.0, 0.0], [3.0, 9.0, 0.0], [0.0, 0.0, 9.0]])
    # tasks 0, 1 together: 0 receives Z[1, 0] = 3, 1 receives Z[0, 1] = 1; task 2 alone: 0
    assert group_score(Z, [0, 0, 1]) == pytest.approx(4.0)
    assert group_score(Z, [0, 1, 2]) == 0.0
    assert group_score(Z, [0, 0, 0]) == pytest.approx((3 + 1 + 0 + 0 + 0 + 0) / 2)
    S = symmetrize(Z)
    assert S[0, 1] == S[1, 0] == 2.0 and np.all(np.diag(S) == 0)


def test_symmetrize_nan_handling():
    Z = np.array([[0.0, np.nan, np.nan], [1.0, 0.0, np.nan], [np.nan, np.nan, 0.0]])
    with pytest.warns(UserWarning, match="2 task pair"):
        S = symmetrize(Z)
    assert S[0, 1] == 1.0 and S[0, 2] == 0.0 and S[1, 2] == 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(symmetrize(Z, fill=None)[0, 2])


def test_best_of_k_groups_can_overlap():
    # 0 gains from 1, 2 gains from 1, 0 and 2 hurt each other: two overlapping groups {0,1}, {1,2}
    Z = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 1.0], [-1.0, 0.0, 0.0]])
    groups, val = best_of_k_groups(Z, 2)
    assert sorted(groups) == [(0, 1), (1, 2)]
    assert val == pytest.approx((1 + 0 + 1) / 3)
    # the non-overlapping optimum cannot serve both
    assert group_score(Z, exhaustive_partition(Z, 2)) < 2.0
    with pytest.raises(ConfigError, match="too expensive"):
        best_of_k_groups(np.zeros((14, 14)), 3)


def _brute_best_of_k(Z, k):
    """The official search: enumerate every selection of up to k candidate groups."""
    n = len(Z)
    Zo = np.array(Z, dtype=float)
    np.fill_diagonal(Zo, 0.0)
    cands = [g for r in range(2, n + 1) for g in itertools.combinations(range(n), r)]
    best = -np.inf
    for s in range(1, k + 1):
        for sel in itertools.combinations(cands, s):
            task_best = np.full(n, -np.inf)
            for g in sel:
                idx = list(g)
                recv = Zo[np.ix_(idx, idx)].sum(0) / (len(g) - 1)
                task_best[idx] = np.maximum(task_best[idx], recv)
            if np.isfinite(task_best).all():
                best = max(best, task_best.mean())
    return best


@settings(max_examples=10, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(2, 5), k=st.integers(1, 3))
def test_best_of_k_groups_equals_brute_force(seed, n, k):
    Z = np.random.default_rng(seed).standard_normal((n, n))
    groups, val = best_of_k_groups(Z, k)
    assert val == pytest.approx(_brute_best_of_k(Z, k), abs=1e-9)
    assert len(groups) <= k
    assert set().union(*map(set, groups)) == set(range(n))


def test_best_of_k_groups_12_tasks_runs():
    Z, truth = _planted([4, 4, 4], seed=3)
    groups, _ = best_of_k_groups(Z, 3)
    assert sorted(groups) == sorted(tuple(np.flatnonzero(truth == g)) for g in range(3))


def test_many_tasks_clustering_recovers_planted_groups():
    Z, truth = _planted([30] * 8, within=0.6, between=-0.1, noise=0.5, seed=5)
    assert len(Z) == 240
    lab = cluster_tasks(Z, 8)
    assert np.array_equal(lab, truth)
    assert np.array_equal(cluster_tasks(Z), truth)
    order = cluster_order(Z)
    assert sorted(order) == list(range(240))
    # consecutive leaves mostly share a planted group ...
    assert np.mean(truth[order][1:] == truth[order][:-1]) > 0.9
    # ... and exactly so when ordered by the final groups (7 group boundaries)
    grouped = cluster_order(Z, lab)
    assert sorted(grouped) == list(range(240))
    assert np.sum(truth[grouped][1:] != truth[grouped][:-1]) == 7


def test_errors():
    with pytest.raises(ConfigError, match="square"):
        cluster_tasks(np.zeros((3, 4)))
    with pytest.raises(ConfigError, match="too expensive"):
        exhaustive_partition(np.zeros((16, 16)))
    with pytest.raises(ConfigError, match="n_groups"):
        cluster_tasks(np.zeros((4, 4)), 5)
    assert list(cluster_tasks(np.zeros((1, 1)))) == [0]
