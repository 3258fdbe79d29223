"""Training many small multi-task networks: configuration, model specs and the public entry point.

A learning-curve study trains thousands of networks that differ only in which (compound, task)
pairs they see. Each network is described by a :class:`ModelSpec`; :func:`train_models` trains
them all (stacking compatible ones into *fleets*, see :mod:`mtlc.fleet`) and returns one long
table of test-fold metrics.

Every random choice of a model comes from its own ``seed`` (inner validation split, batch order,
initial weights, dropout masks), never from a global or fleet-wide stream, so a model's numbers do
not depend on which other models it was trained with.

:func:`train_reference` trains one spec with a plain per-model PyTorch loop
(:class:`mtlc.models.MultiTaskNet` + ``torch.optim.Adam``), from the same initial weights, the same
inner validation split and the same batch order. It is the yardstick for the fleet (tests and
``benchmarks/bench_fleet.py``), not the production path.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from mtlc.datasets._core import MultiTaskDataset
from mtlc.errors import ConfigError
from mtlc.evaluate import evaluation_rows

__all__ = [
    "TrainConfig",
    "ModelSpec",
    "PreparedModel",
    "prepare_specs",
    "init_weights",
    "train_models",
    "compare_engines",
    "train_reference",
    "RESULT_COLUMNS",
]

#: Columns every result table has, after the spec's ``key`` columns.
RESULT_COLUMNS = [
    "task",
    "metric",
    "value",
    "note",
    "n_test_pos",
    "n_test_neg",
    "epochs",
    "best_epoch",
    "train_seconds",
    "n_train_pairs",
    "n_val_pairs",
]


@dataclass(frozen=True)
class TrainConfig:
    """Hyperparameters shared by every network of a study.

    hidden:
        Widths of the trunk's hidden layers. The default ``(128,)`` was chosen by measurement
        (``benchmarks/README.md``): on kiba single-task cells it reaches the same test AUC as
        256 units (fold 0, 201 tasks: 0.748 vs 0.742 at n = 512, 0.630 vs 0.627 at n = 64) for
        about 1.5x less compute, which keeps the exact-curve study within its time budget. The
        first layer dominates a fleet's cost (Adam moves every trainable row every step).
    dropout:
        Dropout probability after every hidden ReLU.
    lr:
        Adam learning rate (betas 0.9/0.999, eps 1e-8, as ``torch.optim.Adam``).
    batch_size:
        Compounds per mini-batch (a compound carries all its labelled tasks of the model).
    max_epochs:
        Upper bound on passes over the model's training compounds.
    patience:
        Early stopping: stop after ``patience`` epochs without a strict improvement of the inner
        validation loss; the weights of the best epoch are kept. Never uses the test fold.
    min_steps:
        Optimizer steps every model takes at least, whatever its size. A model with ``nb``
        batches per epoch trains for up to ``max(max_epochs, ceil(min_steps / nb))`` epochs and
        early stopping cannot stop it before epoch ``ceil(min_steps / nb)`` (patience is counted
        in epochs as usual after that). Without it a model with n <= ``batch_size`` compounds
        takes one Adam step per epoch, and small-n learning-curve points measure optimization
        rather than data. 0 = off (the budget is ``max_epochs`` whatever the size).
    val_fraction:
        Fraction of each model's training *compounds* held out as inner validation (0 turns
        early stopping off: the model trains its whole epoch budget and the last epoch is kept).
    min_val_compounds:
        Smallest useful inner validation set. When > 0, a model holds out
        ``max(min_val_compounds, round(val_fraction * n))`` compounds if it has at least
        ``3 * min_val_compounds`` training compounds, and otherwise none (no early stopping: it
        trains its whole budget and keeps the last epoch), because a loss on 1-2 compounds
        picks the epoch by noise. 0 = the plain rule ``max(1, round(val_fraction * n))``.
    weight_decay:
        L2 penalty added to the gradient (``torch.optim.Adam`` semantics).
    device:
        ``"auto"`` (CUDA when present, else CPU), ``"cpu"``, ``"cuda"``, ...
    dtype:
        ``"float32"`` (study) or ``"float64"`` (tests).
    memory_budget_mb:
        Memory budget of one fleet of models trained together, in MiB: every buffer the fleet
        allocates (parameters and Adam state, label codes, bit lists, step activations; see
        :func:`mtlc.fleet.fleet_memory`), not the data set itself. Fleets are cut to fit; it
        changes how models are grouped, and their numbers only at float rounding (see
        :mod:`mtlc.fleet`; not part of :meth:`hash`). The
        study runner also keeps each chunk's prepared labels and test scores within half of
        it. The default, 768, keeps a kiba or kinase200 ``mtlc train`` process (0.7-0.9 GB of
        data set and runtime) under 3 GB in every regime (``benchmarks/README.md``).
    torch_threads:
        CPU threads of torch inside fleet training (restored afterwards). 0 (default) = auto:
        fleets of one- or two-head models (single-task, pairwise) run on one thread, because
        their small matrix products lose more to thread synchronisation than they gain (and a
        study runs one process per core); all-task fleets use torch's own setting. Not part of
        :meth:`hash` (threads never change the numbers on CPU).
    engine:
        ``"torch"`` (default; the engine of the stored study) trains a fleet's models together,
        each operation applied to all of them at once (:class:`mtlc.fleet._Trainer`), on CPU or
        CUDA. ``"compiled"`` (CPU, one hidden layer, needs numba) trains them one after the
        other in compiled kernels, one call per model (:mod:`mtlc._compiled`), so each model's state
        stays in the CPU cache: 2-4x faster than ``"torch"`` on kiba's single-task cells
        (``benchmarks/README.md``). Same weights, batches, dropout masks, early stopping and
        Adam; sums in another order, so numbers agree at float rounding (not part of
        :meth:`hash`, like ``memory_budget_mb``).
    """

    hidden: tuple[int, ...] = (128,)
    dropout: float = 0.2
    lr: float = 1e-3
    batch_size: int = 256
    max_epochs: int = 25
    patience: int = 5
    val_fraction: float = 0.1
    min_steps: int = 0
    min_val_compounds: int = 0
    weight_decay: float = 0.0
    device: str = "auto"
    dtype: str = "float32"
    memory_budget_mb: int = 768
    torch_threads: int = 0
    engine: str = "torch"

    def __post_init__(self) -> None:
        object.__setattr__(self, "hidden", tuple(int(h) for h in self.hidden))
        if not self.hidden or min(self.hidden) < 1:
            raise ConfigError(f"TrainConfig.hidden must be positive widths, got {self.hidden}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"TrainConfig.dropout must be in [0, 1), got {self.dropout}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ConfigError(
                f"TrainConfig.val_fraction must be in [0, 1), got {self.val_fraction}"
            )
        if self.batch_size < 1 or self.max_epochs < 1 or self.patience < 1:
            raise ConfigError("TrainConfig.batch_size, max_epochs and patience must be >= 1")
        if self.min_steps < 0 or self.min_val_compounds < 0:
            raise ConfigError("TrainConfig.min_steps and min_val_compounds must be >= 0")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ConfigError("TrainConfig.lr must be > 0 and weight_decay >= 0")
        if self.torch_threads < 0:
            raise ConfigError(
                f"TrainConfig.torch_threads must be >= 0 (0 = auto), got {self.torch_threads}"
            )
        if self.memory_budget_mb < 1:
            raise ConfigError(
                f"TrainConfig.memory_budget_mb must be >= 1 (MiB), got {self.memory_budget_mb}"
            )
        if self.engine not in ("torch", "compiled"):
            raise ConfigError(
                f"TrainConfig.engine must be 'torch' or 'compiled', got {self.engine!r}"
            )
        if self.engine == "compiled" and len(self.hidden) != 1:
            raise ConfigError(
                f"TrainConfig.engine='compiled' trains networks with one hidden layer, got "
                f"hidden={self.hidden}; use engine='torch' for deeper trunks"
            )
        if self.engine == "compiled" and self.device not in ("auto", "cpu"):
            raise ConfigError(
                f"TrainConfig.engine='compiled' runs on the CPU, got device={self.device!r}; "
                "use engine='torch' on a GPU"
            )
        if self.dtype not in ("float32", "float64"):
            raise ConfigError(
                f"TrainConfig.dtype must be 'float32' or 'float64', got {self.dtype!r}"
            )

    @property
    def torch_dtype(self) -> torch.dtype:
        return torch.float32 if self.dtype == "float32" else torch.float64

    def hash(self) -> str:
        """Stable 12-hex-digit hash of everything that changes the numbers.

        ``device``, ``memory_budget_mb``, ``torch_threads`` and ``engine`` are left out: the
        same config on CPU or CUDA, in bigger or smaller fleets, on more or fewer threads, with
        either engine, is the same experiment (same numbers up to float rounding).
        ``min_steps`` and ``min_val_compounds`` are left out when 0 (off), so configs written
        before they existed keep their hash (and their cached results).
        """
        d = asdict(self)
        d.pop("device")
        d.pop("memory_budget_mb")
        d.pop("torch_threads")
        d.pop("engine")
        for k in ("min_steps", "min_val_compounds"):
            if d[k] == 0:
                d.pop(k)
        d["hidden"] = list(d["hidden"])
        blob = json.dumps(d, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()[:12]


@dataclass(frozen=True)
class ModelSpec:
    """One network to train.

    train_rows, train_cols:
        int64 arrays of equal length: the labelled (compound index, task index) pairs the model
        trains on (inner validation is carved from these, by compound). Every pair must be
        labelled in the data set.
    test_compounds:
        Compound indices of the test fold; must not overlap the training compounds.
    eval_tasks:
        Task indices evaluated on the test fold (e.g. just the target for a single-task model).
    seed:
        The model's own seed (validation split, batch order, initial weights, dropout).
    key:
        Metadata copied into every result row (fold, regime, task, n_task, ...).
    """

    train_rows: np.ndarray
    train_cols: np.ndarray
    test_compounds: np.ndarray
    eval_tasks: np.ndarray
    seed: int
    key: Mapping[str, Any] = field(default_factory=dict)


@dataclass
class PreparedModel:
    """A spec resolved against a data set: what a trainer needs, in local coordinates.

    ``tasks`` (T,) are the dataset task indices of the model's heads (sorted union of training
    and evaluation tasks). Labels are stored as dense ``(n, T)`` int8 *codes* (0 = unlabelled,
    1 = inactive, 2 = active; one byte per cell instead of the 8 of a float32 label plus a float32
    mask, which matters for all-task models: 201 heads x 45,000 compounds); the properties
    ``train_y``/``train_mask`` (and ``val_``, ``test_``) give the float32 ``(n, T)`` 0/1 label
    and mask matrices on demand. ``test_lab`` has one column per *evaluation* task
    (``eval_local`` maps them to heads). Seeds are derived from the spec seed, one stream per
    purpose.
    """

    index: int
    tasks: np.ndarray
    train_compounds: np.ndarray
    train_lab: np.ndarray
    val_compounds: np.ndarray
    val_lab: np.ndarray
    test_compounds: np.ndarray
    test_lab: np.ndarray
    eval_local: np.ndarray
    order_seed: int
    init_seed: int
    dropout_seed: int
    n_train_pairs: int
    n_val_pairs: int

    @property
    def n_heads(self) -> int:
        return len(self.tasks)

    # float32 views of the label codes, built on demand (reference loop, evaluation, tests)
    @property
    def train_y(self) -> np.ndarray:
        return (self.train_lab == 2).astype(np.float32)

    @property
    def train_mask(self) -> np.ndarray:
        return (self.train_lab > 0).astype(np.float32)

    @property
    def val_y(self) -> np.ndarray:
        return (self.val_lab == 2).astype(np.float32)

    @property
    def val_mask(self) -> np.ndarray:
        return (self.val_lab > 0).astype(np.float32)

    @property
    def test_y(self) -> np.ndarray:
        return (self.test_lab == 2).astype(np.float32)

    @property
    def test_mask(self) -> np.ndarray:
        return (self.test_lab > 0).astype(np.float32)

    def n_batches(self, batch_size: int) -> int:
        return max(1, -(-len(self.train_compounds) // batch_size))

    def epoch_budget(self, config: TrainConfig) -> tuple[int, int]:
        """``(min_epochs, max_epochs)`` of this model: early stopping may not stop it before
        ``min_epochs`` (the epochs that make ``config.min_steps`` optimizer steps) and it never
        trains more than ``max(config.max_epochs, min_epochs)``."""
        nb = self.n_batches(config.batch_size)
        e_min = -(-config.min_steps // nb)
        return e_min, max(config.max_epochs, e_min)


@dataclass
class TrainOutcome:
    """What a trainer returns for one model: test scores of the best epoch and bookkeeping."""

    test_scores: np.ndarray  # (n_test, T) logits
    epochs: int
    best_epoch: int
    seconds: float
    val_losses: list[float] = field(default_factory=list)


# ---------------------------------------------------------------------------- preparation
def _seeds(seed: int) -> tuple[int, int, int, int]:
    """Four independent 32-bit seeds (split, order, init, dropout) from one spec seed."""
    kids = np.random.SeedSequence(int(seed)).spawn(4)
    return tuple(int(k.generate_state(1, dtype=np.uint32)[0]) for k in kids)  # type: ignore[return-value]


def prepare_specs(
    ds: MultiTaskDataset, specs: Sequence[ModelSpec], config: TrainConfig
) -> list[PreparedModel]:
    """Resolve specs against ``ds``: heads, inner validation split (by compound), label matrices.

    Raises :class:`ConfigError` naming the spec when a training pair is unlabelled, an index is
    out of range, or the test fold overlaps the training compounds.
    """
    if ds.X is None:
        raise ConfigError(f"data set {ds.name!r} has no features; featurize it first")
    key_all = ds.rows.astype(np.int64) * ds.n_tasks + ds.cols.astype(np.int64)
    order = np.argsort(key_all, kind="stable")
    key_sorted = key_all[order]
    y_sorted = (np.asarray(ds.y)[order] == 1).astype(np.int64)
    test_codes = _TestLabels(ds)
    out = []
    for i, spec in enumerate(specs):
        rows = np.asarray(spec.train_rows, dtype=np.int64)
        cols = np.asarray(spec.train_cols, dtype=np.int64)
        test = np.unique(np.asarray(spec.test_compounds, dtype=np.int64))
        evt = np.unique(np.asarray(spec.eval_tasks, dtype=np.int64))
        if rows.shape != cols.shape or rows.ndim != 1:
            raise ConfigError(
                f"spec {i} ({dict(spec.key)}): train_rows and train_cols differ in shape"
            )
        if len(rows) == 0:
            raise ConfigError(f"spec {i} ({dict(spec.key)}): no training pairs")
        for name, arr, hi in (
            ("train_rows", rows, ds.n_compounds),
            ("train_cols", cols, ds.n_tasks),
            ("test_compounds", test, ds.n_compounds),
            ("eval_tasks", evt, ds.n_tasks),
        ):
            if len(arr) and (arr.min() < 0 or arr.max() >= hi):
                raise ConfigError(f"spec {i} ({dict(spec.key)}): {name} out of range 0..{hi - 1}")
        k = rows * ds.n_tasks + cols
        pos = np.searchsorted(key_sorted, k)
        ok = (pos < len(key_sorted)) & (key_sorted[np.minimum(pos, len(key_sorted) - 1)] == k)
        if not ok.all():
            j = int(np.flatnonzero(~ok)[0])
            raise ConfigError(
                f"spec {i} ({dict(spec.key)}): training pair (compound {rows[j]}, task {cols[j]}) "
                f"has no label in {ds.name!r}; list only labelled pairs"
            )
        if len(np.unique(k)) != len(k):
            raise ConfigError(f"spec {i} ({dict(spec.key)}): duplicated training pairs")
        comps = np.unique(rows)
        if np.intersect1d(comps, test, assume_unique=True).size:
            raise ConfigError(
                f"spec {i} ({dict(spec.key)}): test compounds overlap training compounds"
            )
        tasks = np.union1d(np.unique(cols), evt)
        s_split, s_order, s_init, s_drop = _seeds(spec.seed)
        n_val = 0
        mv = config.min_val_compounds
        if config.val_fraction > 0 and mv > 0:
            if len(comps) >= 3 * mv:
                n_val = max(mv, int(round(config.val_fraction * len(comps))))
        elif config.val_fraction > 0 and len(comps) >= 2:
            n_val = min(len(comps) - 1, max(1, int(round(config.val_fraction * len(comps)))))
        perm = np.random.default_rng(s_split).permutation(len(comps))
        val_c = np.sort(comps[perm[:n_val]])
        tr_c = np.sort(comps[perm[n_val:]])
        # Only the spec's pairs are labels for this model (not every label the data set holds).
        local = np.searchsorted(tasks, cols)
        code = (1 + y_sorted[pos]).astype(np.int8)  # 1 inactive, 2 active
        is_val = np.zeros(ds.n_compounds, dtype=bool)
        is_val[val_c] = True
        v = is_val[rows]
        tl = np.zeros((len(tr_c), len(tasks)), dtype=np.int8)
        tl[np.searchsorted(tr_c, rows[~v]), local[~v]] = code[~v]
        vl = np.zeros((len(val_c), len(tasks)), dtype=np.int8)
        vl[np.searchsorted(val_c, rows[v]), local[v]] = code[v]
        # Test: labelled compounds of the evaluation tasks only.
        test_c, el = test_codes(test, evt)
        eval_local = np.searchsorted(tasks, evt)
        out.append(
            PreparedModel(
                index=i,
                tasks=tasks,
                train_compounds=tr_c,
                train_lab=tl,
                val_compounds=val_c,
                val_lab=vl,
                test_compounds=test_c,
                test_lab=el,
                eval_local=eval_local,
                order_seed=s_order,
                init_seed=s_init,
                dropout_seed=s_drop,
                n_train_pairs=int((~v).sum()),
                n_val_pairs=int(v.sum()),
            )
        )
    return out


class _TestLabels:
    """Test-fold label codes of evaluation tasks, from per-task columns built once per call.

    Returns the sorted test compounds labelled in any of the tasks and their ``(n, E)`` int8
    codes; equal to slicing the dense label matrix, without building it per spec.
    """

    def __init__(self, ds: MultiTaskDataset) -> None:
        order = np.lexsort((ds.rows, ds.cols))
        self.comp = ds.rows[order].astype(np.int64)
        self.code = (1 + (np.asarray(ds.y)[order] == 1)).astype(np.int8)
        self.ptr = np.searchsorted(ds.cols[order], np.arange(ds.n_tasks + 1))
        self.n = ds.n_compounds
        self._test: np.ndarray | None = None
        self._is_test = np.zeros(self.n, dtype=bool)

    def __call__(self, test: np.ndarray, tasks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._test is None or not np.array_equal(test, self._test):
            # specs of one fold share their test set: the mask is rebuilt only when it changes
            self._is_test[:] = False
            self._is_test[test] = True
            self._test = test
        cs, ks, js = [], [], []
        for j, t in enumerate(tasks):
            c = self.comp[self.ptr[t] : self.ptr[t + 1]]
            inside = self._is_test[c]
            cs.append(c[inside])
            ks.append(self.code[self.ptr[t] : self.ptr[t + 1]][inside])
            js.append(np.full(int(inside.sum()), j, dtype=np.int64))
        c = np.concatenate(cs) if cs else np.zeros(0, dtype=np.int64)
        comps = np.unique(c)
        out = np.zeros((len(comps), len(tasks)), dtype=np.int8)
        if len(c):
            out[np.searchsorted(comps, c), np.concatenate(js)] = np.concatenate(ks)
        return comps, out


def init_weights(
    n_features: int, n_heads: int, hidden: Sequence[int], seed: int
) -> list[torch.Tensor]:
    """Initial weights of one network, float32, drawn from a generator seeded with ``seed``.

    Returns ``[W1 (F, H0), b1 (H0,), W2 (H0, H1), b2 (H1,), ..., Wh (H_last, T), bh (T,)]`` with
    weights stored input-major (``h @ W``). Distribution as ``nn.Linear``:
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases.
    """
    g = torch.Generator().manual_seed(int(seed))
    sizes = [n_features, *[int(h) for h in hidden], n_heads]
    out = []
    for a, b in zip(sizes[:-1], sizes[1:], strict=True):
        bound = 1.0 / np.sqrt(a)
        for shape in ((a, b), (b,)):
            # in place: the same float32 operations as (u * 2 - 1) * bound, no temporaries
            out.append(torch.rand(shape, generator=g).mul_(2).sub_(1).mul_(bound))
    return out


def batch_order(order_seed: int, n: int) -> np.random.Generator:
    """The generator that yields a model's per-epoch permutations (``rng.permutation(n)``)."""
    return np.random.default_rng(order_seed)


