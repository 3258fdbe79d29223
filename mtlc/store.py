"""A resumable, crash-safe results store for learning-curve studies.

A store is a directory of Parquet *part files*, ``part-<time ns>-<random>.parquet``, each one a
tidy long table with one row per (dataset, recipe, task_set, split, fold, seed, regime, target,
partner, q, n_level, task, n_task, n_context, metric): the :data:`SCHEMA` columns. A part is
written when a chunk of jobs finishes, atomically: the table goes to a hidden temporary file in
the same directory, is flushed to disk (``fsync``), then renamed over its final name
(``os.replace``, atomic on POSIX) and the directory entry is flushed too. A SIGKILL at any moment
therefore leaves either the whole part or none of it: the store is never half-written, and a
rerun skips the jobs already present (:meth:`ResultsStore.done_job_ids`) and loses at most the
jobs that were in flight.

Failed jobs are stored too, as one row with ``status="failed"`` and the reason in ``note``, so
that a rerun does not retry a job that fails deterministically (pass ``retry_failed`` to the
runner to try again). When a job appears in several parts (a retried failure, or two runs on the
same store), :meth:`ResultsStore.read` keeps the rows of the newest part and says how many it
replaced in :attr:`ResultsStore.last_read`.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
import uuid
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from mtlc.errors import MtlcError

# Store columns and their Arrow types, in order. Integer columns use -1 for "not applicable".
SCHEMA: dict[str, pa.DataType] = {
    "dataset": pa.string(),
    "recipe": pa.string(),
    "task_set": pa.string(),
    "split": pa.string(),
    "fold": pa.int64(),
    "seed": pa.int64(),
    "regime": pa.string(),
    "target": pa.string(),
    "partner": pa.string(),
    "q": pa.float64(),
    "n_level": pa.int64(),
    "task": pa.string(),
    "n_task": pa.int64(),
    "n_context": pa.int64(),
    "metric": pa.string(),
    "value": pa.float64(),
    "note": pa.string(),
    "status": pa.string(),
    "n_test_pos": pa.int64(),
    "n_test_neg": pa.int64(),
    "epochs": pa.int64(),
    "best_epoch": pa.int64(),
    "train_seconds": pa.float64(),
    "n_train_pairs": pa.int64(),
    "n_val_pairs": pa.int64(),
    "config_hash": pa.string(),
    "job_id": pa.string(),
    "task_sizes": pa.string(),
}
# String columns that may be null (None): the rest must be present on every row.
NULLABLE = {"target", "partner", "note", "task"}
_PART_GLOB = "part-*.parquet"
_TMP_PREFIX = ".tmp-part-"


def _fix_message(path: Path) -> str:
    return (
        f"delete {path} and rerun the same command: the jobs in that file are recomputed and "
        "the rest of the store is kept"
    )


def conform(df: pd.DataFrame) -> pa.Table:
    """``df`` as an Arrow table with exactly the :data:`SCHEMA` columns, in order.

    Missing integer columns become -1, missing float columns NaN, missing nullable strings None.
    A missing non-nullable string column, or extra columns, raise ``ValueError`` (a
    programming error, not the user's).
    """
    extra = [c for c in df.columns if c not in SCHEMA]
    if extra:
        raise ValueError(f"columns {extra} are not part of the results store schema")
    arrays = []
    n = len(df)
    for name, typ in SCHEMA.items():
        if name in df.columns:
            col = df[name]
        elif pa.types.is_integer(typ):
            col = pd.Series(np.full(n, -1, dtype=np.int64))
        elif pa.types.is_floating(typ):
            col = pd.Series(np.full(n, np.nan))
        elif name in NULLABLE:
            col = pd.Series([None] * n, dtype=object)
        else:
            raise ValueError(f"results lack the required column {name!r}")
        if pa.types.is_integer(typ):
            vals = pd.to_numeric(col, errors="raise").fillna(-1).to_numpy().astype(np.int64)
            arrays.append(pa.array(vals, type=typ))
        elif pa.types.is_floating(typ):
            arrays.append(pa.array(pd.to_numeric(col).to_numpy(dtype=np.float64), type=typ))
        else:
            vals = [None if _missing(v) else str(v) for v in col.tolist()]
            if name not in NULLABLE and any(v is None for v in vals):
                raise ValueError(f"column {name!r} has missing values; it must be set on every row")
            arrays.append(pa.array(vals, type=typ))
    return pa.Table.from_arrays(arrays, schema=pa.schema(list(SCHEMA.items())))


def _missing(v: Any) -> bool:
    if v is None:
        return True
    try:
        return bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # some file systems do not allow opening a directory
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_parquet_atomic(
    table: Any, final: Path, *, tmp: Path | None = None, **write_options: Any
) -> Path:
    """Write a pyarrow ``table`` to ``final`` so that readers see the whole file or nothing.

    The table goes to ``tmp`` (default ``.tmp-<pid>-<name>`` beside ``final``), is flushed and
    fsynced, then renamed over ``final``; a writer killed before the rename leaves only the
    temporary, which readers never glob. ``write_options`` go to ``pyarrow.parquet.write_table``
    (default ``compression="zstd"``). The caller fsyncs the directory when it needs the rename
    itself to be durable.
    """
    tmp = final.with_name(f".tmp-{os.getpid()}-{final.name}") if tmp is None else tmp
    write_options.setdefault("compression", "zstd")
    try:
        with open(tmp, "wb") as fh:
            pq.write_table(table, fh, **write_options)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()
    return final


class ResultsStore:
    """A directory of atomically written Parquet part files (see the module docstring).

    Parameters
    ----------
    path: the store directory (created on first :meth:`append`).
    """

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)
        if self.path.exists() and not self.path.is_dir():
            raise MtlcError(
                f"results store {self.path} exists and is not a directory: pass a directory path "
                "(it is created when missing)"
            )
        #: Bookkeeping of the last :meth:`read`: parts read, rows, duplicated job rows replaced.
        self.last_read: dict[str, int] = {}

    def __repr__(self) -> str:
        return f"ResultsStore({str(self.path)!r}, {len(self.parts())} parts)"

    # ------------------------------------------------------------------ locking
    @contextlib.contextmanager
    def lock(self, *, wait_message: str | None = None) -> Iterator[None]:
        """Hold the store's writer lock (``.lock``, an OS file lock) for the ``with`` block.

        Two runs on one store would train the same jobs twice; with the lock the second waits,
        then skips what the first stored. The OS drops the lock when its holder dies, even by
        SIGKILL, so a crash never leaves the store locked. Readers do not need the lock.
        """
        import fcntl

        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a+") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if wait_message:
                    print(wait_message, file=sys.stderr, flush=True)
                fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ files
    def parts(self) -> list[Path]:
        """Part files in write order (their names start with the write time in ns)."""
        if not self.path.is_dir():
            return []
        return sorted(self.path.glob(_PART_GLOB))

    def stale_temporaries(self) -> list[Path]:
        """Temporary files left by a writer killed before its rename (never read; safe to delete)."""
        if not self.path.is_dir():
            return []
        return sorted(self.path.glob(_TMP_PREFIX + "*"))

    def append(self, df: pd.DataFrame) -> Path | None:
        """Write ``df`` as one new part file, atomically. Returns its path (None if ``df`` is empty)."""
        if len(df) == 0:
            return None
        table = conform(df)
        self.path.mkdir(parents=True, exist_ok=True)
        name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
        final = self.path / name
        write_parquet_atomic(table, final, tmp=self.path / f"{_TMP_PREFIX}{os.getpid()}-{name}")
        _fsync_dir(self.path)
        return final

    def _read_part(self, path: Path, columns: list[str] | None = None) -> pa.Table:
        try:
            table = pq.read_table(path, columns=columns)
        except Exception as exc:  # noqa: BLE001 - any reader failure means the file is bad
            raise MtlcError(
                f"results part file {path} is unreadable ({type(exc).__name__}: {exc}); "
                + _fix_message(path)
            ) from None
        want = SCHEMA if columns is None else {c: SCHEMA[c] for c in columns}
        got = dict(zip(table.schema.names, table.schema.types, strict=True))
        missing = [c for c in want if c not in got]
        wrong = [
            f"{c}: {got[c]} (expected {t})" for c, t in want.items() if c in got and got[c] != t
        ]
        if missing or wrong:
            raise MtlcError(
                f"results part file {path} does not match the store schema "
                f"(missing columns {missing}, wrong types {wrong}); it was written by another "
                f"version of mtlc or another program: " + _fix_message(path)
            )
        return table.select(list(want))

    # ------------------------------------------------------------------ queries
    def done_job_ids(self, *, include_failed: bool = True) -> set[str]:
        """Job ids present in the store (reads only two columns of each part)."""
        done: set[str] = set()
        for p in self.parts():
            t = self._read_part(p, ["job_id", "status"])
            ids = t.column("job_id").to_pylist()
            if include_failed:
                done.update(ids)
            else:
                st = t.column("status").to_pylist()
                done.update(i for i, s in zip(ids, st, strict=True) if s != "failed")
        return done

    def failed_job_ids(self) -> set[str]:
        """Job ids whose only record is a failure."""
        return self.done_job_ids() - self.done_job_ids(include_failed=False)

    def read(self, *, status: str | None = None) -> pd.DataFrame:
        """All rows as one DataFrame with the :data:`SCHEMA` columns (schema-checked).

        A job present in several parts keeps the rows of the newest part. ``status="ok"`` keeps
        only successful rows. A bad or truncated part raises :class:`MtlcError` naming it.
        """
        parts = self.parts()
        tables = [self._read_part(p) for p in parts]
        if not tables:
            empty = pa.schema(list(SCHEMA.items())).empty_table()
            self.last_read = {"parts": 0, "rows": 0, "replaced_rows": 0}
            return empty.to_pandas()
        for k, t in enumerate(tables):
            tables[k] = t.append_column("_part", pa.array(np.full(t.num_rows, k), pa.int64()))
        df = pa.concat_tables(tables).to_pandas()
        newest = df.groupby("job_id", sort=False)["_part"].transform("max")
        keep = df["_part"] == newest
        replaced = int((~keep).sum())
        df = df[keep].drop(columns="_part").reset_index(drop=True)
        if status is not None:
            df = df[df["status"] == status].reset_index(drop=True)
        self.last_read = {"parts": len(parts), "rows": len(df), "replaced_rows": replaced}
        return df

    def compact(self) -> Path | None:
        """Rewrite all parts as one (after :meth:`read`'s de-duplication); remove temporaries.

        The new part is written before the old ones are deleted, so a crash in between leaves
        duplicates that :meth:`read` resolves, never a loss.
        """
        old = self.parts()
        if len(old) <= 1:
            for t in self.stale_temporaries():
                t.unlink()
            return old[0] if old else None
        df = self.read()
        new = self.append(df)
        for p in old:
            p.unlink()
        for t in self.stale_temporaries():
            t.unlink()
        _fsync_dir(self.path)
        return new

    def summary(self) -> dict[str, Any]:
        """Counts for a status line: parts, rows, jobs done, jobs failed, stale temporaries."""
        df = self.read()
        jobs = df.groupby("job_id")["status"].agg(lambda s: (s == "failed").all())
        return {
            "parts": len(self.parts()),
            "rows": len(df),
            "jobs": int(len(jobs)),
            "failed_jobs": int(jobs.sum()),
            "stale_temporaries": len(self.stale_temporaries()),
        }


def read_stores(paths: Iterable[str | os.PathLike]) -> pd.DataFrame:
    """Concatenate several stores (e.g. one per split) into one table."""
    frames = [ResultsStore(p).read() for p in paths]
    return pd.concat(frames, ignore_index=True) if frames else ResultsStore("/nonexistent").read()
