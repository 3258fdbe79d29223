"""Efficient approximations of multi-task learning curves (MTLCs), and their fidelity and cost.

METHOD.md section 6 is this project's interpretation (the paper's text for this part is not
available). Three ways to get learning curves, all on the same nested subsamples
(:class:`mtlc.designs.FoldPools`: a task at size n uses the same training pairs everywhere):

* :func:`exact_curves` - the reference: one network trained **from scratch** per point
  (``stl``: per task and size; ``mtl``: per all-task cap level), through
  :func:`mtlc.training.train_models`.
* :func:`incremental_curves` - **one run per curve**: a network keeps training (warm start:
  same weights, same Adam state) while its training data grow stage by stage along the nested
  grid; the test fold is scored after every stage. ``mode="stl"``: one single-head network per
  task; ``mode="mtl"``: one all-task network whose tasks all grow together (each capped at its
  available data), so one run gives every task's all-task curve.
* :func:`random_design_runs` + :func:`random_design_fit` - all-task networks whose per-task sizes
  are drawn at random (``mtlc.designs.random_design``); each run gives one point
  ``(n_i, n_j for every j)`` for every task at once. Regressing each task's multi-partner curve
  ``P_i = c - exp(b - a n_i - sum_j a_ij n_j)`` across runs (ridge on the transfer
  coefficients) estimates every directed a_ij (and with ``model="exp3.2"`` the contextual
  a_iS), with bootstrap intervals over runs.

Cost is counted the same way for every method (and for TAG, see :mod:`mtlc.affinity`):
``wall_seconds``, ``networks`` (trained from scratch), ``forward`` and ``backward`` passes in
single-minibatch network equivalents (one minibatch through one network; inner-validation and
test forwards included). For :func:`exact_curves` the passes are counted from each model's
epochs and compound counts (the fleet trains several models per tensor op, so this is the
arithmetic done, not the number of kernel launches).

Conventions: pairwise matrices are ``[source, target]`` (``M[j, i]`` = effect of task j's data on
task i), the convention of TAG's ``Z[i -> j]`` in :class:`mtlc.affinity.TagResult`; the curve
coefficient ``a_ij`` of METHOD.md (target i, partner j) sits at ``M[j, i]``.

Helpers for the comparison chapter: :func:`tag_pair_test` (a test for TAG affinities across
epochs or seeds), :func:`detection_rates`, :func:`pair_ranking_auc`, :func:`rank_agreement`,
:func:`curve_fidelity`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
from scipy import stats as sps

from mtlc.datasets._core import MultiTaskDataset
from mtlc.designs import DesignContext, FoldPools, geometric_grid
from mtlc.errors import ConfigError, InputTableError

__all__ = [
    "CurveRun",
    "exact_curves",
    "exact_pair_curves",
    "pair_gain_test",
    "incremental_curves",
    "random_design_runs",
    "random_design_fit",
    "random_design_from_store",
    "random_design_fit_fixed_c",
    "pair_matrix",
    "curve_fidelity",
    "tag_pair_test",
    "detection_rates",
    "pair_ranking_auc",
    "rank_agreement",
    "cost_row",
]

#: Columns of every curve table returned here.
CURVE_COLUMNS = ["method", "fold", "task", "n_task", "n_context", "value", "note"]


@dataclass
class CurveRun:
    """Curves (or random-design points) from one method, with what they cost.

    table: long rows ``method, fold, task, n_task, n_context, value (test ROC-AUC), note``
        (+ ``run`` for random designs, ``stage`` for incremental runs); NaN values keep their
        ``note`` (e.g. a test fold without actives), never dropped.
    sizes: random design only: ``(n_rows, n_tasks)`` DataFrame, the size vector of the network
        behind each table row (columns = task ids), aligned with ``table``.
    cost: ``wall_seconds``, ``networks``, ``forward``, ``backward`` (see module docstring).
    info: bookkeeping (skipped design points, settings).
    """

    table: pd.DataFrame
    cost: dict[str, float]
    sizes: pd.DataFrame | None = None
    info: dict[str, Any] = field(default_factory=dict)


def cost_row(method: str, cost: dict[str, float]) -> dict[str, Any]:
    """One row of a cost comparison table: ``method`` plus the four cost fields."""
    return {
        "method": method,
        **{
            k: float(cost.get(k, np.nan))
            for k in ("wall_seconds", "networks", "forward", "backward")
        },
    }


def _config(config: Any) -> Any:
    from mtlc.training import TrainConfig

    return TrainConfig() if config is None else config


def _passes(n_train: int, n_val: int, n_test: int, epochs: int, batch: int) -> tuple[int, int]:
    """(forward, backward) minibatch passes of one network trained ``epochs`` epochs."""
    steps = epochs * max(1, math.ceil(n_train / batch))
    val = epochs * math.ceil(n_val / batch)
    test = math.ceil(n_test / batch) if n_test else 0
    return steps + val + test, steps


def _fleet_passes(specs: Sequence[Any], res: pd.DataFrame, cfg: Any) -> tuple[int, int]:
    """(forward, backward) minibatch passes of every network in ``specs``, from the epochs run.

    The inner-validation size follows :func:`mtlc.training.prepare_specs` (a fraction of the
    model's compounds, at least one, leaving at least one to fit).
    """
    epochs = res.drop_duplicates("job_id").set_index("job_id")["epochs"]
    fwd = bwd = 0
    for s in specs:
        n_c = len(np.unique(s.train_rows))
        n_val = min(n_c - 1, max(1, round(cfg.val_fraction * n_c))) if cfg.val_fraction else 0
        f_, b_ = _passes(
            n_c - n_val, n_val, len(s.test_compounds), int(epochs[s.key["job_id"]]), cfg.batch_size
        )
        fwd, bwd = fwd + f_, bwd + b_
    return fwd, bwd


# ----------------------------------------------------------------------------- exact curves
def exact_curves(
    ds: MultiTaskDataset,
    folds: np.ndarray,
    *,
    regime: str = "stl",
    test_folds: Sequence[int] = (0,),
    tasks: Sequence[str | int] | None = None,
    config: Any = None,
    max_size: int | None = None,
    sizes: str | Sequence[int] = "auto",
    seed: int = 0,
) -> CurveRun:
    """Reference curves: every point trained from scratch (``regime`` ``"stl"`` or ``"mtl"``).

    ``folds``: fold id per compound (``mtlc.splits.kfold``); ``test_folds``: which folds are test
    folds (one curve per fold); ``tasks``: task subset (ids or indices; the ``mtl`` networks
    train on exactly these tasks); ``max_size``: cap of the size grid (samples).
    Returns a :class:`CurveRun` whose ``value`` is the test ROC-AUC.
    """
    from mtlc.designs import mtl, stl
    from mtlc.training import train_models

    if regime not in ("stl", "mtl"):
        raise ConfigError(f"exact_curves: regime must be 'stl' or 'mtl', got {regime!r}")
    cfg = _config(config)
    ts = ds.task_indices(tasks)
    ctx = DesignContext(dataset=ds.name, config_hash=cfg.hash())
    t0 = time.perf_counter()
    specs, skipped = [], []
    for f in test_folds:
        pools = FoldPools(ds, folds, int(f), int(seed))
        if regime == "stl":
            d = stl(pools, ctx, targets=ts, sizes=sizes, max_size=max_size)
        else:
            d = mtl(pools, ctx, tasks=ts, sizes=sizes, max_size=max_size)
        specs += d.specs
        skipped += d.skipped
    res = train_models(ds, specs, cfg)
    wall = time.perf_counter() - t0
    fwd, bwd = _fleet_passes(specs, res, cfg)
    res = res[res["metric"] == "roc_auc"].copy()
    sizes_by_job = {s.key["job_id"]: json.loads(s.key["task_sizes"]) for s in specs}
    n_task, n_ctx = [], []
    for job, task in zip(res["job_id"], res["task"], strict=True):
        sz = sizes_by_job[job]
        n = int(sz.get(str(task), 0))
        n_task.append(n)
        n_ctx.append(int(sum(sz.values())) - n)
    table = pd.DataFrame(
        {
            "method": f"exact_{regime}",
            "fold": res["fold"].to_numpy(dtype=np.int64),
            "task": res["task"].astype(str).to_numpy(),
            "n_task": np.asarray(n_task, dtype=np.int64),
            "n_context": np.asarray(n_ctx, dtype=np.int64),
            "value": res["value"].to_numpy(dtype=np.float64),
            "note": res["note"].fillna("").to_numpy(),
        }
    )
    cost = {"wall_seconds": wall, "networks": float(len(specs)), "forward": fwd, "backward": bwd}
    return CurveRun(table, cost, info={"skipped": skipped, "regime": regime})


def exact_pair_curves(
    ds: MultiTaskDataset,
    folds: np.ndarray,
    *,
    test_folds: Sequence[int] = (0,),
    tasks: Sequence[str | int] | None = None,
    config: Any = None,
    max_size: int | None = None,
    seed: int = 0,
) -> CurveRun:
    """Exact pairwise curves: for every ordered pair (target i, partner j) of ``tasks``, target
    i at each grid size with partner j at all of its training data, each point from scratch.

    Together with :func:`exact_curves` (``regime="stl"``, the same subsamples of i: partner
    size 0) this is the reference for a_ij. The table has a ``partner`` column; ``n_context``
    is the partner's size. ``K (K - 1) x len(grid)`` networks per test fold.
    """
    from mtlc.designs import pair
    from mtlc.training import train_models

    cfg = _config(config)
    ts = ds.task_indices(tasks)
    ctx = DesignContext(dataset=ds.name, config_hash=cfg.hash())
    t0 = time.perf_counter()
    specs = []
    pairs = [(i, j) for i in ts for j in ts if i != j]
    for f in test_folds:
        pools = FoldPools(ds, folds, int(f), int(seed))
        specs += pair(pools, ctx, pairs=pairs, max_size=max_size).specs
    res = train_models(ds, specs, cfg)
    wall = time.perf_counter() - t0
    fwd, bwd = _fleet_passes(specs, res, cfg)
    res = res[res["metric"] == "roc_auc"]
    table = pd.DataFrame(
        {
            "method": "exact_pair",
            "fold": res["fold"].to_numpy(dtype=np.int64),
            "task": res["task"].astype(str).to_numpy(),
            "partner": res["partner"].astype(str).to_numpy(),
            "n_task": res["n_task"].to_numpy(dtype=np.int64),
            "n_context": res["n_context"].to_numpy(dtype=np.int64),
            "value": res["value"].to_numpy(dtype=np.float64),
            "note": res["note"].fillna("").to_numpy(),
        }
    )
    cost = {"wall_seconds": wall, "networks": float(len(specs)), "forward": fwd, "backward": bwd}
    return CurveRun(table, cost, info={"n_pairs": len(pairs)})


def pair_gain_test(
    pairs: pd.DataFrame, stl: pd.DataFrame, task_ids: Sequence[str]
) -> dict[str, np.ndarray]:
    """Model-free test of pairwise transfer from exact curves: paired AUC gains.

    For each (partner j, target i) the gains ``AUC(i with j) - AUC(i alone)`` at the same
    (fold, size) (same subsample of i) are the replicates of a one-sided t-test of
    "gain > 0". Returns ``(K, K)`` ``[source, target]`` arrays ``mean`` (mean gain, AUC units),
    ``p``, ``q`` (Benjamini-Hochberg over the pairs), ``n`` (paired points).
    """
    from mtlc.stats import bh

    ids = list(task_ids)
    idx = {t: k for k, t in enumerate(ids)}
    m = pairs.merge(
        stl[["fold", "task", "n_task", "value"]],
        on=["fold", "task", "n_task"],
        suffixes=("", "_stl"),
    )
    m["gain"] = m["value"] - m["value_stl"]
    m = m[np.isfinite(m["gain"])]
    K = len(ids)
    mean, p, n = (np.full((K, K), np.nan) for _ in range(3))
    for (tgt, src), d in m.groupby(["task", "partner"]):
        if tgt not in idx or src not in idx:
            continue
        g = d["gain"].to_numpy()
        a, b = idx[src], idx[tgt]
        mean[a, b], n[a, b] = g.mean(), len(g)
        if len(g) >= 2 and g.std(ddof=1) > 0:
            p[a, b] = float(sps.ttest_1samp(g, 0.0, alternative="greater").pvalue)
    return {"mean": mean, "p": p, "q": bh(p), "n": n}


# ----------------------------------------------------------------------------- incremental
def _score(y: np.ndarray, m: np.ndarray, s: np.ndarray) -> tuple[float, str]:
    from mtlc.evaluate import score_task

    r = score_task(y[m], s[m])
    return float(r["roc_auc"]), str(r["note"])


def _incremental_run(
    ds: MultiTaskDataset,
    pools: FoldPools,
    heads: list[int],
    stages: list[dict[int, int]],
    is_val: np.ndarray,
    test_y: np.ndarray,
    test_m: np.ndarray,
    cfg: Any,
    epochs_per_stage: int,
    patience: int,
    seed: int,
    lookup: sp.csr_matrix,
) -> tuple[list[dict[str, Any]], int, int]:
    """Train one network through ``stages`` (size vectors over ``heads``), warm-starting.

    Returns the per-stage per-head test rows and the (forward, backward) pass counts.
    """
    from mtlc.models import MultiTaskNet, SparseBatch, masked_bce, resolve_device

    dev = resolve_device(cfg.device)
    dt = cfg.torch_dtype
    gen_seed = int(np.random.SeedSequence([seed, 7]).generate_state(1)[0])
    torch.manual_seed(gen_seed)
    net = MultiTaskNet(ds.X.shape[1], len(heads), hidden=cfg.hidden, dropout=cfg.dropout)
    net = net.to(device=dev, dtype=dt)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng = np.random.default_rng([seed, 11])
    xt = SparseBatch.from_csr(ds.X, pools.test_compounds, device=dev)
    bs = cfg.batch_size
    fwd = bwd = 0
    rows: list[dict[str, Any]] = []
    col_of = {t: k for k, t in enumerate(heads)}
    for stage, size_vec in enumerate(stages):
        pairs = np.concatenate([pools.take(t, n) for t, n in size_vec.items() if n > 0])
        r = ds.rows[pairs].astype(np.int64)
        c = np.array([col_of[int(t)] for t in ds.cols[pairs]], dtype=np.int64)
        lab = np.where(lookup[r, ds.cols[pairs]].A1 > 0, 1.0, 0.0)
        comps = np.unique(r)
        cidx = np.searchsorted(comps, r)
        Y = np.zeros((len(comps), len(heads)))
        M = np.zeros_like(Y)
        Y[cidx, c] = lab
        M[cidx, c] = 1.0
        val = is_val[comps]
        if val.all() or val.sum() == 0 or cfg.val_fraction == 0:
            val = np.zeros(len(comps), dtype=bool)  # too small to hold out: train on all
        tr, va = np.flatnonzero(~val), np.flatnonzero(val)
        ty = torch.as_tensor(Y[tr], dtype=dt, device=dev)
        tm = torch.as_tensor(M[tr], dtype=dt, device=dev)
        vy = torch.as_tensor(Y[va], dtype=dt, device=dev)
        vm = torch.as_tensor(M[va], dtype=dt, device=dev)
        xv = SparseBatch.from_csr(ds.X, comps[va], device=dev) if len(va) else None
        best, best_state, since = float("inf"), None, 0
        for _ in range(epochs_per_stage):
            net.train()
            perm = rng.permutation(len(tr))
            for s in range(0, len(tr), bs):
                b = perm[s : s + bs]
                xb = SparseBatch.from_csr(ds.X, comps[tr[b]], device=dev)
                loss = masked_bce(net(xb), ty[b], tm[b])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                fwd += 1
                bwd += 1
            if xv is None:
                continue
            net.eval()
            with torch.no_grad():
                vl = float(masked_bce(net(xv), vy, vm))
            fwd += math.ceil(len(va) / bs)
            if vl < best:
                best, since = vl, 0
                best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
            else:
                since += 1
                if since >= patience:
                    break
        if best_state is not None:  # keep the stage's best weights, continue from them
            net.load_state_dict(best_state)
        net.eval()
        with torch.no_grad():
            s_test = net(xt).double().cpu().numpy()
        fwd += math.ceil(len(pools.test_compounds) / bs)
        total = int(sum(size_vec.values()))
        for t in heads:
            k = col_of[t]
            auc, note = _score(test_y[:, t], test_m[:, t], s_test[:, k])
            n = int(size_vec.get(t, 0))
            rows.append(
                {
                    "fold": pools.fold,
                    "task": str(pools.task_ids[t]),
                    "n_task": n,
                    "n_context": total - n,
                    "value": auc,
                    "note": note,
                    "stage": stage,
                }
            )
    return rows, fwd, bwd


def incremental_curves(
    ds: MultiTaskDataset,
    folds: np.ndarray,
    *,
    mode: str = "stl",
    test_folds: Sequence[int] = (0,),
    tasks: Sequence[str | int] | None = None,
    config: Any = None,
    max_size: int | None = None,
    epochs_per_stage: int | None = None,
    patience: int | None = None,
    start: int = 16,
    ratio: float = math.sqrt(2),
    seed: int = 0,
) -> CurveRun:
    """Whole learning curves from one warm-started run each (``mode`` ``"stl"`` or ``"mtl"``).

    Stage k trains on the first ``grid[k]`` nested training pairs of each task (the same pairs
    as :func:`exact_curves` at that size) for at most ``epochs_per_stage`` epochs (default
    ``config.max_epochs``), with early stopping on an inner validation set (``patience``,
    default ``config.patience``); the stage's best weights are kept and training continues from
    them at the next stage (same Adam state). Inner validation compounds are a fixed seeded
    ``val_fraction`` of all compounds, so the validation set grows nested too and never
    includes the test fold.

    ``mode="stl"``: one single-head network per task over the task's own grid.
    ``mode="mtl"``: one network with a head per task; at stage k every task is at
    ``min(grid[k], its available pairs)`` (the all-task regime of :mod:`mtlc.designs`).
    """
    if mode not in ("stl", "mtl"):
        raise ConfigError(f"incremental_curves: mode must be 'stl' or 'mtl', got {mode!r}")
    if ds.X is None:
        raise ConfigError(f"data set {ds.name!r} has no features; featurize it first")
    cfg = _config(config)
    eps = int(cfg.max_epochs if epochs_per_stage is None else epochs_per_stage)
    pat = int(cfg.patience if patience is None else patience)
    if eps < 1 or pat < 1:
        raise ConfigError("epochs_per_stage and patience must be >= 1")
    ts = ds.task_indices(tasks)
    lookup = ds.labels_sparse().tocsr()
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    fwd = bwd = nets = 0
    for f in test_folds:
        pools = FoldPools(ds, folds, int(f), int(seed))
        is_val = np.random.default_rng([seed, int(f), 5]).random(ds.n_compounds) < cfg.val_fraction
        sub = lookup[pools.test_compounds].toarray()
        test_y, test_m = sub > 0, sub != 0
        cap = {
            t: int(pools.available[t] if max_size is None else min(pools.available[t], max_size))
            for t in ts
        }
        if mode == "stl":
            for t in ts:
                grid = geometric_grid(cap[t], start=start, ratio=ratio)
                if len(grid) == 0:
                    continue
                r, f_, b_ = _incremental_run(
                    ds, pools, [t], [{t: int(n)} for n in grid], is_val, test_y, test_m,
                    cfg, eps, pat, seed * 100_003 + t * 31 + int(f), lookup,
                )  # fmt: skip
                rows += r
                fwd, bwd, nets = fwd + f_, bwd + b_, nets + 1
        else:
            levels = geometric_grid(max(cap.values()), start=start, ratio=ratio)
            stages = [{t: int(min(n, cap[t])) for t in ts} for n in levels]
            r, f_, b_ = _incremental_run(
                ds, pools, ts, stages, is_val, test_y, test_m, cfg, eps, pat,
                seed * 100_003 + int(f), lookup,
            )  # fmt: skip
            rows += r
            fwd, bwd, nets = fwd + f_, bwd + b_, nets + 1
    table = pd.DataFrame(rows)
    table.insert(0, "method", f"incremental_{mode}")
    cost = {
        "wall_seconds": time.perf_counter() - t0,
        "networks": float(nets),
        "forward": fwd,
        "backward": bwd,
    }
    return CurveRun(table, cost, info={"epochs_per_stage": eps, "patience": pat, "mode": mode})


# ----------------------------------------------------------------------------- random design
def random_design_runs(
    ds: MultiTaskDataset,
    folds: np.ndarray,
    *,
    n_runs: int = 20,
    test_folds: Sequence[int] = (0,),
    tasks: Sequence[str | int] | None = None,
    config: Any = None,
    max_size: int | None = None,
    seed: int = 0,
) -> CurveRun:
    """``n_runs`` all-task networks per test fold, each task's size drawn from its own grid.

    Uses :func:`mtlc.designs.random_design` (draws seeded by (seed, fold, run)). The returned
    table has one row per (network, task) with ``run`` (index within the fold); ``sizes`` holds
    the full size vector of each row's network (columns = task ids, 0 for untrained tasks).
    """
    from mtlc.designs import random_design
    from mtlc.training import train_models

    cfg = _config(config)
    ts = ds.task_indices(tasks)
    ctx = DesignContext(dataset=ds.name, config_hash=cfg.hash())
    t0 = time.perf_counter()
    specs = []
    for f in test_folds:
        pools = FoldPools(ds, folds, int(f), int(seed))
        specs += random_design(pools, ctx, n_runs=n_runs, tasks=ts, max_size=max_size).specs
    res = train_models(ds, specs, cfg)
    wall = time.perf_counter() - t0
    fwd, bwd = _fleet_passes(specs, res, cfg)
    res = res[res["metric"] == "roc_auc"].reset_index(drop=True)
    ids = [str(ds.tasks["task_id"].iloc[t]) for t in ts]
    size_of = {s.key["job_id"]: json.loads(s.key["task_sizes"]) for s in specs}
    S = np.array([[size_of[j].get(t, 0) for t in ids] for j in res["job_id"]], dtype=np.int64)
    own = np.array(
        [size_of[j].get(str(t), 0) for j, t in zip(res["job_id"], res["task"], strict=True)]
    )
    table = pd.DataFrame(
        {
            "method": "random_design",
            "fold": res["fold"].to_numpy(dtype=np.int64),
            "run": res["n_level"].to_numpy(dtype=np.int64),
            "task": res["task"].astype(str).to_numpy(),
            "n_task": own.astype(np.int64),
            "n_context": S.sum(axis=1) - own,
            "value": res["value"].to_numpy(dtype=np.float64),
            "note": res["note"].fillna("").to_numpy(),
        }
    )
    cost = {"wall_seconds": wall, "networks": float(len(specs)), "forward": fwd, "backward": bwd}
    return CurveRun(table, cost, sizes=pd.DataFrame(S, columns=ids), info={"n_runs": n_runs})


def _coef_row(
    target: str,
    source: str,
    full: float,
    boot: np.ndarray,
    *,
    a: float,
    flag: str,
    n_points: int,
    alpha: float,
) -> dict[str, Any]:
    """One row of a random-design coefficient table: the full-data estimate ``full``, its
    percentile interval and one-sided normal-approximation p-value (a > 0) from the bootstrap
    replicates ``boot`` (non-finite ones ignored), and rho = estimate / own rate ``a``."""
    bs = boot[np.isfinite(boot)]
    if len(bs):
        lo, hi = np.quantile(bs, [alpha / 2, 1 - alpha / 2])
        p_boot = float(np.mean(bs <= 0))
        se = float(np.std(bs, ddof=1)) if len(bs) > 1 else np.nan
        p = float(sps.norm.sf(full / se)) if se > 0 and np.isfinite(full) else np.nan
    else:
        lo = hi = p = se = p_boot = np.nan
    return {
        "target": target,
        "source": source,
        "estimate": full,
        "ci_lo": float(lo),
        "ci_hi": float(hi),
        "se": se,
        "p_pos": p,
        "p_boot": p_boot,
        "rho": full / a if a > 0 else np.nan,
        "a": a,
        "flag": flag,
        "n_points": n_points,
    }


def _coef_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows of :func:`_coef_row` as a table, with BH q-values of ``p_pos`` over all of them."""
    from mtlc.stats import bh

    res = pd.DataFrame(rows)
    if len(res):
        res["q_pos"] = bh(res["p_pos"].to_numpy())
    return res


def random_design_fit(
    run: CurveRun,
    *,
    model: str = "multi",
    ridge: float = 1e-3,
    n_boot: int = 200,
    level: float = 0.95,
    runs: int | None = None,
    c_fixed: float | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """Estimate transfer coefficients from random-design runs, with bootstrap intervals.

    For every target task i, the points of all runs (all test folds pooled) are fitted with
    ``model``: ``"multi"`` (``P_i = c - exp(b - a n_i - sum_j a_ij n_j)``, one coefficient per
    partner, ridge penalty ``ridge * sum_j a_ij^2``) or ``"exp3.2"`` (``a_iS`` on the summed
    context size). Sizes are in samples (rates per 1000 samples, as :mod:`mtlc.curves`).
    ``runs``: use only the first ``runs`` runs of each fold (a cheaper design, for power versus
    compute). ``c_fixed``: fix the asymptote (e.g. 1.0 for AUC) instead of fitting it; then
    ``log(c - P) = b - a n_i - sum_j a_ij n_j`` is linear and is solved in closed form (weighted
    ridge least squares, weights ``(c - P)^2`` as in :mod:`mtlc.curves`): cruder, but stable
    when the curves are far from their asymptote and a few dozen noisy points cannot separate
    ``c`` from the rates. Intervals: percentile bootstrap over networks (the rows of one run move
    together), ``n_boot`` replicates fitted in one batched call per target.

    Returns one row per (target, source): ``target``, ``source`` (``"S"`` for exp3.2),
    ``estimate`` (fit on all points), ``ci_lo``, ``ci_hi``, ``se`` (bootstrap sd),
    ``p_pos`` (one-sided p-value of "coefficient > 0" from the normal approximation
    ``1 - Phi(estimate / se)``: the bootstrap fraction of replicates <= 0 cannot go below
    ``1 / n_boot``, too coarse for Benjamini-Hochberg over many pairs), ``p_boot`` (that
    fraction), ``q_pos`` (Benjamini-Hochberg over all rows), ``rho``
    (coefficient / own rate a), ``a`` and ``flag`` of the full-data fit, ``n_points``.
    """
    from mtlc.curves import fit_curves

    if model not in ("multi", "exp3.2"):
        raise ConfigError(f"random_design_fit: model must be 'multi' or 'exp3.2', got {model!r}")
    if run.sizes is None or "run" not in run.table.columns:
        raise InputTableError("random_design_fit needs the output of random_design_runs")
    tab = run.table.reset_index(drop=True)
    sizes = run.sizes.reset_index(drop=True)
    keep = tab["value"].notna().to_numpy().copy()
    if runs is not None:
        keep &= tab["run"].to_numpy() < int(runs)
    ids = list(sizes.columns)
    net_id = (tab["fold"].astype(str) + ":" + tab["run"].astype(str)).to_numpy()
    rng = np.random.default_rng(seed)
    out = []
    for target in ids:
        sel = keep & (tab["task"].to_numpy() == target)
        if sel.sum() == 0:
            continue
        d = pd.DataFrame(
            {"n_task": tab.loc[sel, "n_task"].to_numpy(), "value": tab.loc[sel, "value"].to_numpy()}
        )
        partners = [t for t in ids if t != target]
        if model == "multi":
            cols = [f"n_{t}" for t in partners]
            for t, cname in zip(partners, cols, strict=True):
                d[cname] = sizes.loc[sel, t].to_numpy()
        else:
            cols = ["n_context"]
            d["n_context"] = tab.loc[sel, "n_context"].to_numpy()
        nets = net_id[sel]
        uniq = np.unique(nets)
        pos = np.searchsorted(uniq, nets)
        reps = [d.assign(rep=0)]
        for b in range(1, n_boot + 1):
            draw = rng.integers(len(uniq), size=len(uniq))
            take = np.concatenate([np.flatnonzero(pos == k) for k in draw])
            reps.append(d.iloc[take].assign(rep=b))
        big = pd.concat(reps, ignore_index=True)
        if c_fixed is None:
            fit = fit_curves(
                big, model, by=["rep"], x="n_task", y="value", context=cols, fold=None,
                level="pooled", ridge=ridge if model == "multi" else 0.0,
            )  # fmt: skip
            fit = fit.set_index("rep").sort_index()
        else:
            fit = _fixed_c_fit(big, cols, float(c_fixed), ridge if model == "multi" else 0.0)
            fit = fit.rename(columns={"a_n_context": "a_S"})  # exp3.2's name for a_iS
        coef_names = [f"a_{c}" for c in cols] if model == "multi" else ["a_S"]
        sources = partners if model == "multi" else ["S"]
        alpha = 1 - level
        for src, cn in zip(sources, coef_names, strict=True):
            out.append(
                _coef_row(
                    target,
                    src,
                    float(fit.loc[0, cn]),
                    fit.loc[1:, cn].to_numpy(dtype=np.float64),
                    a=float(fit.loc[0, "a"]),
                    flag=str(fit.loc[0, "flag"]),
                    n_points=int(sel.sum()),
                    alpha=alpha,
                )
            )
    return _coef_table(out)


def random_design_from_store(
    results: pd.DataFrame,
    *,
    metric: str = "roc_auc",
    fold: int | None = None,
) -> CurveRun:
    """The random-design runs of a results store as the :class:`CurveRun` that
    :func:`random_design_fit` takes.

    ``results``: rows of :meth:`mtlc.store.ResultsStore.read` (``mtlc train --regime random``)
    of **one** data set and split (e.g. ``results/random_design/kiba_scaffold``). Only
    ``regime == "random"``, ``status == "ok"`` rows of ``metric`` are used (failed jobs carry no
    value and are counted in ``info["failed_jobs"]``). ``fold``: keep one test fold only.

    Each network (one ``job_id``) becomes one run; ``run`` numbers the networks of a test fold
    in (seed, ``n_level``) order, so several seeds of one fold are separate runs. ``sizes`` is
    read from the stored ``task_sizes`` JSON (a task absent from it had size 0 in that
    network); its columns are every task that was evaluated or trained, sorted.

    Raises :class:`mtlc.errors.InputTableError` when the rows are not random-design rows of
    one data set and split.
    """
    need = ["dataset", "split", "fold", "seed", "regime", "n_level", "task", "metric", "value"]
    need += ["status", "job_id", "task_sizes"]
    missing = [c for c in need if c not in results.columns]
    if missing:
        raise InputTableError(
            f"random_design_from_store: the results lack column(s) {missing}; pass the rows of "
            "ResultsStore.read() of a store written by `mtlc train --regime random`"
        )
    rnd = results[results["regime"] == "random"]
    if len(rnd) == 0:
        regimes = sorted(results["regime"].dropna().unique().tolist())
        raise InputTableError(
            "random_design_from_store: no random-design rows (regime 'random') in the results; "
            f"regimes found: {regimes}. Train them with `mtlc train --regime random --n-runs N`"
        )
    for col in ("dataset", "split"):
        vals = sorted(rnd[col].astype(str).unique().tolist())
        if len(vals) > 1:
            raise InputTableError(
                f"random_design_from_store: the rows mix {col}s {vals}; select one "
                f"(results[results[{col!r}] == ...]) or keep one per store"
            )
    if fold is not None:
        rnd = rnd[rnd["fold"] == int(fold)]
        if len(rnd) == 0:
            raise InputTableError(f"random_design_from_store: no random-design rows of fold {fold}")
    failed = rnd.loc[rnd["status"] != "ok", "job_id"].nunique()
    ok = rnd[(rnd["status"] == "ok") & (rnd["metric"] == metric)]
    if len(ok) == 0:
        metrics = sorted(rnd["metric"].dropna().unique().tolist())
        raise InputTableError(
            f"random_design_from_store: no successful rows of metric {metric!r}; found {metrics}"
        )
    ok = ok.sort_values(["fold", "seed", "n_level", "task"], kind="stable").reset_index(drop=True)
    nets = ok.drop_duplicates("job_id")[["job_id", "fold", "seed", "n_level", "task_sizes"]]
    nets = nets.assign(run=nets.groupby("fold").cumcount().to_numpy(dtype=np.int64))
    size_of = {
        j: json.loads(ts or "{}") for j, ts in zip(nets["job_id"], nets["task_sizes"], strict=True)
    }
    ids = sorted(set(ok["task"].astype(str)) | {t for d in size_of.values() for t in d})
    col = {t: k for k, t in enumerate(ids)}
    # one size vector per network, then broadcast to its rows (201 tasks x many rows)
    S_net = np.zeros((len(nets), len(ids)), dtype=np.int64)
    for r, j in enumerate(nets["job_id"]):
        for t, n in size_of[j].items():
            S_net[r, col[t]] = int(n)
    row_net = pd.Index(nets["job_id"]).get_indexer(ok["job_id"])
    S = S_net[row_net]
    own = S[np.arange(len(ok)), [col[str(t)] for t in ok["task"]]]
    table = pd.DataFrame(
        {
            "method": "random_design",
            "fold": ok["fold"].to_numpy(dtype=np.int64),
            "run": nets["run"].to_numpy()[row_net],
            "task": ok["task"].astype(str).to_numpy(),
            "n_task": own.astype(np.int64),
            "n_context": S.sum(axis=1) - own,
            "value": ok["value"].to_numpy(dtype=np.float64),
            "note": ok["note"].fillna("").to_numpy() if "note" in ok else "",
        }
    )
    cost = {
        "wall_seconds": float(
            ok.drop_duplicates("job_id")["train_seconds"].sum() if "train_seconds" in ok else np.nan
        ),
        "networks": float(len(nets)),
    }
    info = {
        "n_runs_per_fold": nets.groupby("fold").size().to_dict(),
        "failed_jobs": int(failed),
        "metric": metric,
        "dataset": str(ok["dataset"].iloc[0]),
        "split": str(ok["split"].iloc[0]),
    }
    return CurveRun(table, cost, sizes=pd.DataFrame(S, columns=ids), info=info)


def random_design_fit_fixed_c(
    run: CurveRun,
    *,
    c: float = 1.0,
    model: str = "multi",
    ridge: float = 1e-3,
    n_boot: int = 200,
    level: float = 0.95,
    runs: int | None = None,
    seed: int = 0,
) -> pd.DataFrame:
    """:func:`random_design_fit` with ``c_fixed=c``, computed in closed form for many tasks.

    Same model, same bootstrap draws (the same generator, consumed in the same order), same
    table (equal to ``random_design_fit(run, c_fixed=c, ...)`` up to floating-point rounding),
    but a bootstrap replicate is a vector of network multiplicities instead of a copied table:
    the weighted ridge normal equations of all replicates of a target are formed in one batched
    product and solved together. With 201 tasks (200 partner columns) and a few hundred networks
    this takes seconds per target instead of minutes.

    ``ridge`` applies to the transfer coefficients (multi and marginal); the intercept and the
    own rate ``a`` are not penalised, as in :mod:`mtlc.curves`.

    ``model="marginal"`` (this function only): one partner at a time,
    ``log(c - P_i) = b - a n_i - a_ij n_j`` fitted for every partner j separately (three
    parameters per fit, the same points, weights and bootstrap replicates). The random design
    draws every task's size independently, so the partners left out of a fit only add noise:
    the marginal a_ij estimates the same coefficient as the multi-partner fit, averaged over the
    other partners' random sizes, without solving for all partners at once (which needs many
    more networks than partners). ``a`` (and ``rho``) come from the same three-parameter fit.
    """

    if model not in ("multi", "exp3.2", "marginal"):
        raise ConfigError(
            "random_design_fit_fixed_c: model must be 'multi', 'exp3.2' or 'marginal', got "
            f"{model!r}"
        )
    if run.sizes is None or "run" not in run.table.columns:
        raise InputTableError("random_design_fit_fixed_c needs the output of random_design_runs")
    c = float(c)
    tab = run.table.reset_index(drop=True)
    sizes = run.sizes.reset_index(drop=True)
    keep = tab["value"].notna().to_numpy().copy()
    if runs is not None:
        keep &= tab["run"].to_numpy() < int(runs)
    ids = list(sizes.columns)
    S_all = sizes.to_numpy(dtype=np.float64)
    task_col = tab["task"].to_numpy()
    net_id = (tab["fold"].astype(str) + ":" + tab["run"].astype(str)).to_numpy()
    values = tab["value"].to_numpy(dtype=np.float64)
    n_task = tab["n_task"].to_numpy(dtype=np.float64)
    n_ctx = tab["n_context"].to_numpy(dtype=np.float64)
    rng = np.random.default_rng(seed)
    alpha = 1 - level
    pen_ridge = ridge if model in ("multi", "marginal") else 0.0
    out = []
    for k_t, target in enumerate(ids):
        sel = keep & (task_col == target)
        if sel.sum() == 0:
            continue
        partners = [t for t in ids if t != target]
        if model in ("multi", "marginal"):
            ctx = np.delete(S_all[sel], k_t, axis=1)
        else:
            ctx = n_ctx[sel][:, None]
        nets = net_id[sel]
        uniq = np.unique(nets)
        pos = np.searchsorted(uniq, nets)
        mult = np.empty((n_boot + 1, len(nets)))
        mult[0] = 1.0
        for b in range(1, n_boot + 1):
            draw = rng.integers(len(uniq), size=len(uniq))
            mult[b] = np.bincount(draw, minlength=len(uniq))[pos]
        p = values[sel]
        ok = p < c
        X = np.column_stack([n_task[sel], ctx])[ok] / 1000.0
        y = np.log(c - p[ok])
        w = (c - p[ok]) ** 2
        W = mult[:, ok] * w[None, :]
        flag = "c_fixed" + ("" if ok.all() else f";points_above_c:{int((~ok).sum())}")
        if model == "marginal":
            coef, own = _marginal_fits(X[:, 0], X[:, 1:], y, W, pen_ridge)
            flag += ";marginal"
        else:
            D = np.column_stack([np.ones(ok.sum()), -X])
            pen = np.zeros(D.shape[1])
            pen[2:] = pen_ridge
            DtW = D.T[None, :, :] * W[:, None, :]  # (reps, params, points)
            theta = _solve_each(DtW @ D + np.diag(pen), DtW @ y)
            coef = theta[:, 2:]
            own = np.repeat(theta[:, 1:2], coef.shape[1], axis=1)
        sources = partners if model != "exp3.2" else ["S"]
        for k_s, src in enumerate(sources):
            out.append(
                _coef_row(
                    target,
                    src,
                    float(coef[0, k_s]),
                    coef[1:, k_s],
                    a=float(own[0, k_s]),
                    flag=flag,
                    n_points=int(sel.sum()),
                    alpha=alpha,
                )
            )
    return _coef_table(out)


def _marginal_fits(
    x_own: np.ndarray, X: np.ndarray, y: np.ndarray, W: np.ndarray, ridge: float
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted LS of ``y`` on ``[1, -x_own, -X[:, j]]`` for every column j and weight row.

    x_own: ``(n,)``; X: ``(n, m)`` partner sizes (thousands); y: ``(n,)``; W: ``(reps, n)``
    weights (bootstrap multiplicity times the curve weight). Returns ``(coef, own)``, both
    ``(reps, m)``: the partner's coefficient and the own rate of each fit (NaN if singular).
    The 3x3 normal equations are built from weighted sums (one matrix product each) and
    solved in one batch.
    """
    u = -x_own
    V = -X
    s00 = W.sum(axis=1)[:, None]
    s0u = (W @ u)[:, None]
    suu = (W @ (u * u))[:, None]
    s0v = W @ V
    suv = W @ (V * u[:, None])
    svv = W @ (V * V) + ridge
    r0 = (W @ y)[:, None]
    ru = (W @ (u * y))[:, None]
    rv = W @ (V * y[:, None])
    shape = s0v.shape
    G = np.empty((*shape, 3, 3))
    G[..., 0, 0] = s00
    G[..., 0, 1] = G[..., 1, 0] = s0u
    G[..., 1, 1] = suu
    G[..., 0, 2] = G[..., 2, 0] = s0v
    G[..., 1, 2] = G[..., 2, 1] = suv
    G[..., 2, 2] = svv
    rhs = np.stack(np.broadcast_arrays(r0, ru, rv), axis=-1)
    theta = _solve_each(G.reshape(-1, 3, 3), rhs.reshape(-1, 3)).reshape(*shape, 3)
    return theta[..., 2], theta[..., 1]


def _solve_each(G: np.ndarray, rhs: np.ndarray) -> np.ndarray:
    """``solve(G[b], rhs[b])`` for every b; a singular system gives a NaN row (as the copied-
    table fit does) instead of failing the whole batch."""
    try:
        return np.linalg.solve(G, rhs[..., None])[..., 0]
    except np.linalg.LinAlgError:
        out = np.full(rhs.shape, np.nan)
        for b in range(len(G)):
            try:
                out[b] = np.linalg.solve(G[b], rhs[b])
            except np.linalg.LinAlgError:
                pass
        return out


def _fixed_c_fit(big: pd.DataFrame, cols: list[str], c: float, ridge: float) -> pd.DataFrame:
    """Per replicate ``rep``: weighted ridge LS of ``log(c - P)`` on ``[1, -n_i, -n_j...]/1000``.

    Returns a frame indexed by ``rep`` with ``a``, ``a_<col>`` and ``flag`` (``"c_fixed"``, plus
    ``points_above_c:k`` when k points with ``P >= c`` were left out).
    """
    names = ["a", *[f"a_{k}" for k in cols]]
    out = []
    for rep, d in big.groupby("rep", sort=True):
        p = d["value"].to_numpy(dtype=np.float64)
        ok = p < c
        Xs = d[["n_task", *cols]].to_numpy(dtype=np.float64)[ok] / 1000.0
        y = np.log(c - p[ok])
        w = (c - p[ok]) ** 2
        D = np.column_stack([np.ones(ok.sum()), -Xs])
        pen = np.zeros(D.shape[1])
        pen[2:] = ridge  # own rate and intercept unpenalized, as mtlc.curves
        G = (D * w[:, None]).T @ D + np.diag(pen)
        try:
            theta = np.linalg.solve(G, (D * w[:, None]).T @ y)
        except np.linalg.LinAlgError:
            theta = np.full(D.shape[1], np.nan)
        row = dict(zip(names, theta[1:], strict=True))
        row["rep"] = rep
        row["flag"] = "c_fixed" + ("" if ok.all() else f";points_above_c:{int((~ok).sum())}")
        out.append(row)
    return pd.DataFrame(out).set_index("rep")


def pair_matrix(
    table: pd.DataFrame, task_ids: Sequence[str], value: str = "estimate"
) -> np.ndarray:
    """``(K, K)`` matrix ``[source, target]`` of column ``value`` of a :func:`random_design_fit`
    table (NaN where absent, e.g. the diagonal)."""
    ids = list(task_ids)
    idx = {t: k for k, t in enumerate(ids)}
    M = np.full((len(ids), len(ids)), np.nan)
    for s, t, v in zip(table["source"], table["target"], table[value], strict=True):
        if s in idx and t in idx:
            M[idx[s], idx[t]] = v
    return M


# ----------------------------------------------------------------------------- fidelity
def curve_fidelity(reference: pd.DataFrame, approx: pd.DataFrame) -> pd.DataFrame:
    """Per task: how close approximate curves come to the reference curves.

    Both tables: long rows ``task, n_task, value`` (+ ``fold``); values are averaged over
    folds at each size. Curve error: mean absolute difference of the fold-mean AUC over the
    sizes both have (``mae``, also ``max_abs``, ``n_sizes``). Parameter error: EXP3
    (``P = c - exp(b - a n)``, n in thousands) fitted to both fold-mean curves:
    ``a_ref``, ``a_approx``, ``c_ref``, ``c_approx`` and the flags of both fits.
    """
    from mtlc.curves import fit_curves

    def mean_curve(d: pd.DataFrame) -> pd.DataFrame:
        d = d[d["value"].notna()]
        return d.groupby(["task", "n_task"], as_index=False)["value"].mean()

    r, a = mean_curve(reference), mean_curve(approx)
    m = r.merge(a, on=["task", "n_task"], suffixes=("_ref", "_approx"))
    m["abs"] = (m["value_ref"] - m["value_approx"]).abs()
    err = m.groupby("task").agg(
        mae=("abs", "mean"), max_abs=("abs", "max"), n_sizes=("abs", "size")
    )
    out = err.reset_index()
    for name, d in (("ref", r), ("approx", a)):
        f = fit_curves(d.assign(fold=0), "exp3", by=["task"], level="fold")
        f = f.set_index("task")
        out[f"a_{name}"] = out["task"].map(f["a"])
        out[f"c_{name}"] = out["task"].map(f["c"])
        out[f"flag_{name}"] = out["task"].map(f["flag"]).fillna("missing")
    return out


# ----------------------------------------------------------------------------- TAG and power
def tag_pair_test(
    results: Sequence[Any], *, unit: str = "epoch", epochs: int | None = None
) -> dict[str, np.ndarray]:
    """A test for TAG affinities, which have none built in: one-sided t-test of ``Z > 0``.

    ``results``: one or more :class:`mtlc.affinity.TagResult` (e.g. different seeds), same
    tasks. ``unit="epoch"``: the replicates are the per-epoch mean affinities of every run
    (``history``; epochs are consecutive states of one trajectory, so they are positively
    correlated and the p-values are optimistic); ``unit="seed"``: the replicates are the runs'
    overall means (independent, needs >= 2 runs). ``epochs``: use only the first ``epochs``
    epochs of each run (exactly what a shorter TAG run computes: the trajectory is the same).

    Returns ``(K, K)`` arrays ``[source, target]``: ``mean``, ``t``, ``p`` (one-sided),
    ``q`` (Benjamini-Hochberg over the off-diagonal pairs), ``n`` (replicates); NaN on the
    diagonal.
    """
    from mtlc.stats import bh

    if unit not in ("epoch", "seed"):
        raise ConfigError(f"unit must be 'epoch' or 'seed', got {unit!r}")
    if not results:
        raise ConfigError("tag_pair_test needs at least one TagResult")
    if unit == "epoch":
        reps = [r.history[: (epochs or r.history.shape[0])] for r in results]
        V = np.concatenate(reps, axis=0)
    else:
        V = np.stack(
            [np.nanmean(r.history[: (epochs or r.history.shape[0])], axis=0) for r in results]
        )
    K = V.shape[1]
    n = np.sum(np.isfinite(V), axis=0).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nanmean(V, axis=0)
        sd = np.nanstd(V, axis=0, ddof=1)
        t = mean / (sd / np.sqrt(n))
        p = np.where(n >= 2, sps.t.sf(t, np.maximum(n - 1, 1)), np.nan)
    off = ~np.eye(K, dtype=bool)
    for a in (mean, t, p):
        a[~off] = np.nan
    return {"mean": mean, "t": t, "p": p, "q": bh(p), "n": n}


def detection_rates(q: np.ndarray, related: np.ndarray, *, alpha: float = 0.05) -> dict[str, float]:
    """True-positive and false-positive rates of calling a pair when ``q < alpha``.

    ``q``, ``related``: ``(K, K)``; the diagonal is ignored; NaN q counts as "not called".
    Returns ``tpr`` (called among related pairs), ``fpr`` (called among unrelated pairs),
    ``n_related``, ``n_unrelated``, ``n_called``.
    """
    q = np.asarray(q, dtype=np.float64)
    rel = np.asarray(related, dtype=bool)
    off = ~np.eye(len(q), dtype=bool)
    called = np.nan_to_num(q, nan=np.inf) < alpha
    r, u = rel & off, ~rel & off
    return {
        "tpr": float(called[r].mean()) if r.any() else np.nan,
        "fpr": float(called[u].mean()) if u.any() else np.nan,
        "n_related": int(r.sum()),
        "n_unrelated": int(u.sum()),
        "n_called": int(called[off].sum()),
    }


def pair_ranking_auc(score: np.ndarray, related: np.ndarray) -> float:
    """ROC-AUC of ``score`` (``(K, K)``, higher = more transfer) separating related from
    unrelated off-diagonal pairs (threshold-free power; NaN scores rank lowest)."""
    from sklearn.metrics import roc_auc_score

    s = np.asarray(score, dtype=np.float64)
    off = ~np.eye(len(s), dtype=bool)
    y = np.asarray(related, dtype=bool)[off]
    v = np.nan_to_num(s[off], nan=-np.inf)
    v = np.where(np.isneginf(v), np.nanmin(s[off]) - 1 if np.isfinite(s[off]).any() else 0, v)
    if y.all() or not y.any():
        return np.nan
    return float(roc_auc_score(y, v))


def rank_agreement(A: np.ndarray, Z: np.ndarray) -> dict[str, Any]:
    """Spearman rank correlation between two ``[source, target]`` pairwise matrices.

    Returns ``overall`` (all finite off-diagonal pairs), ``per_target`` (list, one per target
    column, NaN with fewer than 3 pairs) and ``n_pairs``.
    """
    A, Z = np.asarray(A, float), np.asarray(Z, float)
    if A.shape != Z.shape or A.ndim != 2:
        raise InputTableError(f"matrices differ in shape: {A.shape} vs {Z.shape}")
    off = ~np.eye(len(A), dtype=bool)
    ok = off & np.isfinite(A) & np.isfinite(Z)
    overall = float(sps.spearmanr(A[ok], Z[ok]).statistic) if ok.sum() >= 3 else np.nan
    per = []
    for j in range(A.shape[1]):
        m = ok[:, j]
        if m.sum() >= 3 and np.ptp(A[m, j]) > 0 and np.ptp(Z[m, j]) > 0:
            per.append(float(sps.spearmanr(A[m, j], Z[m, j]).statistic))
        else:
            per.append(np.nan)
    return {"overall": overall, "per_target": per, "n_pairs": int(ok.sum())}
