"""Statistics over per-fold learning-curve fits: intervals, tests, multiple testing.

The unit of replication is the fold: each fold gives one estimate of every coefficient
(from :func:`mtlc.curves.fit_curves` at ``level="fold"``). Across the ``k`` folds of a task:

- t-interval: mean +- t_{k-1, 1-alpha/2} * sd / sqrt(k);
- bootstrap interval: percentile interval of the mean over ``n_boot`` resamples of the folds;
- tests of "coefficient = 0": one-sample t-test and Wilcoxon signed-rank test;
- Benjamini-Hochberg q-values across the tasks (within each parameter);
- nested F-test of EXP3 against EXP3.2 (or pairwise) on the pooled points of all folds.

Folds whose fit is hard-flagged (NaN parameters) are left out and counted (``n_excluded``).
Note: folds share training data, so the per-fold estimates are not fully independent; the
intervals are those of the fold-to-fold spread, as in the paper's protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats as sps

from mtlc.errors import InputTableError

__all__ = ["bh", "t_summary", "bootstrap_interval", "wilcoxon_p", "fold_summary", "nested_f_test"]


def bh(p: Any) -> np.ndarray:
    """Benjamini-Hochberg q-values of ``p`` (any shape); NaN p-values stay NaN and do not
    count towards the number of tests."""
    p = np.asarray(p, dtype=np.float64)
    q = np.full(p.shape, np.nan)
    flat = p.reshape(-1)
    ok = np.flatnonzero(np.isfinite(flat))
    if ok.size == 0:
        return q
    pv = flat[ok]
    order = np.argsort(pv)
    ranked = pv[order] * ok.size / np.arange(1, ok.size + 1)
    qs = np.minimum.accumulate(ranked[::-1])[::-1]
    out = np.empty(ok.size)
    out[order] = np.minimum(qs, 1.0)
    qf = q.reshape(-1)
    qf[ok] = out
    return qf.reshape(p.shape)


def t_summary(est: Any, *, level: float = 0.95) -> dict[str, np.ndarray]:
    """Per-row t-interval and one-sample t-test against 0.

    ``est``: ``(R, k)`` per-fold estimates (NaN = missing fold). Returns arrays ``(R,)``:
    ``estimate`` (mean), ``se``, ``ci_lo``, ``ci_hi``, ``p_t``, ``n_folds``.
    """
    e = np.atleast_2d(np.asarray(est, dtype=np.float64))
    k = np.sum(np.isfinite(e), axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.nanmean(np.where(k[:, None] > 0, e, 0.0), axis=1)
        mean = np.where(k > 0, mean, np.nan)
        dev = np.where(np.isfinite(e), e - mean[:, None], 0.0)
        sd = np.sqrt(np.sum(dev**2, axis=1) / (k - 1))
        se = sd / np.sqrt(k)
        tq = sps.t.ppf(0.5 + level / 2, np.maximum(k - 1, 1))
        lo = np.where(k >= 2, mean - tq * se, np.nan)
        hi = np.where(k >= 2, mean + tq * se, np.nan)
        tstat = mean / se
        p = 2 * sps.t.sf(np.abs(tstat), np.maximum(k - 1, 1))
        # zero spread: the test is decided by the sign of the mean alone
        p = np.where(se == 0, np.where(mean == 0, 1.0, 0.0), p)
        p = np.where(k >= 2, p, np.nan)
    return {"estimate": mean, "se": se, "ci_lo": lo, "ci_hi": hi, "p_t": p, "n_folds": k}


def bootstrap_interval(
    est: Any, *, level: float = 0.95, n_boot: int = 2000, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Percentile bootstrap interval of the fold mean, resampling folds with replacement.

    ``est``: ``(R, k)``; NaN folds are ignored. Returns ``(lo, hi)``, each ``(R,)``.
    """
    e = np.atleast_2d(np.asarray(est, dtype=np.float64))
    R, k = e.shape
    rng = np.random.default_rng(seed)
    lo = np.full(R, np.nan)
    hi = np.full(R, np.nan)
    fin = np.isfinite(e)
    for kk in np.unique(fin.sum(axis=1)):
        if kk < 2:
            continue
        rows = np.flatnonzero(fin.sum(axis=1) == kk)
        # compact each row's finite values to the front, resample among the first kk
        packed = np.stack([e[r][fin[r]] for r in rows])  # (r, kk)
        ix = rng.integers(0, kk, size=(n_boot, kk))
        means = packed[:, ix].mean(axis=2)  # (r, n_boot)
        lo[rows] = np.quantile(means, 0.5 - level / 2, axis=1)
        hi[rows] = np.quantile(means, 0.5 + level / 2, axis=1)
    return lo, hi


def wilcoxon_p(est: Any) -> np.ndarray:
    """Two-sided Wilcoxon signed-rank p-value against 0 per row of ``(R, k)`` (NaN ignored)."""
    e = np.atleast_2d(np.asarray(est, dtype=np.float64))
    out = np.full(e.shape[0], np.nan)
    for r in range(e.shape[0]):
        v = e[r][np.isfinite(e[r])]
        v = v[v != 0]
        if v.size < 2:
            continue
        try:
            out[r] = sps.wilcoxon(v).pvalue
        except ValueError:
            pass
    return out


