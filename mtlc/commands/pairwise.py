"""``mtlc pairwise``: directed transfer coefficients a_ij from stored random-design runs.

``mtlc train --regime random`` stores all-task networks whose per-task sizes were drawn at random
(each network's size vector in ``task_sizes``). ``mtlc pairwise fit`` regresses every target's
multi-partner curve across those networks (:func:`mtlc.approx.random_design_fit`) and writes one
tidy Parquet table of directed coefficients::

    dataset, split, fold ("pooled" or the test fold), model, target, partner ("S" for exp3.2),
    estimate (a_ij, per 1000 samples), ci_lo, ci_hi, se, p_pos, q_pos, rho, a, flag,
    n_points, n_runs, ridge, c_fixed, n_boot

"pooled" fits every stored test fold's networks together (the folds share the design; each
network is one bootstrap unit); ``--by-fold`` adds one fit per test fold. Each fit ("unit") is
written to ``OUT.partial/`` as soon as it is done, so an interrupted command resumes with the
units still missing; the final table is written atomically and the partial folder removed. A
rerun with the same settings and the same stored networks does nothing.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mtlc.errors import ConfigError, DataFileError, InputTableError

#: Columns of the table written by ``mtlc pairwise fit``, in order.
COLUMNS = [
    "dataset",
    "split",
    "fold",
    "model",
    "target",
    "partner",
    "estimate",
    "ci_lo",
    "ci_hi",
    "se",
    "p_pos",
    "q_pos",
    "rho",
    "a",
    "flag",
    "n_points",
    "n_runs",
    "ridge",
    "c_fixed",
    "n_boot",
]
_FLOATS = ["estimate", "ci_lo", "ci_hi", "se", "p_pos", "q_pos", "rho", "a"]
#: Columns a compact table leaves out: :func:`read_pairwise` recomputes them exactly as the fit
#: does (p_pos from estimate / se, q_pos by Benjamini-Hochberg within each fit, rho = a_ij / a).
DERIVED = ["p_pos", "q_pos", "rho"]
#: Stored mantissa bits of a compact table's floats: relative error at most 2**-11 (5e-4), far
#: below the bootstrap's own Monte-Carlo error, and a third of the float64 size.
COMPACT_BITS = 10
_META_KEY = b"mtlc.pairwise"


def pairwise_table(
    run: Any,
    *,
    model: str = "multi",
    fold: str = "pooled",
    ridge: float = 1e-3,
    n_boot: int = 200,
    c_fixed: float | None = None,
    level: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """One fit of :func:`mtlc.approx.random_design_fit` as rows of the tidy table (:data:`COLUMNS`).

    run: a :class:`mtlc.approx.CurveRun` of random-design networks (e.g. from
        :func:`mtlc.approx.random_design_from_store`; ``info`` gives ``dataset`` and ``split``).
    fold: the label written in the ``fold`` column (``"pooled"`` or the test fold).
    Other options are those of :func:`mtlc.approx.random_design_fit` (sizes in samples,
    coefficients per 1000 samples); with ``c_fixed`` the equal but faster
    :func:`mtlc.approx.random_design_fit_fixed_c` does the fit. ``n_runs`` counts the networks
    behind the fit.
    """
    from mtlc import approx

    with warnings.catch_warnings():
        # random_design_fit adds one column per partner: pandas warns about fragmentation for
        # 200 partners, which costs a little time and says nothing about the result
        warnings.simplefilter("ignore", pd.errors.PerformanceWarning)
        if c_fixed is None:
            fit = approx.random_design_fit(
                run, model=model, ridge=ridge, n_boot=n_boot, level=level, seed=seed
            )
        else:  # the same fit in closed form, batched over bootstrap replicates (fast)
            fit = approx.random_design_fit_fixed_c(
                run, c=c_fixed, model=model, ridge=ridge, n_boot=n_boot, level=level, seed=seed
            )
    nets = run.table.drop_duplicates(["fold", "run"])
    out = pd.DataFrame(
        {
            "dataset": str(run.info.get("dataset", "")),
            "split": str(run.info.get("split", "")),
            "fold": str(fold),
            "model": model,
            "target": fit["target"].astype(str) if len(fit) else pd.Series(dtype=str),
            "partner": fit["source"].astype(str) if len(fit) else pd.Series(dtype=str),
        }
    )
    for c in _FLOATS:
        out[c] = fit[c].to_numpy(dtype=np.float64) if len(fit) else np.array([], dtype=float)
    out["flag"] = fit["flag"].astype(str).to_numpy() if len(fit) else []
    out["n_points"] = fit["n_points"].to_numpy(dtype=np.int64) if len(fit) else []
    out["n_runs"] = np.int64(len(nets))
    out["ridge"] = float(ridge) if model in ("multi", "marginal") else 0.0
    out["c_fixed"] = np.nan if c_fixed is None else float(c_fixed)
    out["n_boot"] = np.int64(n_boot)
    return out[COLUMNS].reset_index(drop=True)


def read_pairwise(path: str | os.PathLike) -> pd.DataFrame:
    """The table written by ``mtlc pairwise fit`` (:data:`COLUMNS`, floats as float64).

    A compact table (``--compact``) gets its :data:`DERIVED` columns back, computed as
    :func:`mtlc.approx.random_design_fit` computes them.
    """
    from scipy import stats as sps

    from mtlc.stats import bh

    p = Path(path)
    if not p.is_file():
        raise DataFileError(
            f"no pairwise table at {p}; write it with `mtlc pairwise fit --runs STORE --out {p}`"
        )
    df = pd.read_parquet(p)
    derived = [c for c in DERIVED if c not in df.columns]
    missing = [c for c in COLUMNS if c not in df.columns and c not in derived]
    if missing:
        raise InputTableError(f"{p} is not a pairwise table: it lacks column(s) {missing}")
    for c in _FLOATS:
        if c in df.columns:
            df[c] = df[c].astype(np.float64)
    if derived:
        est, se, a = (df[c].to_numpy() for c in ("estimate", "se", "a"))
        with np.errstate(divide="ignore", invalid="ignore"):
            good = (se > 0) & np.isfinite(est)
            df["p_pos"] = np.where(good, sps.norm.sf(est / np.where(good, se, 1.0)), np.nan)
            df["rho"] = np.where(a > 0, est / a, np.nan)
        df["q_pos"] = np.nan
        for _, idx in df.groupby(["fold", "model"], sort=False).groups.items():
            df.loc[idx, "q_pos"] = bh(df.loc[idx, "p_pos"].to_numpy())
    return df[COLUMNS]


def _atomic_write(
    df: pd.DataFrame, path: Path, meta: dict[str, Any], *, float32: bool, compact: bool = False
) -> None:
    import pyarrow as pa

    from mtlc.affinity import round_mantissa
    from mtlc.store import write_parquet_atomic

    df = df.copy()
    if compact:
        df = df.drop(columns=DERIVED)
        for c in _FLOATS:
            if c in df.columns:
                df[c] = round_mantissa(df[c].to_numpy(), COMPACT_BITS)
    elif float32:  # halves the stored size; far below the bootstrap's own precision
        for c in _FLOATS:
            df[c] = df[c].astype(np.float32)
    floats = [c for c in _FLOATS if c in df.columns]
    table = pa.Table.from_pandas(df, preserve_index=False)
    table = table.replace_schema_metadata(
        {**(table.schema.metadata or {}), _META_KEY: json.dumps(meta).encode()}
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    # byte-stream-split puts the zeroed low mantissa bytes together: they compress away
    write_parquet_atomic(table, path, use_byte_stream_split=floats)


def _read_meta(path: Path) -> dict[str, Any] | None:
    import pyarrow.parquet as pq

    try:
        md = pq.read_schema(path).metadata or {}
    except Exception:  # noqa: BLE001 - an unreadable old output is simply recomputed
        return None
    raw = md.get(_META_KEY)
    return json.loads(raw) if raw else None


def _fit(args: argparse.Namespace) -> int:
    from mtlc import approx
    from mtlc.store import ResultsStore

    if args.n_boot < 1:
        raise ConfigError(f"--n-boot must be at least 1, got {args.n_boot}")
    if args.ridge < 0:
        raise ConfigError(f"--ridge must be >= 0, got {args.ridge}")
    if not 0 < args.level < 1:
        raise ConfigError(f"--level must be between 0 and 1, got {args.level}")
    if args.model == "marginal" and args.c_fixed in ("none", "free"):
        raise ConfigError("--model marginal is a closed-form fit: give --c-fixed (e.g. 1 for AUC)")
    if args.no_pooled and not args.by_fold:
        raise ConfigError("--no-pooled leaves nothing to fit: add --by-fold")
    c_fixed = None if args.c_fixed in ("none", "free") else _float(args.c_fixed, "--c-fixed")
    store_path = Path(args.runs)
    if not store_path.is_dir():
        raise DataFileError(
            f"no results store at {store_path}; train the random-design networks first "
            "(mtlc train --regime random --n-runs N --store ...)"
        )
    t0 = time.perf_counter()
    results = ResultsStore(store_path).read()
    if len(results) == 0:
        raise DataFileError(
            f"the results store {store_path} is empty; train it with mtlc train --regime random"
        )
    run = approx.random_design_from_store(results, metric=args.metric)
    folds = sorted(int(f) for f in run.info["n_runs_per_fold"])
    jobs = sorted(results.loc[results["regime"] == "random", "job_id"].unique().tolist())
    settings = {
        "model": args.model,
        "ridge": args.ridge,
        "n_boot": args.n_boot,
        "c_fixed": c_fixed,
        "level": args.level,
        "seed": args.seed,
        "metric": args.metric,
        "jobs": hashlib.sha256("\n".join(jobs).encode()).hexdigest()[:16],
    }
    units = ([] if args.no_pooled else ["pooled"]) + (
        [str(f) for f in folds] if args.by_fold else []
    )
    meta = {**settings, "units": units, "runs_store": str(store_path)}
    meta["format"] = "compact" if args.compact else ("float32" if args.float32 else "float64")
    out = (
        Path(args.out) if args.out else store_path.with_name(store_path.name + "_pairwise.parquet")
    )
    if out.is_file() and not args.force:
        old = _read_meta(out)
        if old is not None and all(old.get(k) == v for k, v in meta.items() if k != "runs_store"):
            print(f"mtlc pairwise: {out} is up to date ({len(jobs)} networks)", file=sys.stderr)
            return 0
    partial = out.with_name(out.name + ".partial")
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    partial.mkdir(parents=True, exist_ok=True)
    for stale in partial.glob("*.parquet"):
        if not stale.name.startswith(key):  # written with other settings or networks
            stale.unlink()
    tables = []
    for unit in units:
        part = partial / f"{key}-{unit}.parquet"
        if part.is_file():
            tables.append(pd.read_parquet(part))
            print(f"mtlc pairwise: {unit}: kept from an earlier run", file=sys.stderr)
            continue
        sub = run if unit == "pooled" else approx.random_design_from_store(
            results, metric=args.metric, fold=int(unit)
        )  # fmt: skip
        t1 = time.perf_counter()
        tab = pairwise_table(
            sub,
            model=args.model,
            fold=unit,
            ridge=args.ridge,
            n_boot=args.n_boot,
            c_fixed=c_fixed,
            level=args.level,
            seed=args.seed,
        )
        _atomic_write(tab, part, {**settings, "unit": unit}, float32=False)
        tables.append(tab)
        n_fail = int((~np.isfinite(tab["estimate"])).sum())
        print(
            f"mtlc pairwise: {unit}: {tab['target'].nunique()} targets, {len(tab)} rows "
            f"({n_fail} without an estimate), {time.perf_counter() - t1:.1f} s",
            file=sys.stderr,
        )
    table = pd.concat(tables, ignore_index=True)[COLUMNS]
    _atomic_write(table, out, meta, float32=args.float32, compact=args.compact)
    shutil.rmtree(partial, ignore_errors=True)
    flags = table["flag"].value_counts().to_dict()
    print(
        f"mtlc pairwise: wrote {out}: {len(table)} rows, units {units}, "
        f"{run.info['failed_jobs']} failed networks left out, flags {flags}, "
        f"{time.perf_counter() - t0:.1f} s",
        file=sys.stderr,
    )
    return 0


def _float(text: str, what: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise ConfigError(f"{what} takes a number or 'none', got {text!r}") from None


def _top(args: argparse.Namespace) -> int:
    table = read_pairwise(args.table)
    sel = table[(table["fold"] == args.fold) & (table["partner"] != "S")]
    if len(sel) == 0:
        raise InputTableError(
            f"{args.table} has no pairwise rows of fold {args.fold!r}; folds: "
            f"{sorted(table['fold'].unique().tolist())}"
        )
    if args.k < 1:
        raise ConfigError(f"--k must be at least 1, got {args.k}")
    top = top_partners(sel, k=args.k, by=args.by)
    if args.targets:
        want = [t for t in args.targets.split(",") if t]
        top = top[top["target"].isin(want)]
    if args.pairs:
        print(",".join(f"{t}:{p}" for t, p in zip(top["target"], top["partner"], strict=True)))
    else:
        print(top.to_string(index=False))
    return 0


def top_partners(table: pd.DataFrame, *, k: int = 5, by: str = "estimate") -> pd.DataFrame:
    """The ``k`` partners with the largest ``by`` per target (ties by partner id), ranked 1..k.

    table: rows of one fit of :func:`read_pairwise` (one ``fold`` value, partner rows only).
    Rows without a finite ``by`` are never chosen.
    """
    if by not in table.columns:
        raise ConfigError(f"by must be a column of the pairwise table, got {by!r}")
    d = table[np.isfinite(table[by].to_numpy(dtype=np.float64))]
    d = d.sort_values(["target", by, "partner"], ascending=[True, False, True], kind="stable")
    d = d.groupby("target", sort=True).head(k)
    d = d.assign(rank=d.groupby("target").cumcount() + 1)
    cols = ["target", "rank", "partner", "estimate", "ci_lo", "ci_hi", "rho", "q_pos"]
    return d[cols].reset_index(drop=True)


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "pairwise",
        help="directed transfer coefficients a_ij from stored random-design runs",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    sub = p.add_subparsers(dest="pairwise_command", metavar="ACTION")
    sub.required = True
    f = sub.add_parser(
        "fit",
        help="fit every target's multi-partner curve across the stored networks (resumable)",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    f.add_argument(
        "--runs",
        "--store",
        dest="runs",
        required=True,
        help="results store of mtlc train --regime random (--store: the name mtlc study passes)",
    )
    f.add_argument(
        "--out",
        default=None,
        help="Parquet file to write (tidy table); default: <runs store>_pairwise.parquet",
    )
    f.add_argument(
        "--model",
        default="multi",
        choices=["multi", "exp3.2", "marginal"],
        help="multi: all partners in one fit; exp3.2: summed context a_iS; marginal: one "
        "partner at a time (needs --c-fixed)",
    )
    f.add_argument("--n-boot", type=int, default=200, help="bootstrap replicates over networks")
    f.add_argument(
        "--ridge", type=float, default=1e-3, help="ridge on the a_ij (multi; rates per 1000)"
    )
    f.add_argument(
        "--c-fixed",
        default="none",
        help="fix the asymptote c (e.g. 1 for AUC: a linear fit of log(c - P)); 'none': fit c",
    )
    f.add_argument("--level", type=float, default=0.95, help="confidence level of the intervals")
    f.add_argument("--metric", default="roc_auc", help="stored metric to fit")
    f.add_argument("--by-fold", action="store_true", help="also one fit per test fold")
    f.add_argument("--no-pooled", action="store_true", help="skip the fit of all folds together")
    f.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    f.add_argument(
        "--float32", action="store_true", help="store the float columns as float32 (half size)"
    )
    f.add_argument(
        "--compact",
        action="store_true",
        help=f"smallest file: floats as float32 with {COMPACT_BITS} mantissa bits, and "
        f"{', '.join(DERIVED)} recomputed when read (read_pairwise)",
    )
    f.add_argument("--force", action="store_true", help="refit even if OUT is up to date")
    f.set_defaults(func=_fit)
    t = sub.add_parser(
        "top",
        help="the top-k partners of each target in a fitted table",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    t.add_argument("--table", required=True, help="Parquet table of mtlc pairwise fit")
    t.add_argument("--k", type=int, default=5)
    t.add_argument("--fold", default="pooled", help="which fit: 'pooled' or a test fold")
    t.add_argument("--by", default="estimate", help="column to rank by (estimate, rho, ci_lo)")
    t.add_argument("--targets", default=None, help="comma-separated targets (default all)")
    t.add_argument(
        "--pairs",
        action="store_true",
        help="print target:partner,... (the --pairs of mtlc train --regime pair)",
    )
    t.set_defaults(func=_top)
