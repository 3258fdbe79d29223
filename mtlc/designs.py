"""Learning-curve designs: which (compound, task) pairs each network is trained on.

A *design* is a list of :class:`mtlc.training.ModelSpec`, one per network to train. Every
regime of the study is a set of points in a learning-curve design:

``stl``
    single-task: only the target task i is labelled, at size ``n_i`` (each grid size up to what
    the fold has for task i).
``pair``
    tasks i (target) and j (partner) at sizes ``(n_i, n_j)``; ``n_j`` either the partner's
    full training data (``partner_sizes="full"``, the default: together with the STL curve,
    n_j = 0, this gives two levels of the partner) or the same size grid as the target
    (``partner_sizes="grid"``, a full two-dimensional surface, quadratic cost).
``mtl``
    all-task: one network per grid level ``n``; every task is capped at ``n`` (a task with less
    training data contributes all of it). One network gives a point for every task:
    ``n_task = min(n, available)`` and ``n_context`` = summed sizes of all other tasks.
``context``
    task i at ``n_i``, every other task at a fraction ``q`` of its training data.
``random``
    all-task runs where each task's size is drawn at random from its own grid; one run gives a
    point ``(n_i, n_S)`` for every task at once (the "random design" approximation).

Subsamples are **nested and regime-independent**: for each (seed, fold, task) the task's
training pairs are put in one seeded order, and a size-``n`` subsample is the first ``n`` pairs
of that order. So a smaller subsample is a subset of every larger one, and task i at size n uses
the same compounds in the STL, pairwise, all-task and context regimes (differences between
regimes are then due to the other tasks, not to a different draw of task i's compounds).
The order is *stratified*: actives and inactives are interleaved so that every prefix holds the
pool's class ratio up to rounding (a random prefix of 16 from a task with 5 % actives has no
active with probability 44 %; a stratified one always has one when ``16 * 0.05 >= 0.5``).

Every spec's ``key`` holds: ``dataset``, ``recipe``, ``task_set``, ``split``, ``fold``,
``seed``, ``regime``, ``target`` (task id of the design's target; None for ``mtl``/``random``,
where every task is evaluated), ``partner`` (partner task id for ``pair``, ``"q=0.5"`` for
``context``, None otherwise), ``q`` (context fraction, NaN otherwise), ``n_level`` (the nominal
size of the design point: ``n_i`` or the all-task cap; -1 for ``random``), ``n_task`` and
``n_context`` (sizes for the target; -1 for ``mtl``/``random``, filled per evaluated task from
``task_sizes`` when results are stored), ``task_sizes`` (JSON ``{task_id: n}`` of every task
with training pairs: the full size vector of the model) and ``job_id`` (a stable hash of all of
the above and the training configuration's hash).
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mtlc.datasets._core import MultiTaskDataset
from mtlc.errors import ConfigError

REGIMES = ("stl", "pair", "mtl", "context", "random")

# Columns of a spec's key, in store order.
KEY_COLUMNS = (
    "dataset",
    "recipe",
    "task_set",
    "split",
    "fold",
    "seed",
    "regime",
    "target",
    "partner",
    "q",
    "n_level",
    "n_task",
    "n_context",
    "task_sizes",
    "job_id",
)


def geometric_grid(
    n_max: int, *, start: int = 16, ratio: float = math.sqrt(2), include_full: bool = False
) -> np.ndarray:
    """Sizes ``round(start * ratio**k)`` up to ``n_max`` (int64, increasing, unique).

    ``include_full`` appends ``n_max`` itself (all the data) as in :func:`mtlc.splits.size_grid`.
    The designs leave it out by default: ``n_max`` differs from fold to fold and task to task,
    while the geometric points are the same everywhere, so curves average over folds and
    tasks point by point.
    """
    n_max = int(n_max)
    if n_max < 1:
        return np.zeros(0, dtype=np.int64)
    if include_full:
        from mtlc.splits import size_grid

        return np.asarray(size_grid(n_max, start=start, ratio=ratio), dtype=np.int64)
    if n_max < start:
        return np.zeros(0, dtype=np.int64)
    k = int(math.floor(math.log(n_max / start) / math.log(ratio) + 1e-9)) + 1
    g = np.round(start * ratio ** np.arange(k + 1)).astype(np.int64)
    return np.unique(g[g <= n_max])


def stratified_order(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A permutation of ``range(len(y))`` whose every prefix keeps the class ratio of ``y``.

    Actives and inactives are shuffled separately; the j-th of a class of size m gets the key
    ``(j + u) / m`` with u uniform in [0, 1), and the merged order sorts by key. A prefix of size
    n then holds ``n * p`` actives up to about one.
    """
    y = np.asarray(y)
    order = np.empty(len(y), dtype=np.int64)
    keys = np.empty(len(y), dtype=np.float64)
    for cls in (0, 1):
        idx = np.flatnonzero(y == cls)
        idx = idx[rng.permutation(len(idx))]
        keys[idx] = (np.arange(len(idx)) + rng.random(len(idx))) / max(len(idx), 1)
    order[:] = np.argsort(keys, kind="stable")
    return order


