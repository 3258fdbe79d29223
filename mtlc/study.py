"""Run learning-curve designs into a results store, and turn stored results into curves.

- :func:`run_design` trains the specs of a design that the store does not hold yet, in chunks,
  appending one part file per chunk (resumable; a failing job is recorded with its reason and
  the run goes on).
- :func:`run_study` is what ``mtlc train`` calls: load a data set, pick tasks, assign folds,
  build the design of one regime, run it.
- :func:`learning_curves` aggregates a store table into curves: mean and spread over folds per
  (dataset, split, regime, partner, task, size); :func:`curve_matrix` gives the
  ``(sizes, scores[n_sizes, n_folds])`` shape of ``sklearn.model_selection.learning_curve``.
- :func:`smoke_study` runs (or resumes) the small study the chapters use in the smoke profile,
  cached on disk so that the learning-curve and curve-fitting chapters share it.
"""

from __future__ import annotations

import json
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mtlc.datasets._core import MultiTaskDataset
from mtlc.designs import REGIMES, Design, DesignContext, FoldPools, make_design
from mtlc.errors import ConfigError, MtlcError
from mtlc.store import SCHEMA, ResultsStore

# Regimes whose specs have one target task (checked for a two-class training subsample).
_TARGETED = ("stl", "pair", "context")


@dataclass
class RunSummary:
    """What a :func:`run_design` call did. ``failures``: ``(job_id, target, reason)`` tuples."""

    total: int = 0
    skipped: int = 0
    done: int = 0
    failed: int = 0
    failures: list[tuple[str, str | None, str]] = field(default_factory=list)
    seconds: float = 0.0
    design_skipped: list[dict[str, Any]] = field(default_factory=list)
    #: Job ids of every spec of the design (done now or before), to select its rows in a store.
    job_ids: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        lines = [
            f"jobs: {self.total} in design, {self.skipped} already in the store (skipped), "
            f"{self.done} trained, {self.failed} failed, in {self.seconds:.1f} s"
        ]
        if self.design_skipped:
            lines.append(
                f"design points not generated: {len(self.design_skipped)} "
                f"(e.g. {self.design_skipped[0]['reason']})"
            )
        if self.failures:
            reasons: dict[str, int] = {}
            for _, _, r in self.failures:
                reasons[r.split(";")[0]] = reasons.get(r.split(";")[0], 0) + 1
            lines.append("failed jobs by reason:")
            lines += [f"  {n} x {r}" for r, n in sorted(reasons.items(), key=lambda kv: -kv[1])]
        return "\n".join(lines)


def _failure_row(spec: Any, reason: str, config_hash: str) -> dict[str, Any]:
    key = dict(spec.key)
    sizes = json.loads(key.get("task_sizes") or "{}")
    target = key.get("target")
    n_task = sizes.get(target, -1) if target is not None else -1
    return {
        **{k: v for k, v in key.items() if k in SCHEMA},
        "task": target,
        "n_task": n_task,
        "n_context": (sum(sizes.values()) - n_task) if target is not None else -1,
        "metric": "",
        "value": float("nan"),
        "note": reason,
        "status": "failed",
        "config_hash": config_hash,
    }


class _PairLabels:
    """Label lookup by (compound, task), built once per run: pairs are unique, so exact."""

    def __init__(self, ds: MultiTaskDataset) -> None:
        self.n_tasks = ds.n_tasks
        codes = ds.rows.astype(np.int64) * ds.n_tasks + ds.cols
        order = np.argsort(codes)
        self.codes = codes[order]
        self.y = ds.y[order]

    def __call__(self, rows: np.ndarray, task: int) -> np.ndarray:
        want = np.asarray(rows, dtype=np.int64) * self.n_tasks + task
        return self.y[np.searchsorted(self.codes, want)]


def _precheck(ds: MultiTaskDataset, spec: Any, labels: _PairLabels) -> str | None:
    """Reason a targeted spec cannot give a meaningful model, or None."""
    key = spec.key
    if key.get("regime") not in _TARGETED or key.get("target") is None:
        return None
    t = ds.task_index(key["target"])
    y = labels(np.asarray(spec.train_rows)[np.asarray(spec.train_cols) == t], t)
    n_pos = int(y.sum())
    if n_pos == 0 or n_pos == len(y):
        return (
            f"training subsample of the target has one class only; "
            f"{key['target']} at n={len(y)} has {n_pos} actives"
        )
    return None


