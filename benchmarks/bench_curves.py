"""Benchmark: fit every curve of a kiba-sized study, vectorized vs a naive curve_fit loop.

Study shape (defaults): 201 tasks x 10 folds; each task has its own maximum size (log-uniform
between 90 and 4000 training compounds, as in the structure-available kiba244 subset), sizes on
the study grid 16 * sqrt(2)^k. Curves are drawn from EXP3 / EXP3.2 / pairwise with per-fold
parameter variation and point noise (sd 0.01), AUC-like values 0.55-0.9.

Fits timed (all with :mod:`mtlc.curves`):
- EXP3 on the single-task curves (tasks x folds curves),
- EXP3.2 on single-task + all-task points (tasks x folds surfaces),
- pairwise on single-task + pair points for ``--partners`` partners per task,
- pow3 and wbl4 on the single-task curves (comparison forms).
The naive reference is a per-curve ``scipy.optimize.curve_fit`` loop of EXP3 on the
single-task curves (all of them unless ``--naive-curves`` is given).

Run: ``.venv/bin/python benchmarks/bench_curves.py`` (about 10-30 s on 2 cores).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
from scipy.optimize import curve_fit

from mtlc import curves as C


def make_study(n_tasks: int, n_folds: int, n_partners: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    n_max = np.exp(rng.uniform(np.log(90), np.log(4000), n_tasks))
    stl, allt, pair = [], [], []
    for t in range(n_tasks):
        grid = C.size_grid(n_max[t])
        base = {
            "c": rng.uniform(0.75, 0.92),
            "b": np.log(rng.uniform(0.15, 0.35)),
            "a": rng.uniform(0.5, 4.0),
        }
        sd = {"c": 0.005, "b": 0.1, "a": 0.3, "a_S": 0.005, "a_ij": 0.3}
        two = np.concatenate([grid, grid])
        ctx = np.concatenate([np.zeros_like(grid), 150 * grid])
        d = C.simulate_curves(
            "exp3.2",
            {**base, "a_S": rng.normal(0.005, 0.01)},
            two,
            ctx,
            n_folds=n_folds,
            param_sd=sd,
            seed=seed + 3 * t,
        )
        d["task"] = t
        stl.append(d[d.n_context == 0])
        allt.append(d)
        for j in range(n_partners):
            part = np.concatenate([np.zeros_like(grid), grid])
            d = C.simulate_curves(
                "pairwise",
                {**base, "a_ij": rng.normal(0.2, 0.4)},
                two,
                part,
                n_folds=n_folds,
                param_sd=sd,
                seed=seed + 3 * t + 1 + 1000 * j,
            )
            d["task"], d["partner"] = t, j
            pair.append(d)
    return {
        "stl": pd.concat(stl, ignore_index=True),
        "all": pd.concat(allt, ignore_index=True),
        "pair": pd.concat(pair, ignore_index=True) if pair else None,
    }


def naive_exp3(df: pd.DataFrame, max_curves: int | None) -> tuple[float, int, int]:
    def f(n, c, b, a):
        return c - np.exp(b - a * n)

    t0 = time.perf_counter()
    n_fail = n_done = 0
    for _, g in df.groupby(["task", "fold"], sort=True):
        if max_curves is not None and n_done >= max_curves:
            break
        n = g["n_task"].to_numpy() / 1000.0
        p = g["value"].to_numpy()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                curve_fit(
                    f,
                    n,
                    p,
                    p0=[p.max() + 0.01, np.log(p.max() - p.min() + 0.01), 1.0],
                    bounds=([0.0, -50.0, 0.0], [1.0, 50.0, np.inf]),
                    maxfev=5000,
                )
        except (RuntimeError, ValueError):
            n_fail += 1
        n_done += 1
    return time.perf_counter() - t0, n_done, n_fail


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=201)
    ap.add_argument("--folds", type=int, default=10)
    ap.add_argument("--partners", type=int, default=3, help="pairwise surfaces per task")
    ap.add_argument("--naive-curves", type=int, default=None, help="limit the naive loop")
    args = ap.parse_args(argv)
    study = make_study(args.tasks, args.folds, args.partners)
    timings = {}
    counts = {}

    def timed(name, fn):
        t0 = time.perf_counter()
        out = fn()
        timings[name] = time.perf_counter() - t0
        counts[name] = len(out)
        flagged = float((out["flag"] != "").mean())
        print(f"{name:>10}: {len(out):6d} fits in {timings[name]:6.2f} s  (flagged {flagged:.1%})")
        return out

    timed("exp3", lambda: C.fit_exp3(study["stl"], by=["task"]))
    timed("exp3.2", lambda: C.fit_exp32(study["all"], by=["task"]))
    if study["pair"] is not None:
        timed("pairwise", lambda: C.fit_pairwise(study["pair"], by=["task", "partner"]))
    timed("pow3", lambda: C.fit_curves(study["stl"], "pow3", by=["task"]))
    timed("wbl4", lambda: C.fit_curves(study["stl"], "wbl4", by=["task"]))
    total = sum(timings.values())
    naive_t, naive_n, naive_fail = naive_exp3(study["stl"], args.naive_curves)
    per_naive = naive_t / naive_n
    ratio = (per_naive * counts["exp3"]) / timings["exp3"]
    print(f"{'all':>10}: {sum(counts.values()):6d} fits in {total:6.2f} s (budget 60 s)")
    print(
        f"naive curve_fit EXP3 loop: {naive_n} curves in {naive_t:.2f} s "
        f"({1000 * per_naive:.1f} ms/curve, {naive_fail} failures); "
        f"vectorized EXP3 is {ratio:.1f}x faster"
    )
    return {
        "timings": timings,
        "counts": counts,
        "total": total,
        "naive_s": naive_t,
        "naive_curves": naive_n,
        "speedup_exp3": ratio,
    }


if __name__ == "__main__":
    main()