def _task_seed(seed: int, fold: int, task_id: str, salt: str = "order") -> np.random.Generator:
    # Depends on (seed, fold, task id) only: the same draw whatever the regime or task subset.
    return np.random.default_rng(
        [int(seed), int(fold), zlib.crc32(str(task_id).encode()), zlib.crc32(salt.encode())]
    )


def job_id(key: dict[str, Any], config_hash: str) -> str:
    """Stable 16-hex-digit hash of a spec's key (without ``job_id``) and the config hash."""
    clean = {k: _jsonable(v) for k, v in sorted(key.items()) if k != "job_id"}
    text = json.dumps(clean, sort_keys=True, separators=(",", ":")) + "|" + str(config_hash)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _jsonable(v: Any) -> Any:
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float) and math.isnan(v):
        return None
    return v


class FoldPools:
    """The training pairs of every task for one (fold, seed), in nested subsample order.

    Parameters
    ----------
    ds: the data set.
    folds: int array ``(n_compounds,)``, fold id of each compound (``mtlc.splits.kfold``).
    fold: the test fold; training pairs are the labelled pairs of all other folds.
    seed: subsample seed.
    """

    def __init__(self, ds: MultiTaskDataset, folds: np.ndarray, fold: int, seed: int) -> None:
        folds = np.asarray(folds)
        if folds.shape != (ds.n_compounds,):
            raise ConfigError(
                f"fold assignment has shape {folds.shape}, expected ({ds.n_compounds},): "
                "pass one fold id per compound of this data set (mtlc.splits.kfold(ds, ...))"
            )
        if not np.any(folds == fold):
            raise ConfigError(f"fold {fold} is empty; folds present: {sorted(set(folds.tolist()))}")
        self.ds = ds
        self.fold = int(fold)
        self.seed = int(seed)
        self.test_compounds = np.flatnonzero(folds == fold).astype(np.int64)
        train_pair = folds[ds.rows] != fold
        task_ids = ds.tasks["task_id"].astype(str).to_numpy()
        self.task_ids = task_ids
        self._order: list[np.ndarray] = []
        by_task = np.argsort(ds.cols, kind="stable")
        bounds = np.searchsorted(ds.cols[by_task], np.arange(ds.n_tasks + 1))
        for t in range(ds.n_tasks):
            pairs = by_task[bounds[t] : bounds[t + 1]]
            pairs = np.sort(pairs[train_pair[pairs]])
            perm = stratified_order(ds.y[pairs], _task_seed(seed, fold, task_ids[t]))
            self._order.append(pairs[perm])
        self.available = np.array([len(o) for o in self._order], dtype=np.int64)

    def take(self, task: int, n: int) -> np.ndarray:
        """Pair indices (into ``ds.rows``) of the first ``n`` training pairs of ``task``."""
        return self._order[task][: int(n)]

    def n_classes(self, task: int, n: int) -> tuple[int, int]:
        """(actives, inactives) in the size-``n`` subsample of ``task``."""
        y = self.ds.y[self.take(task, n)]
        return int(y.sum()), int(len(y) - y.sum())

    def pairs_for(self, sizes: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """``(train_rows, train_cols)`` int64 for a size vector ``{task index: n}``."""
        parts = [self.take(t, n) for t, n in sizes.items() if n > 0]
        idx = np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)
        return self.ds.rows[idx].astype(np.int64), self.ds.cols[idx].astype(np.int64)