def _expand_sizes(df: pd.DataFrame) -> pd.DataFrame:
    """Per evaluated task: ``n_task`` = its size in the model, ``n_context`` = the others' sum."""
    if "task_sizes" not in df.columns or len(df) == 0:
        return df
    cache: dict[str, dict[str, int]] = {}
    n_task = np.empty(len(df), dtype=np.int64)
    n_ctx = np.empty(len(df), dtype=np.int64)
    for k, (ts, task) in enumerate(zip(df["task_sizes"], df["task"], strict=True)):
        sizes = cache.get(ts)
        if sizes is None:
            sizes = cache[ts] = json.loads(ts or "{}")
        n = int(sizes.get(str(task), 0))
        n_task[k] = n
        n_ctx[k] = int(sum(sizes.values())) - n
    return df.assign(n_task=n_task, n_context=n_ctx)


def _default_trainer() -> Callable[..., pd.DataFrame]:
    try:
        from mtlc.training import train_models
    except ImportError as exc:
        raise MtlcError(
            f"the training engine (mtlc.training.train_models) is not available: {exc}"
        ) from None
    return train_models


def run_design(
    ds: MultiTaskDataset,
    specs: Design | Sequence[Any],
    store: ResultsStore | str | os.PathLike,
    config: Any,
    *,
    chunk_size: int = 256,
    retry_failed: bool = False,
    progress: bool = True,
    trainer: Callable[..., pd.DataFrame] | None = None,
    desc: str = "training",
    scheduler: str | None = None,
    n_workers: int | None = None,
) -> RunSummary:
    """Train the specs the store does not hold yet and append their results, chunk by chunk.

    Parameters
    ----------
    ds: the data set the specs index into (with features ``ds.X``).
    specs: a :class:`mtlc.designs.Design` or a list of ``ModelSpec``.
    store: a :class:`ResultsStore` or its directory.
    config: ``mtlc.training.TrainConfig``; its ``hash()`` goes into every row.
    chunk_size: specs per ``train_models`` call and per part file. A crash loses at most one
        chunk; bigger chunks let the engine train more models together.
    retry_failed: train again jobs recorded as failed.
    progress: a tqdm bar with ETA on stderr.
    trainer: the training function (default ``mtlc.training.train_models``).
    scheduler: None (default) trains in this process; ``"local"`` (a local Dask cluster of
        ``n_workers`` processes) or a Dask scheduler address (``"tcp://host:8786"``) trains the
        chunks on Dask workers, see :func:`mtlc.distributed.run_design_dask` (same store, same
        resume semantics, same numbers).
    n_workers: workers of the local Dask cluster (``scheduler="local"`` only).

    Returns a :class:`RunSummary`. Per spec: a one-class training subsample of the target, or
    an exception while training it, is stored as a failed row with the reason.
    """
    if scheduler is not None:
        from mtlc.distributed import run_design_dask

        return run_design_dask(
            ds,
            specs,
            store,
            config,
            scheduler=scheduler,
            n_workers=n_workers,
            chunk_size=chunk_size,
            retry_failed=retry_failed,
            progress=progress,
            trainer=trainer,
            desc=desc,
        )
    store = store if isinstance(store, ResultsStore) else ResultsStore(store)
    if ds.X is None:  # a data-set problem, not a per-job failure: stop before any job
        raise MtlcError(f"data set {ds.name!r} has no features; load it with features=True")
    design_skipped = list(getattr(specs, "skipped", []))
    specs = list(specs)
    trainer = trainer or _default_trainer()
    config_hash = str(config.hash()) if hasattr(config, "hash") else ""
    t0 = time.perf_counter()
    with store.lock(
        wait_message=f"mtlc: another run holds the results store {store.path}; waiting for it "
        "(its finished jobs will be skipped)"
    ):
        summary = _run_locked(
            ds, specs, store, config, config_hash, trainer, chunk_size, retry_failed, progress, desc
        )
    summary.design_skipped = design_skipped
    summary.seconds = time.perf_counter() - t0
    return summary


