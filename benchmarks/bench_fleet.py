"""Benchmark 1: STL fleet vs a plain per-model PyTorch loop on one kiba (fold, size) cell.

Three trainers train the same single-task models (every kiba task at training size ``--size``
in fold ``--fold`` of a 10-fold compound split), same hyperparameters, same initial weights,
inner validation split, batch order and early stopping:

- ``plain loop`` (the baseline of the issue): what a user would write, one model after the
  other, a dense ``nn.Sequential(nn.Linear(2048, H), ReLU, Dropout, nn.Linear(H, 1))`` on dense
  float32 fingerprints (densified once per model), ``torch.optim.Adam``;
- ``sparse loop`` (a stricter baseline): ``mtlc.training.train_reference``, the same loop on the
  project's sparse ``EmbeddingBag`` network;
- ``fleet (torch)``: ``mtlc.fleet.train_fleets``, all models together, every operation applied to
  all of them at once (``TrainConfig.engine="torch"``, the stored study's engine);
- ``fleet (compiled)``: the same with ``engine="compiled"``: numba kernels, one model after the
  other, each model's state kept in the CPU cache.

Prints wall and CPU time of each, each fleet's speed-up against both loops side by side, and how
close the per-task test AUCs are (max and mean absolute difference, difference of the mean AUC).

    .venv/bin/python benchmarks/bench_fleet.py            # 201 tasks, size 256
    .venv/bin/python benchmarks/bench_fleet.py --quick    # 40 tasks, 8 epochs
    .venv/bin/python benchmarks/bench_fleet.py --size 1024 --hidden 128

Uses ``mtlc.datasets.kiba()`` (cached ECFP4); with ``--synthetic`` (or when kiba is not
available) synthetic sparse data of the same shape: 3,800 compounds x 201 tasks, 49 bits set.
"""

from __future__ import annotations

import argparse
import dataclasses
import resource
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtlc.datasets._core import MultiTaskDataset  # noqa: E402
from mtlc.evaluate import score_task  # noqa: E402
from mtlc.fleet import train_fleets  # noqa: E402
from mtlc.models import masked_bce  # noqa: E402
from mtlc.training import (  # noqa: E402
    ModelSpec,
    TrainConfig,
    TrainOutcome,
    batch_order,
    init_weights,
    prepare_specs,
    train_reference,
)


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


