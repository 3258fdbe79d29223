"""Benchmark 1: STL fleet vs a plain per-model PyTorch loop on one kiba (fold, size) cell.

Both train the same single-task models (every kiba task at training size ``--size`` in fold
``--fold`` of a 10-fold compound split), same hyperparameters, same initial weights, inner
validation split and batch order. Prints wall time of each, their ratio, and how close the
per-task test AUCs are (max and mean absolute difference, difference of the mean AUC).

    .venv/bin/python benchmarks/bench_fleet.py            # 201 tasks, size 256
    .venv/bin/python benchmarks/bench_fleet.py --quick    # 40 tasks, 8 epochs
    .venv/bin/python benchmarks/bench_fleet.py --size 1024 --hidden 128

Uses ``mtlc.datasets.kiba()`` (cached ECFP4); with ``--synthetic`` (or when kiba is not
available) synthetic sparse data of the same shape: 3,800 compounds x 201 tasks, 49 bits set.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtlc.datasets._core import MultiTaskDataset  # noqa: E402
from mtlc.evaluate import score_task  # noqa: E402
from mtlc.fleet import train_fleets  # noqa: E402
from mtlc.training import ModelSpec, TrainConfig, prepare_specs, train_reference  # noqa: E402


def synthetic_like_kiba(n: int = 3800, k: int = 201, bits: int = 2048, seed: int = 0):
    """Sparse 0/1 fingerprints (~49 of 2048 bits, skewed bit frequencies) and ~720 labels per task."""
    rng = np.random.default_rng(seed)
    p = rng.pareto(1.2, bits) + 0.05
    p /= p.sum()
    cols = np.concatenate([rng.choice(bits, 49, replace=False, p=p) for _ in range(n)])
    X = sp.csr_matrix(
        (np.ones(len(cols), np.float32), (np.repeat(np.arange(n), 49), cols)), shape=(n, bits)
    )
    W = rng.normal(size=(bits, k))
    score = np.asarray(X @ W)
    rows, tcols = np.nonzero(rng.random((n, k)) < 720 / n)
    s = score[rows, tcols]
    thr = np.quantile(score, 0.8, axis=0)[tcols]
    table = pd.DataFrame(
        {
            "compound_id": [f"c{r:05d}" for r in rows],
            "task_id": [f"t{c:03d}" for c in tcols],
            "label": (s > thr).astype(int),
        }
    )
    ds = MultiTaskDataset.from_long("synthetic-kiba", table)
    used = np.unique(rows)
    ds.X = X[used]
    return ds


def load(synthetic: bool) -> MultiTaskDataset:
    if not synthetic:
        try:
            from mtlc.datasets import kiba

            return kiba()
        except Exception as exc:  # noqa: BLE001 - fall back, and say so
            print(f"kiba not available ({exc}); using synthetic data of the same shape")
    return synthetic_like_kiba()


def stl_cell(ds: MultiTaskDataset, size: int, fold: int, tasks: int, seed: int = 0):
    """Specs of every STL model of one (fold, size) cell: task t trains on min(size, available)."""
    rng = np.random.default_rng(seed)
    folds = np.empty(ds.n_compounds, dtype=np.int64)
    folds[rng.permutation(ds.n_compounds)] = np.arange(ds.n_compounds) % 10
    test = np.flatnonzero(folds == fold)
    specs = []
    for t in range(min(tasks, ds.n_tasks)):
        sel = (ds.cols == t) & (folds[ds.rows] != fold)
        pool = ds.rows[sel]
        take = np.sort(np.random.default_rng(seed + t).permutation(pool)[:size])
        specs.append(
            ModelSpec(
                train_rows=take.astype(np.int64),
                train_cols=np.full(len(take), t, dtype=np.int64),
                test_compounds=test,
                eval_tasks=np.array([t]),
                seed=1000 + t,
                key={"task_index": t},
            )
        )
    return specs


def aucs(pms, outcomes) -> np.ndarray:
    out = []
    for pm, oc in zip(pms, outcomes, strict=True):
        j = pm.eval_local[0]
        m = pm.test_mask[:, 0] > 0
        out.append(score_task(pm.test_y[m, 0], oc.test_scores[m, j])["roc_auc"])
    return np.array(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="40 tasks, 8 epochs")
    ap.add_argument("--size", type=int, default=256, help="training pairs per task")
    ap.add_argument("--fold", type=int, default=0)
    ap.add_argument("--tasks", type=int, default=201)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--hidden", type=int, nargs="+", default=list(TrainConfig().hidden))
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument(
        "--loop-tasks",
        type=int,
        default=None,
        help="time the loop on this many models only and scale",
    )
    ap.add_argument("--synthetic", action="store_true")
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    a = ap.parse_args(argv)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    if a.quick:
        a.tasks, a.epochs = min(a.tasks, 40), min(a.epochs, 8)
    ds = load(a.synthetic)
    cfg = TrainConfig(
        hidden=tuple(a.hidden), dropout=a.dropout, max_epochs=a.epochs, dtype=a.dtype, device="cpu"
    )
    specs = stl_cell(ds, a.size, a.fold, a.tasks)
    pms = prepare_specs(ds, specs, cfg)
    n_pairs = sum(pm.n_train_pairs for pm in pms)
    print(f"data: {ds}")
    print(
        f"cell: fold {a.fold}, size {a.size}, {len(pms)} STL models, {n_pairs} training pairs, "
        f"hidden {cfg.hidden}, dropout {cfg.dropout}, {cfg.max_epochs} epochs max, {cfg.dtype}"
    )
    train_reference(ds.X, pms[0], cfg)  # warm-up: first-call imports are nobody's cost
    t0, c0 = time.perf_counter(), time.process_time()
    fl = train_fleets(ds.X, pms, cfg)
    t_fleet, c_fleet = time.perf_counter() - t0, time.process_time() - c0
    rss_fleet = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_loop = len(pms) if a.loop_tasks is None else min(a.loop_tasks, len(pms))
    t0, c0 = time.perf_counter(), time.process_time()
    ref = [train_reference(ds.X, pm, cfg) for pm in pms[:n_loop]]
    t_loop = (time.perf_counter() - t0) * len(pms) / n_loop
    c_loop = (time.process_time() - c0) * len(pms) / n_loop
    a_f, a_r = aucs(pms[:n_loop], fl[:n_loop]), aucs(pms[:n_loop], ref)
    d = np.abs(a_f - a_r)
    ep_f = np.array([o.epochs for o in fl[:n_loop]])
    ep_r = np.array([o.epochs for o in ref])
    print()
    print("| trainer | models | wall s | CPU s | wall s/model | mean AUC | mean epochs |")
    print("|---|---|---|---|---|---|---|")
    print(
        f"| fleet | {len(pms)} | {t_fleet:.2f} | {c_fleet:.2f} | {t_fleet / len(pms):.4f} | {np.nanmean(a_f):.4f} | {ep_f.mean():.1f} |"
    )
    scaled = "" if n_loop == len(pms) else f" (timed {n_loop}, scaled)"
    print(
        f"| per-model loop | {len(pms)}{scaled} | {t_loop:.2f} | {c_loop:.2f} | {t_loop / len(pms):.4f} | {np.nanmean(a_r):.4f} | {ep_r.mean():.1f} |"
    )
    print()
    print(
        f"speed-up fleet vs loop: {t_loop / t_fleet:.1f}x wall, {c_loop / c_fleet:.1f}x CPU "
        f"(torch threads {__import__('torch').get_num_threads()})"
    )
    print(
        f"AUC agreement over {n_loop} models: |mean AUC diff| {abs(np.nanmean(a_f) - np.nanmean(a_r)):.4f}, "
        f"max |diff| {np.nanmax(d):.4f}, mean |diff| {np.nanmean(d):.4f}"
    )
    print(f"peak RSS after fleet: {rss_fleet:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