# ---------------------------------------------------------------------------- entry point
def train_models(
    ds: MultiTaskDataset,
    specs: Sequence[ModelSpec],
    config: TrainConfig,
    *,
    progress: Callable[[int], None] | None = None,
    max_fleet_bytes: int | None = None,
) -> pd.DataFrame:
    """Train every spec and evaluate it on its test fold.

    Specs with the same number of heads are stacked into fleets (:mod:`mtlc.fleet`), each
    within ``max_fleet_bytes`` of estimated memory (default ``config.memory_budget_mb`` MiB).
    Returns a long table with one row per (spec, eval task, metric): the spec's ``key`` columns, then :data:`RESULT_COLUMNS`
    (``task`` is the task id string, ``metric`` is ``"roc_auc"`` or ``"avg_precision"``,
    ``value`` is NaN with a ``note`` when undefined, ``train_seconds`` is the model's share of
    its fleet's wall time, proportional to the optimizer steps it took).

    ``progress(k)`` is called with the number of specs that just finished (an increment, so
    ``tqdm.update`` fits).
    """
    from mtlc.fleet import train_fleets

    if not specs:
        return pd.DataFrame(columns=RESULT_COLUMNS)
    prepared = prepare_specs(ds, specs, config)
    outcomes = train_fleets(ds.X, prepared, config, progress=progress, max_bytes=max_fleet_bytes)
    return _result_table(ds, specs, prepared, outcomes)


