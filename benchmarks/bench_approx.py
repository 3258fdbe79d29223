"""Benchmark: efficient MTLC approximations against exact curves - fidelity and cost.

On the synthetic data set with planted transfer (groups of related tasks), one test fold:

1. **Exact** STL and MTL curves (a network from scratch per point) vs **incremental** curves
   (one warm-started run per curve): curve error (mean |AUC difference| over the grid), EXP3
   parameter error (a, c), contextual transfer rho_S (EXP3.2 on STL + MTL points).
2. **Random design**: ``n_runs`` all-task networks with random sizes; multi-partner regression
   per task; how well its a_ij separates planted related pairs from unrelated ones (ranking
   AUC, detection at BH q < 0.05) and its a_S beside the exact a_S.
3. Cost of each: wall seconds, networks, forward/backward passes (minibatch network
   equivalents).

    .venv/bin/python benchmarks/bench_approx.py            # a few minutes on 2 shared cores
    .venv/bin/python benchmarks/bench_approx.py --quick    # about 40 s
    .venv/bin/python benchmarks/bench_approx.py --json out.json
"""

from __future__ import annotations

import argparse
import json
import warnings

import numpy as np
import pandas as pd
import torch

from mtlc import approx
from mtlc.curves import fit_curves
from mtlc.datasets import synthetic
from mtlc.splits import kfold
from mtlc.training import TrainConfig


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller data, fewer runs")
    ap.add_argument("--json", help="write the numbers to this file")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--threads", type=int, default=1, help="torch threads (tiny networks: 1 is fastest)"
    )
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore", category=UserWarning)
    q = args.quick
    ds = synthetic(
        n_compounds=1200 if q else 2500,
        n_tasks=6 if q else 10,
        n_groups=2,
        group_size=2 if q else 3,
        shared_strength=0.0,
        group_strength=3.0,
        task_noise=0.1,
        seed=args.seed,
    )
    folds = kfold(ds, n_folds=5, seed=args.seed)
    cfg = TrainConfig(
        hidden=(32,) if q else (64,),
        max_epochs=12 if q else 25,
        patience=4,
        batch_size=32,
        lr=3e-3,
        device="auto",
    )
    kw = dict(test_folds=(0,), config=cfg, max_size=128 if q else 362)
    runs = {
        "exact_stl": approx.exact_curves(ds, folds, regime="stl", **kw),
        "exact_mtl": approx.exact_curves(ds, folds, regime="mtl", **kw),
        "incremental_stl": approx.incremental_curves(
            ds, folds, mode="stl", epochs_per_stage=5, **kw
        ),
        "incremental_mtl": approx.incremental_curves(
            ds, folds, mode="mtl", epochs_per_stage=5, **kw
        ),
        "random_design": approx.random_design_runs(ds, folds, n_runs=16 if q else 48, **kw),
    }
    cost = pd.DataFrame([approx.cost_row(k, r.cost) for k, r in runs.items()]).set_index("method")
    fid = {
        reg: approx.curve_fidelity(runs[f"exact_{reg}"].table, runs[f"incremental_{reg}"].table)
        for reg in ("stl", "mtl")
    }

    def exp32(a: str, b: str) -> pd.DataFrame:
        d = pd.concat([runs[a].table, runs[b].table])
        d = d[d["value"].notna()]
        return fit_curves(d, "exp3.2", by=["task"], context="n_context", level="mean").set_index(
            "task"
        )

    e_ex, e_inc = exp32("exact_stl", "exact_mtl"), exp32("incremental_stl", "incremental_mtl")
    rd = runs["random_design"]
    ids = list(rd.sizes.columns)
    f_multi = approx.random_design_fit(rd, model="multi", n_boot=100)
    f_s = approx.random_design_fit(rd, model="exp3.2", n_boot=100).set_index("target")
    A = approx.pair_matrix(f_multi, ids)
    det = approx.detection_rates(
        approx.pair_matrix(f_multi, ids, "q_pos"), ds.truth["related_pairs"]
    )
    out = {
        "cost": cost.to_dict(orient="index"),
        "incremental_stl_mae": float(fid["stl"]["mae"].mean()),
        "incremental_mtl_mae": float(fid["mtl"]["mae"].mean()),
        "incremental_stl_a_abs_err_median": float(
            (fid["stl"]["a_ref"] - fid["stl"]["a_approx"]).abs().median()
        ),
        "incremental_stl_c_abs_err_median": float(
            (fid["stl"]["c_ref"] - fid["stl"]["c_approx"]).abs().median()
        ),
        "rho_S_exact": e_ex["rho_S"].round(3).to_dict(),
        "rho_S_incremental": e_inc["rho_S"].round(3).to_dict(),
        "a_S_random_design": f_s["estimate"].round(3).to_dict(),
        "a_S_exact": e_ex["a_S"].round(3).to_dict(),
        "random_design_ranking_auc": approx.pair_ranking_auc(A, ds.truth["related_pairs"]),
        "random_design_detection": det,
    }
    with pd.option_context("display.width", 160, "display.precision", 3):
        print(cost)
        for reg, f in fid.items():
            print(f"\n{reg}: exact vs incremental\n", f)
        print("\nrho_S exact vs incremental, a_S exact vs random design")
        print(
            pd.DataFrame(
                {
                    "rho_S_exact": e_ex["rho_S"],
                    "rho_S_incremental": e_inc["rho_S"],
                    "a_S_exact": e_ex["a_S"],
                    "a_S_random": f_s["estimate"],
                }
            )
        )
        print("\nrandom design a_ij [source, target]:\n", np.round(A, 2))
        print("planted related pairs:\n", ds.truth["related_pairs"].astype(int))
        print("ranking AUC", out["random_design_ranking_auc"], "detection", det)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1, default=float)


if __name__ == "__main__":
    main()