def _pending(
    specs: Sequence[Any], store: ResultsStore, retry_failed: bool
) -> tuple[list, RunSummary]:
    """Specs not yet in ``store``, in fleet order, and the run's summary so far.

    Shared by the in-process and the Dask runner, so both skip, order and refuse duplicates
    the same way.
    """
    done_ids = store.done_job_ids(include_failed=not retry_failed)
    todo = _fleet_order([s for s in specs if s.key["job_id"] not in done_ids])
    summary = RunSummary(
        total=len(specs),
        skipped=len(specs) - len(todo),
        job_ids=[s.key["job_id"] for s in specs],
    )
    seen: set[str] = set()
    dup = [s.key["job_id"] for s in todo if s.key["job_id"] in seen or seen.add(s.key["job_id"])]
    if dup:
        raise ConfigError(f"the design holds {len(dup)} duplicated jobs (e.g. {dup[0]})")
    return todo, summary


def _chunk_frame(
    rows: list[pd.DataFrame],
    failed: list[dict[str, Any]],
    config_hash: str,
    dropped_cols: set[str],
) -> pd.DataFrame | None:
    """One part's table from a chunk's trained rows and failure rows (None when both are empty).

    Columns outside the store schema are dropped and collected in ``dropped_cols``.
    """
    parts = []
    if rows:
        df = pd.concat(rows, ignore_index=True)
        extra = [c for c in df.columns if c not in SCHEMA]
        dropped_cols.update(extra)
        df = _expand_sizes(df.drop(columns=extra))
        parts.append(df.assign(status="ok", config_hash=config_hash))
    if failed:
        parts.append(pd.DataFrame(failed))
    return pd.concat(parts, ignore_index=True) if parts else None


def _run_locked(
    ds, specs, store, config, config_hash, trainer, chunk_size, retry_failed, progress, desc
) -> RunSummary:
    todo, summary = _pending(specs, store, retry_failed)
    from tqdm import tqdm  # plain text bar on stderr (tqdm.auto warns without ipywidgets)

    bar = tqdm(
        total=len(todo),
        desc=desc,
        unit="model",
        file=sys.stderr,
        disable=not progress,
        dynamic_ncols=True,
        mininterval=1.0,
    )
    dropped_cols: set[str] = set()
    labels = _PairLabels(ds)
    try:
        for chunk in _chunks(todo, chunk_size, config):
            rows: list[pd.DataFrame] = []
            failed: list[dict[str, Any]] = []
            trainable = []
            for s in chunk:
                reason = _precheck(ds, s, labels)
                if reason is None:
                    trainable.append(s)
                else:
                    failed.append(_failure_row(s, reason, config_hash))
                    bar.update(1)
            if trainable:
                rows, more_failed = _train_chunk(ds, trainable, config, trainer, bar)
                failed += [_failure_row(s, r, config_hash) for s, r in more_failed]
            part = _chunk_frame(rows, failed, config_hash, dropped_cols)
            if part is not None:
                store.append(part)
            summary.failed += len(failed)
            summary.done += len(chunk) - len(failed)
            summary.failures += [(f["job_id"], f["task"], f["note"]) for f in failed]
    finally:
        bar.close()
    if dropped_cols:
        warnings.warn(
            f"training results had columns outside the store schema, not stored: "
            f"{sorted(dropped_cols)}",
            stacklevel=2,
        )
    return summary


def _fleet_order(specs: Sequence[Any]) -> list[Any]:
    """Specs sorted by training-set size, largest first (stable: design order within a size).

    Designs list specs task by task (every size of a task, then the next task), so a chunk
    held every size from 16 to 1448 and its fleet was padded to the widest model's first layer
    while its small models, which train the most epochs (``min_steps``), ran alone at the end.
    Chunks of similar sizes make fleets of similar widths. Which models train together never
    changes their numbers."""
    return sorted(specs, key=lambda s: -len(s.train_rows))


def _spec_bytes(spec: Any) -> int:
    """Bytes a spec holds while its chunk trains and is evaluated: int8 label codes of its
    training compounds x heads and of its test compounds x evaluation tasks, its float64 test
    scores (test compounds x heads; an all-task model of kinase200: 8,000 x 198 x 8 B = 13 MB),
    and its pair lists."""
    rows = np.asarray(spec.train_rows)
    heads = len(np.union1d(np.asarray(spec.train_cols), np.asarray(spec.eval_tasks)))
    n_train = len(np.unique(rows)) if heads > 1 else len(rows)  # single task: pairs = compounds
    n_test = len(spec.test_compounds)
    return n_train * heads + n_test * len(spec.eval_tasks) + 8 * n_test * heads + 16 * len(rows)