@dataclass
class Design:
    """The specs of a design and what was left out (with reasons).

    ``specs``: list of ``ModelSpec``; ``skipped``: one dict per design point not generated
    (e.g. a requested size above what the fold has for the task), with ``reason``.
    """

    specs: list = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.specs)

    def __iter__(self) -> Iterator:
        return iter(self.specs)

    def __add__(self, other: Design) -> Design:
        return Design(self.specs + other.specs, self.skipped + other.skipped)

    def keys(self) -> list[dict[str, Any]]:
        """The spec keys as a list of dicts (e.g. ``pd.DataFrame(design.keys())``)."""
        return [dict(s.key) for s in self.specs]


@dataclass(frozen=True)
class DesignContext:
    """What every key of a design shares: provenance and the training configuration's hash."""

    dataset: str
    recipe: str = ""
    task_set: str = "all"
    split: str = "compound"
    config_hash: str = ""


def _sizes_for(
    available: int, sizes: str | Sequence[int], *, start: int, ratio: float, max_size: int | None
) -> tuple[np.ndarray, list[int]]:
    """Grid sizes for a task with ``available`` training pairs -> (kept, too_large)."""
    cap = available if max_size is None else min(available, int(max_size))
    if isinstance(sizes, str):
        if sizes != "auto":
            raise ConfigError(f"sizes must be 'auto' or a list of ints, got {sizes!r}")
        return geometric_grid(cap, start=start, ratio=ratio), []
    req = np.unique(np.asarray(list(sizes), dtype=np.int64))
    if (req < 1).any():
        raise ConfigError(f"sizes must be positive, got {req.tolist()}")
    if max_size is not None:
        req = req[req <= max_size]
    return req[req <= available], req[req > available].tolist()


def _spec(pools: FoldPools, ctx: DesignContext, sizes: dict[int, int], eval_tasks, key: dict):
    from mtlc.training import ModelSpec

    ids = pools.task_ids
    key = {
        "dataset": ctx.dataset,
        "recipe": ctx.recipe,
        "task_set": ctx.task_set,
        "split": ctx.split,
        "fold": pools.fold,
        "seed": pools.seed,
        **key,
        "task_sizes": json.dumps({str(ids[t]): int(n) for t, n in sorted(sizes.items()) if n > 0}),
    }
    key = {c: key.get(c) for c in KEY_COLUMNS}
    key["job_id"] = job_id(key, f"{ctx.config_hash}|{MODEL_SEEDING}")
    rows, cols = pools.pairs_for(sizes)
    return ModelSpec(
        train_rows=rows,
        train_cols=cols,
        test_compounds=pools.test_compounds,
        eval_tasks=np.asarray(eval_tasks, dtype=np.int64),
        seed=model_seed(pools.seed, pools.fold, key),
        key=key,
    )


#: Version tag of :func:`model_seed`, part of every job id (a change re-trains, never mixes).
MODEL_SEEDING = "seed-v2"


def model_seed(seed: int, fold: int, key: dict[str, Any]) -> int:
    """The network seed (initial weights, batch order, dropout, inner validation) of a spec.

    Derived from (replicate seed, fold, target task; for ``mtl`` the regime, for ``random`` the
    run): different across folds and targets, so folds are independent replicates (one shared
    initialization would make the folds' errors at small n agree, and shrink the fold spread
    that the tests on transfer coefficients rely on); the same across the sizes of one curve
    (common random numbers: a curve's points differ by their data, not by their start).
    """
    who = key.get("target") or (
        f"random:{key.get('n_level')}" if key.get("regime") == "random" else "all-tasks"
    )
    ss = np.random.SeedSequence([int(seed), int(fold), zlib.crc32(str(who).encode())])
    return int(ss.generate_state(1, dtype=np.uint32)[0] & 0x7FFFFFFF)


def _base(regime, target, partner, q, n_level, n_task, n_context) -> dict[str, Any]:
    return {
        "regime": regime,
        "target": target,
        "partner": partner,
        "q": float("nan") if q is None else float(q),
        "n_level": int(n_level),
        "n_task": int(n_task),
        "n_context": int(n_context),
    }


def stl(
    pools: FoldPools,
    ctx: DesignContext,
    *,
    targets: Iterable[str | int] | None = None,
    sizes: str | Sequence[int] = "auto",
    start: int = 16,
    ratio: float = math.sqrt(2),
    max_size: int | None = None,
) -> Design:
    """Single-task design: one network per (target task, size); only the target is labelled."""
    d = Design()
    for t in pools.ds.task_indices(targets):
        grid, too_large = _sizes_for(
            int(pools.available[t]), sizes, start=start, ratio=ratio, max_size=max_size
        )
        tid = str(pools.task_ids[t])
        for n in too_large:
            d.skipped.append(_skip(pools, "stl", tid, n, int(pools.available[t])))
        for n in grid:
            key = _base("stl", tid, None, None, n, n, 0)
            d.specs.append(_spec(pools, ctx, {t: int(n)}, [t], key))
    return d


