"""Benchmark 2: mtlc learning curves vs. the way a user would do it today with scikit-learn.

For the same tasks, folds and training sizes (the same nested subsamples), single-task learning
curves are computed three ways, side by side in one run:

- ``mtlc``: :func:`mtlc.designs.make_design` (regime ``stl``) + :func:`mtlc.training.train_models`
  (every model of the study trained together, in fleets);
- ``sklearn LR``: ``sklearn.model_selection.learning_curve`` with ``LogisticRegression``, one
  call per task (``cv`` = the same folds, ``train_sizes`` = the same sizes);
- ``sklearn MLP``: the same with ``MLPClassifier`` (one hidden layer of the same width, Adam,
  the same learning rate, batch size and epoch budget, early stopping off).

sklearn's ``learning_curve`` takes the first n compounds of each fold's (shuffled) training
set, so its subsamples are nested too, but random rather than stratified: small sizes may hold
one class (sklearn then scores NaN). The table reports wall time, models per second and the
mean test ROC-AUC per size.

    .venv/bin/python benchmarks/bench_sklearn.py --quick        # ~1-3 min on 2 cores
    .venv/bin/python benchmarks/bench_sklearn.py --tasks 20 --folds 10 --max-size 1024
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
from sklearn.exceptions import ConvergenceWarning, FitFailedWarning
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import learning_curve
from sklearn.neural_network import MLPClassifier

from mtlc.designs import DesignContext, geometric_grid, make_design
from mtlc.study import assign_folds, learning_curves, load_dataset, select_tasks
from mtlc.training import TrainConfig, train_models


def sklearn_curves(ds, folds, fold_ids, sizes, estimator) -> tuple[pd.DataFrame, float]:
    """Per task: ``learning_curve`` over the given folds; returns (long table, seconds)."""
    X = ds.X.tocsr()
    rows = []
    t0 = time.perf_counter()
    for t in range(ds.n_tasks):
        sel = ds.cols == t
        comp, y = ds.rows[sel], ds.y[sel].astype(int)
        f = folds[comp]
        cv = [(np.flatnonzero(f != k), np.flatnonzero(f == k)) for k in fold_ids]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", FitFailedWarning)  # one-class subsets: NaN, counted
            n, _, test = learning_curve(
                estimator, X[comp], y, train_sizes=sizes, cv=cv, scoring="roc_auc",
                shuffle=True, random_state=0, n_jobs=1, error_score=np.nan,
            )  # fmt: skip
        for i, size in enumerate(n):
            for j, k in enumerate(fold_ids):
                rows.append(
                    {"task": ds.tasks["task_id"].iloc[t], "fold": k, "n_task": int(size),
                     "value": float(test[i, j])}
                )  # fmt: skip
    return pd.DataFrame(rows), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="kiba")
    ap.add_argument("--split", default="scaffold", choices=["compound", "scaffold"])
    ap.add_argument("--tasks", type=int, default=20)
    ap.add_argument("--folds", type=int, default=10, help="folds of the split (all are run)")
    ap.add_argument("--max-size", type=int, default=1024)
    ap.add_argument("--max-epochs", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--quick", action="store_true", help="4 tasks, 3 folds, sizes up to 128")
    args = ap.parse_args()
    if args.quick:  # explicit options still win over the quick defaults
        args.tasks, args.folds, args.max_size = 4, 3, 128
        args.max_epochs = min(args.max_epochs, 10)

    ds = load_dataset(args.dataset)
    idx, _ = select_tasks(ds, args.tasks)
    ds = ds.subset(tasks=idx)
    folds = assign_folds(ds, n_folds=args.folds, split=args.split)
    fold_ids = list(range(args.folds))
    # sizes every fold can give every task (learning_curve needs one grid for all folds)
    smallest_pool = min(
        int(((ds.cols == t) & (folds[ds.rows] != k)).sum())
        for t in range(ds.n_tasks)
        for k in fold_ids
    )
    sizes = geometric_grid(min(args.max_size, smallest_pool))
    cfg = TrainConfig(
        hidden=(args.hidden,), max_epochs=args.max_epochs, val_fraction=0.0, dropout=0.0,
        batch_size=args.batch_size, lr=args.lr,
    )  # fmt: skip
    print(
        f"{ds.name} {args.split} split: {ds.n_tasks} tasks x {len(fold_ids)} folds x "
        f"{len(sizes)} sizes {sizes.tolist()} = {ds.n_tasks * len(fold_ids) * len(sizes)} "
        f"models per method"
    )

    ctx = DesignContext(dataset=ds.name, split=args.split, config_hash=cfg.hash())
    design = make_design(ds, folds, regime="stl", ctx=ctx, sizes=sizes)
    t0 = time.perf_counter()
    res = train_models(ds, design.specs, cfg)
    t_mtlc = time.perf_counter() - t0
    res = res.assign(status="ok")
    mt = learning_curves(res[res.metric == "roc_auc"].assign(n_context=0))

    lr = LogisticRegression(C=1.0, max_iter=200)
    mlp = MLPClassifier(
        hidden_layer_sizes=(args.hidden,), learning_rate_init=cfg.lr, batch_size=cfg.batch_size,
        max_iter=args.max_epochs, alpha=0.0, random_state=0,
    )  # fmt: skip
    lr_df, t_lr = sklearn_curves(ds, folds, fold_ids, sizes, lr)
    mlp_df, t_mlp = sklearn_curves(ds, folds, fold_ids, sizes, mlp)

    n_models = len(design)
    table = pd.DataFrame(
        {
            "mtlc (fleets)": mt.groupby("n_task")["mean"].mean(),
            "sklearn LR": lr_df.groupby("n_task")["value"].mean(),
            "sklearn MLP": mlp_df.groupby("n_task")["value"].mean(),
        }
    )
    print("\nmean test ROC-AUC over tasks and folds, by training size:")
    print(table.round(3).to_string())
    times = pd.DataFrame(
        {
            "seconds": [t_mtlc, t_lr, t_mlp],
            "models/s": [n_models / t_mtlc, n_models / t_lr, n_models / t_mlp],
            "time vs mtlc": [1.0, t_lr / t_mtlc, t_mlp / t_mtlc],
            "NaN AUCs": [
                int(mt["n_nan"].sum()),
                int(lr_df["value"].isna().sum()),
                int(mlp_df["value"].isna().sum()),
            ],
        },
        index=["mtlc (fleets)", "sklearn LR", "sklearn MLP"],
    )
    print(f"\nwall time for {n_models} models per method:")
    print(times.round(2).to_string())


if __name__ == "__main__":
    main()
