"""Run a learning-curve design on a Dask cluster (``dask.distributed``), into the same store.

:func:`run_design_dask` is what ``mtlc.study.run_design(..., scheduler=...)`` and
``mtlc train --scheduler local|tcp://HOST:PORT`` call. It trains the same chunks of specs as the
in-process runner (:func:`mtlc.study.run_design`), with the same trainer and the same helpers
(``_fleet_order``, ``_chunks``, ``_precheck``, ``_train_chunk``, ``_failure_row``,
``_expand_sizes``), so every job gets the same numbers; only where the chunks train changes.

How it is built, and why:

- **One writer.** Workers only train and return DataFrames; the driver (this process) holds the
  store's lock and appends one part per chunk as the futures complete
  (``distributed.as_completed``). A worker killed mid-chunk therefore never leaves a part half
  written, and the driver drops any job id it already wrote in this run, so a chunk that Dask
  ran twice is stored once. On a rerun the store's ``done_job_ids`` is the truth, exactly as in
  the in-process runner: a killed driver loses at most the chunks in flight.
- **Killed workers.** The scheduler reruns the tasks of a worker that dies on another worker
  (a local cluster's nanny also restarts the dead worker). A chunk whose workers died more than
  ``distributed.scheduler.allowed-failures`` times (3 by default) comes back as
  ``KilledWorker``: it is not stored (a rerun retries it), the other chunks go on, and the run
  ends with an :class:`~mtlc.errors.MtlcError` that counts the jobs left out.
- **Data.** The data set is submitted once, as the result of one task that every chunk depends
  on: workers copy it from each other, and if every worker holding it dies the scheduler
  recomputes it from that task (``client.scatter`` has no such lineage). Loading by name on the
  workers was not chosen: the run trains on the driver's object (a task subset, an in-memory
  synthetic set, a user's table), and a remote cluster's workers may not have the raw files.
  The pickled kiba set is 4.5 MB.
- **Threads.** Local clusters use one thread per worker process, and every chunk sets
  ``torch.set_num_threads(torch_threads)`` (1 by default): small networks gain nothing from
  more threads, and one thread keeps the numbers independent of the worker's thread count.
- **Memory allocator.** Dask's nannies start workers with ``MALLOC_TRIM_THRESHOLD_=65536``,
  which made torch training 2.3x more CPU-expensive here (see :func:`dask_client`); local
  clusters unset it. Workers of a remote cluster should too, with a Dask config file on the
  workers: ``distributed: {nanny: {pre-spawn-environ: {MALLOC_TRIM_THRESHOLD_: null}}}``.
- **Chunks in flight** are capped (``max_in_flight``, default twice the threads of the workers
  present, re-read as chunks complete, so an adaptive cluster that grows gets more) so that a
  large grid's spec arrays are not all shipped to the scheduler at once.
"""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING, Any

import pandas as pd

from mtlc.errors import ConfigError, MtlcError
from mtlc.store import ResultsStore

if TYPE_CHECKING:
    from mtlc.study import RunSummary

_INSTALL = "pip install 'mtlc[dask]'"
_PRE_SPAWN = "distributed.nanny.pre-spawn-environ"


def _require_dask() -> Any:
    try:
        import distributed
    except ImportError as exc:
        raise ConfigError(
            f"running on Dask needs dask.distributed, which is not installed ({exc}); "
            f"install it with: {_INSTALL}"
        ) from None
    return distributed


class _NoBar:
    """The progress sink ``_train_chunk`` wants, on a worker (progress is counted per chunk)."""

    def update(self, k: int = 1) -> None:
        pass


def _dataset_task(ds: Any) -> Any:
    """Identity: makes the data set a task result, recomputable if every holder dies."""
    return ds


def _train_on_worker(
    ds: Any,
    specs: Sequence[Any],
    config: Any,
    trainer: Callable[..., pd.DataFrame],
    torch_threads: int | None,
) -> tuple[list[pd.DataFrame], list[tuple[str, str]]]:
    """Train one chunk on a worker: ``(result frames, [(job_id, reason) of failed specs])``."""
    from mtlc.study import _train_chunk

    if torch_threads:
        import torch

        torch.set_num_threads(int(torch_threads))
    rows, failures = _train_chunk(ds, list(specs), config, trainer, _NoBar())
    return rows, [(s.key["job_id"], reason) for s, reason in failures]


