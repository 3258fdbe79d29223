"""Task selection: with known targets, is a small related set of partners as good as all tasks?

Padmakumar et al. (2022) found that, for a known target, multi-task training with a few related
auxiliary tasks is competitive with large-scale multi-task training at a fraction of the cost.
Here a target ``i`` is trained jointly (one hard-parameter-sharing network, :mod:`mtlc.training`)
with

* ``top{k}:<estimator>``: the ``k`` partners an estimator of transfer ranks highest for ``i``
  (any ``(K, K)`` matrix ``[source, target]``: TAG affinity, gradient cosine, pairwise MTLC
  coefficients, the foundation single-partner shifts, or the planted truth on synthetic data);
* ``random{k}:s<r>``: ``k`` partners drawn at random (seed ``r``);
* ``all``: every other task; ``none``: no partner (single-task),

at graded target sizes ``n_i`` while the partners keep all their training pairs. The stored
rows (regime ``selection``, the set's label in ``partner``) give learning curves per set;
:func:`selection_table` compares them (AUC at small and full ``n``) with what each costs.
"""

from __future__ import annotations

import os
import time
import zlib
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mtlc.datasets._core import MultiTaskDataset
from mtlc.designs import Design, DesignContext, FoldPools, _base, _spec
from mtlc.errors import ConfigError
from mtlc.store import ResultsStore

__all__ = [
    "REGIME",
    "top_partners",
    "partner_sets",
    "selection_design",
    "run_selection",
    "selection_table",
    "fold_estimators",
    "fold_mtlc",
    "label_overlap",
    "prune_estimator_cache",
    "run_selection_folds",
]

REGIME = "selection"


def top_partners(scores: Any, target: int, k: int) -> list[int]:
    """The ``k`` sources ``j != target`` with the highest ``scores[j, target]`` (NaN ranks last).

    ``scores``: ``(K, K)`` array, rows = source, columns = target (the TAG convention: how much
    training on ``j`` helps ``target``). Ties go to the lower index. Returns indices, best first.
    """
    S = np.asarray(scores, dtype=np.float64)
    if S.ndim != 2 or S.shape[0] != S.shape[1]:
        raise ConfigError(f"scores must be a square (K, K) matrix, got shape {S.shape}")
    K = S.shape[0]
    if not 0 <= target < K:
        raise ConfigError(f"target index {target} out of range 0..{K - 1}")
    if not 1 <= k <= K - 1:
        raise ConfigError(f"k must be in 1..{K - 1} (the other tasks), got {k}")
    col = S[:, target].copy()
    col[target] = np.nan
    key = np.where(np.isfinite(col), -col, np.inf)
    key[target] = np.inf
    order = np.lexsort((np.arange(K), key))
    order = [int(j) for j in order if j != target]
    return order[:k]


def partner_sets(
    ds: MultiTaskDataset,
    targets: Iterable[str | int],
    estimators: Mapping[str, Any],
    *,
    k: int,
    n_random: int = 1,
    seed: int = 0,
    include_all: bool = True,
    include_none: bool = True,
) -> dict[str, dict[str, list[int]]]:
    """Partner sets per target: ``{target id: {label: [task indices]}}``.

    ``estimators``: name -> ``(n_tasks, n_tasks)`` score matrix ``[source, target]`` aligned
    with ``ds``'s tasks. Labels ``top{k}:<name>``, ``random{k}:s<r>`` (``r = 0..n_random-1``,
    drawn per target from ``(seed + r, target id)``), ``all`` and ``none``.
    """
    ids = ds.tasks["task_id"].astype(str).to_numpy()
    out: dict[str, dict[str, list[int]]] = {}
    for t in targets:
        ti = ds.task_index(t) if not isinstance(t, (int, np.integer)) else int(t)
        others = [j for j in range(ds.n_tasks) if j != ti]
        sets: dict[str, list[int]] = {}
        if include_none:
            sets["none"] = []
        for name, S in estimators.items():
            S = np.asarray(S, dtype=np.float64)
            if S.shape != (ds.n_tasks, ds.n_tasks):
                raise ConfigError(
                    f"estimator {name!r} has shape {S.shape}, expected "
                    f"({ds.n_tasks}, {ds.n_tasks}) aligned with the data set's tasks"
                )
            sets[f"top{k}:{name}"] = sorted(top_partners(S, ti, k))
        for r in range(n_random):
            rng = np.random.default_rng([seed + r, zlib.crc32(str(ids[ti]).encode())])
            sets[f"random{k}:s{r}"] = sorted(rng.choice(others, size=k, replace=False).tolist())
        if include_all:
            sets["all"] = others
        out[str(ids[ti])] = sets
    return out