def _chunks(todo: Sequence[Any], chunk_size: int, config: Any) -> Iterable[list[Any]]:
    """Consecutive chunks of at most ``chunk_size`` specs whose prepared data stays within half
    of ``config.memory_budget_mb`` (the other half is the fleet's own budget): many-head
    (all-task) specs of a whole design in one chunk held several GB of labels at once."""
    size = max(1, int(chunk_size))
    mb = getattr(config, "memory_budget_mb", None)
    budget = None if mb is None else int(mb) * 2**19
    cur: list[Any] = []
    used = 0
    for s in todo:
        need = _spec_bytes(s) if budget is not None else 0
        if cur and (len(cur) >= size or (budget is not None and used + need > budget)):
            yield cur
            cur, used = [], 0
        cur.append(s)
        used += need
    if cur:
        yield cur


def _train_chunk(ds, specs, config, trainer, bar) -> tuple[list[pd.DataFrame], list[tuple]]:
    """Train a chunk together; if that raises, train its specs one by one to isolate failures."""
    n_reported = 0

    def tick(k: int = 1) -> None:
        nonlocal n_reported
        n_reported += int(k)
        bar.update(int(k))

    try:
        return [trainer(ds, specs, config, progress=tick)], []
    except (KeyboardInterrupt, MemoryError, ImportError):  # not the job's fault: stop
        raise
    except Exception as exc:  # noqa: BLE001 - isolate the failing spec below
        if len(specs) == 1:
            bar.update(max(0, 1 - n_reported))
            return [], [(specs[0], f"{type(exc).__name__}: {exc}")]
    if n_reported:  # the one-by-one retries below report these specs again
        bar.update(-n_reported)
    out: list[pd.DataFrame] = []
    failures: list[tuple] = []
    for s in specs:
        rows, fails = _train_chunk(ds, [s], config, trainer, bar)
        out += rows
        failures += fails
    return out, failures


# ---------------------------------------------------------------------- studies


def select_tasks(ds: MultiTaskDataset, tasks: int | Sequence[str | int] | None) -> tuple[list, str]:
    """Task indices to study and the ``task_set`` label stored with the results.

    ``tasks=None``: all (``"all"``); an int N: the N tasks with the most labelled pairs (ties by
    task id; ``"topN"``); a list of ids or indices: those (``"ids:<hash>"``).
    """
    if tasks is None:
        return list(range(ds.n_tasks)), "all"
    if isinstance(tasks, (int, np.integer)):
        if tasks < 1:
            raise ConfigError(f"--tasks must be a positive number of tasks, got {tasks}")
        t = ds.tasks.assign(_i=np.arange(ds.n_tasks))
        t = t.sort_values(["n_measured", "task_id"], ascending=[False, True])
        idx = sorted(t["_i"].to_numpy()[: int(tasks)].tolist())
        return idx, "all" if len(idx) == ds.n_tasks else f"top{int(tasks)}"
    idx = []
    for x in tasks:
        try:
            idx.append(ds.task_index(x))
        except (KeyError, IndexError) as exc:
            raise ConfigError(f"unknown task {x!r} in {ds.name!r} ({exc})") from None
    idx = sorted(set(idx))
    import hashlib

    ids = ",".join(ds.tasks["task_id"].astype(str).to_numpy()[idx])
    return idx, "all" if len(idx) == ds.n_tasks else "ids:" + hashlib.sha1(
        ids.encode()
    ).hexdigest()[:8]


def load_dataset(name: str | MultiTaskDataset, **kwargs: Any) -> MultiTaskDataset:
    """A data set by name via ``mtlc.datasets.load`` (with features), or passed through."""
    if isinstance(name, MultiTaskDataset):
        return name
    try:
        from mtlc.datasets import load
    except ImportError as exc:
        raise MtlcError(f"the data layer (mtlc.datasets.load) is not available: {exc}") from None
    return load(name, **kwargs)


def assign_folds(ds: MultiTaskDataset, *, n_folds: int, split: str, seed: int = 0) -> np.ndarray:
    """Fold id per compound via ``mtlc.splits.kfold``."""
    from mtlc.splits import kfold

    if split not in ("compound", "scaffold"):
        raise ConfigError(f"unknown split {split!r}; known: compound, scaffold")
    return np.asarray(kfold(ds, n_folds=n_folds, split=split, seed=seed))


