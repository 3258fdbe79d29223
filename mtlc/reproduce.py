"""Rebuild stored jobs from the command that made them, retrain them, compare the numbers.

A results store holds, per job, its key (data set, recipe, task set, split, fold, seed, regime,
target, sizes), the hash of its training configuration and a ``job_id`` that hashes all of these
(:func:`mtlc.designs.job_id`). It does not hold the options that are only in the command line
(number of folds, size grid, the configuration itself). So a stored job is rebuilt from the
``mtlc train`` arguments of the study stage that wrote it (:mod:`mtlc.study_plan`):

1. :func:`study_design` parses those arguments with the real ``mtlc train`` parser and builds
   the design exactly as ``mtlc train`` does (data set, task selection, folds, design context,
   regime builder), restricted to the test folds needed;
2. a stored job is *rebuilt* when a spec of that design has its ``job_id``: the key, the sizes
   vector and the configuration hash all match (a different configuration gives another id);
3. :func:`verify_store` retrains a seeded random sample of rebuilt specs with the library
   (``mtlc.training.train_models``, in fleets of a different composition than the study's) and
   compares every stored metric and counter with the new ones.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from mtlc.errors import ConfigError, MtlcError
from mtlc.store import ResultsStore

__all__ = [
    "StudyInputs",
    "train_namespace",
    "study_design",
    "sample_jobs",
    "verify_store",
    "VerifyReport",
    "verify_tag_store",
    "TagVerifyReport",
    "INT_FIELDS",
    "EXACT_ATOL",
]

#: Integer result columns that must be reproduced exactly (test fold counts, epochs, pairs).
#: Default criteria of :meth:`VerifyReport.problems` (tests/test_reproducibility.py says why).
MAX_ABS_DIFF = 0.01
MIN_EXACT_FRACTION = 0.9
#: A metric value counts as reproduced exactly within this absolute difference: far above the
#: float64 rounding of the metric's own computation (<= 4e-16 measured between sklearn's AUC /
#: AP and mtlc.evaluate's direct formulas) and far below the smallest change one swapped pair
#: of test scores makes (1 / (n_pos * n_neg), >= 6e-8 even for a 4000 x 4000 test fold).
EXACT_ATOL = 1e-10

INT_FIELDS = ("n_test_pos", "n_test_neg", "epochs", "best_epoch", "n_train_pairs", "n_val_pairs")

# Regimes whose spec has one target (cheap single-task-sized models) vs all-task regimes.
_TARGETED = ("stl", "pair", "context")
_ALL_TASK = ("mtl", "random")


def command_namespace(cmd: Sequence[str]) -> argparse.Namespace:
    """An ``mtlc`` command line (sub-command first, ``--store`` optional) parsed by the real
    ``mtlc`` parser.

    A dummy store is added when ``--store`` is absent (it is required by the parsers of the
    stores' commands, and not needed to plan their jobs).
    """
    from mtlc.cli import build_parser

    argv = list(cmd)
    if "--store" not in argv:
        argv += ["--store", os.devnull]
    try:
        return build_parser().parse_args(argv)
    except SystemExit:  # argparse already printed why
        raise ConfigError(f"bad mtlc arguments in a study stage: {' '.join(cmd)}") from None


def train_namespace(args: Sequence[str]) -> argparse.Namespace:
    """``mtlc train`` arguments (without ``--store``) parsed by the real ``mtlc train`` parser."""
    return command_namespace(["train", *args])


@dataclass
class StudyInputs:
    """What ``mtlc train`` builds before training: data set, folds, design and configuration.

    ``ds`` is the data set the design indexes (after task selection); ``loaded`` the data set as
    loaded, before it (pass it back as ``dataset=`` to build another stage without reloading).
    """

    ds: Any
    loaded: Any
    folds: np.ndarray
    design: Any
    config: Any
    options: dict[str, Any] = field(default_factory=dict)


def _study_kwargs(ns: argparse.Namespace) -> dict[str, Any]:
    """The keyword arguments ``mtlc train`` passes to :func:`mtlc.study.run_study`.

    Mirrors ``mtlc.commands.train.run`` with its own parsing helpers; tests/test_cli_study.py
    checks that the job ids built from these equal the ones ``mtlc train`` stores.
    """
    from mtlc.commands import train as tr

    options: dict[str, Any] = {"start": ns.min_size, "ratio": ns.ratio}
    if ns.regime == "pair":
        if not ns.pairs:
            raise ConfigError("--regime pair needs --pairs target:partner,...")
        options["pairs"] = tr._pairs(ns.pairs)
        ps = ns.partner_sizes
        options["partner_sizes"] = (
            ps if ps in ("full", "grid") else tr._int_list(ps, "--partner-sizes")
        )
    elif ns.regime == "context":
        options["qs"] = tr._float_list(ns.q, "--q")
    elif ns.regime == "random":
        options["n_runs"] = ns.n_runs
    dataset_kwargs = tr._dataset_args(ns.dataset_arg)
    if ns.recipe is not None:
        dataset_kwargs["recipe"] = ns.recipe
    return {
        "dataset": ns.dataset,
        "dataset_kwargs": dataset_kwargs,
        "regime": ns.regime,
        "config": tr._config(ns),
        "split": ns.split,
        "n_folds": ns.folds,
        "fold_subset": None
        if ns.fold_subset is None
        else tr._int_list(ns.fold_subset, "--fold-subset"),
        "seeds": range(ns.seeds),
        "tasks": tr._tasks(ns.tasks),
        "sizes": tr._sizes(ns.sizes),
        "max_size": ns.max_size,
        "split_seed": ns.split_seed,
        "options": options,
    }


def study_design(
    args: Sequence[str] | argparse.Namespace,
    *,
    fold_subset: Sequence[int] | None = None,
    dataset: Any = None,
) -> StudyInputs:
    """The design ``mtlc train ARGS`` would run, without training anything.

    Parameters
    ----------
    args: ``mtlc train`` arguments (a list of strings) or their parsed namespace.
    fold_subset: build only these test folds (default: the command's own ``--fold-subset``).
    dataset: an already loaded data set to reuse (must be what ``--dataset`` loads, before
        task selection: :attr:`StudyInputs.loaded`).

    Mirrors :func:`mtlc.study.run_study` step by step (load, task selection, folds, design
    context, regime builder), so the spec keys and job ids equal the stored ones.
    """
    from mtlc.designs import DesignContext, make_design
    from mtlc.study import assign_folds, load_dataset, select_tasks

    ns = args if isinstance(args, argparse.Namespace) else train_namespace(args)
    kw = _study_kwargs(ns)
    if ns.folds < 2:
        raise ConfigError(f"--folds must be at least 2, got {ns.folds}")
    loaded = ds = (
        dataset if dataset is not None else load_dataset(kw["dataset"], **kw["dataset_kwargs"])
    )
    if ds.X is None:
        raise MtlcError(f"data set {ds.name!r} has no features; load it with features=True")
    idx, task_set = select_tasks(ds, kw["tasks"])
    if len(idx) < ds.n_tasks:
        ds = ds.subset(tasks=idx)
    split, split_seed = kw["split"], kw["split_seed"]
    folds = assign_folds(ds, n_folds=kw["n_folds"], split=split, seed=split_seed)
    config = kw["config"]
    ctx = DesignContext(
        dataset=ds.name,
        recipe=str(ds.info.get("recipe", "")),
        task_set=task_set,
        split=split if split_seed == 0 else f"{split}/seed{split_seed}",
        config_hash=str(config.hash()),
    )
    subset = kw["fold_subset"] if fold_subset is None else list(fold_subset)
    design = make_design(
        ds,
        folds,
        regime=kw["regime"],
        fold_subset=subset,
        seeds=kw["seeds"],
        ctx=ctx,
        sizes=kw["sizes"],
        max_size=kw["max_size"],
        **kw["options"],
    )
    return StudyInputs(ds=ds, loaded=loaded, folds=folds, design=design, config=config, options=kw)


def _stage_signature(args: Sequence[str]) -> tuple[str, str, str]:
    """(regime, stored split label, config hash) of a stage, to match stored jobs cheaply."""
    ns = train_namespace(args)
    kw = _study_kwargs(ns)
    split = ns.split if ns.split_seed == 0 else f"{ns.split}/seed{ns.split_seed}"
    return ns.regime, split, str(kw["config"].hash())


def sample_jobs(
    df: pd.DataFrame,
    *,
    n_single: int,
    n_all_task: int = 1,
    seed: int = 0,
    max_level: int | None = None,
    all_task_max_level: int = 32,
) -> pd.DataFrame:
    """A seeded random sample of stored successful jobs: one row per job.

    ``n_single`` jobs of the targeted regimes (stl, pair, context), drawn round-robin over the
    splits so that every split is represented, at random folds and sizes (``n_level <=
    max_level`` when given, to bound the cost); ``n_all_task`` all-task jobs (mtl, random) among
    the cheap ones (``n_level <= all_task_max_level``; the smallest levels when none is), or
    as many more targeted jobs when the store holds no all-task job.
    """
    ok = df[df["status"] == "ok"]
    cols = ["job_id", "dataset", "split", "fold", "seed", "regime", "target", "n_level"]
    cols += ["config_hash", "task_set"]
    jobs = ok.drop_duplicates("job_id")[cols].sort_values("job_id").reset_index(drop=True)
    rng = np.random.default_rng(seed)
    picked: list[pd.DataFrame] = []
    multi = jobs[jobs["regime"].isin(_ALL_TASK)]
    if len(multi) == 0:  # e.g. a study whose all-task stage has not run yet
        n_single, n_all_task = n_single + n_all_task, 0
    single = jobs[jobs["regime"].isin(_TARGETED)]
    if max_level is not None:
        single = single[single["n_level"] <= max_level]
    if n_single > 0 and len(single):
        per_split = [g.iloc[rng.permutation(len(g))] for _, g in single.groupby("split")]
        order = []
        for k in range(max(len(g) for g in per_split)):
            order += [g.iloc[[k]] for g in per_split if k < len(g)]
            if len(order) >= n_single:
                break
        picked += order[:n_single]
    if n_all_task > 0 and len(multi):
        cheap = multi[multi["n_level"] <= all_task_max_level]
        if len(cheap) == 0:
            cheap = multi[multi["n_level"] == multi["n_level"].min()]
        take = rng.choice(len(cheap), size=min(n_all_task, len(cheap)), replace=False)
        picked.append(cheap.iloc[np.sort(take)])
    if not picked:
        return jobs.iloc[:0]
    return pd.concat(picked, ignore_index=True)


@dataclass
class VerifyReport:
    """What :func:`verify_store` compared.

    ``table``: one row per (job, task, metric): stored and recomputed ``value`` and ``diff``
    (absolute; 0 when both are NaN, inf when only one is), plus ``int_mismatch`` naming the
    integer fields (:data:`INT_FIELDS`) that differ. ``unmatched``: sampled job ids that no
    stage of the plan rebuilds (their key or configuration differs from every stage's).
    """

    table: pd.DataFrame
    jobs: pd.DataFrame
    unmatched: list[str]
    no_stage: int
    seconds: float

    @property
    def max_abs_diff(self) -> float:
        return float(self.table["diff"].max()) if len(self.table) else float("nan")

    @property
    def int_mismatches(self) -> int:
        return int((self.table["int_mismatch"] != "").sum()) if len(self.table) else 0

    def problems(
        self, *, max_abs_diff: float = MAX_ABS_DIFF, min_exact: float = MIN_EXACT_FRACTION
    ) -> list[str]:
        """Why this sample does not count as reproduced (an empty list: it does).

        - every sampled job rebuilt (its key and configuration hash match a stage's design);
        - data-determined counts (test positives/negatives, training and validation pairs) equal;
        - every metric within ``max_abs_diff`` of the stored one;
        - in each regime, at least ``min_exact`` of the (job, task, metric) values equal within
          :data:`EXACT_ATOL`, with equal epochs: AUC and AP are rank statistics, unchanged by
          float rounding of the scores unless two test scores swap, whereas any real change
          (data, seed, configuration, algorithm) moves nearly every value.
        """
        out = []
        t = self.table
        if self.unmatched:
            out.append(f"{len(self.unmatched)} sampled jobs not rebuilt by their stage")
        if len(t) == 0:
            return [*out, "nothing compared"]
        counts = ("n_test_pos", "n_test_neg", "n_train_pairs", "n_val_pairs", "row only")
        bad_counts = t["int_mismatch"].map(lambda s: any(c in s for c in counts))
        if bad_counts.any():
            out.append(f"{int(bad_counts.sum())} values with different data counts or missing rows")
        if not (t["diff"] <= max_abs_diff).all():
            out.append(f"max |diff| {t['diff'].max():.3g} > {max_abs_diff}")
        exact = (t["diff"] <= EXACT_ATOL) & (t["int_mismatch"] == "")
        for regime, frac in exact.groupby(t["regime"]).mean().items():
            if frac < min_exact:
                out.append(
                    f"{regime}: only {frac:.0%} of values reproduced exactly (< {min_exact:.0%})"
                )
        return out

    def __str__(self) -> str:
        t = self.table
        lines = [
            f"verified {self.jobs['job_id'].nunique()} stored jobs ({len(t)} metric values) "
            f"in {self.seconds:.1f} s: max |stored - retrained| = {self.max_abs_diff:.3g}, "
            f"{int((t['diff'] <= EXACT_ATOL).sum()) if len(t) else 0} equal within "
            f"{EXACT_ATOL:g} ({int((t['diff'] == 0).sum()) if len(t) else 0} bitwise), "
            f"{self.int_mismatches} rows with differing counts/epochs"
        ]
        if len(t):
            by = t.groupby(["regime", "metric"])["diff"].agg(["size", "max"]).reset_index()
            for r in by.itertuples():
                lines.append(
                    f"  {r.regime:8s} {r.metric:14s} {r.size:5d} values, max diff {r.max:.3g}"
                )
        if self.unmatched:
            lines.append(
                f"NOT REBUILT: {len(self.unmatched)} sampled jobs are not in the design their "
                f"stage builds today (e.g. {self.unmatched[0]})"
            )
        if self.no_stage:
            lines.append(
                f"{self.no_stage} stored jobs belong to no stage of the plan (other regime, split "
                "or configuration) and were not sampled"
            )
        return "\n".join(lines)


def verify_store(
    store: ResultsStore | str | os.PathLike,
    stages: Sequence[Sequence[str]],
    *,
    n_single: int = 6,
    n_all_task: int = 1,
    seed: int = 0,
    max_level: int | None = None,
    all_task_max_level: int = 32,
    trainer: Any = None,
) -> VerifyReport:
    """Retrain a seeded random sample of a store's jobs and compare them with the stored rows.

    Parameters
    ----------
    store: the results store (or its directory).
    stages: the ``mtlc train`` arguments (without ``--store``) of every stage that wrote to this
        store; a stored job is matched to the stage with its regime, split and configuration
        hash, then rebuilt by job id (:func:`study_design`).
    n_single, n_all_task, seed, max_level, all_task_max_level: the sample (:func:`sample_jobs`).
    trainer: the training function (default ``mtlc.training.train_models``).

    Returns a :class:`VerifyReport`; it does not judge: the caller picks the tolerance.
    """
    from mtlc.training import train_models

    t0 = time.perf_counter()
    trainer = trainer or train_models
    st = store if isinstance(store, ResultsStore) else ResultsStore(store)
    df = st.read()
    if len(df) == 0:
        raise MtlcError(f"results store {st.path} holds no results: nothing to verify")
    sigs = [(_stage_signature(a), list(a)) for a in stages]
    sig_cols = ["regime", "split", "config_hash"]
    stage_of: dict[tuple[str, str, str], list[str]] = {}
    for sig, a in sigs:
        stage_of.setdefault(sig, a)  # the first stage wins (identical signatures build alike)
    keys = list(zip(*(df[c] for c in sig_cols), strict=True))
    known = np.array([k in stage_of for k in keys], dtype=bool)
    no_stage = int(df.loc[~known, "job_id"].nunique())
    sample = sample_jobs(
        df[known],
        n_single=n_single,
        n_all_task=n_all_task,
        seed=seed,
        max_level=max_level,
        all_task_max_level=all_task_max_level,
    )
    if len(sample) == 0:
        raise MtlcError(
            f"results store {st.path}: no stored job matches a stage of the plan (regime, split "
            "and configuration hash); pass the mtlc train arguments that wrote it"
        )
    tables = []
    unmatched: list[str] = []
    datasets: dict[tuple, Any] = {}
    sample = sample.assign(
        _stage=[repr(stage_of[k]) for k in zip(*(sample[c] for c in sig_cols), strict=True)]
    )
    for _, jobs in sample.groupby("_stage", sort=False):
        args = stage_of[tuple(jobs.iloc[0][sig_cols])]
        ns = train_namespace(args)
        dkey = (ns.dataset, ns.recipe, tuple(ns.dataset_arg))
        inputs = study_design(
            ns, fold_subset=sorted(set(jobs["fold"].tolist())), dataset=datasets.get(dkey)
        )
        datasets[dkey] = inputs.loaded  # reuse the loaded data set across stages
        by_id = {s.key["job_id"]: s for s in inputs.design}
        specs = [by_id[j] for j in jobs["job_id"] if j in by_id]
        unmatched += [j for j in jobs["job_id"] if j not in by_id]
        if not specs:
            continue
        new = trainer(inputs.ds, specs, inputs.config)
        tables.append(_compare(df[df["job_id"].isin(jobs["job_id"])], new))
    table = pd.concat(tables, ignore_index=True) if tables else _compare(df.iloc[:0], None)
    return VerifyReport(
        table=table,
        jobs=sample.drop(columns="_stage"),
        unmatched=unmatched,
        no_stage=no_stage,
        seconds=time.perf_counter() - t0,
    )


def _compare(stored: pd.DataFrame, new: pd.DataFrame | None) -> pd.DataFrame:
    """Stored vs retrained rows per (job, task, metric); a row missing on one side is a mismatch."""
    on = ["job_id", "task", "metric"]
    keep = [*on, "split", "fold", "regime", "n_level", "value", *INT_FIELDS]
    s = stored[stored["status"] == "ok"][keep]
    if new is None:
        new = s.iloc[:0]
    n = new[[c for c in [*on, "value", *INT_FIELDS] if c in new.columns]]
    m = s.merge(n, on=on, how="outer", suffixes=("_stored", "_new"), indicator=True)
    a, b = m["value_stored"].to_numpy(float), m["value_new"].to_numpy(float)
    both_nan = np.isnan(a) & np.isnan(b)
    diff = np.where(both_nan, 0.0, np.abs(a - b))
    diff = np.where(np.isnan(diff), np.inf, diff)  # NaN on one side only, or a missing row
    bad = []
    for _, r in m.iterrows():
        f = [c for c in INT_FIELDS if r.get(f"{c}_stored") != r.get(f"{c}_new")]
        if r["_merge"] != "both":
            f = [f"row only in {'store' if r['_merge'] == 'left_only' else 'retrained'}"]
        bad.append(",".join(f))
    out = m[[*on, "split", "fold", "regime", "n_level"]].copy()
    out["stored"], out["retrained"], out["diff"], out["int_mismatch"] = a, b, diff, bad
    return out


# ---------------------------------------------------------------------------- TAG stores
#: TAG values count as reproduced when within this relative difference: two steps of the
#: coarsest mantissa a TAG store keeps (10 bits: 2^-11 each), so only a value that rounds to a
#: neighbouring stored float passes as equal; any real change moves nearly every value more.
TAG_RTOL = 2.0**-10


@dataclass
class TagVerifyReport:
    """What :func:`verify_tag_store` compared: one row per (job, source, target) of the
    whole-run values (``epoch = -1``) with stored and recomputed ``z``, ``cosine``, ``n_steps``
    and their differences (``z_diff``, ``cosine_diff``: relative to the stored value's size,
    0 when both are NaN, inf when only one is)."""

    table: pd.DataFrame
    jobs: list[str]
    unmatched: list[str]
    seconds: float

    def problems(self, *, rtol: float = TAG_RTOL) -> list[str]:
        """Why the sample does not count as reproduced (empty: it does): every sampled job is
        in the stage's plan, every pair's probe-step count is equal and every ``z`` and
        ``cosine`` is within ``rtol``."""
        t = self.table
        out = []
        if self.unmatched:
            out.append(f"{len(self.unmatched)} sampled jobs not in the stage's plan")
        if len(t) == 0:
            return [*out, "nothing compared"]
        if (t["n_steps_stored"] != t["n_steps_new"]).any():
            out.append(
                f"{int((t['n_steps_stored'] != t['n_steps_new']).sum())} pair step counts differ"
            )
        for c in ("z", "cosine"):
            if not (t[f"{c}_diff"] <= rtol).all():
                out.append(f"{c}: max relative diff {t[f'{c}_diff'].max():.3g} > {rtol:.3g}")
        return out

    def __str__(self) -> str:
        t = self.table
        line = f"verified {len(self.jobs)} stored TAG jobs ({len(t)} pairs) in {self.seconds:.1f} s"
        if len(t):
            eq = int(((t["z_diff"] == 0) & (t["cosine_diff"] == 0)).sum())
            line += (
                f": max relative |stored - recomputed| z {t['z_diff'].max():.3g}, cosine "
                f"{t['cosine_diff'].max():.3g}; {eq} of {len(t)} pairs equal"
            )
        if self.unmatched:
            line += f"\nNOT REBUILT: {len(self.unmatched)} sampled jobs (e.g. {self.unmatched[0]})"
        return line


def verify_tag_store(
    store: str | os.PathLike, stage_args: Sequence[str], *, n: int = 1, seed: int = 0
) -> TagVerifyReport:
    """Rerun a seeded random sample of ``n`` stored jobs of a TAG store and compare.

    ``stage_args``: the ``mtlc tag`` arguments (without ``--store``) that wrote the store; its
    jobs are planned with :func:`mtlc.commands.tag.plan` (the same job ids) and each sampled job
    is rerun with :func:`mtlc.affinity.tag_train` exactly as ``mtlc tag`` runs it, then stored
    through the same :func:`mtlc.affinity.tag_part_table` rounding. A TAG job is a whole
    training run (kiba: about 40 s, kinase200: about 4 min on one core).
    """
    import pyarrow.parquet as pq

    from mtlc.affinity import _tag_parts, tag_part_table, tag_train
    from mtlc.commands import tag

    t0 = time.perf_counter()
    ns = command_namespace(["tag", *stage_args])
    newest = {}
    for p, m in _tag_parts(store):  # newest last: the newest part of a job wins
        newest[m.get("job_id")] = (p, m)
    ok = sorted(j for j, (_, m) in newest.items() if m.get("status") == "ok")
    if not ok:
        raise MtlcError(f"TAG store {store} holds no successful job: nothing to verify")
    rng = np.random.default_rng(seed)
    sample = [ok[i] for i in sorted(rng.choice(len(ok), size=min(n, len(ok)), replace=False))]
    pl = tag.plan(ns)
    by_id = {job[3]: job for job in pl.jobs}
    unmatched = [j for j in sample if j not in by_id]
    frames = []
    cols = ["source", "target", "z", "cosine", "n_steps"]
    for j in sample:
        if j not in by_id:
            continue
        fold, s = by_id[j][0], by_id[j][1]
        res = tag_train(
            pl.ds, np.flatnonzero(pl.folds != fold), config=pl.cfg, epochs=ns.epochs,
            every=ns.every, seed=s,
        )  # fmt: skip
        new = tag_part_table(res, job_id=j, epoch_rows=False, mantissa_bits=ns.mantissa_bits)
        old = pq.read_table(newest[j][0]).to_pandas()
        old = old[old["epoch"] == -1]
        m = old[cols].merge(
            new.to_pandas()[cols],
            on=["source", "target"],
            how="outer",
            suffixes=("_stored", "_new"),
        )
        for c in ("z", "cosine"):
            a = m[f"{c}_stored"].to_numpy(float)
            b = m[f"{c}_new"].to_numpy(float)
            both = np.isnan(a) & np.isnan(b)
            with np.errstate(invalid="ignore", divide="ignore"):
                d = np.abs(a - b) / np.maximum(np.abs(a), np.finfo(np.float32).tiny)
            m[f"{c}_diff"] = np.where(both, 0.0, np.where(np.isnan(d), np.inf, d))
        frames.append(m.assign(job_id=j, fold=fold, seed=s))
    table = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    return TagVerifyReport(table, sample, unmatched, time.perf_counter() - t0)