def train_plain(X: sp.csr_matrix, pm, cfg: TrainConfig) -> TrainOutcome:
    """One model the way a user would write it: dense layers on dense fingerprints.

    Same initial weights (:func:`init_weights`), inner validation split, batch order, masked
    loss, epoch budget (``min_steps``) and early stopping (best validation epoch kept) as the
    fleet; dropout from torch's global generator.
    """
    t0 = time.perf_counter()
    dt = cfg.torch_dtype
    h = cfg.hidden
    layers: list[nn.Module] = []
    for a, b in zip((X.shape[1], *h[:-1]), h, strict=True):
        layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(cfg.dropout)]
    net = nn.Sequential(*layers, nn.Linear(h[-1], pm.n_heads))
    w = init_weights(X.shape[1], pm.n_heads, h, pm.init_seed)
    lin = [m for m in net if isinstance(m, nn.Linear)]
    with torch.no_grad():
        for j, m in enumerate(lin):
            m.weight.copy_(w[2 * j].T)
            m.bias.copy_(w[2 * j + 1])
    net = net.to(dt)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    torch.manual_seed(pm.dropout_seed)

    def dense(rows: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(X[rows].toarray(), dtype=dt)

    xtr, xva = dense(pm.train_compounds), dense(pm.val_compounds)
    ty, tm = torch.as_tensor(pm.train_y, dtype=dt), torch.as_tensor(pm.train_mask, dtype=dt)
    vy, vm = torch.as_tensor(pm.val_y, dtype=dt), torch.as_tensor(pm.val_mask, dtype=dt)
    rng = batch_order(pm.order_seed, len(pm.train_compounds))
    n = len(pm.train_compounds)
    best, best_epoch, epoch = float("inf"), 0, 0
    best_state = {k: v.clone() for k, v in net.state_dict().items()}
    e_min, e_max = pm.epoch_budget(cfg)
    for epoch in range(1, e_max + 1):
        net.train()
        perm = rng.permutation(n)
        for s in range(0, n, cfg.batch_size):
            b = perm[s : s + cfg.batch_size]
            loss = masked_bce(net(xtr[b]), ty[b], tm[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if len(pm.val_compounds):
            net.eval()
            with torch.no_grad():
                vl = float(masked_bce(net(xva), vy, vm))
        else:
            vl = -float(epoch)
        if vl < best:
            best, best_epoch = vl, epoch
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        elif epoch >= e_min and epoch - best_epoch >= cfg.patience:
            break
    net.load_state_dict(best_state)
    net.eval()
    with torch.no_grad():
        scores = net(dense(pm.test_compounds)).double().numpy()
    return TrainOutcome(
        test_scores=scores, epochs=epoch, best_epoch=best_epoch, seconds=time.perf_counter() - t0
    )


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
        "--min-steps", type=int, default=0, help="TrainConfig.min_steps (the study uses 100)"
    )
    ap.add_argument(
        "--min-val-compounds",
        type=int,
        default=0,
        help="TrainConfig.min_val_compounds (the study uses 8)",
    )
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
        torch.set_num_threads(a.threads)
    if a.quick:
        a.tasks, a.epochs = min(a.tasks, 40), min(a.epochs, 8)
    ds = load(a.synthetic)
    cfg = TrainConfig(
        hidden=tuple(a.hidden),
        dropout=a.dropout,
        max_epochs=a.epochs,
        dtype=a.dtype,
        device="cpu",
        min_steps=a.min_steps,
        min_val_compounds=a.min_val_compounds,
    )
    specs = stl_cell(ds, a.size, a.fold, a.tasks)
    pms = prepare_specs(ds, specs, cfg)
    n_pairs = sum(pm.n_train_pairs for pm in pms)
    print(f"data: {ds}")
    print(
        f"cell: fold {a.fold}, size {a.size}, {len(pms)} STL models, {n_pairs} training pairs, "
        f"hidden {cfg.hidden}, dropout {cfg.dropout}, {cfg.max_epochs} epochs max, "
        f"min_steps {cfg.min_steps}, min_val_compounds {cfg.min_val_compounds}, {cfg.dtype}"
    )
    compiled = dataclasses.replace(cfg, engine="compiled")
    # warm-up: first-call imports (and numba's cache load or compilation) are nobody's cost
    train_reference(ds.X, pms[0], cfg)
    train_plain(ds.X, pms[0], cfg)
    train_fleets(ds.X, pms[:1], compiled)
    fleets = {}
    for name, c in (("fleet (torch)", cfg), ("fleet (compiled)", compiled)):
        t0, c0 = time.perf_counter(), time.process_time()
        res = train_fleets(ds.X, pms, c)
        fleets[name] = (res, time.perf_counter() - t0, time.process_time() - c0)
    rss_fleet = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    n_loop = len(pms) if a.loop_tasks is None else min(a.loop_tasks, len(pms))
    loops = {}
    for name, fn in (("plain loop (dense)", train_plain), ("sparse loop", train_reference)):
        t0, c0 = time.perf_counter(), time.process_time()
        res = [fn(ds.X, pm, cfg) for pm in pms[:n_loop]]
        t = (time.perf_counter() - t0) * len(pms) / n_loop
        c = (time.process_time() - c0) * len(pms) / n_loop
        loops[name] = (res, t, c)
    scaled = "" if n_loop == len(pms) else f" (timed {n_loop}, scaled)"
    print()
    print(
        "| trainer | models | wall s | CPU s | CPU s/model | speed-up vs plain loop (CPU) "
        "| mean AUC | mean epochs |"
    )
    print("|---|---|---|---|---|---|---|---|")
    c_plain = loops["plain loop (dense)"][2]
    rows = [(name, res, t, c, scaled) for name, (res, t, c) in loops.items()]
    rows += [(name, res, t, c, "") for name, (res, t, c) in fleets.items()]
    for name, res, t, c, note in rows:
        a_r = aucs(pms[:n_loop], res[:n_loop])
        ep_r = np.array([o.epochs for o in res[:n_loop]])
        print(
            f"| {name} | {len(pms)}{note} | {t:.2f} | {c:.2f} | {c / len(pms):.4f} "
            f"| {c_plain / c:.1f}x | {np.nanmean(a_r):.4f} | {ep_r.mean():.1f} |"
        )
    print()
    print(f"torch threads {torch.get_num_threads()}; AUC and epochs over the first {n_loop} models")
    for fname, (fl, t_fleet, c_fleet) in fleets.items():
        a_f = aucs(pms[:n_loop], fl[:n_loop])
        for name, (res, t, c) in loops.items():
            a_r = aucs(pms[:n_loop], res)
            d = np.abs(a_f - a_r)
            print(
                f"{fname} vs {name}: {t / t_fleet:.1f}x wall, {c / c_fleet:.1f}x CPU; AUC over "
                f"{n_loop} models: |mean diff| {abs(np.nanmean(a_f) - np.nanmean(a_r)):.4f}, "
                f"max |diff| {np.nanmax(d):.4f}, mean |diff| {np.nanmean(d):.4f}"
            )
    (ft, _, c_t), (fc, _, c_c) = fleets.values()
    sa = np.concatenate([o.test_scores.ravel() for o in ft])
    sb = np.concatenate([o.test_scores.ravel() for o in fc])
    a_t, a_c = aucs(pms, ft), aucs(pms, fc)
    same_ep = np.mean([x.epochs == y.epochs for x, y in zip(ft, fc, strict=True)])
    print(
        f"compiled vs torch engine, all {len(pms)} models: {c_t / c_c:.2f}x CPU; epochs equal "
        f"for {same_ep:.1%}; max |score diff| {np.abs(sa - sb).max():.2e}; "
        f"max |AUC diff| {np.nanmax(np.abs(a_t - a_c)):.4f}"
    )
    print(f"peak RSS after fleet: {rss_fleet:.0f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