def compare_engines(
    ds: MultiTaskDataset,
    specs: Sequence[ModelSpec],
    config: TrainConfig,
    *,
    engines: Sequence[str] = ("torch", "compiled"),
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train the same specs with each training engine (``TrainConfig.engine``), side by side.

    Each engine first trains one spec untimed (imports, numba's compilation or cache load), then
    all specs, timed in CPU seconds of this process (``time.process_time``: the same on a busy
    machine as on a quiet one, up to cache effects).

    Returns ``(per_model, per_engine)``: ``per_model`` has one row per (spec, evaluated task)
    with the spec's key columns, ``task``, and per engine ``auc_<engine>`` (test ROC-AUC) and
    ``epochs_<engine>``; ``per_engine`` one row per engine with ``models``, ``cpu_seconds``
    (training and test scoring of all specs), ``mean_auc`` and ``mean_epochs``.
    """
    if not specs:
        raise ConfigError("compare_engines needs at least one ModelSpec")
    per_model, summary = None, []
    for engine in engines:
        cfg = replace(config, engine=engine)
        train_models(ds, specs[:1], cfg)  # warm-up, untimed
        c0 = time.process_time()
        res = train_models(ds, specs, cfg)
        cpu = time.process_time() - c0
        auc = res[res["metric"] == "roc_auc"]
        cols = [c for c in auc.columns if c not in RESULT_COLUMNS or c == "task"]
        part = auc[cols].assign(
            **{
                f"auc_{engine}": auc["value"].to_numpy(),
                f"epochs_{engine}": auc["epochs"].to_numpy(),
            }
        )
        per_model = part if per_model is None else per_model.merge(part, on=cols, how="outer")
        summary.append(
            {
                "engine": engine,
                "models": len(specs),
                "cpu_seconds": cpu,
                "mean_auc": float(auc["value"].mean()),
                "mean_epochs": float(auc.drop_duplicates(cols)["epochs"].mean()),
            }
        )
    return per_model.reset_index(drop=True), pd.DataFrame(summary)


def _result_table(
    ds: MultiTaskDataset,
    specs: Sequence[ModelSpec],
    prepared: Sequence[PreparedModel],
    outcomes: Sequence[TrainOutcome],
) -> pd.DataFrame:
    task_ids = ds.tasks["task_id"].to_numpy()
    frames = []
    for spec, pm, oc in zip(specs, prepared, outcomes, strict=True):
        rows = evaluation_rows(
            pm.test_y,
            pm.test_mask,
            oc.test_scores[:, pm.eval_local],
            task_ids[pm.tasks[pm.eval_local]],
        )
        for r in rows:
            r.update(
                epochs=oc.epochs,
                best_epoch=oc.best_epoch,
                train_seconds=oc.seconds,
                n_train_pairs=pm.n_train_pairs,
                n_val_pairs=pm.n_val_pairs,
            )
            frames.append({**dict(spec.key), **r})
    return pd.DataFrame(frames)


# ---------------------------------------------------------------------------- reference loop
def train_reference(
    X: sp.csr_matrix, pm: PreparedModel, config: TrainConfig, *, dropout_seed: int | None = None
) -> TrainOutcome:
    """Train one prepared model with a plain PyTorch loop (the fleet's yardstick).

    Same initial weights (:func:`init_weights`), inner validation split, batch order, loss and
    early stopping as the fleet; ``torch.optim.Adam`` and ``nn.functional.dropout`` driven by
    ``torch.manual_seed(dropout_seed)`` (so with dropout on, the masks differ from the fleet's,
    which draws them from the model's own generator).
    """
    from mtlc.models import MultiTaskNet, SparseBatch, masked_bce, resolve_device

    t0 = time.perf_counter()
    dev = resolve_device(config.device)
    dt = config.torch_dtype
    net = MultiTaskNet(X.shape[1], pm.n_heads, hidden=config.hidden, dropout=config.dropout)
    w = init_weights(X.shape[1], pm.n_heads, config.hidden, pm.init_seed)
    with torch.no_grad():
        net.embed.weight.copy_(w[0])
        net.bias0.copy_(w[1])
        for j, layer in enumerate(net.layers):
            layer.weight.copy_(w[2 + 2 * j].T)
            layer.bias.copy_(w[3 + 2 * j])
        net.head.weight.copy_(w[-2].T)
        net.head.bias.copy_(w[-1])
    net = net.to(device=dev, dtype=dt)
    opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    torch.manual_seed(pm.dropout_seed if dropout_seed is None else dropout_seed)

    def tens(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(a, dtype=dt, device=dev)

    ty, tm = tens(pm.train_y), tens(pm.train_mask)
    vy, vm = tens(pm.val_y), tens(pm.val_mask)
    xv = SparseBatch.from_csr(X, pm.val_compounds, device=dev)
    rng = batch_order(pm.order_seed, len(pm.train_compounds))
    n = len(pm.train_compounds)
    best = float("inf")
    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    best_epoch = 0
    losses = []
    epoch = 0
    e_min, e_max = pm.epoch_budget(config)
    for epoch in range(1, e_max + 1):
        net.train()
        perm = rng.permutation(n)
        for s in range(0, n, config.batch_size):
            b = perm[s : s + config.batch_size]
            xb = SparseBatch.from_csr(X, pm.train_compounds[b], device=dev)
            loss = masked_bce(net(xb), ty[b], tm[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if len(pm.val_compounds):
            net.eval()
            with torch.no_grad():
                vl = float(masked_bce(net(xv), vy, vm))
        else:
            vl = -float(epoch)  # no validation: every epoch "improves", the last one is kept
        losses.append(vl)
        if vl < best:
            best, best_epoch = vl, epoch
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        elif epoch >= e_min and epoch - best_epoch >= config.patience:
            break
    net.load_state_dict(best_state)
    net.eval()
    with torch.no_grad():
        xt = SparseBatch.from_csr(X, pm.test_compounds, device=dev)
        scores = (
            net(xt).double().cpu().numpy() if len(pm.test_compounds) else np.zeros((0, pm.n_heads))
        )
    return TrainOutcome(
        test_scores=scores,
        epochs=epoch,
        best_epoch=best_epoch,
        seconds=time.perf_counter() - t0,
        val_losses=losses,
    )