def selection_design(
    ds: MultiTaskDataset,
    folds: np.ndarray,
    sets: Mapping[str, Mapping[str, Sequence[int]]],
    *,
    fold_subset: Sequence[int] | None = None,
    sizes: Sequence[int] | str = "auto",
    max_size: int | None = None,
    seed: int = 0,
    ctx: DesignContext,
    size_ratio: float = 2**0.5,
) -> Design:
    """Specs: per fold, target, partner set and target size ``n``: target at ``n`` + partners
    at all their training pairs; evaluated on the target only. Keys: regime ``selection``,
    ``partner`` = the set's label, ``n_context`` = the partners' training pairs."""
    from mtlc.foundation import _sizes

    d = Design()
    fold_ids = sorted(set(np.asarray(folds).tolist())) if fold_subset is None else fold_subset
    for fold in fold_ids:
        pools = FoldPools(ds, folds, int(fold), seed)
        for tid, by_label in sets.items():
            t = ds.task_index(tid)
            grid = _sizes(int(pools.available[t]), sizes, max_size, size_ratio)
            if not isinstance(sizes, str):
                for s in sizes:
                    if s not in grid:
                        d.skipped.append(
                            {
                                "fold": int(fold),
                                "target": tid,
                                "n": int(s),
                                "reason": f"size above the {int(pools.available[t])} training pairs of {tid}",
                            }
                        )
            for label, partners in by_label.items():
                psizes = {int(j): int(pools.available[j]) for j in partners if j != t}
                n_ctx = sum(psizes.values())
                for n in grid:
                    key = _base(REGIME, tid, label, None, n, n, n_ctx)
                    d.specs.append(_spec(pools, ctx, {t: int(n), **psizes}, [t], key))
    return d


def run_selection(
    ds: MultiTaskDataset,
    folds: np.ndarray,
    sets: Mapping[str, Mapping[str, Sequence[int]]],
    *,
    store: ResultsStore | str | os.PathLike,
    config: Any,
    fold_subset: Sequence[int] | None = None,
    sizes: Sequence[int] | str = "auto",
    max_size: int | None = None,
    seed: int = 0,
    split: str = "compound",
    recipe: str = "",
    task_set: str = "selection",
    progress: bool = False,
    size_ratio: float = 2**0.5,
) -> Any:
    """Build :func:`selection_design` and run it through :func:`mtlc.study.run_design`
    (resumable; returns its ``RunSummary``). ``size_ratio``: ratio of the ``"auto"`` grid."""
    from mtlc.study import run_design

    ctx = DesignContext(
        dataset=ds.name,
        recipe=recipe,
        task_set=task_set,
        split=split,
        config_hash=str(config.hash()),
    )
    design = selection_design(
        ds,
        folds,
        sets,
        fold_subset=fold_subset,
        sizes=sizes,
        max_size=max_size,
        seed=seed,
        ctx=ctx,
        size_ratio=size_ratio,
    )
    return run_design(ds, design, store, config, progress=progress, desc="selection")