def pair(
    pools: FoldPools,
    ctx: DesignContext,
    *,
    pairs: Iterable[tuple[str | int, str | int]],
    sizes: str | Sequence[int] = "auto",
    partner_sizes: str | Sequence[int] = "full",
    start: int = 16,
    ratio: float = math.sqrt(2),
    max_size: int | None = None,
) -> Design:
    """Pairwise design: target i at its grid sizes, partner j at ``partner_sizes``.

    ``partner_sizes``: ``"full"`` (all of j's training data), ``"grid"`` (j's own grid: a
    two-dimensional design) or a list of sizes. Only the target is evaluated (transfer is
    directed: a_ij != a_ji); list (j, i) as well to get the other direction.
    """
    d = Design()
    for a, b in pairs:
        i, j = pools.ds.task_indices([a, b])
        if i == j:
            raise ConfigError(f"pair ({a!r}, {b!r}) names the same task twice")
        ti, tj = str(pools.task_ids[i]), str(pools.task_ids[j])
        gi, too_large = _sizes_for(
            int(pools.available[i]), sizes, start=start, ratio=ratio, max_size=max_size
        )
        for n in too_large:
            d.skipped.append(_skip(pools, "pair", ti, n, int(pools.available[i])))
        if isinstance(partner_sizes, str) and partner_sizes == "full":
            gj = np.array([pools.available[j]], dtype=np.int64)
        elif isinstance(partner_sizes, str) and partner_sizes == "grid":
            gj, _ = _sizes_for(
                int(pools.available[j]), "auto", start=start, ratio=ratio, max_size=max_size
            )
        elif isinstance(partner_sizes, str):
            raise ConfigError(
                f"partner_sizes must be 'full', 'grid' or a list of ints, got {partner_sizes!r}"
            )
        else:
            gj, too_large_j = _sizes_for(
                int(pools.available[j]), partner_sizes, start=start, ratio=ratio, max_size=None
            )
            for n in too_large_j:
                d.skipped.append(_skip(pools, "pair", tj, n, int(pools.available[j])))
        for ni in gi:
            for nj in gj:
                key = _base("pair", ti, tj, None, ni, ni, nj)
                d.specs.append(_spec(pools, ctx, {i: int(ni), j: int(nj)}, [i], key))
    return d


def mtl(
    pools: FoldPools,
    ctx: DesignContext,
    *,
    sizes: str | Sequence[int] = "auto",
    tasks: Iterable[str | int] | None = None,
    start: int = 16,
    ratio: float = math.sqrt(2),
    max_size: int | None = None,
) -> Design:
    """All-task design: one network per cap level n; every task at ``min(n, available)``.

    ``tasks`` restricts which tasks are trained (default all of the data set); all of them are
    evaluated. With ``sizes="auto"`` the levels run up to the largest task's training count
    (or ``max_size``), so the last level trains every task on all of its data.
    """
    d = Design()
    ts = pools.ds.task_indices(tasks)
    avail = pools.available[ts]
    top = int(avail.max()) if len(ts) else 0
    if isinstance(sizes, str):
        levels, _ = _sizes_for(top, sizes, start=start, ratio=ratio, max_size=max_size)
    else:  # explicit caps are kept even above the largest task (that level = all data)
        levels = np.unique(np.asarray(list(sizes), dtype=np.int64))
        if max_size is not None:
            levels = levels[levels <= max_size]
    for n in levels:
        size_vec = {t: int(min(n, a)) for t, a in zip(ts, avail, strict=True)}
        key = _base("mtl", None, None, None, n, -1, -1)
        d.specs.append(_spec(pools, ctx, size_vec, ts, key))
    return d