def run_study(
    dataset: str | MultiTaskDataset,
    *,
    regime: str,
    store: ResultsStore | str | os.PathLike,
    config: Any,
    split: str = "compound",
    n_folds: int = 10,
    fold_subset: Iterable[int] | None = None,
    seeds: Iterable[int] = (0,),
    tasks: int | Sequence[str | int] | None = None,
    sizes: str | Sequence[int] = "auto",
    max_size: int | None = None,
    split_seed: int = 0,
    chunk_size: int = 256,
    retry_failed: bool = False,
    progress: bool = True,
    dataset_kwargs: dict[str, Any] | None = None,
    trainer: Callable[..., pd.DataFrame] | None = None,
    scheduler: str | None = None,
    n_workers: int | None = None,
    **design_options: Any,
) -> RunSummary:
    """Load, select tasks, split, build one regime's design and run it into ``store``.

    With a task subset (``tasks``) the data set is restricted to those tasks first, so the
    all-task regimes train on the selected tasks only (recorded as ``task_set``).
    ``design_options`` go to the regime's builder (e.g. ``qs`` for ``context``, ``pairs`` and
    ``partner_sizes`` for ``pair``, ``n_runs`` for ``random``). ``scheduler`` and
    ``n_workers``: run on Dask, see :func:`run_design`.
    """
    if regime not in REGIMES:
        raise ConfigError(f"unknown regime {regime!r}; known: {', '.join(REGIMES)}")
    ds = load_dataset(dataset, **(dataset_kwargs or {}))
    if ds.X is None:
        raise MtlcError(f"data set {ds.name!r} has no features; load it with features=True")
    idx, task_set = select_tasks(ds, tasks)
    if len(idx) < ds.n_tasks:
        ds = ds.subset(tasks=idx)
    folds = assign_folds(ds, n_folds=n_folds, split=split, seed=split_seed)
    if fold_subset is not None:
        fold_subset = list(fold_subset)
        bad = [f for f in fold_subset if not 0 <= f < n_folds]
        if bad:
            raise ConfigError(f"--fold-subset {bad} outside 0..{n_folds - 1}")
    ctx = DesignContext(
        dataset=ds.name,
        recipe=str(ds.info.get("recipe", "")),
        task_set=task_set,
        split=split if split_seed == 0 else f"{split}/seed{split_seed}",
        config_hash=str(config.hash()),
    )
    if regime == "pair" and "pairs" not in design_options:
        raise ConfigError("regime 'pair' needs pairs (CLI: --pairs i:j,...)")
    design = make_design(
        ds,
        folds,
        regime=regime,
        fold_subset=fold_subset,
        seeds=seeds,
        ctx=ctx,
        sizes=sizes,
        max_size=max_size,
        **design_options,
    )
    return run_design(
        ds,
        design,
        store,
        config,
        chunk_size=chunk_size,
        retry_failed=retry_failed,
        progress=progress,
        trainer=trainer,
        desc=f"{ds.name} {split} {regime}",
        scheduler=scheduler,
        n_workers=n_workers,
    )


# ---------------------------------------------------------------------- curves

CURVE_BY = ("dataset", "task_set", "split", "regime", "partner", "task")


def learning_curves(
    df: pd.DataFrame,
    *,
    metric: str = "roc_auc",
    x: str = "n_task",
    by: Sequence[str] = CURVE_BY,
) -> pd.DataFrame:
    """Aggregate store rows into learning curves: mean and spread over folds.

    Rows with ``status != "ok"``, another metric, or a NaN value (e.g. a test fold without
    actives) are left out and counted: ``n_nan`` per point. Several seeds of one fold are
    averaged first, so the spread is between folds.

    Returns one row per curve point: the ``by`` columns, ``x``, ``mean``, ``std`` (ddof=1,
    NaN for one fold), ``sem``, ``min``, ``max``, ``n_folds``, ``n_nan``, ``n_context``
    (mean over folds).
    """
    by = [c for c in by if c in df.columns]
    d = df[(df["status"] == "ok") & (df["metric"] == metric)]
    keys = [*by, x]
    nan_counts = (
        d.assign(_nan=d["value"].isna()).groupby(keys, dropna=False)["_nan"].sum().rename("n_nan")
    )
    d = d[d["value"].notna()]
    per_fold = d.groupby([*keys, "fold"], dropna=False, as_index=False).agg(
        value=("value", "mean"), n_context=("n_context", "mean")
    )
    g = per_fold.groupby(keys, dropna=False)
    out = g.agg(
        mean=("value", "mean"),
        std=("value", "std"),
        min=("value", "min"),
        max=("value", "max"),
        n_folds=("value", "size"),
        n_context=("n_context", "mean"),
    )
    out["sem"] = out["std"] / np.sqrt(out["n_folds"])
    out = out.join(nan_counts, how="outer").reset_index()
    out["n_folds"] = out["n_folds"].fillna(0).astype(np.int64)
    out["n_nan"] = out["n_nan"].fillna(0).astype(np.int64)
    cols = [*keys, "mean", "std", "sem", "min", "max", "n_folds", "n_nan", "n_context"]
    return out[cols].sort_values(keys).reset_index(drop=True)