def selection_table(
    df: pd.DataFrame,
    *,
    metric: str = "roc_auc",
    small_n: int | None = None,
    estimator_cost: Mapping[str, float | Mapping[str, float]] | None = None,
) -> pd.DataFrame:
    """Compare partner sets: one row per set kind (``top{k}:<name>``, ``random``, ``all``,
    ``none``), averaged over targets and folds.

    Columns: ``auc_small`` (at ``small_n``, default the smallest size every target has),
    ``auc_full`` (at each target's largest size), ``auc_mean`` (over the size grid),
    ``d_small`` / ``d_full`` (minus the ``all`` set, per target and fold, then averaged),
    ``n_models`` (networks trained), ``train_seconds`` (their summed wall time),
    ``estimator_seconds`` (from ``estimator_cost``, keyed by estimator name: what computing the
    ranking cost, wall seconds; a value may also be a cost dict with ``wall_seconds`` and
    ``networks``, as :func:`run_selection_folds` returns), ``estimator_networks`` (networks
    the estimator trained; NaN when given seconds only), ``total_seconds``, ``n_targets``,
    ``n_context_pairs`` (mean partner training pairs).
    """
    d = df[(df["regime"] == REGIME) & (df["metric"] == metric) & (df["status"] == "ok")].copy()
    if d.empty:
        return pd.DataFrame()
    d["set"] = d["partner"].astype(str).str.replace(r"^random(\d+):s\d+$", r"random\1", regex=True)
    if small_n is None:
        small_n = int(d.groupby("target")["n_task"].min().max())
    full_n = d.groupby("target")["n_task"].transform("max")
    keys = ["set", "target", "fold"]
    at_small = d[d["n_task"] == small_n].groupby(keys)["value"].mean().rename("auc_small")
    at_full = d[d["n_task"] == full_n].groupby(keys)["value"].mean().rename("auc_full")
    mean_all = d.groupby(keys)["value"].mean().rename("auc_mean")
    per = pd.concat([at_small, at_full, mean_all], axis=1).reset_index()
    if "all" in set(per["set"]):
        ref = per[per["set"] == "all"].set_index(["target", "fold"])[["auc_small", "auc_full"]]
        ref = ref.add_suffix("_all")
        per = per.join(ref, on=["target", "fold"])
        per["d_small"] = per["auc_small"] - per["auc_small_all"]
        per["d_full"] = per["auc_full"] - per["auc_full_all"]
    cost = (
        d.drop_duplicates("job_id")
        .groupby("set")
        .agg(
            n_models=("job_id", "size"),
            train_seconds=("train_seconds", "sum"),
            n_targets=("target", "nunique"),
        )
    )
    jobs = d.drop_duplicates("job_id")
    ctx_pairs = jobs.groupby("set")["n_context"].mean().rename("n_context_pairs")
    out = per.groupby("set")[
        [c for c in per.columns if c.startswith(("auc_", "d_")) and not c.endswith("_all")]
    ].mean()
    out = out.join(cost).join(ctx_pairs).reset_index()
    est = estimator_cost or {}

    def _cost(s: str, field: str) -> float:
        if not s.startswith("top"):
            return 0.0
        c = est.get(s.split(":", 1)[1], 0.0)
        if isinstance(c, Mapping):
            return float(c.get(field, np.nan))
        return float(c) if field == "wall_seconds" else np.nan

    out["estimator_seconds"] = [_cost(s, "wall_seconds") for s in out["set"]]
    out["estimator_networks"] = [_cost(s, "networks") for s in out["set"]]
    out["total_seconds"] = out["train_seconds"] + out["estimator_seconds"]
    out["small_n"] = small_n
    order = {"none": 0, "all": 9}
    out["_o"] = [order.get(s, 5 if s.startswith("random") else 1) for s in out["set"]]
    return out.sort_values(["_o", "set"]).drop(columns="_o").reset_index(drop=True)


