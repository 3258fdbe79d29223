"""Small synthetic sparse multi-task data for the training-engine tests (fast, seeded)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mtlc.datasets._core import MultiTaskDataset
from mtlc.training import ModelSpec


def toy(
    n: int = 400, n_bits: int = 128, k: int = 4, nnz: int = 12, density: float = 0.6, seed: int = 0
) -> MultiTaskDataset:
    """``n`` compounds with ``nnz`` random bits of ``n_bits``; task labels from a shared linear
    score plus a task-specific one (so tasks are related), thresholded at their 60th percentile."""
    rng = np.random.default_rng(seed)
    cols = np.concatenate([rng.choice(n_bits, nnz, replace=False) for _ in range(n)])
    X = sp.csr_matrix(
        (np.ones(n * nnz, np.float32), (np.repeat(np.arange(n), nnz), cols)), shape=(n, n_bits)
    )
    shared = rng.normal(size=(n_bits, 1))
    own = rng.normal(size=(n_bits, k))
    score = np.asarray(X @ (shared + 0.7 * own))
    lab = score > np.quantile(score, 0.6, axis=0)
    rows, tcols = np.nonzero(rng.random((n, k)) < density)
    keep = np.zeros(n, bool)
    keep[rows] = True
    table = pd.DataFrame(
        {
            "compound_id": [f"c{r:05d}" for r in rows],
            "task_id": [f"t{c}" for c in tcols],
            "label": lab[rows, tcols].astype(int),
        }
    )
    ds = MultiTaskDataset.from_long("toy", table)
    ds.X = X[np.flatnonzero(keep)]
    return ds


def stl_specs(
    ds: MultiTaskDataset, sizes: list[int] | int, *, test_every: int = 5, seed: int = 0
) -> list[ModelSpec]:
    """One single-task spec per (task, size): the first ``size`` training pairs of the task."""
    test = np.arange(0, ds.n_compounds, test_every)
    is_test = np.zeros(ds.n_compounds, bool)
    is_test[test] = True
    sizes = [sizes] * ds.n_tasks if isinstance(sizes, int) else sizes
    specs = []
    for t, size in enumerate(sizes):
        pool = ds.rows[(ds.cols == t) & ~is_test[ds.rows]].astype(np.int64)
        take = np.sort(np.random.default_rng(seed + t).permutation(pool)[:size])
        specs.append(
            ModelSpec(
                train_rows=take,
                train_cols=np.full(len(take), t, dtype=np.int64),
                test_compounds=test,
                eval_tasks=np.array([t]),
                seed=seed * 1000 + t,
                key={"fold": 0, "regime": "stl", "target": t, "n": size},
            )
        )
    return specs


def all_task_spec(ds: MultiTaskDataset, *, test_every: int = 5, seed: int = 0) -> ModelSpec:
    """One spec training on every labelled non-test pair, evaluated on every task."""
    test = np.arange(0, ds.n_compounds, test_every)
    tr = ~np.isin(ds.rows, test)
    return ModelSpec(
        train_rows=ds.rows[tr].astype(np.int64),
        train_cols=ds.cols[tr].astype(np.int64),
        test_compounds=test,
        eval_tasks=np.arange(ds.n_tasks),
        seed=seed,
        key={"fold": 0, "regime": "mtl"},
    )