def curve_matrix(
    df: pd.DataFrame,
    *,
    metric: str = "roc_auc",
    x: str = "n_task",
    **select: Any,
) -> tuple[np.ndarray, np.ndarray]:
    """One curve as ``(sizes[n_sizes], scores[n_sizes, n_folds])`` like sklearn's learning_curve.

    ``select``: column=value filters that must pick one curve, e.g.
    ``task="P00533", regime="stl", split="scaffold"``. Missing (size, fold) cells are NaN;
    seeds are averaged within a fold.
    """
    d = df[(df["status"] == "ok") & (df["metric"] == metric)]
    for col, val in select.items():
        d = d[d[col].isna()] if val is None else d[d[col] == val]
    if len(d) == 0:
        raise ConfigError(f"no {metric} rows match {select}")
    piv = d.pivot_table(index=x, columns="fold", values="value", aggfunc="mean", dropna=False)
    return piv.index.to_numpy(dtype=np.int64), piv.to_numpy(dtype=np.float64)


def mean_over_tasks(
    curves: pd.DataFrame, *, by: Sequence[str] = ("split", "regime")
) -> pd.DataFrame:
    """Average a :func:`learning_curves` table over tasks, per ``by`` and size level.

    Uses ``n_level``-free sizes: tasks contribute at the sizes they have. Returns ``by``,
    ``n_task``, ``mean`` (of task means), ``std`` (between tasks), ``n_tasks``.
    """
    x = "n_task" if "n_task" in curves.columns else "n_level"
    g = curves.groupby([*by, x], dropna=False)["mean"]
    return g.agg(mean="mean", std="std", n_tasks="size").reset_index()