def fold_estimators(
    ds: MultiTaskDataset,
    folds: np.ndarray,
    fold: int,
    *,
    config: Any,
    epochs: int,
    seed: int = 0,
    cache: str | os.PathLike | None = None,
    threads: int | None = 1,
    need: Sequence[int] | None = None,
) -> dict[str, Any]:
    """TAG affinity and gradient cosine of one all-task TAG run on a fold's training compounds.

    One :func:`mtlc.affinity.tag_train` run (``epochs`` epochs, ``config``'s network) on the
    compounds outside test fold ``fold`` (the test fold never informs the ranking). Returns
    ``{"tag": (K, K), "cosine": (K, K), "seconds": wall seconds of the run}``, matrices
    ``[source, target]`` aligned with ``ds``'s tasks. With ``cache`` (a directory) the result
    is stored as ``tag-<key>.npz`` (key: data set, fold assignment, fold, config, epochs, seed)
    and read back on the next call, with the seconds the run cost when it was made. A cached
    file pruned by :func:`prune_estimator_cache` holds only some target columns (NaN
    elsewhere); it counts as a hit only when it has every column in ``need`` (target task
    indices), otherwise the run is made again and stored whole.
    """
    from mtlc.affinity import tag_train
    from mtlc.foundation import _threads

    fa = np.asarray(folds)
    payload = {
        "dataset": ds.name,
        "shape": [ds.n_compounds, ds.n_tasks],
        "fold": int(fold),
        "config": str(config.hash()),
        "epochs": int(epochs),
        "seed": int(seed),
    }
    f = None if cache is None else Path(cache) / f"tag-{_key(payload, fa)}.npz"
    if f is not None and f.is_file():
        z = np.load(f)
        kept = set(z["columns"].tolist()) if "columns" in z.files else None
        if kept is None or set(int(t) for t in (need or [])) <= kept:
            return {"tag": z["tag"], "cosine": z["cosine"], "seconds": float(z["seconds"])}
    t0 = time.perf_counter()
    with _threads(threads):
        res = tag_train(
            ds,
            np.flatnonzero(fa != fold),
            config=config,
            epochs=int(epochs),
            seed=int(seed),
            device="cpu",
        )
    out = {"tag": res.affinity, "cosine": res.cosine, "seconds": time.perf_counter() - t0}
    if f is not None:
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f".tmp-{os.getpid()}-{f.name}")
        np.savez(tmp, **out)
        os.replace(tmp, f)
    return out


def prune_estimator_cache(path: str | os.PathLike, columns: Sequence[int]) -> int:
    """Shrink a cached :func:`fold_estimators` file to the target ``columns`` it is read for.

    The ``(K, K)`` matrices ``[source, target]`` keep those columns bit for bit (float64) and
    are NaN elsewhere; the file is rewritten compressed, with the kept ``columns``, so that
    :func:`fold_estimators` treats it as a miss for any other target. Returns the new size in
    bytes. A ranking of a kept target reads only its own column, so it is unchanged.
    """
    p = Path(path)
    z = np.load(p)
    cols = np.array(sorted({int(c) for c in columns}), dtype=np.int64)
    out: dict[str, Any] = {"seconds": z["seconds"], "columns": cols}
    for name in ("tag", "cosine"):
        M = np.full_like(z[name], np.nan)
        M[:, cols] = z[name][:, cols]
        out[name] = M
    tmp = p.with_name(f".tmp-{os.getpid()}-{p.name}")
    with open(tmp, "wb") as fh:
        np.savez_compressed(fh, **out)
    os.replace(tmp, p)
    return p.stat().st_size


def _key(payload: Mapping[str, Any], folds: np.ndarray) -> str:
    """Cache key: a hash of the settings and the fold assignment."""
    import hashlib
    import json

    h = hashlib.sha256(json.dumps(payload, sort_keys=True).encode())
    h.update(np.ascontiguousarray(np.asarray(folds), dtype=np.int64).tobytes())
    return h.hexdigest()[:20]


def label_overlap(ds: MultiTaskDataset, compounds: np.ndarray | None = None) -> np.ndarray:
    """``(K, K)`` int64: compounds labelled for both tasks (among ``compounds``, default all)."""
    import scipy.sparse as sp

    keep = np.ones(ds.n_pairs, dtype=bool)
    if compounds is not None:
        inside = np.zeros(ds.n_compounds, dtype=bool)
        inside[np.asarray(compounds, dtype=np.int64)] = True
        keep = inside[ds.rows]
    M = sp.csr_matrix(
        (np.ones(int(keep.sum())), (ds.rows[keep], ds.cols[keep])),
        shape=(ds.n_compounds, ds.n_tasks),
    )
    return np.rint((M.T @ M).toarray()).astype(np.int64)


