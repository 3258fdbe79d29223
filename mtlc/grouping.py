"""Task grouping from an inter-task affinity matrix (TAG's Z or any directed transfer score).

Conventions: ``Z[i, j]`` is the affinity from source task i to target task j (how much
training on i helps j). The diagonal (a task's effect on itself) is never used.

The grouping objective (TAG's, Fifty et al. 2021): a task's score in a group is the mean
affinity it *receives* from the other members, ``mean_{j in G, j != i} Z[j, i]``; a task alone
scores 0 (it receives nothing, it loses nothing); a grouping's score is the sum over tasks.
For a group G this is ``sum_{i != j in G} Z[j, i] / (|G| - 1)``, which depends on Z only
through its symmetric part ``S = (Z + Z^T) / 2`` (the score of G is ``|G|`` times the mean
pairwise S inside G).

* :func:`exhaustive_partition`: the exact optimum over all partitions (a dynamic programme over
  subsets, ``3^n`` steps: up to about 12-14 tasks).
* :func:`best_of_k_groups`: the official TAG search, where up to k possibly *overlapping*
  groups are chosen to cover all tasks and each task counts its best group; solved exactly by
  the same kind of subset programme instead of the official enumeration of selections (up to
  about 13 tasks; 0.5 s for 12).
* :func:`cluster_tasks`: for 200+ tasks, average-linkage hierarchical clustering of S, then a
  local search on the objective above. Average linkage merges, at each step, the two clusters
  with the highest mean mutual affinity; it needs no non-negativity (TAG affinities are often
  negative, which rules out spectral clustering's similarity graphs without an arbitrary
  shift), has no random initialisation, is O(K^2 log K), stops naturally when the best mean
  mutual affinity drops below a threshold (default 0: never merge groups that hurt each other
  on average), and its dendrogram orders heatmaps. It is greedy, so it cannot be optimal for
  the objective in general; the local search (single-task moves while the objective improves)
  closes part of the gap, and the tests check that it finds the exhaustive optimum on planted
  block structure.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy.cluster.hierarchy import fcluster, leaves_list, linkage
from scipy.spatial.distance import squareform

from mtlc.errors import ConfigError

__all__ = [
    "symmetrize",
    "group_score",
    "canonical_labels",
    "exhaustive_partition",
    "best_of_k_groups",
    "cluster_tasks",
    "cluster_order",
]


def _square(Z: np.ndarray) -> np.ndarray:
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2 or Z.shape[0] != Z.shape[1]:
        raise ConfigError(f"affinity matrix must be square (n_tasks, n_tasks); got {Z.shape}")
    return Z


def symmetrize(Z: np.ndarray, *, fill: float | None = 0.0) -> np.ndarray:
    """Symmetric part ``(Z + Z^T) / 2`` with the diagonal set to 0.

    A pair measured in one direction only takes that direction's value; a pair never measured
    (NaN both ways) gets ``fill`` (0: no evidence of transfer either way) and a warning that
    counts them; ``fill=None`` keeps the NaN.
    """
    Z = _square(Z)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        S = np.nanmean(np.stack([Z, Z.T]), axis=0)
    np.fill_diagonal(S, 0.0)
    missing = ~np.isfinite(S)
    if missing.any() and fill is not None:
        n = int(missing.sum()) // 2
        warnings.warn(
            f"{n} task pair(s) have no affinity in either direction; set to {fill}",
            stacklevel=2,
        )
        S[missing] = fill
    return S


def canonical_labels(labels: np.ndarray) -> np.ndarray:
    """Relabel groups 0, 1, ... in order of first appearance (to compare partitions)."""
    labels = np.asarray(labels)
    _, first, inv = np.unique(labels, return_index=True, return_inverse=True)
    rank = np.argsort(np.argsort(first))
    return rank[inv].astype(np.int64)


def group_score(Z: np.ndarray, labels: np.ndarray) -> float:
    """Total score of a partition: sum over tasks of the mean affinity received in its group."""
    S = symmetrize(Z)
    labels = np.asarray(labels)
    total = 0.0
    for g in np.unique(labels):
        m = np.flatnonzero(labels == g)
        if len(m) > 1:
            total += S[np.ix_(m, m)].sum() / (len(m) - 1)
    return float(total)


def _subset_scores(S: np.ndarray) -> np.ndarray:
    """Score of every subset (bitmask) of n tasks: ``(2^n,)``."""
    n = len(S)
    masks = np.arange(1 << n)
    member = ((masks[:, None] >> np.arange(n)[None, :]) & 1).astype(np.float64)
    size = member.sum(1)
    inside = np.einsum("mi,ij,mj->m", member, S, member)  # diagonal of S is 0
    return np.where(size > 1, inside / np.maximum(size - 1, 1), 0.0)


def exhaustive_partition(
    Z: np.ndarray, n_groups: int | None = None, *, max_tasks: int = 14
) -> np.ndarray:
    """The partition maximizing :func:`group_score`, exactly (dynamic programme over subsets).

    ``n_groups``: exactly that many non-empty groups, or None for any number. Returns group
    labels ``(n_tasks,)`` in canonical order. Cost ``O(3^n)`` (about 1 s for 12 tasks).
    """
    S = symmetrize(Z)
    n = len(S)
    if n > max_tasks:
        raise ConfigError(
            f"exhaustive search over {n} tasks is too expensive (3^{n} steps); use "
            f"cluster_tasks for many tasks, or raise max_tasks (now {max_tasks})"
        )
    if n_groups is not None and not 1 <= n_groups <= n:
        raise ConfigError(f"n_groups must be between 1 and {n}, got {n_groups}")
    f = _subset_scores(S)
    _, blocks = _partition_dp(f.tolist(), n, n_groups, at_most=False)
    labels = np.empty(n, dtype=np.int64)
    for gid, g in enumerate(blocks):
        for i in range(n):
            if g >> i & 1:
                labels[i] = gid
    return canonical_labels(labels)


def _partition_dp(
    f: list[float], n: int, k: int | None, *, at_most: bool
) -> tuple[float, list[int]]:
    """Best partition of the n-task set into blocks (bitmasks) maximizing ``sum f[block]``.

    ``k``: None for any number of blocks, else exactly k (or at most k when ``at_most``).
    Dynamic programme over subsets: each mask is split into the block holding its lowest task
    plus the best partition of the rest; ``3^n`` steps per level.
    """
    full = (1 << n) - 1
    neg = -math.inf
    if k is None:
        b = [neg] * (1 << n)
        ch = [0] * (1 << n)
        b[0] = 0.0
        for mask in range(1, 1 << n):
            low = mask & -mask
            rest = mask ^ low
            sub = rest
            bv, bs = neg, mask
            while True:
                g = sub | low
                v = f[g] + b[mask ^ g]
                if v > bv:
                    bv, bs = v, g
                if sub == 0:
                    break
                sub = (sub - 1) & rest
            b[mask], ch[mask] = bv, bs
        blocks, mask = [], full
        while mask:
            blocks.append(ch[mask])
            mask ^= ch[mask]
        return b[full], blocks
    best = [list(f)]  # best[c - 1][mask]: mask split into exactly c blocks
    choice: list[list[int]] = [list(range(1 << n))]
    for _c in range(1, k):
        prev = best[-1]
        b = [neg] * (1 << n)
        ch = [0] * (1 << n)
        for mask in range(1, 1 << n):
            low = mask & -mask
            rest = mask ^ low
            sub = rest
            bv, bs = neg, 0
            while True:
                g = sub | low
                if g != mask:
                    v = f[g] + prev[mask ^ g]
                    if v > bv:
                        bv, bs = v, g
                if sub == 0:
                    break
                sub = (sub - 1) & rest
            b[mask], ch[mask] = bv, bs
        best.append(b)
        choice.append(ch)
    c = k - 1
    if at_most:
        c = max(range(k), key=lambda i: (best[i][full], -i))
    value = best[c][full]
    blocks, mask = [], full
    while mask:
        g = choice[c][mask] if c > 0 else mask
        blocks.append(g)
        mask ^= g
        c -= 1
    return value, blocks


def best_of_k_groups(
    Z: np.ndarray, k: int, *, max_tasks: int = 13
) -> tuple[list[tuple[int, ...]], float]:
    """The official TAG network selection: up to k (possibly overlapping) groups covering all
    tasks, maximizing the mean over tasks of the task's best score among its groups.

    A task's score in a group is the mean of ``Z[j, i]`` over the other members j (directed);
    candidate groups have two or more tasks (the official code scores a task alone -1e6).
    Returns the chosen groups (sorted tuples of task indices) and the objective.

    Exact, without enumerating selections: give every task the group it will count, so the
    tasks split into at most k classes, each class A served by its best superset
    ``best(A) = max_{G >= A} sum_{i in A} score_i(G)``; the optimum is the best partition into
    at most k classes of ``sum best(A)`` (a selection induces such a partition with at most its
    value, and a partition's best supersets form a selection with at least it). ``3^n`` steps
    for ``best`` and per class level: about 2-4 s for 12 tasks.
    """
    Z = _square(Z)
    n = len(Z)
    if n < 2:
        raise ConfigError("best_of_k_groups needs at least 2 tasks")
    if n > max_tasks:
        raise ConfigError(
            f"best_of_k_groups over {n} tasks is too expensive (3^{n} steps); use "
            f"cluster_tasks for many tasks, or raise max_tasks (now {max_tasks})"
        )
    if k < 1:
        raise ConfigError(f"k must be >= 1, got {k}")
    Zo = np.nan_to_num(Z.copy(), nan=0.0)
    np.fill_diagonal(Zo, 0.0)
    N = 1 << n
    masks = np.arange(N)
    member = ((masks[:, None] >> np.arange(n)[None, :]) & 1).astype(bool)
    size = member.sum(1)
    recv = (member.astype(np.float64) @ Zo) / np.maximum(size - 1, 1)[:, None]  # (N, n)
    score = recv.tolist()
    best = [-math.inf] * N
    arg = [0] * N
    low_index = {1 << i: i for i in range(n)}
    for G in range(N):
        if size[G] < 2:
            continue
        sG = score[G]
        sums = {0: 0.0}
        sub = G & -G
        # submasks of G in increasing order; each extends a smaller one by its lowest task
        while sub:
            low = sub & -sub
            v = sums[sub ^ low] + sG[low_index[low]]
            sums[sub] = v
            if v > best[sub]:
                best[sub], arg[sub] = v, G
            sub = (sub - G) & G
    value, classes = _partition_dp(best, n, min(k, n), at_most=True)
    groups = sorted({tuple(int(i) for i in np.flatnonzero(member[arg[c]])) for c in classes})
    return groups, float(value / n)


def _linkage(S: np.ndarray) -> np.ndarray:
    # distance = (max off-diagonal affinity) - affinity: non-negative, and average linkage on it
    # merges the pair of clusters with the highest mean mutual affinity (shift-invariant).
    n = len(S)
    off = S[~np.eye(n, dtype=bool)]
    top = off.max() if off.size else 0.0
    D = top - S
    np.fill_diagonal(D, 0.0)
    return linkage(squareform(D, checks=False), method="average"), top


def cluster_order(Z: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    """Task order for heatmaps: the average-linkage dendrogram's leaf order of
    ``symmetrize(Z)``; with ``labels`` (e.g. from :func:`cluster_tasks`, whose local search may
    move tasks across dendrogram branches), tasks of a group are made contiguous, groups and
    members keeping their dendrogram order."""
    S = symmetrize(Z)
    order = np.arange(len(S)) if len(S) < 3 else leaves_list(_linkage(S)[0])
    if labels is None:
        return order
    labels = np.asarray(labels)
    _, first = np.unique(labels[order], return_index=True)
    group_rank = np.empty(labels.max() + 1, dtype=np.int64)
    group_rank[np.unique(labels[order])] = np.argsort(np.argsort(first))
    return order[np.argsort(group_rank[labels[order]], kind="stable")]


def _local_search(
    S: np.ndarray, labels: np.ndarray, *, fixed_k: bool, max_moves: int
) -> np.ndarray:
    """Single-task moves between existing groups while the group score improves."""
    labels = canonical_labels(labels).copy()
    G = int(labels.max()) + 1
    onehot = np.zeros((len(S), G))
    onehot[np.arange(len(S)), labels] = 1.0
    C = S @ onehot  # C[t, g] = sum_{j in g} S[t, j]  (S diagonal is 0)
    size = onehot.sum(0)
    T = np.einsum("ig,ig->g", onehot, C)  # sum over ordered pairs inside each group

    def f(t: np.ndarray, s: np.ndarray) -> np.ndarray:
        return np.where(s > 1, t / np.maximum(s - 1, 1), 0.0)

    for _ in range(max_moves):
        a = labels  # current group of each task
        ta = T[a] - 2 * C[np.arange(len(S)), a]
        loss_a = f(T[a], size[a]) - f(ta, size[a] - 1)  # (K,)
        gain_b = f(T[None, :] + 2 * C, size[None, :] + 1) - f(T, size)[None, :]  # (K, G)
        delta = gain_b - loss_a[:, None]
        delta[np.arange(len(S)), a] = -np.inf
        if fixed_k:
            delta[size[a] <= 1, :] = -np.inf
        delta[:, size == 0] = -np.inf  # never reopen an emptied group
        t, g = np.unravel_index(int(np.argmax(delta)), delta.shape)
        if not delta[t, g] > 1e-12:
            break
        old = labels[t]
        T[old] -= 2 * C[t, old]
        T[g] += 2 * C[t, g]
        size[old] -= 1
        size[g] += 1
        C[:, old] -= S[:, t]
        C[:, g] += S[:, t]
        labels[t] = g
    return canonical_labels(labels)


def cluster_tasks(
    Z: np.ndarray,
    n_groups: int | None = None,
    *,
    threshold: float = 0.0,
    refine: bool = True,
    max_moves: int = 10_000,
) -> np.ndarray:
    """Group tasks by average-linkage clustering of the symmetrized affinity (any task count).

    ``n_groups``: cut the dendrogram into exactly that many groups; otherwise merge while the
    mean mutual affinity between two clusters is at least ``threshold`` (same units as Z).
    ``refine``: then move single tasks between groups while :func:`group_score` improves
    (keeping ``n_groups`` groups when it is given). Returns labels ``(n_tasks,)``, canonical.
    """
    S = symmetrize(Z)
    n = len(S)
    if n_groups is not None and not 1 <= n_groups <= n:
        raise ConfigError(f"n_groups must be between 1 and {n}, got {n_groups}")
    if n == 1:
        return np.zeros(1, dtype=np.int64)
    if n == 2:
        together = S[0, 1] >= threshold if n_groups is None else n_groups == 1
        return np.array([0, 0 if together else 1], dtype=np.int64)
    Lk, top = _linkage(S)
    if n_groups is not None:
        labels = fcluster(Lk, t=n_groups, criterion="maxclust")
    else:
        labels = fcluster(Lk, t=top - threshold, criterion="distance")
    labels = canonical_labels(labels)
    if refine:
        labels = _local_search(S, labels, fixed_k=n_groups is not None, max_moves=max_moves)
    return labels
