"""The Dask path of the study runner, on a real local cluster of 2 worker processes.

Every Dask run must give the store the in-process runner gives (same job ids, same numbers),
also when a worker is SIGKILLed mid-chunk or the driver itself is killed and rerun; a bad
scheduler address is a one-line error, not a hang.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from standin_trainer import centroid_trainer, small_synthetic

from mtlc.cli import main
from mtlc.errors import MtlcError
from mtlc.store import ResultsStore

distributed = pytest.importorskip("distributed", reason="dask.distributed is not installed")
pytest.importorskip("mtlc.fleet", reason="the training engine (mtlc.fleet) has not landed")

SYN = {"n_compounds": 400, "n_tasks": 4, "n_groups": 1, "group_size": 2}
# min_steps makes a chunk of 2 models take a fraction of a second, long enough to be killed in.
CFG = {"hidden": (32,), "max_epochs": 5, "min_steps": 100}
DESIGN = {"n_folds": 2, "sizes": [16, 32, 64], "chunk_size": 2}
REGIMES = ("stl", "mtl")
KEY = ["job_id", "task", "metric"]
# Wall time of a model depends on the machine, not on the runner.
VOLATILE = ["train_seconds"]


def _config():
    from mtlc.training import TrainConfig

    return TrainConfig(**CFG)


def _dataset():
    from mtlc.datasets import load

    return load("synthetic", **SYN)


def _run(store: Path, **kw) -> list:
    from mtlc.study import run_study

    ds = _dataset()
    return [
        run_study(ds, regime=r, store=store, config=_config(), progress=False, **DESIGN, **kw)
        for r in REGIMES
    ]


def _canon(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=VOLATILE).sort_values(KEY).reset_index(drop=True)


def _assert_same_store(got: pd.DataFrame, want: pd.DataFrame) -> None:
    got, want = _canon(got), _canon(want)
    assert set(got["job_id"]) == set(want["job_id"])
    assert len(got) == len(want)
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=0, atol=1e-12)


def _job_ids_per_part(store: Path) -> list[str]:
    """Every job id once per part that holds it (a job in two parts appears twice)."""
    out: list[str] = []
    for p in ResultsStore(store).parts():
        out += sorted(set(pq.read_table(p, columns=["job_id"]).column("job_id").to_pylist()))
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory, one_torch_thread) -> pd.DataFrame:
    """The in-process store of the design (stl + mtl), on one torch thread like the workers."""
    store = tmp_path_factory.mktemp("local")
    _run(store)
    df = ResultsStore(store).read()
    assert (df["status"] == "ok").all() and df["value"].notna().any()
    return df


@pytest.fixture(scope="module")
def cluster():
    """The local cluster ``--scheduler local --workers 2`` starts: 2 processes, 1 thread each."""
    from mtlc.distributed import dask_client

    with dask_client("local", n_workers=2) as client:
        cl = client.cluster
        assert isinstance(cl, distributed.LocalCluster)
        assert sorted(client.nthreads().values()) == [1, 1]
        yield cl, client


def _env(name: str) -> str | None:
    return os.environ.get(name)


def test_local_workers_run_without_dasks_malloc_trim_setting(cluster):
    _, client = cluster
    if "MALLOC_TRIM_THRESHOLD_" in os.environ:
        pytest.skip("MALLOC_TRIM_THRESHOLD_ is exported here; the workers keep the user's value")
    got = client.run(_env, "MALLOC_TRIM_THRESHOLD_")
    assert len(got) == 2 and set(got.values()) == {None}, got
    # Dask's other worker settings (one BLAS/OpenMP thread) are kept.
    assert set(client.run(_env, "OMP_NUM_THREADS").values()) == {"1"}


def test_dask_store_equals_local_store(tmp_path, reference, cluster):
    cl, _ = cluster
    summaries = _run(tmp_path, scheduler=cl.scheduler_address)
    assert sum(s.done for s in summaries) == reference["job_id"].nunique()
    assert all(s.failed == 0 and s.skipped == 0 for s in summaries)
    _assert_same_store(ResultsStore(tmp_path).read(), reference)
    ids = _job_ids_per_part(tmp_path)
    assert len(ids) == len(set(ids))
    # Resume semantics: a rerun finds everything stored and trains nothing.
    again = _run(tmp_path, scheduler=cl.scheduler_address)
    assert all(s.done == 0 and s.skipped == s.total for s in again)


def _kill_if_training(path: str, dask_worker=None) -> list[str]:
    """On a worker: if it is executing a chunk, note the keys and pid in ``path``, SIGKILL itself.

    ``client.run`` calls this on the worker's event loop, and a finished task is reported to
    the scheduler from that loop, so a chunk seen executing here cannot be reported done
    before the kill: the kill lands mid-chunk, with no race.
    """
    keys = [str(ts.key) for ts in dask_worker.state.executing]
    keys = [k for k in keys if k.startswith("mtlc-chunk")]
    if keys:
        Path(path).write_text("\n".join([str(os.getpid()), *keys]))
        os.kill(os.getpid(), signal.SIGKILL)
    return keys


def test_killed_worker_job_reruns_elsewhere_nothing_lost_or_duplicated(
    tmp_path, reference, cluster
):
    cl, client = cluster
    client.wait_for_workers(2, timeout=120)
    store, note = tmp_path / "store", tmp_path / "killed.txt"
    outcome: dict = {}

    def runner() -> None:
        try:
            outcome["summaries"] = _run(store, scheduler=cl.scheduler_address)
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            outcome["error"] = exc

    th = threading.Thread(target=runner, daemon=True)
    th.start()
    t0 = time.time()
    while not note.exists():
        assert th.is_alive(), f"the run ended before a worker could be killed: {outcome}"
        assert time.time() - t0 < 120, "no chunk ever seen executing"
        if ResultsStore(store).parts():  # mid-run: some chunks stored, others in flight
            for w in sorted(client.scheduler_info()["workers"]):
                try:
                    client.run(_kill_if_training, str(note), workers=[w], on_error="ignore")
                except (OSError, distributed.comm.CommClosedError):
                    pass  # the worker killed itself before replying
                if note.exists():
                    break
        time.sleep(0.02)
    pid, *killed_keys = note.read_text().split()
    th.join(timeout=180)
    assert not th.is_alive(), "the run did not finish after the worker was killed"
    if "error" in outcome:
        raise outcome["error"]
    summaries = outcome["summaries"]
    assert sum(s.done for s in summaries) == reference["job_id"].nunique()
    assert sum(s.failed for s in summaries) == 0
    _assert_same_store(ResultsStore(store).read(), reference)
    ids = _job_ids_per_part(store)
    assert len(ids) == len(set(ids)), "a job was written twice"
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid), 0)
    # The scheduler took the chunk back from the dead worker and ran it again to the end.
    story = [s for s in client.story(*killed_keys) if s[0] == "scheduler"]
    for key in killed_keys:
        moves = [(s[2], s[3], s[5]) for s in story if s[1] == key]
        assert any(
            a == "processing" and b == "released" and why.startswith("handle-worker-cleanup")
            for a, b, why in moves
        ), moves
        assert ("processing", "memory") in [(a, b) for a, b, _ in moves], moves


@dataclass(frozen=True)
class _KillConfig:
    """Stand-in config: the worker training ``kill_job`` dies (SIGKILL) every time."""

    kill_job: str

    def hash(self) -> str:
        return "kill0"


def _killing_trainer(ds, specs, config, *, progress=None):
    if any(s.key["job_id"] == config.kill_job for s in specs):
        os.kill(os.getpid(), signal.SIGKILL)
    return centroid_trainer(ds, specs, config, progress=progress)


def test_chunk_that_keeps_killing_workers_is_reported_not_stored(tmp_path, cluster):
    from mtlc.designs import DesignContext, make_design
    from mtlc.distributed import run_design_dask

    cl, client = cluster
    client.wait_for_workers(1, timeout=120)
    ds = small_synthetic()
    folds = np.random.default_rng(0).integers(0, 3, ds.n_compounds)
    ctx = DesignContext(dataset=ds.name, config_hash="kill0")
    specs = make_design(ds, folds, regime="stl", ctx=ctx, sizes=[16, 32], fold_subset=[0]).specs[:8]
    ids = [s.key["job_id"] for s in specs]
    # One chunk in flight: Dask counts a worker's death against every task it held, and this
    # test wants the one chunk that kills it. allowed-failures 0: no retry, one death suffices.
    old = cl.scheduler.allowed_failures
    cl.scheduler.allowed_failures = 0
    try:
        with pytest.raises(MtlcError, match=r"jobs in 1 chunks were not stored.*Rerun"):
            run_design_dask(
                ds, specs, tmp_path, _KillConfig(ids[5]), client=client, chunk_size=2,
                max_in_flight=1, trainer=_killing_trainer, progress=False,
            )  # fmt: skip
    finally:
        cl.scheduler.allowed_failures = old
    missing = set(ids) - ResultsStore(tmp_path).done_job_ids()
    assert ids[5] in missing and len(missing) == 2  # the killer's chunk, nothing else
    # A rerun (here without the planted kill) trains only the lost chunk.
    s = run_design_dask(
        ds, specs, tmp_path, _KillConfig(""), client=client, chunk_size=2,
        trainer=centroid_trainer, progress=False,
    )  # fmt: skip
    assert (s.skipped, s.done + s.failed) == (6, 2)
    assert ResultsStore(tmp_path).done_job_ids() == set(ids)


def _descendants(pid: int) -> set[int]:
    kids: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            kids.setdefault(ppid, []).append(int(d.name))
    out, todo = set(), [pid]
    while todo:
        for c in kids.get(todo.pop(), []):
            out.add(c)
            todo.append(c)
    return out


def _cli_args(store: Path) -> list[str]:
    syn = [x for k, v in SYN.items() for x in ("--dataset-arg", f"{k}={v}")]
    return [
        "train", "--dataset", "synthetic", *syn,
        "--folds", str(DESIGN["n_folds"]), "--regime", "stl",
        "--sizes", ",".join(map(str, DESIGN["sizes"])),
        "--chunk-size", str(DESIGN["chunk_size"]),
        "--hidden", ",".join(map(str, CFG["hidden"])),
        "--max-epochs", str(CFG["max_epochs"]), "--min-steps", str(CFG["min_steps"]),
        "--no-progress", "--store", str(store),
    ]  # fmt: skip


def test_killed_client_reruns_and_resumes(tmp_path, reference, cluster, capsys):
    cl, client = cluster
    store = tmp_path / "store"
    cmd = [sys.executable, "-m", "mtlc", *_cli_args(store), "--scheduler", "local"]
    proc = subprocess.Popen(
        [*cmd, "--workers", "2"], stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    t0 = time.time()
    try:
        while not ResultsStore(store).parts():
            if proc.poll() is not None:
                pytest.fail(f"mtlc train ended before the kill: {proc.stderr.read().decode()}")
            assert time.time() - t0 < 150, "no part file after 150 s"
            time.sleep(0.02)
        workers = _descendants(proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        # The local cluster's worker processes notice their parent died and exit.
        deadline = time.time() + 30
        while (alive := {p for p in workers if Path(f"/proc/{p}").exists()}) and (
            time.time() < deadline
        ):
            time.sleep(0.2)
        for p in alive:  # processes this test started: do not leave them behind
            os.kill(p, signal.SIGKILL)
        assert not alive, f"worker processes survived their killed driver: {sorted(alive)}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    want = reference[reference["regime"] == "stl"]
    n_total = want["job_id"].nunique()
    n_done = len(ResultsStore(store).done_job_ids())
    assert 0 < n_done < n_total
    capsys.readouterr()
    # Rerun on the running cluster, by address: resumes, trains only what is missing.
    assert main([*_cli_args(store), "--scheduler", cl.scheduler_address]) == 0
    err = capsys.readouterr().err
    assert f"{n_done} already in the store (skipped), {n_total - n_done} trained" in err
    _assert_same_store(ResultsStore(store).read(), want)
    ids = _job_ids_per_part(store)
    assert len(ids) == len(set(ids))


def test_bad_scheduler_address_is_a_one_line_error(tmp_path, capsys):
    import dask

    with socket.socket() as s:  # a port that nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.time()
    with dask.config.set({"distributed.comm.timeouts.connect": "2s"}):
        code = main([*_cli_args(tmp_path / "s"), "--scheduler", f"tcp://127.0.0.1:{port}"])
    err = capsys.readouterr().err
    assert code == 2
    assert time.time() - t0 < 30
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "cannot reach the Dask scheduler" in lines[0], err
    assert "Traceback" not in err
    assert not ResultsStore(tmp_path / "s").parts()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--scheduler", "nonsense"], "--scheduler must be 'local' or a Dask scheduler address"),
        (["--workers", "2"], "--workers sizes the local Dask cluster"),
        (["--scheduler", "local", "--workers", "0"], "--workers must be at least 1"),
    ],
)
def test_bad_dask_options(tmp_path, capsys, extra, message):
    assert main([*_cli_args(tmp_path / "s"), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_dask_names_the_extra(monkeypatch):
    from mtlc.distributed import _require_dask
    from mtlc.errors import ConfigError

    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed -> ImportError
    with pytest.raises(ConfigError, match=r"pip install 'mtlc\[dask\]'"):
        _require_dask()