def fold_mtlc(
    ds: MultiTaskDataset,
    folds: np.ndarray,
    fold: int,
    targets: Sequence[str | int],
    *,
    config: Any,
    n_runs: int = 160,
    inner_folds: int = 5,
    n_candidates: int = 20,
    max_size: int | None = None,
    split: str = "compound",
    c_fixed: float | None = 1.0,
    ridge: float = 1e-3,
    n_boot: int = 50,
    seed: int = 0,
    cache: str | os.PathLike | None = None,
    threads: int | None = 1,
) -> dict[str, Any]:
    """Pairwise MTLC coefficients ``a_ij`` of the ``targets``, from one fold's training compounds.

    The test fold never informs the ranking: the compounds outside test fold ``fold`` are split
    again (``inner_folds`` folds, the same ``split`` type), and on every inner fold
    :func:`mtlc.approx.random_design_runs` trains ``n_runs`` all-task networks on the other
    inner folds with every task's size drawn at random (``config``'s network), scored on that
    inner fold. All ``inner_folds * n_runs`` networks are pooled per target and
    :func:`mtlc.approx.random_design_fit` (``model="multi"``, ``c_fixed``, ``ridge``,
    ``n_boot``) regresses ``log(c - AUC_i)`` on ``n_i``, the sizes of the target's
    ``n_candidates`` candidate partners (the tasks sharing the most labelled training compounds
    with it; ties by task order) and the summed size of all other tasks (one ``rest`` column,
    which absorbs their variation instead of leaving it in the residual).

    Returns ``{"a": (K, K), "se": (K, K), "score": (K, K), "n_points": (K,), "cost": {...},
    "seconds": wall seconds}``, matrices ``[source, target]`` aligned with ``ds``'s tasks:
    ``a`` the coefficient (per 1000 samples), ``se`` its bootstrap standard error, ``score``
    the ranking, ``a_ij * N_j / 1000`` with ``N_j`` the partner's training pairs in the outer
    fold: the exponent gain the partner's full data buys when it joins the target (partners
    join with all their pairs), NaN outside the candidates and for non-targets. ``cost``:
    ``wall_seconds`` (runs and fits), ``networks``, ``forward``, ``backward`` (see
    :mod:`mtlc.approx`). With ``cache`` (a directory) stored as ``mtlc-<key>.npz`` (float32
    matrices) and read back with the cost of the run that made it.
    """
    from mtlc import approx
    from mtlc.foundation import _threads
    from mtlc.splits import kfold

    fa = np.asarray(folds)
    tidx = sorted(
        {ds.task_index(t) if not isinstance(t, (int, np.integer)) else int(t) for t in targets}
    )
    if n_runs < 1 or inner_folds < 2 or n_candidates < 1:
        raise ConfigError(
            f"fold_mtlc: n_runs >= 1, inner_folds >= 2 and n_candidates >= 1 are needed, got "
            f"{n_runs}, {inner_folds}, {n_candidates}"
        )
    key = _key(
        {
            "dataset": ds.name,
            "shape": [ds.n_compounds, ds.n_tasks],
            "fold": int(fold),
            "targets": tidx,
            "config": str(config.hash()),
            "n_runs": int(n_runs),
            "inner_folds": int(inner_folds),
            "n_candidates": int(n_candidates),
            "max_size": None if max_size is None else int(max_size),
            "split": split,
            "c_fixed": c_fixed,
            "ridge": float(ridge),
            "n_boot": int(n_boot),
            "seed": int(seed),
        },
        fa,
    )
    f = None if cache is None else Path(cache) / f"mtlc-{key}.npz"
    cost_keys = ("wall_seconds", "networks", "forward", "backward")
    if f is not None and f.is_file():
        z = np.load(f)
        out = {k: z[k].astype(np.float64) for k in ("a", "se", "score")}
        out["n_points"] = z["n_points"].astype(np.int64)
        out["cost"] = {k: float(z[k]) for k in cost_keys}
        out["seconds"] = out["cost"]["wall_seconds"]
        return out
    t0 = time.perf_counter()
    train_c = np.flatnonzero(fa != fold)
    sub = ds.subset(compounds=train_c, drop_empty_compounds=False)  # tasks keep their order
    inner = kfold(sub, n_folds=int(inner_folds), split=split, seed=int(seed))
    with _threads(threads):
        run = approx.random_design_runs(
            sub,
            inner,
            n_runs=int(n_runs),
            test_folds=tuple(range(int(inner_folds))),
            config=config,
            max_size=max_size,
            seed=int(seed),
        )
    ids = [str(t) for t in ds.tasks["task_id"]]
    K = len(ids)
    overlap = label_overlap(ds, train_c)
    available = FoldPools(ds, fa, int(fold), int(seed)).available.astype(np.float64)
    A = np.full((K, K), np.nan)
    SE = np.full((K, K), np.nan)
    n_points = np.zeros(K, dtype=np.int64)
    tab = run.table.reset_index(drop=True)
    sizes = run.sizes.reset_index(drop=True)
    for i in tidx:
        others = np.array([j for j in range(K) if j != i])
        # most shared labelled training compounds first; ties by task order (stable sort)
        cand = others[np.argsort(-overlap[others, i], kind="stable")][: int(n_candidates)]
        rest = [ids[j] for j in others if j not in set(cand.tolist())]
        rows = (tab["task"] == ids[i]).to_numpy()
        cols = [ids[i], *[ids[j] for j in cand]]
        S = sizes.loc[rows, cols].reset_index(drop=True)
        if rest:
            S["rest"] = sizes.loc[rows, rest].sum(axis=1).to_numpy()
        sub_run = approx.CurveRun(tab[rows].reset_index(drop=True), run.cost, sizes=S)
        fit = approx.random_design_fit(
            sub_run, model="multi", ridge=ridge, n_boot=n_boot, c_fixed=c_fixed, seed=int(seed)
        )
        if fit.empty:
            continue
        fit = fit.set_index("source")
        for j in cand:
            if ids[j] in fit.index:
                A[j, i] = float(fit.loc[ids[j], "estimate"])
                SE[j, i] = float(fit.loc[ids[j], "se"])
        n_points[i] = int(fit["n_points"].iloc[0])
    score = A * available[:, None] / 1000.0
    cost = {k: float(run.cost[k]) for k in cost_keys}
    cost["wall_seconds"] = time.perf_counter() - t0  # the runs, the split and the fits
    out = {"a": A, "se": SE, "score": score, "n_points": n_points, "cost": cost}
    out["seconds"] = cost["wall_seconds"]
    if f is not None:
        f.parent.mkdir(parents=True, exist_ok=True)
        tmp = f.with_name(f".tmp-{os.getpid()}-{f.name}")
        with open(tmp, "wb") as fh:
            np.savez_compressed(
                fh,
                a=A.astype(np.float32),
                se=SE.astype(np.float32),
                score=score.astype(np.float32),
                n_points=n_points,
                **cost,
            )
        os.replace(tmp, f)
        # read back what was stored, so the first call and later calls rank identically
        return fold_mtlc(
            ds, folds, fold, targets, config=config, n_runs=n_runs, inner_folds=inner_folds,
            n_candidates=n_candidates, max_size=max_size, split=split, c_fixed=c_fixed, ridge=ridge,
            n_boot=n_boot, seed=seed, cache=cache, threads=threads,
        )  # fmt: skip
    return out


