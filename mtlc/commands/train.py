"""``mtlc train``: run one regime of a learning-curve study into a resumable results store."""

from __future__ import annotations

import argparse
import json
import math
import sys
from typing import Any

from mtlc.designs import REGIMES
from mtlc.errors import ConfigError


def _int_list(text: str, what: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(" ", "").split(",") if x != ""]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated integers, got {text!r}") from None


def _sizes(text: str) -> str | list[int]:
    return "auto" if text == "auto" else _int_list(text, "--sizes")


def _tasks(text: str | None) -> int | list[str] | None:
    if text is None or text == "all":
        return None
    if text.isdigit():
        return int(text)
    return [t for t in text.split(",") if t]


def _pairs(text: str) -> list[tuple[str, str]]:
    out = []
    for item in text.split(","):
        if not item:
            continue
        if ":" not in item:
            raise ConfigError(f"--pairs takes target:partner items, got {item!r}")
        a, b = item.split(":", 1)
        out.append((int(a) if a.isdigit() else a, int(b) if b.isdigit() else b))
    return out


def _float_list(text: str, what: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated numbers, got {text!r}") from None


def _dataset_args(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"--dataset-arg takes KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v  # a bare string, e.g. recipe=all
    return out


def add_dataset_options(p: argparse.ArgumentParser) -> None:
    """``--dataset``, ``--recipe`` and ``--dataset-arg``: the options every data-reading command
    shares (read back with :func:`_dataset_args`)."""
    p.add_argument("--dataset", default="kiba", help="kiba, kinase200, davis, synthetic")
    p.add_argument(
        "--recipe", default=None, help="dataset recipe (e.g. kiba244); default: loader's"
    )
    p.add_argument(
        "--dataset-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="extra loader option (repeatable), e.g. n_compounds=800 for synthetic",
    )


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the models of a learning-curve design into a results store (resumable)",
        description=(
            "Train every model of one regime of a learning-curve design (all folds, sizes, "
            "seeds) and append the per-task test metrics to a results store (a directory of "
            "Parquet parts). Rerunning the same command skips finished jobs, so an interrupted "
            "run resumes where it stopped."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_dataset_options(p)
    p.add_argument("--split", default="compound", choices=["compound", "scaffold"])
    p.add_argument("--folds", type=int, default=10, help="number of cross-validation folds")
    p.add_argument(
        "--fold-subset", default=None, help="test folds to run, e.g. 0,1,2 (default all)"
    )
    p.add_argument("--split-seed", type=int, default=0, help="seed of the fold assignment")
    p.add_argument("--regime", required=True, choices=REGIMES)
    p.add_argument(
        "--sizes",
        default="auto",
        help="'auto' (geometric grid from --min-size by --ratio up to each task's training "
        "count) or comma-separated sizes",
    )
    p.add_argument("--min-size", type=int, default=16)
    p.add_argument("--ratio", type=float, default=math.sqrt(2))
    p.add_argument("--max-size", type=int, default=None, help="largest size (default no cap)")
    p.add_argument("--seeds", type=int, default=1, help="number of seeds (0..N-1)")
    p.add_argument(
        "--tasks",
        default=None,
        help="N (the N tasks with most labelled pairs), comma-separated task ids, or 'all'",
    )
    p.add_argument("--pairs", default=None, help="pair regime: target:partner,... (ids or indices)")
    p.add_argument("--partner-sizes", default="full", help="pair regime: 'full', 'grid' or sizes")
    p.add_argument("--q", default="0.25,0.5,1", help="context regime: fractions of the others")
    p.add_argument("--n-runs", type=int, default=10, help="random regime: runs per fold and seed")
    p.add_argument("--store", required=True, help="results store directory")
    p.add_argument(
        "--chunk-size",
        type=int,
        default=256,
        help="models per fleet and per part file (a kill loses at most one chunk)",
    )
    p.add_argument("--retry-failed", action="store_true", help="train failed jobs again")
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="local|tcp://HOST:PORT",
        help="train the chunks on Dask: 'local' starts a local cluster of --workers processes, "
        "an address uses a running scheduler (e.g. one started by dask-jobqueue); results go to "
        "the same store, written by this process only; needs pip install 'mtlc[dask]'. None: "
        "train in this process",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes of --scheduler local, one thread each (None: one per core)",
    )
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--patience", type=int, default=None)
    p.add_argument("--hidden", default=None, help="trunk widths, e.g. 256 or 512,256")
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument(
        "--min-steps",
        type=int,
        default=None,
        help="optimizer steps every model takes at least (small-n models; 100 recommended)",
    )
    p.add_argument(
        "--min-val-compounds",
        type=int,
        default=None,
        help="smallest inner validation set; smaller models train without early stopping",
    )
    p.add_argument("--device", default=None, help="auto, cpu, cuda")
    p.add_argument(
        "--engine",
        default=None,
        choices=("torch", "compiled"),
        help="training engine: 'torch' (default, CPU or CUDA) or 'compiled' (CPU, one hidden "
        "layer, numba; faster, same numbers up to float rounding)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def _config(args: argparse.Namespace) -> Any:
    from mtlc.training import TrainConfig

    kw: dict[str, Any] = {}
    if args.max_epochs is not None:
        kw["max_epochs"] = args.max_epochs
    if args.patience is not None:
        kw["patience"] = args.patience
    if args.batch_size is not None:
        kw["batch_size"] = args.batch_size
    if args.device is not None:
        kw["device"] = args.device
    if args.engine is not None:
        kw["engine"] = args.engine
    if args.min_steps is not None:
        kw["min_steps"] = args.min_steps
    if args.min_val_compounds is not None:
        kw["min_val_compounds"] = args.min_val_compounds
    if args.hidden is not None:
        kw["hidden"] = tuple(_int_list(args.hidden, "--hidden"))
    try:
        return TrainConfig(**kw)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"bad training option: {exc}") from None


def run(args: argparse.Namespace) -> int:
    from mtlc.study import run_study

    if args.folds < 2:
        raise ConfigError(f"--folds must be at least 2, got {args.folds}")
    if args.seeds < 1:
        raise ConfigError(f"--seeds must be at least 1, got {args.seeds}")
    if args.workers is not None and args.scheduler != "local":
        raise ConfigError(
            "--workers sizes the local Dask cluster: use it with --scheduler local (a remote "
            "scheduler has its own workers)"
        )
    if args.workers is not None and args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    options: dict[str, Any] = {"start": args.min_size, "ratio": args.ratio}
    if args.regime == "pair":
        if not args.pairs:
            raise ConfigError("--regime pair needs --pairs target:partner,...")
        options["pairs"] = _pairs(args.pairs)
        ps = args.partner_sizes
        options["partner_sizes"] = (
            ps if ps in ("full", "grid") else _int_list(ps, "--partner-sizes")
        )
    elif args.regime == "context":
        options["qs"] = _float_list(args.q, "--q")
    elif args.regime == "random":
        options["n_runs"] = args.n_runs
    dataset_kwargs = _dataset_args(args.dataset_arg)
    if args.recipe is not None:
        dataset_kwargs["recipe"] = args.recipe
    summary = run_study(
        args.dataset,
        regime=args.regime,
        store=args.store,
        config=_config(args),
        split=args.split,
        n_folds=args.folds,
        fold_subset=None
        if args.fold_subset is None
        else _int_list(args.fold_subset, "--fold-subset"),
        seeds=range(args.seeds),
        tasks=_tasks(args.tasks),
        sizes=_sizes(args.sizes),
        max_size=args.max_size,
        split_seed=args.split_seed,
        chunk_size=args.chunk_size,
        retry_failed=args.retry_failed,
        progress=not args.no_progress,
        dataset_kwargs=dataset_kwargs,
        scheduler=args.scheduler,
        n_workers=args.workers,
        **options,
    )
    print(f"mtlc train: {summary}", file=sys.stderr)
    print(f"results store: {args.store}", file=sys.stderr)
    return 0