def fold_summary(
    fits: pd.DataFrame,
    params: Sequence[str],
    *,
    by: Sequence[str] = ("task",),
    fold: str = "fold",
    level: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    min_folds: int = 3,
    wilcoxon: bool = True,
) -> pd.DataFrame:
    """One row per group and parameter: estimate, CIs, p-values, BH q, flag.

    ``fits``: per-fold fits (:func:`mtlc.curves.fit_curves`, ``level="fold"``).
    Columns of the result: ``by``, ``param``, ``estimate`` (fold mean), ``se``,
    ``ci_lo``/``ci_hi`` (t), ``boot_lo``/``boot_hi`` (bootstrap), ``p_t``, ``p_wilcoxon``,
    ``q`` (BH on ``p_t`` across groups, per parameter), ``q_wilcoxon``, ``n_folds`` (used),
    ``n_excluded`` (folds with NaN estimate), ``n_flagged`` (folds with any flag), ``flag``.
    """
    by = list(by)
    missing = [c for c in by + [fold, *params] if c not in fits.columns]
    if missing:
        raise InputTableError(
            f"fit table lacks column(s) {missing}; pass per-fold fits from fit_curves(level='fold')"
        )
    has_flag = "flag" in fits.columns
    rows = []
    for prm in params:
        # groupby + unstack keeps only the groups that exist (pivot_table(dropna=False) would
        # form every combination of the ``by`` levels) and keeps all-NaN groups (counted)
        wide = fits.groupby([*by, fold], sort=True, dropna=False)[prm].first().unstack(fold)
        keys = wide.index.to_frame(index=False)
        E = wide.to_numpy(dtype=np.float64)
        n_total = fits.groupby(by, sort=True, dropna=False).size().reindex(wide.index).to_numpy()
        ts = t_summary(E, level=level)
        blo, bhi = bootstrap_interval(E, level=level, n_boot=n_boot, seed=seed)
        pw = wilcoxon_p(E) if wilcoxon else np.full(E.shape[0], np.nan)
        if has_flag:
            nflag = (
                fits.assign(_f=fits["flag"].astype(str) != "")
                .groupby(by, sort=True, dropna=False)["_f"]
                .sum()
                .reindex(wide.index)
                .to_numpy()
            )
        else:
            nflag = np.zeros(len(keys), dtype=int)
        df = keys.copy()
        df["param"] = prm
        for k in ("estimate", "se", "ci_lo", "ci_hi"):
            df[k] = ts[k]
        df["boot_lo"], df["boot_hi"] = blo, bhi
        df["p_t"] = ts["p_t"]
        df["p_wilcoxon"] = pw
        df["n_folds"] = ts["n_folds"]
        df["n_excluded"] = n_total - ts["n_folds"]
        df["n_flagged"] = nflag
        few = ts["n_folds"] < min_folds
        df.loc[few, ["p_t", "p_wilcoxon"]] = np.nan
        df["q"] = bh(df["p_t"].to_numpy())
        df["q_wilcoxon"] = bh(df["p_wilcoxon"].to_numpy())
        flag = np.where(few, f"too_few_folds(<{min_folds})", "")
        flag = np.where(
            (df["n_flagged"] > 0) & ~few,
            "flagged_folds:" + df["n_flagged"].astype(int).astype(str),
            flag,
        )
        df["flag"] = flag
        rows.append(df)
    return pd.concat(rows, ignore_index=True)


def nested_f_test(
    df: pd.DataFrame,
    *,
    by: Sequence[str] = ("task",),
    x: str = "n_task",
    y: str = "value",
    context: str = "n_context",
    full: str = "exp3.2",
    **fit_kw: Any,
) -> pd.DataFrame:
    """F-test of EXP3 (restricted: transfer coefficient = 0) against ``full`` on pooled points.

    Both models are fitted to all points of each group (all folds pooled, ``level="pooled"``).
    ``F = ((RSS0 - RSS1) / 1) / (RSS1 / (N - p1))`` with ``p1`` = parameters of the full model.
    Returns ``by``, ``rss0``, ``rss1``, ``n_points``, ``F``, ``df1``, ``df2``, ``p``, ``q``
    (BH across groups), ``flag`` (either fit's flags).
    """
    from mtlc.curves import fit_curves

    by = list(by)
    r0 = fit_curves(df, "exp3", by=by, x=x, y=y, fold=None, level="pooled", **fit_kw)
    r1 = fit_curves(df, full, by=by, x=x, y=y, context=context, fold=None, level="pooled", **fit_kw)
    m = r0[by + ["sse", "flag", "n_points"]].merge(
        r1[by + ["sse", "flag"]], on=by, suffixes=("0", "1")
    )
    p1 = 4
    n = m["n_points"].to_numpy(float)
    rss0 = m["sse0"].to_numpy(float)
    rss1 = m["sse1"].to_numpy(float)
    df2 = n - p1
    with np.errstate(invalid="ignore", divide="ignore"):
        # the restricted model is nested: numerical noise may make RSS0 < RSS1 slightly
        F = np.maximum(rss0 - rss1, 0.0) / (rss1 / df2)
        p = np.where(df2 > 0, sps.f.sf(F, 1, np.maximum(df2, 1)), np.nan)
    out = m[by].copy()
    out["rss0"], out["rss1"], out["n_points"] = rss0, rss1, n.astype(int)
    out["F"], out["df1"], out["df2"], out["p"] = F, 1, df2, p
    out["q"] = bh(p)
    f0 = m["flag0"].astype(str)
    f1 = m["flag1"].astype(str)
    out["flag"] = [
        ";".join(s for s in (a and f"exp3:{a}", b and f"{full}:{b}") if s)
        for a, b in zip(f0, f1, strict=True)
    ]
    return out