ESTIMATORS = ("tag", "cosine", "mtlc")


def run_selection_folds(
    ds: MultiTaskDataset,
    folds: np.ndarray,
    targets: Sequence[str | int],
    *,
    store: str | os.PathLike,
    config: Any,
    k: int = 5,
    n_random: int = 1,
    fold_subset: Sequence[int] | None = None,
    sizes: Sequence[int] | str = "auto",
    max_size: int | None = None,
    size_ratio: float = 2**0.5,
    tag_config: Any = None,
    tag_epochs: int = 10,
    extra_estimators: Mapping[str, Any] | None = None,
    estimators: Sequence[str] = ("tag", "cosine"),
    mtlc_runs: int = 160,
    mtlc_inner_folds: int = 5,
    mtlc_candidates: int = 20,
    seed: int = 0,
    split: str = "compound",
    recipe: str = "",
    threads: int | None = 1,
) -> dict[str, Any]:
    """Task selection per fold with estimators measured on that fold's training compounds.

    Per test fold: the ``estimators`` (any of ``"tag"``, ``"cosine"``: one
    :func:`fold_estimators` TAG run; ``"mtlc"``: :func:`fold_mtlc` with ``mtlc_runs``
    random-design networks per inner fold, ``mtlc_inner_folds`` inner folds and
    ``mtlc_candidates`` candidate partners per target), each cached under
    ``<store>_estimators``; then :func:`partner_sets` (``top{k}`` by each estimator, plus any
    ``extra_estimators`` such as a planted truth, ``n_random`` random sets, ``all``, ``none``)
    and :func:`run_selection` into ``store`` (resumable: adding an estimator trains only its
    sets; the other sets' job ids do not depend on which estimators run). ``tag_config``: the
    network of the estimator runs (default ``config``).

    Returns ``{"sets": {fold: sets}, "estimator_seconds": {name: s}`` (wall seconds summed
    over folds; TAG affinity and gradient cosine come from the same run, so each is charged its
    full cost), ``"estimator_cost": {name: {"wall_seconds", "networks", "forward",
    "backward"}}`` (summed over folds; passes NaN where not counted), ``"mtlc": {fold:
    fold_mtlc output}``, ``"summaries"``: one ``RunSummary`` per fold}.
    """
    from mtlc.foundation import _threads

    bad = [e for e in estimators if e not in ESTIMATORS]
    if bad:
        raise ConfigError(f"unknown estimator(s) {bad}; choose from {', '.join(ESTIMATORS)}")
    fold_ids = sorted(set(np.asarray(folds).tolist())) if fold_subset is None else fold_subset
    est_dir = f"{str(store).rstrip('/')}_estimators"
    out: dict[str, Any] = {"sets": {}, "estimator_seconds": {}, "summaries": [], "mtlc": {}}
    cost: dict[str, dict[str, float]] = {
        e: {"wall_seconds": 0.0, "networks": 0.0, "forward": 0.0, "backward": 0.0}
        for e in estimators
    }
    for fold in fold_ids:
        ests: dict[str, Any] = {}
        if "tag" in estimators or "cosine" in estimators:
            e = fold_estimators(
                ds,
                folds,
                int(fold),
                config=tag_config or config,
                epochs=tag_epochs,
                seed=seed,
                cache=est_dir,
                threads=threads,
                need=[
                    ds.task_index(t) if not isinstance(t, (int, np.integer)) else int(t)
                    for t in targets
                ],
            )
            for name in ("tag", "cosine"):
                if name in estimators:
                    ests[name] = e[name]
                    cost[name]["wall_seconds"] += e["seconds"]
                    cost[name]["networks"] += 1.0
                    cost[name]["forward"] = cost[name]["backward"] = np.nan  # not stored
        if "mtlc" in estimators:
            m = fold_mtlc(
                ds,
                folds,
                int(fold),
                targets,
                config=tag_config or config,
                n_runs=mtlc_runs,
                inner_folds=mtlc_inner_folds,
                n_candidates=mtlc_candidates,
                split=split,
                seed=seed,
                cache=est_dir,
                threads=threads,
            )
            ests["mtlc"] = m["score"]
            for c_, v in m["cost"].items():
                cost["mtlc"][c_] += v
            out["mtlc"][int(fold)] = m
        ests.update(dict(extra_estimators or {}))
        sets = partner_sets(ds, targets, ests, k=k, n_random=n_random, seed=seed)
        with _threads(threads):
            summ = run_selection(
                ds,
                folds,
                sets,
                store=store,
                config=config,
                fold_subset=[int(fold)],
                sizes=sizes,
                max_size=max_size,
                size_ratio=size_ratio,
                seed=seed,
                split=split,
                recipe=recipe,
            )
        out["sets"][int(fold)] = sets
        out["summaries"].append(summ)
    for name in extra_estimators or {}:
        cost.setdefault(
            name, {"wall_seconds": 0.0, "networks": 0.0, "forward": 0.0, "backward": 0.0}
        )
    out["estimator_cost"] = cost
    out["estimator_seconds"] = {n: c["wall_seconds"] for n, c in cost.items()}
    return out