def context(
    pools: FoldPools,
    ctx: DesignContext,
    *,
    qs: Sequence[float] = (0.25, 0.5, 1.0),
    targets: Iterable[str | int] | None = None,
    tasks: Iterable[str | int] | None = None,
    sizes: str | Sequence[int] = "auto",
    start: int = 16,
    ratio: float = math.sqrt(2),
    max_size: int | None = None,
) -> Design:
    """Context design: target i at its grid sizes, every other task at fraction q of its data.

    ``partner`` in the key reads ``"q=<q>"``; ``n_context`` = summed sizes of the other tasks.
    The context's subsample of task j at fraction q is the first ``round(q * available_j)``
    pairs of j's nested order (the same compounds whatever the target).
    """
    d = Design()
    all_ts = pools.ds.task_indices(tasks)
    for q in qs:
        if not 0.0 <= float(q) <= 1.0:
            raise ConfigError(f"context fractions q must be in [0, 1], got {q}")
    for t in pools.ds.task_indices(targets):
        tid = str(pools.task_ids[t])
        grid, too_large = _sizes_for(
            int(pools.available[t]), sizes, start=start, ratio=ratio, max_size=max_size
        )
        for n in too_large:
            d.skipped.append(_skip(pools, "context", tid, n, int(pools.available[t])))
        for q in qs:
            other = {j: int(round(float(q) * pools.available[j])) for j in all_ts if j != t}
            n_ctx = int(sum(other.values()))
            for n in grid:
                key = _base("context", tid, f"q={float(q):g}", q, n, n, n_ctx)
                d.specs.append(_spec(pools, ctx, {**other, t: int(n)}, [t], key))
    return d


def random_design(
    pools: FoldPools,
    ctx: DesignContext,
    *,
    n_runs: int = 10,
    tasks: Iterable[str | int] | None = None,
    sizes: str | Sequence[int] = "auto",
    start: int = 16,
    ratio: float = math.sqrt(2),
    max_size: int | None = None,
) -> Design:
    """Random design: ``n_runs`` all-task networks, each task's size drawn from its own grid.

    Draws are uniform over the task's grid indices, seeded by (seed, fold, run). The size vector
    of each run is in ``key["task_sizes"]``; ``n_level`` holds the run index.
    """
    d = Design()
    ts = pools.ds.task_indices(tasks)
    grids = []
    for t in ts:
        g, _ = _sizes_for(
            int(pools.available[t]), sizes, start=start, ratio=ratio, max_size=max_size
        )
        if len(g) == 0 and pools.available[t] > 0:
            g = np.array([pools.available[t]], dtype=np.int64)
        grids.append(g)
    for r in range(int(n_runs)):
        rng = np.random.default_rng([pools.seed, pools.fold, r, zlib.crc32(b"random")])
        size_vec = {
            t: int(g[rng.integers(len(g))]) if len(g) else 0 for t, g in zip(ts, grids, strict=True)
        }
        key = _base("random", None, None, None, r, -1, -1)
        d.specs.append(_spec(pools, ctx, size_vec, ts, key))
    return d


def _skip(pools: FoldPools, regime: str, task: str, n: int, available: int) -> dict[str, Any]:
    return {
        "fold": pools.fold,
        "seed": pools.seed,
        "regime": regime,
        "task": task,
        "n": int(n),
        "reason": f"size {int(n)} exceeds the {available} training pairs of {task} in fold "
        f"{pools.fold}",
    }


_BUILDERS = {"stl": stl, "pair": pair, "mtl": mtl, "context": context, "random": random_design}


def make_design(
    ds: MultiTaskDataset,
    folds: np.ndarray,
    *,
    regime: str,
    fold_subset: Iterable[int] | None = None,
    seeds: Iterable[int] = (0,),
    ctx: DesignContext | None = None,
    **options: Any,
) -> Design:
    """Specs of one regime for every (fold, seed): the entry point used by ``mtlc train``.

    ``folds``: fold id per compound; ``fold_subset``: which test folds (default all);
    ``options`` go to the regime's builder (:func:`stl`, :func:`pair`, :func:`mtl`,
    :func:`context`, :func:`random_design`), e.g. ``sizes``, ``max_size``, ``targets``.
    """
    if regime not in _BUILDERS:
        raise ConfigError(f"unknown regime {regime!r}; known: {', '.join(REGIMES)}")
    ctx = ctx or DesignContext(dataset=ds.name)
    folds = np.asarray(folds)
    fold_ids = sorted(set(folds.tolist())) if fold_subset is None else list(fold_subset)
    d = Design()
    for seed in seeds:
        for f in fold_ids:
            pools = FoldPools(ds, folds, int(f), int(seed))
            d = d + _BUILDERS[regime](pools, ctx, **options)
    return d
