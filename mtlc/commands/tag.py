"""``mtlc tag``: TAG inter-task affinities per (test fold, seed) into a resumable store.

One job per (test fold, seed): :func:`mtlc.affinity.tag_train` on the compounds outside the
test fold (the test fold never informs the affinities), exactly as chapter 04 calls it
(``tag_train(ds, train_idx, config=..., epochs=..., every=..., seed=...)``). Each finished job
is written as one Parquet part, atomically (:func:`mtlc.affinity.write_tag_part`), so a rerun
skips the stored jobs and a kill loses at most the job in flight. Read the store with
:func:`mtlc.affinity.load_tag` / :func:`mtlc.affinity.tag_jobs`.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from mtlc.commands.train import _dataset_args, _int_list, _tasks, add_dataset_options
from mtlc.errors import ConfigError, MtlcError

#: Bumped when the stored format or the meaning of a stored number changes (part of the job id).
FORMAT_VERSION = 2  # 2: Z undefined (NaN) for a target whose batch loss underflowed


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "tag",
        help="TAG inter-task affinities per test fold and seed into a results store (resumable)",
        description=(
            "For every (test fold, seed), train the all-task network on the fold's training "
            "compounds and measure the TAG lookahead affinity Z[source -> target] every "
            "--every steps (mtlc.affinity.tag_train, fast lookahead). One Parquet part per "
            "job, written atomically: rerunning the same command skips finished jobs. Read "
            "the store with mtlc.affinity.load_tag."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_dataset_options(p)
    p.add_argument(
        "--tasks",
        default=None,
        help="N (the N tasks with most labelled pairs), comma-separated task ids, or 'all'",
    )
    p.add_argument("--split", default="compound", choices=["compound", "scaffold"])
    p.add_argument("--folds", type=int, default=10, help="number of cross-validation folds")
    p.add_argument(
        "--fold-subset", default=None, help="test folds to run, e.g. 0,1,2 (default all)"
    )
    p.add_argument("--split-seed", type=int, default=0, help="seed of the fold assignment")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds (0..N-1)")
    p.add_argument(
        "--epochs",
        type=int,
        default=20,
        help="training epochs of each TAG run (fixed: TAG does not early-stop)",
    )
    p.add_argument("--every", type=int, default=10, help="probe period in optimizer steps")
    p.add_argument(
        "--hidden", default=None, help="trunk widths, e.g. 128 or 512,256 (default: TrainConfig)"
    )
    p.add_argument("--batch-size", type=int, default=None, help="default: TrainConfig's")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    p.add_argument("--device", default=None, help="auto, cpu, cuda")
    p.add_argument(
        "--epoch-rows",
        default="all",
        help="which jobs also store per-epoch rows: 'all', 'none', or test folds, e.g. 0 "
        "(every job stores its whole-run means)",
    )
    p.add_argument(
        "--mantissa-bits",
        type=int,
        default=23,
        help="stored float32 mantissa bits of z and cosine (23: exact float32; fewer rounds "
        "to a relative error of 2^-(bits+1) and makes the store smaller)",
    )
    p.add_argument("--store", required=True, help="results store directory")
    p.add_argument("--retry-failed", action="store_true", help="run failed jobs again")
    p.add_argument("--no-progress", action="store_true", help="no per-job progress lines")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> Any:
    from mtlc.training import TrainConfig

    kw: dict[str, Any] = {"max_epochs": args.epochs, "dtype": args.dtype}
    if args.hidden is not None:
        kw["hidden"] = tuple(_int_list(args.hidden, "--hidden"))
    if args.batch_size is not None:
        kw["batch_size"] = args.batch_size
    if args.device is not None:
        kw["device"] = args.device
    try:
        return TrainConfig(**kw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad training option: {exc}") from None


def _epoch_rows(text: str, n_folds: int) -> set[int] | bool:
    if text in ("all", "none"):
        return text == "all"
    folds = set(_int_list(text, "--epoch-rows"))
    bad = sorted(f for f in folds if not 0 <= f < n_folds)
    if bad:
        raise ConfigError(f"--epoch-rows {bad} outside 0..{n_folds - 1} (or use all / none)")
    return folds


def _hash(obj: Any, n: int) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:n]


def _check(args: argparse.Namespace) -> None:
    if args.folds < 2:
        raise ConfigError(f"--folds must be at least 2, got {args.folds}")
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
    if args.epochs < 1:
        raise ConfigError(f"--epochs must be at least 1, got {args.epochs}")
    if args.every < 1:
        raise ConfigError(f"--every must be at least 1, got {args.every}")
    if not 1 <= args.mantissa_bits <= 23:
        raise ConfigError(f"--mantissa-bits must be in 1..23, got {args.mantissa_bits}")


@dataclass
class TagPlan:
    """What ``mtlc tag`` runs, built without training: the data set and one entry per job.

    ``loaded`` is the data set as loaded (before task selection: pass it back as ``dataset=``
    to plan another stage without reloading), ``ds`` the one the jobs use; ``jobs`` holds
    ``(test fold, seed, key, job id)`` in run order.
    """

    loaded: Any
    ds: Any
    folds: np.ndarray
    split: str
    cfg: Any
    settings: dict[str, Any]
    config_hash: str
    detail: set[int] | bool
    jobs: list[tuple[int, int, dict[str, Any], str]]


def plan(args: argparse.Namespace, *, dataset: Any = None) -> TagPlan:
    """The jobs of an ``mtlc tag`` command line (parsed), without training.

    ``dataset``: an already loaded data set (what ``--dataset`` loads, before task selection).
    """
    from mtlc.study import assign_folds, load_dataset, select_tasks

    _check(args)
    fold_subset = (
        list(range(args.folds))
        if args.fold_subset is None
        else _int_list(args.fold_subset, "--fold-subset")
    )
    bad = [f for f in fold_subset if not 0 <= f < args.folds]
    if bad or not fold_subset:
        raise ConfigError(f"--fold-subset {bad or '(empty)'} outside 0..{args.folds - 1}")
    detail = _epoch_rows(args.epoch_rows, args.folds)
    cfg = _config(args)
    dataset_kwargs = _dataset_args(args.dataset_arg)
    if args.recipe is not None:
        dataset_kwargs["recipe"] = args.recipe
    loaded = ds = dataset if dataset is not None else load_dataset(args.dataset, **dataset_kwargs)
    if ds.X is None:
        raise MtlcError(f"data set {ds.name!r} has no features; load it with features=True")
    idx, task_set = select_tasks(ds, _tasks(args.tasks))
    if len(idx) < ds.n_tasks:
        ds = ds.subset(tasks=idx)
    folds = assign_folds(ds, n_folds=args.folds, split=args.split, seed=args.split_seed)
    split = args.split if args.split_seed == 0 else f"{args.split}/seed{args.split_seed}"
    settings = {
        "train_config": cfg.hash(),
        "epochs": args.epochs,
        "every": args.every,
        "method": "fast",
        "divide_by_lr": False,
        "lookahead_lr": "training lr",
        "mantissa_bits": args.mantissa_bits,
        "format": FORMAT_VERSION,
    }
    config_hash = _hash(settings, 12)
    data_key = {
        "dataset": ds.name,
        "recipe": str(ds.info.get("recipe", "")),
        "task_set": task_set,
        "split": split,
        "n_folds": args.folds,
        "split_seed": args.split_seed,
        # the recipe is keyed by what the loader applied (default or --recipe): same job
        "dataset_args": {k: v for k, v in dataset_kwargs.items() if k != "recipe"},
        "shape": [int(ds.n_compounds), int(ds.n_tasks)],
    }
    jobs = []
    for fold in fold_subset:
        for seed in range(args.seeds):
            key = {**data_key, "fold": int(fold), "seed": int(seed)}
            jobs.append((fold, seed, key, _hash({**key, "config": config_hash}, 16)))
    return TagPlan(loaded, ds, folds, split, cfg, settings, config_hash, detail, jobs)


def run(args: argparse.Namespace) -> int:
    from mtlc.affinity import failed_tag_table, tag_part_table, tag_train, write_tag_part
    from mtlc.store import ResultsStore

    _check(args)
    store = ResultsStore(args.store)  # refuses a path that is a file; gives the writer lock
    pl = plan(args)
    ds, folds, split, cfg, jobs = pl.ds, pl.folds, pl.split, pl.cfg, pl.jobs
    settings, config_hash, detail = pl.settings, pl.config_hash, pl.detail
    task_ids = [str(t) for t in ds.tasks["task_id"].to_numpy()]
    t_all = time.perf_counter()
    done = skipped = 0
    failures: list[tuple[str, str]] = []
    with store.lock(wait_message=f"mtlc tag: waiting for another writer of {args.store}"):
        stored = store.done_job_ids()
        failed_before = store.failed_job_ids() if args.retry_failed else set()
        for k, (fold, seed, key, job_id) in enumerate(jobs):
            if job_id in stored and job_id not in failed_before:
                skipped += 1
                continue
            train_idx = np.flatnonzero(folds != fold)
            w0, c0 = time.perf_counter(), time.process_time()
            meta: dict[str, Any] = {
                "job_id": job_id,
                "key": key,
                "config_hash": config_hash,
                "config": {**settings, "train": _train_dict(cfg)},
                "task_ids": task_ids,
                "mantissa_bits": args.mantissa_bits,
            }
            try:
                res = tag_train(
                    ds,
                    train_idx,
                    config=cfg,
                    epochs=args.epochs,
                    every=args.every,
                    seed=seed,
                )
                rows = detail if isinstance(detail, bool) else fold in detail
                table = tag_part_table(
                    res, job_id=job_id, epoch_rows=rows, mantissa_bits=args.mantissa_bits
                )
                meta.update(
                    status="ok",
                    note=None,
                    settings=res.settings,
                    info=res.info,
                    epoch_rows=bool(rows),
                )
            except (MtlcError, RuntimeError, ValueError, MemoryError) as exc:
                reason = f"{type(exc).__name__}: {exc}"
                failures.append((job_id, reason))
                table = failed_tag_table(job_id)
                meta.update(status="failed", note=reason, settings={}, info={}, epoch_rows=False)
            cost = dict(res.cost) if meta["status"] == "ok" else {}
            cost["wall_seconds"] = time.perf_counter() - w0
            cost["cpu_seconds"] = time.process_time() - c0
            meta["cost"] = cost
            write_tag_part(args.store, table, meta)
            if meta["status"] == "ok":
                done += 1
            if not args.no_progress:
                print(
                    f"mtlc tag: [{k + 1}/{len(jobs)}] {ds.name} {split} fold {fold} seed {seed}: "
                    f"{meta['status']} in {cost['wall_seconds']:.1f} s "
                    f"({cost['cpu_seconds']:.1f} CPU s)",
                    file=sys.stderr,
                    flush=True,
                )
    lines = [
        f"jobs: {len(jobs)} in design, {skipped} already in the store (skipped), {done} done, "
        f"{len(failures)} failed, in {time.perf_counter() - t_all:.1f} s"
    ]
    for job_id, reason in failures:
        lines.append(f"  failed {job_id}: {reason}")
    print("mtlc tag: " + "\n".join(lines), file=sys.stderr)
    print(f"results store: {args.store}", file=sys.stderr)
    return 0


def _train_dict(cfg: Any) -> dict[str, Any]:
    from dataclasses import asdict

    d = asdict(cfg)
    d["hidden"] = list(d["hidden"])
    return d
