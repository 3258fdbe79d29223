"""``mtlc study``: run the whole study plan (:mod:`mtlc.study_plan`) stage by stage, or check it.

- ``mtlc study --profile full`` runs every stage in order; each stage is an existing command
  (``mtlc train ...``, ``mtlc foundation ...``) that skips the jobs already in its store, so an
  interrupted study resumes where it stopped. A summary follows (per stage: jobs, already
  stored, trained, failed, wall time, peak memory).
- ``--list`` prints the plan with each stage's status (stored jobs / jobs in its design, built
  without training); ``--dry-run`` prints the commands; ``--only`` picks stages.
- ``--verify N`` retrains N random stored jobs of each store of the plan and compares them with
  the stored numbers (:func:`mtlc.reproduce.verify_store`; TAG stores:
  :func:`mtlc.reproduce.verify_tag_store`).
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import shlex
import sys
import tempfile
import time
import traceback
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mtlc.errors import ConfigError, MtlcError


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "study",
        help="run the whole study plan stage by stage (resumable), list it, or verify a store",
        description=(
            "Run every stage of the study plan (mtlc/study_plan.py) in order: each stage is an "
            "mtlc command that skips the jobs already in its results store, so rerunning the "
            "same command after an interruption resumes the study. Stages without a command "
            "yet are listed as such. --list shows the status of every stage without training; "
            "--verify N retrains N random stored jobs and compares them with the store."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--profile", default="full", help="full (paper scale) or smoke (tiny)")
    p.add_argument("--list", action="store_true", help="print the plan with each stage's status")
    p.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    p.add_argument(
        "--only", default=None, metavar="NAME[,NAME]", help="stages to run (names or globs)"
    )
    p.add_argument(
        "--out",
        default=None,
        help="root of the stores' relative paths; None: the repository for the full profile, "
        "a new temporary directory for smoke",
    )
    p.add_argument(
        "--verify",
        type=int,
        default=None,
        metavar="N",
        help="retrain N random stored jobs per store (one of them all-task when the store has "
        "any) and compare with the stored metrics; TAG stores: rerun N whole TAG jobs",
    )
    p.add_argument("--verify-seed", type=int, default=0, help="seed of the --verify sample")
    p.add_argument(
        "--verify-max-size",
        type=int,
        default=1024,
        help="--verify samples single-task jobs up to this size (bounds the cost)",
    )
    p.add_argument(
        "--threads", type=int, default=1, help="torch threads for --verify (the study used 1)"
    )
    p.add_argument(
        "--summary-json", default=None, help="also write the run summary to this JSON file"
    )
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="local|tcp://HOST:PORT",
        help="passed to every mtlc train stage: train its chunks on Dask (same stores)",
    )
    p.add_argument(
        "--workers", type=int, default=None, help="with --scheduler local: worker processes"
    )
    p.set_defaults(func=run)


# ---------------------------------------------------------------------------- helpers
def _select(stages: list[dict], only: str | None) -> list[dict]:
    if not only:
        return stages
    pats = [x for x in only.replace(" ", "").split(",") if x]
    names = [s["name"] for s in stages]
    bad = [p for p in pats if not any(fnmatch.fnmatchcase(n, p) for n in names)]
    if bad:
        raise ConfigError(f"--only {','.join(bad)}: no such stage; stages: {', '.join(names)}")
    return [s for s in stages if any(fnmatch.fnmatchcase(s["name"], p) for p in pats)]


def _root(args: argparse.Namespace) -> Path:
    if args.out is not None:
        return Path(args.out)
    if args.profile == "full":
        from mtlc.report import repo_root

        return repo_root()
    if args.list or args.dry_run:
        return Path(tempfile.gettempdir()) / "mtlc-study-smoke-<new>"
    return Path(tempfile.mkdtemp(prefix="mtlc-study-smoke-"))


def _argv(stage: dict, root: Path, extra: Sequence[str] = ()) -> list[str]:
    """``mtlc`` arguments of a stage: its command, ``extra`` for train stages, its store."""
    more = list(extra) if stage["command"][0] == "train" else []
    cmd = [a.replace("{root}", str(root)) for a in stage["command"]]
    return [*cmd, *more, "--store", str(root / stage["store"])]


def _train_extra(args: argparse.Namespace) -> list[str]:
    """Options ``mtlc study`` passes on to every ``mtlc train`` stage."""
    out = []
    if args.scheduler:
        out += ["--scheduler", args.scheduler]
    if args.workers is not None:
        out += ["--workers", str(args.workers)]
    return out


def _shell(stage: dict, root: Path, extra: Sequence[str] = ()) -> str:
    """The stage as a shell command; a store under the current directory is shown relative."""
    argv = _argv(stage, root, extra)
    for k, a in enumerate(argv):
        if a.startswith(str(root)) and not os.path.relpath(a).startswith(".."):
            argv[k] = os.path.relpath(a)
    return "mtlc " + " ".join(shlex.quote(a) for a in argv)


def _fmt_s(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s:02d} s" if m else f"{seconds:.1f} s"


def _store_ids(path: Path) -> tuple[set[str], set[str]]:
    """(all stored job ids, ids whose only record is a failure) of a store (empty if absent)."""
    from mtlc.store import ResultsStore

    st = ResultsStore(path)
    if not st.parts():
        return set(), set()
    done = st.done_job_ids()
    return done, done - st.done_job_ids(include_failed=False)


class _Designs:
    """Job ids of each train stage's design, built without training (data sets loaded once)."""

    def __init__(self, *, keep_data: bool = True) -> None:
        # A study run does not keep data sets between stages: they would add to every later
        # stage's memory (kinase200 holds about 0.8 GB); --list keeps them to load each once.
        self.keep_data = keep_data
        self._data: dict[tuple, Any] = {}

    def job_ids(self, stage: dict) -> set[str] | None:
        from mtlc.reproduce import command_namespace, study_design, train_namespace

        cmd = stage["command"]
        if not cmd or cmd[0] not in ("train", "tag"):
            return None
        if cmd[0] == "tag":
            from mtlc.commands import tag

            ns = command_namespace(cmd)
            key = (ns.dataset, ns.recipe, tuple(ns.dataset_arg))
            pl = tag.plan(ns, dataset=self._data.get(key))
            if self.keep_data:
                self._data[key] = pl.loaded
            return {job[3] for job in pl.jobs}
        ns = train_namespace(cmd[1:])
        key = (ns.dataset, ns.recipe, tuple(ns.dataset_arg))
        inputs = study_design(ns, dataset=self._data.get(key))
        if self.keep_data:
            self._data[key] = inputs.loaded
        return {s.key["job_id"] for s in inputs.design}