def _check_scheduler(scheduler: str, n_workers: int | None) -> None:
    """A clear error for a malformed ``scheduler``/``n_workers`` before any work starts."""
    if not isinstance(scheduler, str) or (
        scheduler != "local" and "://" not in scheduler and ":" not in scheduler
    ):
        raise ConfigError(
            f"--scheduler must be 'local' or a Dask scheduler address like tcp://host:8786, "
            f"got {scheduler!r}"
        )
    if scheduler != "local" and n_workers is not None:
        raise ConfigError(
            f"--workers applies to --scheduler local only; the cluster at {scheduler} has its "
            "own workers"
        )
    if n_workers is not None and int(n_workers) < 1:
        raise ConfigError(f"--workers must be at least 1, got {n_workers}")


@contextmanager
def dask_client(
    scheduler: str,
    *,
    n_workers: int | None = None,
    connect_timeout: float | None = None,
) -> Iterator[Any]:
    """A ``distributed.Client`` for ``scheduler``, closed (with its local cluster) on exit.

    ``scheduler="local"``: a ``LocalCluster`` of ``n_workers`` processes (default: the number
    of cores) with one thread each, no dashboard. Otherwise the address of a running scheduler
    (``tcp://host:8786``); an unreachable one raises :class:`~mtlc.errors.MtlcError` after
    ``connect_timeout`` seconds (default: Dask's ``distributed.comm.timeouts.connect``, 30 s
    unless configured, e.g. ``DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT=5s``).

    A local cluster spawns its worker processes, which import the caller's main module: in a
    script, call this under ``if __name__ == "__main__":`` (the ``mtlc`` CLI and notebooks
    need nothing).
    """
    distributed = _require_dask()
    _check_scheduler(scheduler, n_workers)
    if scheduler == "local":
        n = int(n_workers) if n_workers is not None else (os.cpu_count() or 1)
        import dask

        # Dask's nannies export MALLOC_TRIM_THRESHOLD_=65536 to their workers. Setting it at all
        # turns off glibc's adaptive mmap threshold, so every large torch buffer is mmapped and
        # unmapped again: measured on a kiba all-task chunk, 45x the page faults and 2.3x the CPU
        # time of the same chunk in-process. Unset unless the user exported it.
        keep = "MALLOC_TRIM_THRESHOLD_" in os.environ
        unset = {} if keep else {f"{_PRE_SPAWN}.MALLOC_TRIM_THRESHOLD_": None}
        with dask.config.set(unset):
            cluster = distributed.LocalCluster(
                n_workers=n,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
        try:
            with distributed.Client(cluster) as client:
                yield client
        finally:
            cluster.close()
        return
    if connect_timeout is None:
        import dask
        from dask.utils import parse_timedelta

        connect_timeout = parse_timedelta(dask.config.get("distributed.comm.timeouts.connect"))
    try:
        client = distributed.Client(scheduler, timeout=connect_timeout)
    except (OSError, TimeoutError, ValueError) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise MtlcError(
            f"cannot reach the Dask scheduler at {scheduler} within {connect_timeout:g} s "
            f"({msg}); check the address (the scheduler prints it at start: 'Scheduler at: "
            "tcp://...'), or use --scheduler local; the wait is Dask's connect timeout "
            "(DASK_DISTRIBUTED__COMM__TIMEOUTS__CONNECT)"
        ) from None
    try:
        yield client
    finally:
        client.close()


def run_design_dask(
    ds: Any,
    specs: Sequence[Any],
    store: ResultsStore | str | os.PathLike,
    config: Any,
    *,
    scheduler: str = "local",
    n_workers: int | None = None,
    chunk_size: int = 256,
    retry_failed: bool = False,
    progress: bool = True,
    trainer: Callable[..., pd.DataFrame] | None = None,
    desc: str = "training",
    torch_threads: int | None = 1,
    connect_timeout: float | None = None,
    max_in_flight: int | None = None,
    client: Any = None,
) -> RunSummary:
    """Train the specs the store does not hold yet on Dask workers; append results here.

    Same contract as :func:`mtlc.study.run_design` (same chunks, same failure rows, same
    :class:`~mtlc.study.RunSummary`), see the module docstring for the distributed parts.

    Parameters
    ----------
    ds: the data set (``MultiTaskDataset`` with features ``ds.X``); sent to the cluster once.
    specs: a :class:`mtlc.designs.Design` or a list of ``ModelSpec``.
    store: a :class:`ResultsStore` or its directory; only this process writes to it.
    config: ``mtlc.training.TrainConfig``.
    scheduler: ``"local"`` (a local cluster of ``n_workers`` processes) or a scheduler address.
    n_workers: local cluster size (default: the number of cores).
    chunk_size: specs per task and per part file, as in the in-process runner.
    torch_threads: torch threads per chunk on the worker (None leaves the worker's setting).
    connect_timeout: seconds to wait for a remote scheduler before a clear error (default:
        Dask's ``distributed.comm.timeouts.connect``).
    max_in_flight: chunks submitted at once (default twice the cluster's worker threads).
    client: an existing ``distributed.Client`` to use (``scheduler`` is then ignored).

    Raises :class:`~mtlc.errors.MtlcError` when a chunk was lost to repeatedly dying workers
    (after storing everything else), when a worker raises an error that is not a job's
    (``MemoryError``, ``ImportError``), or when the scheduler connection is lost.
    """
    from mtlc.study import (
        _chunk_frame,
        _chunks,
        _default_trainer,
        _failure_row,
        _PairLabels,
        _pending,
        _precheck,
    )

    distributed = _require_dask()
    if client is None:
        _check_scheduler(scheduler, n_workers)
    store = store if isinstance(store, ResultsStore) else ResultsStore(store)
    if ds.X is None:
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
        # The in-process runner's skipping, order and chunking (sizes together, bounded chunks).
        todo, summary = _pending(specs, store, retry_failed)
        # The one-class precheck is cheap and needs the labels: done here, before shipping.
        labels = _PairLabels(ds)
        chunks: list[tuple[list[Any], list[Any], list[dict[str, Any]]]] = []
        for chunk in _chunks(todo, chunk_size, config):
            trainable, failed = [], []
            for s in chunk:
                reason = _precheck(ds, s, labels)
                if reason is None:
                    trainable.append(s)
                else:
                    failed.append(_failure_row(s, reason, config_hash))
            chunks.append((chunk, trainable, failed))

        from tqdm import tqdm

        bar = tqdm(
            total=len(todo),
            desc=f"{desc} (dask)",
            unit="model",
            file=sys.stderr,
            disable=not progress,
            dynamic_ncols=True,
            mininterval=1.0,
        )
        written: set[str] = set()
        dropped_cols: set[str] = set()
        n_duplicates = 0

        def store_chunk(k: int, rows: list[pd.DataFrame], more_failed: list[tuple[str, str]]):
            nonlocal n_duplicates
            chunk, trainable, failed = chunks[k]
            by_id = {s.key["job_id"]: s for s in trainable}
            failed = failed + [_failure_row(by_id[j], r, config_hash) for j, r in more_failed]
            df = _chunk_frame(rows, failed, config_hash, dropped_cols)
            if df is not None:
                dup_rows = df["job_id"].isin(written)
                if dup_rows.any():  # a chunk Dask delivered twice: keep the first copy
                    n_duplicates += int(df.loc[dup_rows, "job_id"].nunique())
                    df = df[~dup_rows]
                store.append(df)
                written.update(df["job_id"].unique().tolist())
            summary.failed += len(failed)
            summary.done += len(chunk) - len(failed)
            summary.failures += [(f["job_id"], f["task"], f["note"]) for f in failed]
            bar.update(len(chunk))

        lost: list[tuple[int, str]] = []
        try:
            for k, (_, trainable, _) in enumerate(chunks):
                if not trainable:  # nothing to ship: store the precheck failures now
                    store_chunk(k, [], [])
            pending = [k for k, (_, trainable, _) in enumerate(chunks) if trainable]
            if pending:
                connect = (
                    nullcontext(client)
                    if client is not None
                    else dask_client(
                        scheduler, n_workers=n_workers, connect_timeout=connect_timeout
                    )
                )
                with connect as cl:
                    lost = _run_chunks(
                        distributed,
                        cl,
                        ds,
                        chunks,
                        pending,
                        config,
                        trainer,
                        torch_threads,
                        max_in_flight,
                        store_chunk,
                    )
        finally:
            bar.close()
    if dropped_cols:
        warnings.warn(
            f"training results had columns outside the store schema, not stored: "
            f"{sorted(dropped_cols)}",
            stacklevel=2,
        )
    if n_duplicates:
        print(
            f"mtlc: {n_duplicates} jobs came back twice from the cluster; stored once",
            file=sys.stderr,
        )
    summary.design_skipped = design_skipped
    summary.seconds = time.perf_counter() - t0
    if lost:
        n_jobs = sum(len(chunks[k][1]) for k, _ in lost)
        raise MtlcError(
            f"{n_jobs} jobs in {len(lost)} chunks were not stored: the workers running them died "
            f"repeatedly (e.g. {lost[0][1]}), perhaps out of memory. Everything else is stored "
            f"({summary.done} trained, {summary.failed} failed now). Rerun the same command to "
            "retry them; a smaller --chunk-size needs less memory per worker, and "
            "DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES raises the number of worker deaths "
            "a chunk may cause"
        )
    return summary


def _run_chunks(
    distributed: Any,
    client: Any,
    ds: Any,
    chunks: list[tuple[list[Any], list[Any], list[dict[str, Any]]]],
    pending: list[int],
    config: Any,
    trainer: Callable[..., pd.DataFrame],
    torch_threads: int | None,
    max_in_flight: int | None,
    store_chunk: Callable[..., None],
) -> list[tuple[int, str]]:
    """Submit the pending chunks (a bounded window), store each as it completes.

    Returns the chunks lost to ``KilledWorker`` as ``(chunk index, message)``.
    """
    from distributed.scheduler import KilledWorker
    from distributed.utils import CancelledError

    def window() -> int:
        """Chunks to keep submitted: fixed, or twice the threads of the workers now present."""
        if max_in_flight is not None:
            return max(1, int(max_in_flight))
        try:
            return max(2, 2 * sum(client.nthreads().values()))
        except (OSError, distributed.comm.CommClosedError):
            return 2  # the next result reports the lost connection

    if not client.nthreads():
        print(
            f"mtlc: the Dask scheduler at {client.scheduler.address} has no workers yet; "
            "the chunks wait for workers to join",
            file=sys.stderr,
        )
    with warnings.catch_warnings():
        # The data set travels in the graph on purpose (lineage, see the module docstring).
        warnings.filterwarnings("ignore", message=".*[Ll]arge graph.*")
        warnings.filterwarnings("ignore", message=".*[Ll]arge object.*")
        data = client.submit(
            _dataset_task, ds, pure=False, key=f"mtlc-dataset-{os.urandom(6).hex()}"
        )
    queue = list(pending)
    owner: dict[str, int] = {}
    ac = distributed.as_completed(loop=client.loop)

    def submit_next() -> None:
        k = queue.pop(0)
        fut = client.submit(
            _train_on_worker,
            data,
            chunks[k][1],
            config,
            trainer,
            torch_threads,
            pure=False,
            key=f"mtlc-chunk-{k}-{os.urandom(4).hex()}",
        )
        owner[fut.key] = k
        ac.add(fut)

    lost: list[tuple[int, str]] = []
    try:
        want = window()
        while queue and ac.count() < want:
            submit_next()
        for fut in ac:
            k = owner.pop(fut.key)
            try:
                rows, more_failed = fut.result()
            except KilledWorker as exc:
                lost.append((k, f"KilledWorker: {str(exc).splitlines()[0][:200]}"))
            except (OSError, distributed.comm.CommClosedError) as exc:
                raise MtlcError(
                    f"lost the connection to the Dask scheduler ({type(exc).__name__}: {exc}); "
                    "finished chunks are stored, rerun the same command to resume"
                ) from None
            except CancelledError as exc:
                raise MtlcError(
                    f"the Dask cluster cancelled a chunk ({exc}); finished chunks are stored, "
                    "rerun the same command to resume"
                ) from None
            except Exception as exc:  # noqa: BLE001 - not a job's failure (those are rows)
                # _train_chunk turns a spec's exception into a failure row, so what reaches
                # here is the worker's: MemoryError, ImportError, unpicklable data, ...
                raise MtlcError(
                    f"a Dask worker could not train chunk {k}: {type(exc).__name__}: {exc} "
                    "(the workers need mtlc and its training dependencies installed, and "
                    "memory for a chunk; finished chunks are stored, rerun to resume)"
                ) from None
            else:
                store_chunk(k, rows, more_failed)
            finally:
                fut.release()
            if queue:
                want = window()
                while queue and ac.count() < want:
                    submit_next()
    finally:
        for fut in list(ac.futures):
            fut.cancel()
        data.release()
    return lost


__all__ = ["run_design_dask", "dask_client"]