def task_averaged_curves(
    df: pd.DataFrame,
    *,
    metric: str = "roc_auc",
    x: str = "n_task",
    by: Sequence[str] = ("split", "regime"),
    tasks: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Curves averaged over tasks, with the spread over folds.

    For each fold, the mean over tasks at each size (only tasks with a value at that size in
    that fold); then mean, std (ddof=1) and sem of those fold means. ``tasks`` restricts the
    average to a common task set (so that two curves compare the same tasks). Returns ``by``,
    ``x``, ``mean``, ``std``, ``sem``, ``n_folds``, ``n_tasks`` (mean tasks per fold).
    """
    d = df[(df["status"] == "ok") & (df["metric"] == metric) & df["value"].notna()]
    if tasks is not None:
        d = d[d["task"].isin(list(tasks))]
    keys = [*by, x]
    per_task = d.groupby([*keys, "fold", "task"], dropna=False, as_index=False)["value"].mean()
    per_fold = per_task.groupby([*keys, "fold"], dropna=False, as_index=False).agg(
        value=("value", "mean"), n_tasks=("value", "size")
    )
    out = per_fold.groupby(keys, dropna=False).agg(
        mean=("value", "mean"),
        std=("value", "std"),
        n_folds=("value", "size"),
        n_tasks=("n_tasks", "mean"),
    )
    out["sem"] = out["std"] / np.sqrt(out["n_folds"])
    cols = [*keys, "mean", "std", "sem", "n_folds", "n_tasks"]
    return out.reset_index()[cols].sort_values(keys).reset_index(drop=True)


def paired_curve_summary(
    df: pd.DataFrame,
    *,
    metric: str = "roc_auc",
    smallest: int = 16,
    min_share: float = 0.75,
    splits: Sequence[str] = ("compound", "scaffold"),
    regimes: Sequence[str] = ("stl", "mtl"),
) -> dict[str, Any]:
    """Compare splits and regimes on the same tasks at the same sizes (paired).

    Task-averaged curves mix task sets: at large ``n`` only the big tasks remain, so a mean
    over tasks can fall with ``n`` although every task rises. This summary fixes one task set:
    the tasks that have a fold-mean value in every (split, regime) curve at ``smallest`` and at
    the reference size ``ref_size``, the largest size at which at least ``min_share`` of all
    tasks do. Sizes are compounds of the task (``n_task``); values are fold means (seeds
    averaged) of ``metric``; failed jobs and NaN values are left out.

    Returns a dict: ``ref_size``, ``smallest``, ``n_tasks`` (tasks with any value),
    ``n_tasks_ref`` (the paired set), ``tasks_ref`` (their ids), ``sizes`` (sizes from
    ``smallest`` to ``ref_size`` used for averages) and, per split and regime,
    ``auc_{split}_{regime}_small`` / ``_ref`` (mean over the paired tasks at ``smallest`` /
    ``ref_size``); per split, ``mtl_gain_{split}`` (mean over paired tasks and ``sizes`` of
    all-task minus single-task) and ``n_mtl_better_{split}`` (paired tasks where all-task is
    higher at ``ref_size``); per regime, ``split_gap_{regime}`` (compound minus scaffold, same
    average). Keys for a regime or split absent from ``df`` are left out. Raises
    :class:`ConfigError` when no task has every curve at ``smallest``.
    """
    d = df[(df["status"] == "ok") & (df["metric"] == metric) & df["value"].notna()]
    splits = [s for s in splits if s in set(d["split"])]
    regimes = [r for r in regimes if r in set(d["regime"])]
    d = d[d["split"].isin(splits) & d["regime"].isin(regimes)]
    # fold mean per curve point (mean over seeds, and over all-task levels repeating a size)
    per_fold = d.groupby(["split", "regime", "task", "n_task", "fold"])["value"].mean()
    wide = (
        per_fold.groupby(["split", "regime", "task", "n_task"]).mean().unstack(["split", "regime"])
    )
    complete = wide.notna().all(axis=1)
    done = complete[complete].index.to_frame(index=False)
    n_tasks = int(d["task"].nunique())
    at_small = set(done.loc[done["n_task"] == smallest, "task"])
    if not at_small:
        raise ConfigError(f"no task has every {splits} x {regimes} curve at n = {smallest}")
    counts = done[done["task"].isin(at_small)].groupby("n_task")["task"].nunique()
    ok_sizes = sorted(int(s) for s, c in counts.items() if c >= min_share * n_tasks)
    ref = max(ok_sizes) if ok_sizes else smallest
    tasks_ref = sorted(at_small & set(done.loc[done["n_task"] == ref, "task"]))
    sizes = [s for s in ok_sizes if s <= ref] or [smallest]
    w = wide.loc[wide.index.isin(tasks_ref, level="task") & wide.index.isin(sizes, level="n_task")]
    w = w[w.notna().all(axis=1)]
    out: dict[str, Any] = {
        "ref_size": int(ref),
        "smallest": int(smallest),
        "n_tasks": n_tasks,
        "n_tasks_ref": len(tasks_ref),
        "tasks_ref": tasks_ref,
        "sizes": sizes,
    }
    small = wide.xs(smallest, level="n_task").loc[tasks_ref]
    large = wide.xs(ref, level="n_task").loc[tasks_ref]
    for split in splits:
        for regime in regimes:
            out[f"auc_{split}_{regime}_small"] = float(small[(split, regime)].mean())
            out[f"auc_{split}_{regime}_ref"] = float(large[(split, regime)].mean())
        if {"stl", "mtl"} <= set(regimes):
            out[f"mtl_gain_{split}"] = float((w[(split, "mtl")] - w[(split, "stl")]).mean())
            better = large[(split, "mtl")] > large[(split, "stl")]
            out[f"n_mtl_better_{split}"] = int(better.sum())
    if {"compound", "scaffold"} <= set(splits):
        for regime in regimes:
            gap = w[("compound", regime)] - w[("scaffold", regime)]
            out[f"split_gap_{regime}"] = float(gap.mean())
    return out


# ---------------------------------------------------------------------- smoke / full studies

#: The small study the chapters run in the smoke profile (about 2 minutes on 2 cores).
SMOKE: dict[str, Any] = {
    "dataset": "kiba",
    "tasks": 8,
    "n_folds": 5,
    "fold_subset": (0, 1, 2),
    "max_size": 256,
    "ratio": 2.0,
    "splits": ("compound", "scaffold"),
    "regimes": ("stl", "mtl"),
    # Pinned (not the TrainConfig defaults) so that the cache stays valid when defaults change.
    # Batch 64: at n = 16..256 a batch of 256 gives one Adam step per epoch, and the curves
    # would measure optimization more than data (benchmarks/bench_sklearn.py shows the effect).
    # min_steps = 100: even at batch 64 a model with n <= 64 took one step per epoch (~13 steps
    # in all); 100 steps lift single-task AUC by 0.03-0.05 at n = 16..64 and 200-400 add nothing
    # (benchmarks/bench_min_steps.py). min_val_compounds = 8: no early stopping on 1-2 compounds.
    "config": {
        "hidden": (128,),
        "batch_size": 64,
        "max_epochs": 15,
        "patience": 3,
        "lr": 1e-3,
        "dropout": 0.2,
        "val_fraction": 0.1,
        "min_steps": 100,
        "min_val_compounds": 8,
    },
}


def cache_dir() -> Path:
    """Where cached smoke studies live: ``$MTLC_STUDY_CACHE`` or ``<repo>/.cache/mtlc``.

    Trained results stay with the checkout (a fresh clone retrains them), unlike the
    content-keyed derived data of :func:`mtlc.datasets._files.cache_dir` (fingerprints,
    scaffolds; ``$MTLC_CACHE_DIR``), which any checkout may share.
    """
    env = os.environ.get("MTLC_STUDY_CACHE")
    if env:
        return Path(env)
    try:
        from mtlc.report import repo_root

        return repo_root() / ".cache" / "mtlc"
    except MtlcError:
        return Path.home() / ".cache" / "mtlc"


def smoke_study(
    *,
    store: str | os.PathLike | None = None,
    progress: bool = False,
    dataset: str | MultiTaskDataset | None = None,
    **overrides: Any,
) -> pd.DataFrame:
    """Run (or resume) the smoke study and return its store table.

    Parameters default to :data:`SMOKE`; ``overrides`` replace any of them. The store defaults to
    ``cache_dir() / "smoke_learning_curves"``, so the learning-curve and the curve-fitting
    chapters share one run and reruns only read it.
    """
    from mtlc.training import TrainConfig

    p = {**SMOKE, **overrides}
    store = ResultsStore(store or cache_dir() / "smoke_learning_curves")
    cfg = TrainConfig(**p["config"])
    ds = load_dataset(dataset or p["dataset"])
    job_ids: set[str] = set()
    for split in p["splits"]:
        for regime in p["regimes"]:
            summary = run_study(
                ds,
                regime=regime,
                store=store,
                config=cfg,
                split=split,
                n_folds=p["n_folds"],
                fold_subset=p["fold_subset"],
                tasks=p["tasks"],
                max_size=p["max_size"],
                ratio=p["ratio"],
                progress=progress,
            )
            job_ids.update(summary.job_ids)
    # The cache may hold other studies (other parameters): return this design's rows only.
    df = store.read()
    return df[df["job_id"].isin(job_ids)].reset_index(drop=True)


FULL_RESULTS = Path("results") / "learning_curves"
#: Stored exact-curve studies per data set (relative to the repository top).
FULL_STUDIES: dict[str, Path] = {
    "kiba": FULL_RESULTS,
    "kinase200": Path("results") / "learning_curves_kinase200",
}


def full_results(
    root: str | os.PathLike | None = None, *, dataset: str = "kiba"
) -> pd.DataFrame | None:
    """The stored full-study results of ``dataset`` (None when absent).

    ``root`` overrides the store directory; otherwise :data:`FULL_STUDIES` names it
    (``results/learning_curves`` for kiba, ``results/learning_curves_kinase200``).
    """
    if root is None:
        from mtlc.report import repo_root

        if dataset not in FULL_STUDIES:
            have = ", ".join(sorted(FULL_STUDIES))
            raise ConfigError(f"no stored study for dataset {dataset!r} (stored: {have})")
        root = repo_root() / FULL_STUDIES[dataset]
    st = ResultsStore(root)
    return st.read() if st.parts() else None


def pools_for(ds: MultiTaskDataset, folds: np.ndarray, fold: int, seed: int = 0) -> FoldPools:
    """The nested subsample orders of one (fold, seed) (for inspection and notebooks)."""
    return FoldPools(ds, folds, fold, seed)


__all__ = [
    "RunSummary",
    "run_design",
    "run_study",
    "learning_curves",
    "curve_matrix",
    "mean_over_tasks",
    "task_averaged_curves",
    "paired_curve_summary",
    "smoke_study",
    "full_results",
    "FULL_STUDIES",
    "select_tasks",
    "SMOKE",
    "cache_dir",
]