def _peak_rss_reset() -> bool:
    """Reset this process's peak resident memory (Linux: VmHWM); False where unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def _peak_rss_gb() -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024 / 1e9
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------- actions
def _list(stages: list[dict], root: Path) -> int:
    designs = _Designs()
    print(f"study plan ({len(stages)} stages), stores under {root}:")
    for s in stages:
        if not s["command"]:
            print(f"  {s['name']:28s} NOT RUN: {s['note']}")
            continue
        store = root / s["store"]
        stored, failed = _store_ids(store)
        ids = designs.job_ids(s)
        if ids is None:
            status = f"{len(stored)} jobs stored (total not known before running)"
        else:
            have = ids & stored
            state = "done" if len(have) == len(ids) else "to do"
            status = f"{len(have)}/{len(ids)} jobs stored ({len(have & failed)} failed), {state}"
        m = s.get("measured") or {}
        cost = f"; measured {_fmt_s(m.get('wall_s'))}, {m.get('peak_rss_gb')} GB peak" if m else ""
        print(f"  {s['name']:28s} {status}{cost}")
        print(f"  {'':28s} {s['what']} -> {s['store']}")
    return 0


def _dry_run(stages: list[dict], root: Path, extra: Sequence[str] = ()) -> int:
    for s in stages:
        if s["command"]:
            print(_shell(s, root, extra))
        else:
            print(f"# {s['name']}: {s['note']}")
    return 0


def _run_stage(
    stage: dict, root: Path, designs: _Designs, extra: Sequence[str] = ()
) -> dict[str, Any]:
    from mtlc.cli import build_parser

    store = root / stage["store"]
    before, _ = _store_ids(store)
    try:
        ids = designs.job_ids(stage)
    except MtlcError:
        ids = None  # the stage's own command reports the problem below
    row: dict[str, Any] = {
        "stage": stage["name"],
        "store": str(store),
        "command": _shell(stage, root, extra),
    }
    row["jobs"] = None if ids is None else len(ids)
    row["skipped"] = len(before) if ids is None else len(ids & before)
    print(f"\n== mtlc study: stage {stage['name']}\n   {row['command']}", file=sys.stderr)
    exact_rss = _peak_rss_reset()
    t0 = time.perf_counter()
    try:
        try:
            args = build_parser().parse_args(_argv(stage, root, extra))
        except SystemExit as exc:  # argparse printed why
            raise ConfigError(
                f"mtlc could not parse the stage's arguments (exit {exc.code})"
            ) from None
        rc = int(args.func(args) or 0)
        row["status"] = "ok" if rc == 0 else f"exit {rc}"
    except MtlcError as exc:
        row["status"] = f"failed: {exc}"
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 - a stage's bug must not hide the other stages
        traceback.print_exc()
        row["status"] = f"failed: {type(exc).__name__}: {exc}"
    row["wall_s"] = time.perf_counter() - t0
    rss = _peak_rss_gb()
    row["peak_rss_gb"] = None if rss is None else round(rss, 2)
    row["peak_rss_note"] = "this stage" if exact_rss else "this process so far"
    if "--scheduler" in extra and stage["command"][0] == "train":
        row["peak_rss_note"] += ", driver only (Dask workers not counted)"
    after, failed = _store_ids(store)
    new = after - before
    row["failed"] = len(new & failed)
    row["trained"] = len(new) - row["failed"]
    return row


def _summary(rows: list[dict]) -> str:
    head = f"{'stage':28s} {'status':8s} {'jobs':>7s} {'stored':>7s} {'trained':>7s}"
    head += f" {'failed':>6s} {'wall':>14s} {'peak RSS':>9s}"
    lines = ["", "mtlc study summary:", head]
    for r in rows:
        if r["status"].startswith("not run"):
            lines.append(f"{r['stage']:28s} {r['status']}")
            continue
        st = r["status"] if len(r["status"]) <= 8 else "FAILED"
        rss = "-" if r.get("peak_rss_gb") is None else f"{r['peak_rss_gb']:.2f} GB"
        jobs = "?" if r["jobs"] is None else str(r["jobs"])
        lines.append(
            f"{r['stage']:28s} {st:8s} {jobs:>7s} {r['skipped']:>7d} {r['trained']:>7d} "
            f"{r['failed']:>6d} {_fmt_s(r['wall_s']):>14s} {rss:>9s}"
        )
        if st == "FAILED":
            lines.append(f"{'':28s} {r['status']}")
    total = sum(r.get("wall_s") or 0.0 for r in rows)
    lines.append(f"total wall time {_fmt_s(total)}")
    notes = sorted({r["peak_rss_note"] for r in rows if r.get("peak_rss_note")})
    if notes:
        lines.append(f"peak RSS: resident memory peak of {'; '.join(notes)}")
    return "\n".join(lines)


def _run_all(
    stages: list[dict], root: Path, summary_json: str | None, extra: Sequence[str] = ()
) -> int:
    designs = _Designs(keep_data=False)
    rows: list[dict[str, Any]] = []
    print(f"mtlc study: {len(stages)} stages, stores under {root}", file=sys.stderr)
    try:
        for s in stages:
            if not s["command"]:
                rows.append({"stage": s["name"], "status": f"not run: {s['note']}"})
                continue
            rows.append(_run_stage(s, root, designs, extra))
    except KeyboardInterrupt:
        print(_summary(rows))
        print("mtlc study: interrupted; stored jobs are kept, rerun to resume", file=sys.stderr)
        raise
    print(_summary(rows))
    if summary_json:
        Path(summary_json).write_text(json.dumps(rows, indent=2) + "\n")
    ran = [r for r in rows if not r["status"].startswith("not run")]
    return 0 if all(r["status"] == "ok" for r in ran) else 1


def _verify(stages: list[dict], root: Path, args: argparse.Namespace) -> int:
    import torch

    from mtlc.reproduce import verify_store, verify_tag_store

    if args.verify < 1:
        raise ConfigError(f"--verify takes a number of jobs >= 1, got {args.verify}")
    by_store: dict[str, list[list[str]]] = {}
    tag_stages: list[dict] = []
    for s in stages:
        if s["command"] and s["command"][0] == "train":
            by_store.setdefault(s["store"], []).append(s["command"][1:])
        elif s["command"] and s["command"][0] == "tag":
            tag_stages.append(s)
        else:
            why = (
                "no command yet"
                if not s["command"]
                else "--verify covers mtlc train and mtlc tag stages only"
            )
            print(f"{s['name']}: not verified ({why})")
    if not by_store and not tag_stages:
        raise ConfigError("--verify: none of the selected stages is an mtlc train or tag stage")
    threads = torch.get_num_threads()
    torch.set_num_threads(max(1, args.threads))
    ok = True
    try:
        for rel, stage_args in by_store.items():
            path = root / rel
            from mtlc.store import ResultsStore

            if not ResultsStore(path).parts():
                print(f"{rel}: no stored results, nothing to verify")
                continue
            has_multi = any(train_regime(a) in ("mtl", "random") for a in stage_args)
            n_multi = 1 if has_multi and args.verify > 1 else 0
            rep = verify_store(
                path,
                stage_args,
                n_single=args.verify - n_multi,
                n_all_task=n_multi,
                seed=args.verify_seed,
                max_level=args.verify_max_size,
            )
            ok = _report(rel, rep) and ok
        for s in tag_stages:
            path = root / s["store"]
            if not path.is_dir() or not any(path.glob("part-*.parquet")):
                print(f"{s['store']}: no stored results, nothing to verify")
                continue
            # a TAG job is a whole training run: --verify N reruns N of them per store
            rep = verify_tag_store(path, s["command"][1:], n=args.verify, seed=args.verify_seed)
            ok = _report(s["store"], rep) and ok
    finally:
        torch.set_num_threads(threads)
    return 0 if ok else 1


def _report(store: str, rep: Any) -> bool:
    """Print a verify report and its verdict; whether the store reproduced."""
    problems = rep.problems()
    print(f"{store}: {rep}")
    print(
        f"{store}: " + ("REPRODUCED" if not problems else "NOT REPRODUCED: " + "; ".join(problems))
    )
    return not problems


def train_regime(stage_args: list[str]) -> str | None:
    """The ``--regime`` of ``mtlc train`` arguments (None when absent)."""
    for k, a in enumerate(stage_args[:-1]):
        if a == "--regime":
            return stage_args[k + 1]
    return None


def run(args: argparse.Namespace) -> int:
    from mtlc.study_plan import plan

    stages = _select(plan(args.profile), args.only)
    modes = [m for m in ("list", "dry_run") if getattr(args, m)] + (
        ["verify"] if args.verify is not None else []
    )
    if len(modes) > 1:
        raise ConfigError(f"--list, --dry-run and --verify exclude each other; got {modes}")
    root = _root(args)
    if args.list:
        return _list(stages, root)
    if args.dry_run:
        return _dry_run(stages, root, _train_extra(args))
    if args.verify is not None:
        return _verify(stages, root, args)
    return _run_all(stages, root, args.summary_json, _train_extra(args))
