"""Benchmark: TAG affinities, fast all-source lookahead vs the straightforward one, and run cost.

Three measurements:

1. **One probe step** (one batch, all source tasks), fast vs reference, side by side on the same
   network and batch: CPU and wall time (best of ``--reps`` for the fast probe, one reference
   run), speed-up, and max |Z_fast - Z_ref| (float32). Batches:
   ``sparse``: 512 compounds x 200 tasks with full-kiba244 label statistics (4.5 labelled tasks
   per compound, ECFP-like 50 of 2048 bits);
   ``kiba``: 512 compounds of the structure-available kiba (201 tasks, about 38 labelled tasks
   per compound: the dense case); each with the trunks 128 (the study's width), 512 and
   512-256.
2. **A full TAG run** on kiba (offline structures; dense labels) and on synthetic data with
   full-kiba244 label statistics (12,000 compounds x 200 tasks, 4.5 labels per compound, planted
   groups) vs the same training without probes:
   wall time of training steps and probe steps (affinities every 10 steps), and passes counted
   the way the straightforward algorithm spends them (per probe: 1 forward, then per source
   task 1 backward and 1 forward).
3. **The first-order shortcut** ``Z ~ lr <g_i, g_j> / L_j`` (no perturbed forwards): its probe
   cost in the same run, and its agreement with exact TAG (Spearman rank correlation over the
   off-diagonal pairs of the run-averaged matrices; also the gradient cosine baseline).

    .venv/bin/python benchmarks/bench_tag.py            # about 5-10 min on 2 shared cores
    .venv/bin/python benchmarks/bench_tag.py --steps-only   # part 1 only, about 2 min
    .venv/bin/python benchmarks/bench_tag.py --quick    # about 1 min
    .venv/bin/python benchmarks/bench_tag.py --json out.json

Without the kiba files (or with ``--synthetic``), the run uses ``mtlc.datasets.synthetic``.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import scipy.sparse as sp
import torch
from scipy.stats import spearmanr

from mtlc.affinity import lookahead_fast, lookahead_reference, tag_train
from mtlc.grouping import cluster_tasks
from mtlc.models import MultiTaskNet, SparseBatch


def sparse_batch(B: int, K: int, F: int = 2048, bits: int = 50, per_compound: float = 4.47):
    """Random batch with kiba244-like statistics (228,399 pairs / 51,097 compounds)."""
    rng = np.random.default_rng(0)
    X = sp.random(B, F, density=bits / F, random_state=0, format="csr", dtype=np.float32)
    X.data[:] = 1
    m = (rng.random((B, K)) < per_compound / 244).astype(np.float32)
    y = (rng.random((B, K)) < 0.2).astype(np.float32)
    return X, y, m


def kiba_batch(ds, B: int):
    rng = np.random.default_rng(0)
    rows = np.sort(rng.choice(ds.n_compounds, B, replace=False))
    v = ds.labels_sparse()[rows].toarray()
    return ds.X[rows], (v == 1).astype(np.float32), (v != 0).astype(np.float32)


def _timed(fn):
    """(result, CPU seconds of this process, wall seconds)."""
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, time.process_time() - c0, time.perf_counter() - w0


def time_step(name: str, X, y, m, hidden, *, lr: float, reference: bool, reps: int = 3) -> dict:
    torch.manual_seed(0)
    net = MultiTaskNet(X.shape[1], y.shape[1], hidden=hidden)
    batch = SparseBatch.from_csr(sp.csr_matrix(X))
    out = {
        "batch": name,
        "hidden": list(hidden),
        "B": int(X.shape[0]),
        "K": int(y.shape[1]),
        "labelled_pairs": int(m.sum()),
        "source_tasks": int((m.sum(0) > 0).sum()),
    }
    runs = [_timed(lambda: lookahead_fast(net, batch, y, m, lr=lr, gradients=False))]
    runs += [_timed(lambda: lookahead_fast(net, batch, y, m, lr=lr, gradients=False))]
    if reference:
        # the reference between the fast repetitions: both see the same machine load
        ref, out["reference_cpu_s"], out["reference_s"] = _timed(
            lambda: lookahead_reference(net, batch, y, m, lr=lr)
        )
    runs += [
        _timed(lambda: lookahead_fast(net, batch, y, m, lr=lr, gradients=False))
        for _ in range(max(0, reps - 2))
    ]
    fast = runs[0][0]
    out["fast_cpu_s"] = min(r[1] for r in runs)
    out["fast_s"] = min(r[2] for r in runs)
    fo_runs = [
        _timed(lambda: lookahead_fast(net, batch, y, m, lr=lr, exact=False)) for _ in range(2)
    ]
    fo = fo_runs[0][0]
    out["first_order_cpu_s"] = min(r[1] for r in fo_runs)
    out["first_order_s"] = min(r[2] for r in fo_runs)
    if reference:
        out["speedup_cpu"] = out["reference_cpu_s"] / out["fast_cpu_s"]
        out["speedup"] = out["reference_s"] / out["fast_s"]
        scale = float(np.nanmax(np.abs(ref.Z)))
        out["max_abs_diff"] = float(np.nanmax(np.abs(fast.Z - ref.Z)))
        out["max_abs_Z"] = scale
    off = ~np.eye(y.shape[1], dtype=bool) & np.isfinite(fast.Z) & np.isfinite(fo.first_order)
    out["spearman_first_order_vs_exact_one_batch"] = float(
        spearmanr(fo.first_order[off], fast.Z[off]).statistic
    )
    return out


def load_run_data(synthetic: bool, n_tasks: int | None):
    ds = None
    if not synthetic:
        try:
            from mtlc.datasets import kiba

            ds = kiba()
        except Exception as exc:  # noqa: BLE001 - any missing file: fall back, say so
            print(f"kiba not available ({exc}); using synthetic data")
    if ds is None:
        from mtlc.datasets import synthetic as make

        ds = make(n_compounds=3800, n_tasks=n_tasks or 200, density=0.19, seed=0)
    if n_tasks is not None and n_tasks < ds.n_tasks:
        ds = ds.subset(tasks=np.arange(n_tasks))
    return ds


def off_spearman(a: np.ndarray, b: np.ndarray) -> float:
    ok = ~np.eye(len(a), dtype=bool) & np.isfinite(a) & np.isfinite(b)
    return float(spearmanr(a[ok], b[ok]).statistic)


def run_cost(ds, *, hidden, epochs: int, batch_size: int, every: int) -> dict:
    kw = dict(hidden=hidden, epochs=epochs, batch_size=batch_size, every=every, seed=0)
    full = tag_train(ds, **kw)
    fo = tag_train(ds, exact=False, **kw)  # same seed: the same training trajectory
    c, cf = full.cost, fo.cost
    K = ds.n_tasks
    steps, probes = c["train_steps"], c["probe_steps"]
    train_passes = c["train_forward"] + c["train_backward"]
    # straightforward TAG: per probe 1 forward + per source task 1 backward and 1 forward
    ref_probe_passes = probes + 2 * (c["probe_forward"] - probes)
    t0 = time.perf_counter()
    groups = cluster_tasks(full.affinity)
    t_group = time.perf_counter() - t0
    return {
        "data": repr(ds),
        "hidden": list(hidden),
        "epochs": epochs,
        "batch_size": batch_size,
        "every": every,
        "train_steps": steps,
        "probe_steps": probes,
        "train_seconds": c["train_seconds"],
        "probe_seconds_exact_fast": c["probe_seconds"],
        "probe_seconds_first_order": cf["probe_seconds"],
        "wall_ratio_exact_fast": (c["train_seconds"] + c["probe_seconds"]) / c["train_seconds"],
        "wall_ratio_first_order": (cf["train_seconds"] + cf["probe_seconds"]) / cf["train_seconds"],
        "passes_training": train_passes,
        "passes_probes_straightforward": ref_probe_passes,
        "passes_ratio_straightforward": (train_passes + ref_probe_passes) / train_passes,
        "passes_ratio_formula": f"1 + (1 + 2 K) / (2 every) = {1 + (1 + 2 * K) / (2 * every):.1f}",
        "spearman_first_order_vs_exact": off_spearman(fo.first_order, full.affinity),
        "spearman_first_order_same_run": off_spearman(full.first_order, full.affinity),
        "spearman_cosine_vs_exact": off_spearman(full.cosine, full.affinity),
        "affinity_positive_fraction": float(np.nanmean(full.affinity[~np.eye(K, dtype=bool)] > 0)),
        "groups_found": int(groups.max() + 1),
        "grouping_seconds": t_group,
        "settings": full.settings,
        "_affinity": full.affinity,
        "_affinity_T": full.affinity.T,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="smaller batches, tasks and run")
    ap.add_argument("--synthetic", action="store_true", help="run part on synthetic data")
    ap.add_argument("--no-reference", action="store_true", help="skip the slow reference")
    ap.add_argument("--steps-only", action="store_true", help="part 1 only (no training runs)")
    ap.add_argument("--reps", type=int, default=3, help="fast-probe repetitions (best counts)")
    ap.add_argument("--json", default=None, help="write the results to this JSON file")
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1: stable timings on a shared machine)",
    )
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    res: dict = {"steps": [], "run": []}
    lr = 1e-3
    if a.quick:
        step_cfgs = [("sparse", 256, 50, (256,))]
        run_kw = dict(n_tasks=40, hidden=(256,), epochs=3, batch_size=256, every=10)
    else:
        step_cfgs = [
            (name, 512, 200 if name == "sparse" else None, hidden)
            for name in ("sparse", "kiba")
            for hidden in ((128,), (512,), (512, 256))
        ]
        run_kw = dict(n_tasks=None, hidden=(512,), epochs=10, batch_size=256, every=10)
    ds = load_run_data(a.synthetic, run_kw.pop("n_tasks"))
    for name, B, K, hidden in step_cfgs:
        if name == "sparse":
            X, y, m = sparse_batch(B, K)
        else:
            X, y, m = kiba_batch(ds, B)
        r = time_step(name, X, y, m, hidden, lr=lr, reference=not a.no_reference, reps=a.reps)
        res["steps"].append(r)
        msg = (
            f"[step] {name:6s} B={r['B']} K={r['K']} pairs={r['labelled_pairs']} "
            f"hidden={hidden}: fast {r['fast_cpu_s']:.3f} s CPU ({r['fast_s']:.2f} s wall), "
            f"first-order {r['first_order_cpu_s']:.3f} s CPU"
        )
        if "reference_s" in r:
            msg += (
                f", reference {r['reference_cpu_s']:.2f} s CPU ({r['reference_s']:.1f} s wall)"
                f" -> {r['speedup_cpu']:.1f}x CPU, {r['speedup']:.1f}x wall; "
                f"max|dZ| {r['max_abs_diff']:.1e} (max|Z| {r['max_abs_Z']:.1e})"
            )
        print(msg, flush=True)
    if "reference_s" in res["steps"][0]:
        print(step_table(res["steps"]), flush=True)
    if a.steps_only:
        if a.json:
            with open(a.json, "w") as fh:
                json.dump(res, fh, indent=2, default=str)
        return 0
    runs = [("kiba", ds, run_kw)]
    if not a.quick:
        from mtlc.datasets import synthetic as make

        # full-kiba244 label statistics: about 4.5 labelled tasks per compound
        sparse = make(n_compounds=12000, n_tasks=200, density=4.47 / 200, seed=0)
        runs.append(("synthetic-sparse", sparse, dict(run_kw, batch_size=512, epochs=5)))
    res["run"] = []
    for label, data, kw in runs:
        r = run_cost(data, **kw)
        r["label"] = label
        if data.truth is not None:
            rel = np.asarray(data.truth["relatedness"], dtype=float)
            r["spearman_exact_sym_vs_planted"] = off_spearman(
                rel, (r.pop("_affinity") + r["_affinity_T"]) / 2
            )
        r.pop("_affinity", None)
        r.pop("_affinity_T", None)
        res["run"].append(r)
        report_run(r)
    if a.json:
        with open(a.json, "w") as fh:
            json.dump(res, fh, indent=2, default=str)
    return 0


def step_table(steps: list[dict]) -> str:
    """Markdown table of the probe-step timings."""
    lines = [
        "| batch | trunk | pairs | fast CPU s | reference CPU s | speed-up CPU | "
        "fast wall s | reference wall s | speed-up wall | max abs dZ |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in steps:
        lines.append(
            f"| {r['batch']} | {'-'.join(map(str, r['hidden']))} | {r['labelled_pairs']} | "
            f"{r['fast_cpu_s']:.3f} | {r['reference_cpu_s']:.2f} | {r['speedup_cpu']:.1f}x | "
            f"{r['fast_s']:.3f} | {r['reference_s']:.2f} | {r['speedup']:.1f}x | "
            f"{r['max_abs_diff']:.1e} |"
        )
    return "\n".join(lines)


def report_run(r: dict) -> None:
    print(
        f"[run] {r['data']}\n"
        f"      {r['train_steps']:.0f} training steps in {r['train_seconds']:.1f} s; "
        f"{r['probe_steps']:.0f} probes: exact fast {r['probe_seconds_exact_fast']:.1f} s "
        f"(x{r['wall_ratio_exact_fast']:.2f} of training), first-order "
        f"{r['probe_seconds_first_order']:.1f} s (x{r['wall_ratio_first_order']:.2f})\n"
        f"      passes as the straightforward TAG spends them: x{r['passes_ratio_straightforward']:.1f}"
        f" of training ({r['passes_ratio_formula']})\n"
        f"      Spearman vs exact: first-order {r['spearman_first_order_vs_exact']:.3f}, "
        f"gradient cosine {r['spearman_cosine_vs_exact']:.3f}; "
        f"clustering {r['groups_found']} groups in {r['grouping_seconds']:.2f} s"
        + (
            f"; Spearman(symmetrized Z, planted relatedness) "
            f"{r['spearman_exact_sym_vs_planted']:.3f}"
            if "spearman_exact_sym_vs_planted" in r
            else ""
        ),
        flush=True,
    )


if __name__ == "__main__":
    raise SystemExit(main())
