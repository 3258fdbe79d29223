"""Benchmark 3: all-task network epoch time vs a plain dense implementation, and its scaling.

Data: synthetic, 51,000 compounds x 244 tasks at kiba density (228,399 labelled pairs, ECFP-like
fingerprints with ~49 of 2048 bits set); or ``--kiba`` for the structure-available kiba subset.

1. Side by side in one run: one epoch (batch 512, Adam) of
   - the dense baseline: ``nn.Linear`` 2048-512-256 trunk on dense 0/1 input, 244 heads, masked BCE;
   - the engine (``mtlc.fleet``, one model): same 512-256 trunk, sparse first layer;
   - the engine with the study's default width (``TrainConfig().hidden``).
   Epoch time of the engine = (time of 3 epochs - time of 1 epoch) / 2: set-up, test evaluation
   and the first epoch's warm-up cancel; the per-epoch inner-validation pass is included.
2. Scaling of epoch time and peak memory (each point in a fresh subprocess, ``ru_maxrss``) with
   the number of tasks and with the number of labelled pairs (tasks fixed).

    .venv/bin/python benchmarks/bench_mtl_epoch.py            # full
    .venv/bin/python benchmarks/bench_mtl_epoch.py --quick    # 12,000 compounds, fewer points
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from mtlc.datasets._core import MultiTaskDataset  # noqa: E402
from mtlc.fleet import train_fleet  # noqa: E402
from mtlc.training import ModelSpec, TrainConfig, prepare_specs  # noqa: E402


def synthetic_data(n: int, k: int, pairs: int, bits: int = 2048, seed: int = 0) -> MultiTaskDataset:
    rng = np.random.default_rng(seed)
    p = rng.pareto(1.2, bits) + 0.05
    p /= p.sum()
    cols = rng.choice(bits, size=(n, 49), p=p)  # duplicates within a row merge below
    X = sp.csr_matrix(
        (np.ones(n * 49, np.float32), (np.repeat(np.arange(n), 49), cols.ravel())), shape=(n, bits)
    )
    X.data[:] = 1
    # task sizes skewed like kiba: a few big tasks, many small ones
    w = rng.pareto(1.5, k) + 1
    per_task = np.maximum(100, (w / w.sum() * pairs).astype(int))
    rows, tcols = [], []
    for t, m in enumerate(per_task):
        r = rng.choice(n, size=min(m, n), replace=False)
        rows.append(r)
        tcols.append(np.full(len(r), t))
    rows, tcols = np.concatenate(rows), np.concatenate(tcols)
    score = np.asarray((X[rows].multiply(rng.normal(size=(1, bits)))).sum(1)).ravel()
    table = pd.DataFrame(
        {
            "compound_id": [f"c{r:06d}" for r in rows],
            "task_id": [f"t{c:03d}" for c in tcols],
            "label": (score > np.quantile(score, 0.8)).astype(int),
        }
    )
    ds = MultiTaskDataset.from_long("synthetic-kiba244", table)
    ds.X = X[np.unique(rows)]
    return ds


def load(a) -> MultiTaskDataset:
    if a.kiba:
        from mtlc.datasets import kiba

        return kiba()
    return synthetic_data(a.compounds, a.tasks, a.pairs)


def all_task_spec(ds: MultiTaskDataset) -> ModelSpec:
    test = np.arange(0, ds.n_compounds, 10)  # 10 % test fold
    tr = ~np.isin(ds.rows, test)
    return ModelSpec(
        ds.rows[tr].astype(np.int64),
        ds.cols[tr].astype(np.int64),
        test,
        np.arange(ds.n_tasks),
        seed=0,
    )


def engine_epoch(ds: MultiTaskDataset, hidden: tuple[int, ...], batch: int) -> tuple[float, float]:
    """(wall s, CPU s) of one epoch: (3 epochs - 1 epoch) / 2."""
    spec = all_task_spec(ds)
    times = {}
    for e in (1, 3):
        cfg = TrainConfig(hidden=hidden, max_epochs=e, patience=10, batch_size=batch, device="cpu")
        (pm,) = prepare_specs(ds, [spec], cfg)
        t0, c0 = time.perf_counter(), time.process_time()
        train_fleet(ds.X, [pm], cfg)
        times[e] = np.array([time.perf_counter() - t0, time.process_time() - c0])
    w, c = (times[3] - times[1]) / 2
    return float(w), float(c)


class DenseNet(nn.Module):
    def __init__(self, n_in: int, hidden: tuple[int, ...], k: int, dropout: float = 0.2):
        super().__init__()
        sizes = [n_in, *hidden]
        self.layers = nn.ModuleList(
            nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:], strict=True)
        )
        self.head = nn.Linear(sizes[-1], k)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = F.dropout(F.relu(layer(x)), self.dropout, self.training)
        return self.head(x)


def dense_epoch(ds: MultiTaskDataset, hidden: tuple[int, ...], batch: int) -> tuple[float, float]:
    """One epoch of the plain dense implementation over the training compounds."""
    spec = all_task_spec(ds)
    comps = np.unique(spec.train_rows)
    lab = sp.csr_matrix(
        (np.where(ds.y == 1, 1.0, -1.0), (ds.rows, ds.cols)), shape=(ds.n_compounds, ds.n_tasks)
    )
    torch.manual_seed(0)
    net = DenseNet(ds.X.shape[1], hidden, ds.n_tasks)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    perm = np.random.default_rng(0).permutation(comps)
    t0, c0 = time.perf_counter(), time.process_time()
    for s in range(0, len(perm), batch):
        b = perm[s : s + batch]
        x = torch.from_numpy(ds.X[b].toarray())
        lb = torch.from_numpy(lab[b].toarray()).float()
        y, m = (lb > 0).float(), (lb != 0).float()
        loss = F.binary_cross_entropy_with_logits(net(x), y, reduction="none") * m
        loss = (loss.sum(0) / m.sum(0).clamp_min(1)).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return time.perf_counter() - t0, time.process_time() - c0


def one_point(a) -> None:
    """Scaling point (run in a subprocess): epoch time and peak RSS of the engine."""
    ds = load(a)
    if a.keep_tasks < ds.n_tasks:
        ds = ds.subset(tasks=np.arange(a.keep_tasks))
    if a.keep_pairs < 1.0:
        rng = np.random.default_rng(1)
        sel = np.sort(rng.permutation(ds.n_pairs)[: int(a.keep_pairs * ds.n_pairs)])
        X = ds.X
        ds2 = MultiTaskDataset.from_long("sub", ds.long().iloc[sel])
        keep = np.searchsorted(ds.compounds["compound_id"].to_numpy(), ds2.compounds["compound_id"])
        ds2.X = X[keep]
        ds = ds2
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t, c = engine_epoch(ds, tuple(a.hidden), a.batch)
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    row = {
        "tasks": ds.n_tasks,
        "pairs": ds.n_pairs,
        "compounds": ds.n_compounds,
        "epoch_s": t,
        "epoch_cpu_s": c,
    }
    row |= {"peak_rss_mb": rss, "training_above_data_mb": rss - before}
    print(json.dumps(row))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--kiba", action="store_true", help="kiba (structure-available subset)")
    ap.add_argument("--compounds", type=int, default=51_000)
    ap.add_argument("--tasks", type=int, default=244)
    ap.add_argument("--pairs", type=int, default=228_399)
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--hidden", type=int, nargs="+", default=[512, 256])
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--keep-tasks", type=int, default=10**9, help=argparse.SUPPRESS)
    ap.add_argument("--keep-pairs", type=float, default=1.0, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    if a.quick and not a.kiba:
        a.compounds, a.pairs = 12_000, 54_000
    if a.one:
        one_point(a)
        return 0
    ds = load(a)
    print(f"data: {ds}; batch {a.batch}; torch threads {torch.get_num_threads()}")
    hid = tuple(a.hidden)
    t_dense = dense_epoch(ds, hid, a.batch)
    t_sparse = engine_epoch(ds, hid, a.batch)
    t_default = engine_epoch(ds, TrainConfig().hidden, a.batch)
    print()
    print("| implementation | trunk | epoch wall s | epoch CPU s | CPU vs dense |")
    print("|---|---|---|---|---|")
    d = TrainConfig().hidden
    for name, h, (w, c) in (
        ("dense nn.Linear baseline", hid, t_dense),
        ("mtlc engine", hid, t_sparse),
        ("mtlc engine, study width", d, t_default),
    ):
        trunk = "-".join(map(str, (2048, *h)))
        print(f"| {name} | {trunk} | {w:.2f} | {c:.2f} | {t_dense[1] / c:.1f}x faster |")

    base = [sys.executable, __file__, "--one", "--batch", str(a.batch), "--hidden", *map(str, hid)]
    base += ["--compounds", str(a.compounds), "--tasks", str(a.tasks), "--pairs", str(a.pairs)]
    if a.kiba:
        base.append("--kiba")
    if a.threads:
        base += ["--threads", str(a.threads)]
    task_pts = (
        [ds.n_tasks // 4, ds.n_tasks // 2, ds.n_tasks]
        if a.quick
        else [ds.n_tasks // 8, ds.n_tasks // 4, ds.n_tasks // 2, ds.n_tasks]
    )
    pair_pts = [0.25, 1.0] if a.quick else [0.125, 0.25, 0.5, 1.0]
    rows = []
    for k in task_pts:
        out = subprocess.run(
            [*base, "--keep-tasks", str(k)], capture_output=True, text=True, check=True
        )
        rows.append({"vary": "tasks", **json.loads(out.stdout.strip().splitlines()[-1])})
    for q in pair_pts:
        out = subprocess.run(
            [*base, "--keep-pairs", str(q)], capture_output=True, text=True, check=True
        )
        rows.append({"vary": "pairs", **json.loads(out.stdout.strip().splitlines()[-1])})
    df = pd.DataFrame(rows)
    df["cpu_s_per_100k_pairs"] = df.epoch_cpu_s / df.pairs * 1e5
    print()
    print(
        "Scaling (engine, each point a fresh process; peak RSS includes the Python + torch runtime and the data set;"
        " training_above_data_mb is how far training raised it):"
    )
    print(
        df.to_markdown(index=False, floatfmt=".3f")
        if hasattr(df, "to_markdown")
        else df.to_string(index=False)
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
