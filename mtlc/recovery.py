"""Real-pipeline recovery of planted transfer: do fitted a_ij and a_S find the planted structure?

The synthetic data set (:func:`mtlc.datasets.synthetic`) plants groups of related tasks with an
exact relatedness (cosine of the task weight vectors). This module trains networks on it through
the production path (:func:`mtlc.study.run_study`: designs, fleet training, the results store),
fits the learning-curve models per fold (:func:`mtlc.curves.fit_pairwise`,
:func:`mtlc.curves.fit_exp32`), summarizes the folds (:func:`mtlc.stats.fold_summary`) and
compares the estimates with the truth.

- :data:`CI` is a design small enough for the test suite (about 30 s of one CPU core);
  :data:`FULL` is the benchmark's (``benchmarks/recovery_pipeline.py``).
- :func:`run_recovery` builds the data set, runs (or resumes) the three regimes into a store
  and returns a :class:`Recovery` with the tidy tables and :func:`recovery_metrics`.

Which estimand is compared with the truth (the reasons are in the Method chapter):

* ``a_ij`` is in units of the target's own learning curve: its size follows the target's own
  rate ``a_i`` and the curvature of its curve, which differ between targets. A pooled rank
  correlation of ``a_ij`` over pairs of *different* targets therefore mixes scales. The
  comparable quantities are ``a_ij`` *within* a target (the partners of one target ranked
  against each other: what a user does to choose partners for a task) and the scale-free
  ``rho_ij = a_ij / a_i``. All three are reported; the within-target statistics are primary.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

__all__ = [
    "RecoveryDesign",
    "Recovery",
    "CI",
    "FULL",
    "run_recovery",
    "recovery_metrics",
    "default_pairs",
    "chance_probability",
]


@dataclass(frozen=True)
class RecoveryDesign:
    """What :func:`run_recovery` trains.

    Attributes
    ----------
    data: keyword arguments of :func:`mtlc.datasets.synthetic` (``seed`` is added per run).
    pairs: ``{target: (partner, ...)}``; ``None`` = every task that has group mates is a target,
        its partners are its group mates plus as many other tasks (the next ones in id order
        outside its group), so every target has related and unrelated partners in equal number.
    contextual_targets: tasks whose EXP3.2 ``a_S`` is fitted on single-task + all-task curves;
        ``None`` = every task; ``()`` = skip the all-task regime.
    sizes: the target's sample sizes (compounds), shared by every regime.
    partner_sizes: the partner's sizes in the pair regime: ``"full"`` (all its training data)
        or a list of sizes (each a level of ``n_j`` beside ``n_j = 0`` from the STL curve).
    n_folds, folds: the split (compound split) and the test folds used.
    config: keyword arguments of :class:`mtlc.training.TrainConfig`.
    """

    data: dict[str, Any]
    pairs: dict[str, tuple[str, ...]] | None = None
    contextual_targets: tuple[str, ...] | None = None
    sizes: tuple[int, ...] = (16, 32, 64, 128)
    partner_sizes: str | tuple[int, ...] = "full"
    n_folds: int = 5
    folds: tuple[int, ...] = (0, 1, 2, 3, 4)
    config: dict[str, Any] = field(default_factory=dict)

    def with_(self, **changes: Any) -> RecoveryDesign:
        """A copy with some fields replaced (``data``/``config`` dicts are merged)."""
        for k in ("data", "config"):
            if k in changes:
                changes[k] = {**getattr(self, k), **changes[k]}
        return replace(self, **changes)


#: CI-sized design (about 30 s of one CPU core): 1500 compounds, 12 tasks in 2 planted groups of
#: 4 related tasks (relatedness 0.77) and 4 unrelated tasks (relatedness 0 to every task: no
#: shared factor), small fingerprints, linear scores. The 8 grouped tasks are targets, each
#: with its 3 group mates and 3 tasks from outside as partners (48 pairs); the partner enters
#: at 256 compounds (n_j = 0 comes from the single-task curve). 5 folds, n_i = 16..128. No
#: inner validation: at these sizes it would hold out 8-13 compounds, and early stopping on
#: them adds noise; every model trains its fixed budget (20 epochs, at least 100 steps).
CI = RecoveryDesign(
    data=dict(
        n_compounds=1500,
        n_tasks=12,
        n_features=256,
        bits_per_compound=20,
        n_groups=2,
        group_size=4,
        shared_strength=0.0,
        group_strength=1.0,
        task_noise=0.3,
        nonlinearity="linear",
    ),
    sizes=(16, 32, 64, 128),
    partner_sizes=(256,),
    n_folds=5,
    folds=(0, 1, 2, 3, 4),
    config=dict(
        hidden=(64,),
        batch_size=32,
        max_epochs=20,
        patience=3,
        val_fraction=0.0,
        min_steps=100,
        device="cpu",
    ),
)

#: Full-size design (``benchmarks/recovery_pipeline.py``): the default synthetic data set of
#: :func:`mtlc.datasets.synthetic` (4000 compounds, 2048 bits, 12 tasks: 3 groups of 3 related
#: tasks, relatedness 0.83, and 3 unrelated ones; every pair outside a group 0.28), the smoke
#: study's training configuration, n_i = 16..256, the partner at 256 and 1024 compounds (with
#: the single-task curve: three levels of n_j), all 12 tasks in the contextual fits, 5 folds.
FULL = RecoveryDesign(
    data=dict(),
    pairs={
        "t00": ("t01", "t02", "t04", "t09"),
        "t03": ("t04", "t05", "t00", "t10"),
        "t06": ("t07", "t08", "t01", "t11"),
        "t09": ("t10", "t00"),
    },
    contextual_targets=None,
    sizes=(16, 32, 64, 128, 256),
    partner_sizes=(256, 1024),
    n_folds=5,
    folds=(0, 1, 2, 3, 4),
    config=dict(
        hidden=(128,),
        batch_size=64,
        max_epochs=15,
        patience=3,
        lr=1e-3,
        dropout=0.2,
        val_fraction=0.1,
        min_steps=100,
        min_val_compounds=8,
    ),
)


@dataclass
class Recovery:
    """Result of :func:`run_recovery`.

    pairs: one row per (target, partner): ``target``, ``partner``, ``relatedness`` (planted
        cosine), ``related`` (same planted group), ``a_ij`` (fold mean, per 1000 samples),
        ``a_ij_lo``/``a_ij_hi`` (95 % t-interval over folds), ``p``, ``q`` (BH over pairs),
        ``a_i`` (fold mean of the target's own rate in the same fits), ``rho_ij`` (fold mean of
        ``a_ij / a_i``), ``rho_lo``/``rho_hi``, ``n_folds``, ``flag``.
    contextual: one row per task: ``task``, ``in_group`` (has planted related tasks), ``a_S``,
        ``a_S_lo``/``a_S_hi``, ``p``, ``q``, ``rho_S``, ``n_folds``, ``flag`` (empty when the
        all-task regime was skipped).
    fits_pairwise, fits_exp32: the per-fold fits.
    metrics: :func:`recovery_metrics` of the two tables.
    seconds: wall time of training (all regimes) and of fitting.
    n_failed: jobs stored as failed (with their reason in the store's ``note``).
    n_undefined: ROC-AUC values that are NaN (a test fold without both classes), left out.
    """

    pairs: pd.DataFrame
    contextual: pd.DataFrame
    fits_pairwise: pd.DataFrame
    fits_exp32: pd.DataFrame
    metrics: dict[str, float]
    seconds: dict[str, float]
    n_failed: int = 0
    n_undefined: int = 0


def default_pairs(truth: dict[str, Any]) -> dict[str, tuple[str, ...]]:
    """Every task with group mates as a target: its mates plus as many tasks from outside."""
    ids = [str(t) for t in truth["task_ids"]]
    groups = np.asarray(truth["groups"])
    out: dict[str, tuple[str, ...]] = {}
    for i, t in enumerate(ids):
        if groups[i] < 0:
            continue
        mates = [ids[j] for j in range(len(ids)) if j != i and groups[j] == groups[i]]
        others = [ids[j] for j in range(len(ids)) if groups[j] != groups[i]]
        # the others nearest after the target's group in id order, wrapping around
        start = max(j for j in range(len(ids)) if groups[j] == groups[i]) + 1
        others = sorted(others, key=lambda s: (ids.index(s) - start) % len(ids))
        out[t] = tuple(mates + others[: len(mates)])
    return out


def run_recovery(
    design: RecoveryDesign = CI,
    *,
    store: str | os.PathLike,
    seed: int = 0,
    progress: bool = False,
    n_boot: int = 500,
) -> Recovery:
    """Train the design's regimes on the seeded synthetic data set and compare with the truth.

    Parameters
    ----------
    design: what to train (:data:`CI`, :data:`FULL` or your own).
    store: results-store directory; resumable, and shared by several seeds or designs (each
        run reads back only its own jobs, by job id).
    seed: seeds the data set (``synthetic(seed=...)``) and the model replicate (``seeds``
        of :func:`mtlc.study.run_study`); the fold split keeps split seed 0.
    n_boot: bootstrap resamples of the fold-bootstrap intervals (the tables report t-intervals).

    Returns a :class:`Recovery`. Failed jobs (e.g. a one-class subsample) are counted in
    ``n_failed`` and their points are missing from the fits, never silently replaced.
    """
    import time

    from mtlc import curves
    from mtlc import stats as mstats
    from mtlc.datasets import synthetic
    from mtlc.store import ResultsStore
    from mtlc.study import run_study
    from mtlc.training import TrainConfig

    ds = synthetic(seed=seed, **design.data)
    truth = ds.truth
    ids = [str(t) for t in truth["task_ids"]]
    pairs = design.pairs if design.pairs is not None else default_pairs(truth)
    ctx_targets = (
        tuple(ids) if design.contextual_targets is None else tuple(design.contextual_targets)
    )
    cfg = TrainConfig(**design.config)
    common: dict[str, Any] = dict(
        store=store,
        config=cfg,
        split="compound",
        n_folds=design.n_folds,
        fold_subset=design.folds,
        seeds=(seed,),
        sizes=list(design.sizes),
        progress=progress,
        chunk_size=4096,
    )
    t0 = time.perf_counter()
    stl_targets = sorted(set(pairs) | set(ctx_targets))
    summaries = [run_study(ds, regime="stl", targets=stl_targets, **common)]
    pair_list = [(i, j) for i, js in pairs.items() for j in js]
    psz = (
        design.partner_sizes
        if isinstance(design.partner_sizes, str)
        else list(design.partner_sizes)
    )
    summaries.append(run_study(ds, regime="pair", pairs=pair_list, partner_sizes=psz, **common))
    if ctx_targets:
        summaries.append(run_study(ds, regime="mtl", **common))
    t_train = time.perf_counter() - t0

    t1 = time.perf_counter()
    job_ids = {j for s in summaries for j in s.job_ids}
    res = ResultsStore(store).read()
    res = res[res["job_id"].isin(job_ids)]
    n_failed = int((res["status"] != "ok").sum())
    auc = res[(res["status"] == "ok") & (res["metric"] == "roc_auc")]
    n_undefined = int(auc["value"].isna().sum())
    ok = res[(res["status"] == "ok") & (res["metric"] == "roc_auc") & res["value"].notna()]
    rel = np.asarray(truth["relatedness"])
    groups = dict(zip(ids, np.asarray(truth["groups"]).tolist(), strict=True))

    # pairwise: single-task points (n_j = 0) + pair points of each (target, partner)
    pts = ok[ok["regime"].isin(["stl", "pair"])]
    pts = pts[(pts["regime"] == "stl") | pts["target"].isin(list(pairs))]
    pts = pts.groupby(
        ["regime", "task", "partner", "fold", "n_task", "n_context"], dropna=False, as_index=False
    )["value"].mean()
    surf = curves.with_single_task_points(pts)
    fits_p = curves.fit_pairwise(surf, by=["task", "partner"])
    summ = mstats.fold_summary(fits_p, ["a_ij", "rho_ij"], by=["task", "partner"], n_boot=n_boot)
    a = summ[summ["param"] == "a_ij"].set_index(["task", "partner"])
    r = summ[summ["param"] == "rho_ij"].set_index(["task", "partner"])
    ptab = pd.DataFrame(
        {
            "a_ij": a["estimate"],
            "a_ij_lo": a["ci_lo"],
            "a_ij_hi": a["ci_hi"],
            "p": a["p_t"],
            "q": a["q"],
            "a_i": fits_p.groupby(["task", "partner"])["a"].mean().reindex(a.index),
            "rho_ij": r["estimate"].reindex(a.index),
            "rho_lo": r["ci_lo"].reindex(a.index),
            "rho_hi": r["ci_hi"].reindex(a.index),
            "n_folds": a["n_folds"],
            "flag": a["flag"],
        }
    ).reset_index()
    ptab = ptab.rename(columns={"task": "target"})
    ptab.insert(
        2,
        "relatedness",
        # rounded: the cosines of equally related pairs differ in the last bits, and a rank
        # correlation would otherwise order those ties by floating-point noise
        [
            round(float(rel[ids.index(t), ids.index(p)]), 6) + 0.0  # no -0.0
            for t, p in zip(ptab["target"], ptab["partner"], strict=True)
        ],
    )
    ptab.insert(
        3,
        "related",
        [
            groups[t] >= 0 and groups[t] == groups[p]
            for t, p in zip(ptab["target"], ptab["partner"], strict=True)
        ],
    )

    # contextual: single-task (n_S = 0) + all-task points of each task
    ctab = pd.DataFrame(
        columns=[
            "task",
            "in_group",
            "a_S",
            "a_S_lo",
            "a_S_hi",
            "p",
            "q",
            "rho_S",
            "n_folds",
            "flag",
        ]
    )
    fits_c = pd.DataFrame()
    if ctx_targets:
        cp = ok[ok["regime"].isin(["stl", "mtl"]) & ok["task"].isin(ctx_targets)]
        cp = cp.groupby(["regime", "task", "fold", "n_task"], as_index=False).agg(
            value=("value", "mean"), n_context=("n_context", "mean")
        )
        fits_c = curves.fit_exp32(cp, by=["task"])
        cs = mstats.fold_summary(fits_c, ["a_S", "rho_S"], by=["task"], n_boot=n_boot)
        s = cs[cs["param"] == "a_S"].set_index("task")
        sr = cs[cs["param"] == "rho_S"].set_index("task")
        ctab = pd.DataFrame(
            {
                "a_S": s["estimate"],
                "a_S_lo": s["ci_lo"],
                "a_S_hi": s["ci_hi"],
                "p": s["p_t"],
                "q": s["q"],
                "rho_S": sr["estimate"].reindex(s.index),
                "n_folds": s["n_folds"],
                "flag": s["flag"],
            }
        ).reset_index()
        ctab.insert(1, "in_group", [groups[t] >= 0 for t in ctab["task"]])
    t_fit = time.perf_counter() - t1
    return Recovery(
        pairs=ptab,
        contextual=ctab,
        fits_pairwise=fits_p,
        fits_exp32=fits_c,
        metrics=recovery_metrics(ptab, ctab),
        seconds={"train": t_train, "fit": t_fit},
        n_failed=n_failed,
        n_undefined=n_undefined,
    )


def _spearman(x: Any, y: Any) -> float:
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.isfinite(x) & np.isfinite(y)
    if keep.sum() < 3 or np.ptp(x[keep]) == 0 or np.ptp(y[keep]) == 0:
        return float("nan")
    return float(sps.spearmanr(x[keep], y[keep]).statistic)


def _concordance(x_pos: np.ndarray, x_neg: np.ndarray) -> float:
    """P(x_pos > x_neg) over all pairs, ties count 1/2 (the Mann-Whitney AUC)."""
    x_pos = x_pos[np.isfinite(x_pos)]
    x_neg = x_neg[np.isfinite(x_neg)]
    if not len(x_pos) or not len(x_neg):
        return float("nan")
    d = x_pos[:, None] - x_neg[None, :]
    return float(((d > 0) + 0.5 * (d == 0)).mean())


def recovery_metrics(pairs: pd.DataFrame, contextual: pd.DataFrame | None = None) -> dict:
    """Agreement of the estimates with the planted truth.

    Pairwise (``pairs`` from :class:`Recovery`):

    - ``spearman_a_pooled``, ``spearman_rho_pooled``: Spearman of ``a_ij`` (``rho_ij``) with the
      planted relatedness over all pairs, targets pooled;
    - ``spearman_a_within``, ``spearman_rho_within``: mean over targets of the Spearman among
      the target's own partners (targets whose partners all share one relatedness are left
      out);
    - ``concordance_a_within``, ``concordance_rho_within``: over all (related, unrelated) partner
      pairs of the same target, the share where the related partner has the larger estimate
      (ties 1/2): a within-target ranking AUC, 0.5 = chance;
    - ``n_pairs``, ``n_targets``, ``n_nan``: pairs, targets, pairs without an estimate.

    Contextual (``contextual``): ``a_S_related``/``a_S_unrelated`` (mean ``a_S`` of tasks with /
    without planted related tasks), ``concordance_a_S`` and ``concordance_rho_S`` (AUC of
    in-group against unrelated tasks), ``spearman_a_S`` (with the 0/1 in-group indicator).
    """
    m: dict[str, float] = {
        "n_pairs": float(len(pairs)),
        "n_targets": float(pairs["target"].nunique()),
        "n_nan": float(pairs["a_ij"].isna().sum()),
    }
    for est, tag in (("a_ij", "a"), ("rho_ij", "rho")):
        m[f"spearman_{tag}_pooled"] = _spearman(pairs[est], pairs["relatedness"])
        within = [_spearman(g[est], g["relatedness"]) for _, g in pairs.groupby("target")]
        within = [w for w in within if np.isfinite(w)]
        m[f"spearman_{tag}_within"] = float(np.mean(within)) if within else float("nan")
        num, den = 0.0, 0
        for _, g in pairs.groupby("target"):
            pos = g.loc[g["related"], est].to_numpy(float)
            neg = g.loc[~g["related"], est].to_numpy(float)
            c = _concordance(pos, neg)
            if np.isfinite(c):
                k = len(pos) * len(neg)
                num, den = num + c * k, den + k
        m[f"concordance_{tag}_within"] = num / den if den else float("nan")
    if contextual is not None and len(contextual):
        g = contextual["in_group"].astype(bool).to_numpy()
        for est in ("a_S", "rho_S"):
            x = contextual[est].to_numpy(float)
            m[f"concordance_{est}"] = _concordance(x[g], x[~g])
        x = contextual["a_S"].to_numpy(float)
        m["a_S_related"] = float(np.nanmean(x[g])) if g.any() else float("nan")
        m["a_S_unrelated"] = float(np.nanmean(x[~g])) if (~g).any() else float("nan")
        m["spearman_a_S"] = _spearman(x, g.astype(float))
    return m


def chance_probability(
    pairs: pd.DataFrame,
    threshold: float,
    *,
    metric: str = "spearman_a_within",
    n_perm: int = 20000,
    seed: int = 0,
) -> float:
    """Probability that an estimator with no information reaches ``metric >= threshold``.

    The null model shuffles the estimates among the partners of each target (every ordering of
    a target's partners equally likely, targets independent) and recomputes ``metric`` (a
    within-target key of :func:`recovery_metrics`) on the design of ``pairs`` (its targets,
    partners and relatedness). Monte Carlo with ``n_perm`` shuffles; the relatedness ties of the
    design are kept. Use it to check that a threshold means something for a given design.
    """
    if metric not in ("spearman_a_within", "concordance_a_within"):
        raise ValueError(f"metric must be a within-target a_ij statistic, got {metric!r}")
    rng = np.random.default_rng(seed)
    n_perm = int(n_perm)
    total = np.zeros(n_perm)
    n_targets, n_comparisons = 0, 0
    for _, g in pairs.groupby("target"):
        # a random ordering of the target's partners (ranks 0..k-1), one row per shuffle
        x = np.argsort(rng.random((n_perm, len(g))), axis=1).astype(np.float64)
        if metric == "spearman_a_within":
            rel = sps.rankdata(g["relatedness"].to_numpy(float))
            if np.ptp(rel) == 0 or len(g) < 3:
                continue
            xc = x - x.mean(axis=1, keepdims=True)
            rc = rel - rel.mean()
            total += xc @ rc / (np.linalg.norm(xc, axis=1) * np.linalg.norm(rc))
            n_targets += 1
        else:
            r = g["related"].to_numpy(bool)
            if r.all() or not r.any():
                continue
            total += (x[:, r][:, :, None] > x[:, ~r][:, None, :]).sum(axis=(1, 2))
            n_comparisons += int(r.sum() * (~r).sum())
    stat = total / max(n_targets if metric == "spearman_a_within" else n_comparisons, 1)
    return float(np.mean(stat >= threshold - 1e-12))
