"""Benchmark: does ``TrainConfig.min_steps`` stop small-n models from being under-trained?

Single-task learning curves on a few kiba tasks, the same nested subsamples for every method:

- ``old``: the smoke study's config without ``min_steps`` (a model with n <= batch size takes
  one Adam step per epoch);
- ``min_steps=S``: the same config plus ``min_steps=S`` and ``min_val_compounds=8``;
- ``LR``: scikit-learn ``LogisticRegression(C=1)`` fitted on exactly the same training pairs
  (inner validation compounds included) and scored on the same test compounds.

Prints the mean test ROC-AUC by training size and the training wall time of each config.

    .venv/bin/python benchmarks/bench_min_steps.py                 # ~3-6 min on 2 shared cores
    .venv/bin/python benchmarks/bench_min_steps.py --steps 0 200 --folds 1
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from mtlc.designs import DesignContext, geometric_grid, make_design
from mtlc.study import SMOKE, assign_folds, load_dataset, select_tasks
from mtlc.training import TrainConfig, train_models


def lr_auc(ds, specs) -> list[float]:
    """LogisticRegression on each spec's training pairs, ROC-AUC on its test compounds."""
    lab = ds.labels_sparse().tocsr()
    X = ds.X.tocsr()
    out = []
    for s in specs:
        t = int(s.eval_tasks[0])
        ytr = (lab[s.train_rows, s.train_cols].A1 > 0).astype(int)
        te = np.asarray(s.test_compounds)
        yte = lab[te, t].toarray().ravel()
        te, yte = te[yte != 0], (yte[yte != 0] > 0).astype(int)
        if len(set(ytr)) < 2 or len(set(yte)) < 2:
            out.append(np.nan)
            continue
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            m = LogisticRegression(C=1.0, max_iter=200).fit(X[s.train_rows], ytr)
        out.append(roc_auc_score(yte, m.decision_function(X[te])))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tasks", type=int, default=8)
    ap.add_argument("--folds", type=int, default=2, help="folds 0..k-1 of a 5-fold split")
    ap.add_argument("--split", default="compound", choices=["compound", "scaffold"])
    ap.add_argument("--max-size", type=int, default=256)
    ap.add_argument("--steps", type=int, nargs="+", default=[0, 100, 200, 400])
    ap.add_argument("--min-val", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ds = load_dataset("kiba")
    idx, _ = select_tasks(ds, args.tasks)
    ds = ds.subset(tasks=idx)
    folds = assign_folds(ds, n_folds=5, split=args.split)
    sizes = geometric_grid(args.max_size, ratio=2.0)
    base = dict(SMOKE["config"])
    rows = []
    times = {}
    for k in range(args.folds):
        ctx = DesignContext(dataset=ds.name, split=args.split, config_hash="bench")
        design = make_design(ds, folds, regime="stl", ctx=ctx, sizes=sizes, fold_subset=[k])
        specs = design.specs
        n_of = [len(s.train_rows) for s in specs]
        t0 = time.perf_counter()
        rows += [
            {"method": "LR", "n": n, "auc": a} for n, a in zip(n_of, lr_auc(ds, specs), strict=True)
        ]
        times["LR"] = times.get("LR", 0.0) + time.perf_counter() - t0
        for s in args.steps:
            name = "old" if s == 0 else f"min_steps={s}"
            extra = {} if s == 0 else dict(min_steps=s, min_val_compounds=args.min_val)
            cfg = TrainConfig(**base, **extra, device="cpu")
            t0 = time.perf_counter()
            res = train_models(ds, specs, cfg)
            times[name] = times.get(name, 0.0) + time.perf_counter() - t0
            auc = res[res.metric == "roc_auc"]
            rows += [
                {"method": name, "n": n, "auc": a, "epochs": e}
                for n, a, e in zip(n_of, auc["value"], auc["epochs"], strict=True)
            ]
    df = pd.DataFrame(rows)
    print(f"kiba {args.split}: {args.tasks} tasks x {args.folds} folds, sizes {sizes.tolist()}")
    print("\nmean test ROC-AUC by training size:")
    print(df.pivot_table(index="n", columns="method", values="auc", aggfunc="mean").round(3))
    print("\nmean epochs by training size:")
    print(df.pivot_table(index="n", columns="method", values="epochs", aggfunc="mean").round(1))
    print("\ntraining seconds:", {k: round(v, 1) for k, v in times.items()})


if __name__ == "__main__":
    main()
