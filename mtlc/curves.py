"""Learning-curve models for single-task and multi-task learning curves.

Every model here has the form

    P(z) = c - exp(b - sum_k a_k g(z_k))

where ``z_k`` are sample sizes (the task's own size first, then the sizes of other tasks),
``g`` is the identity (exponential family) or ``log`` (power law), and ``c`` is the asymptote.

==========  =================================================  ==========================
model       formula (sizes n in thousands)                     parameters
==========  =================================================  ==========================
exp3        P = c - exp(b - a n)                               c, b, a
exp3.2      P = c - exp(b - a n_i - a_S n_S)                   c, b, a, a_S (+ rho_S)
pairwise    P = c - exp(b - a n_i - a_ij n_j)                  c, b, a, a_ij (+ rho_ij)
multi       P = c - exp(b - a n_i - sum_j a_j n_j)  (+ ridge)  c, b, a, a_<col>... (+ rho_)
pow3        P = c - exp(b) n^(-alpha)                          c, b, alpha
wbl4        P = c - exp(b - a n^d)                             c, b, a, d
==========  =================================================  ==========================

``exp3`` is the paper's (and Domhan et al. 2015's) parameterization. LCDB's ``exp3`` is
``a * exp(-b n) + c``, usually fitted to error rates: its amplitude ``a`` sits outside the
exponent and its ``b`` is our rate ``a``, so the letters mean different things; do not mix
coefficients between the two.

Units: sizes are divided by ``scale`` (default 1000) before fitting, so every rate is "per
thousand samples" and is O(1) for typical curves. ``rho`` (sample-equivalence ratio)
= transfer rate / own rate is scale-free: one sample of the other task(s) is worth ``rho``
samples of the task itself.

Fitting (all curves of a call at once, vectorized over curves):

1. For each curve, ``c`` is profiled on a grid inside its bounds ``[max observed P, 1]``;
   for fixed ``c``, ``log(c - P) = b - sum_k a_k g(z_k)`` is linear and is solved in closed
   form by weighted least squares (weights ``(c - P)^2``, the delta-method variance of the log).
2. The best few grid points (lowest residual on the original scale) start a bounded
   Levenberg-Marquardt polish of the original least-squares problem, run for all curves and
   starts at once in numpy; the lowest residual wins. Curves where it does not converge are
   retried with :func:`scipy.optimize.least_squares` (``trf``, bounded).
3. Bounds: ``c <= max(1, max P + 1e-3)``, own rate ``a >= 0``, transfer coefficients free in
   sign, ``d`` in ``[0.05, 5]``. The lower bound of ``c`` is 0 by default; ``c_bounds=("max",
   1.0)`` gives METHOD.md's ``c >= max observed P``. That bound is biased under per-point
   noise (the noisy maximum exceeds the true asymptote): on simulated EXP3.2 curves (10 folds,
   noise sd 0.01) it moved mean c from 0.850 to 0.856, cut the 95% t-interval coverage of c
   to 51% and of a to 85%, against 95% and 92% with the free lower bound. The grid of start
   values for ``c`` always lies above the observed maximum (there ``log(c - P)`` exists).

Ill-behaved curves never raise: the row carries a ``flag`` string (``;``-separated reasons,
empty when fine). Hard reasons (parameters NaN): ``too_few_points``, ``flat``,
``nonpositive_sizes`` (pow3/wbl4), ``negative_sizes``, ``sizes_not_increasing``. Soft reasons
(parameters reported): ``nonfinite_points:k`` (k points dropped), ``non_monotone``,
``rate_at_zero``, ``not_converged``, ``context_constant:k`` (context column k never varies
within the curve, so its coefficient is not identified and is NaN).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy import optimize

from mtlc.errors import ConfigError, InputTableError

__all__ = [
    "MODELS",
    "FitResult",
    "fit_curve",
    "fit_exp3_curve",
    "fit_curves",
    "fit_exp3",
    "fit_exp32",
    "fit_pairwise",
    "predict",
    "extrapolation_error",
    "extrapolation_table",
    "simulate_curves",
    "size_grid",
    "with_single_task_points",
]

# Exponent clip: keeps exp() finite for any parameter the optimizer may try.
_U_MIN, _U_MAX = -60.0, 40.0
_HARD_FLAGS = (
    "too_few_points",
    "flat",
    "nonpositive_sizes",
    "negative_sizes",
    "sizes_not_increasing",
)


@dataclass(frozen=True)
class _Spec:
    name: str
    n_context: int | None  # number of context covariates (None: any >= 1, "multi")
    log_sizes: bool  # g = log (pow3)
    shape: bool  # wbl4 exponent d on the own size
    transfer_name: str | None  # name of the single transfer coefficient


MODELS: dict[str, _Spec] = {
    "exp3": _Spec("exp3", 0, False, False, None),
    "exp3.2": _Spec("exp3.2", 1, False, False, "a_S"),
    "pairwise": _Spec("pairwise", 1, False, False, "a_ij"),
    "multi": _Spec("multi", None, False, False, None),
    "pow3": _Spec("pow3", 0, True, False, None),
    "wbl4": _Spec("wbl4", 0, False, True, None),
}


def _spec(model: str) -> _Spec:
    try:
        return MODELS[model]
    except KeyError:
        raise ConfigError(
            f"unknown curve model {model!r}; choose one of {sorted(MODELS)}"
        ) from None


def _param_names(spec: _Spec, context_names: Sequence[str]) -> list[str]:
    own = "alpha" if spec.log_sizes else "a"
    names = ["c", "b", own]
    if spec.transfer_name is not None:
        names.append(spec.transfer_name)
    elif spec.name == "multi":
        names += [f"a_{c}" for c in context_names]
    if spec.shape:
        names.append("d")
    return names


# ----------------------------------------------------------------------------- model algebra
def _model_eval(
    theta: np.ndarray, Z: np.ndarray, shape: bool, need_jac: bool = True
) -> tuple[np.ndarray, np.ndarray | None]:
    """Prediction ``(N, m)`` and Jacobian ``(N, m, P)`` of ``c - exp(b - sum a_k z_k)``.

    ``theta`` is ``(N, P)`` = (c, b, a_1..a_K[, d]); ``Z`` is ``(N, m, K)`` (already log for pow3).
    With ``shape`` the first covariate enters as ``z_1 ** d``.
    """
    K = Z.shape[2]
    c = theta[:, 0:1]
    b = theta[:, 1:2]
    a = theta[:, 2 : 2 + K]
    if shape:
        d = theta[:, 2 + K : 3 + K]
        z1 = np.maximum(Z[:, :, 0], 1e-300)
        z1d = z1**d
        Zeff = Z.copy()
        Zeff[:, :, 0] = z1d
    else:
        Zeff = Z
    u = b - np.einsum("nmk,nk->nm", Zeff, a)
    uc = np.clip(u, _U_MIN, _U_MAX)
    E = np.exp(uc)
    f = c - E
    if not need_jac:
        return f, None
    inside = ((u > _U_MIN) & (u < _U_MAX)).astype(float)
    Ei = E * inside
    J = np.empty(f.shape + (theta.shape[1],))
    J[:, :, 0] = 1.0
    J[:, :, 1] = -Ei
    J[:, :, 2 : 2 + K] = Ei[:, :, None] * Zeff
    if shape:
        J[:, :, 2 + K] = Ei * a[:, 0:1] * z1d * np.log(z1)
    return f, J


def _sse(theta, Z, y, w, shape, pen):
    f, _ = _model_eval(theta, Z, shape, need_jac=False)
    s = np.sum(w * (y - f) ** 2, axis=1)
    if pen is not None:
        s = s + np.sum(pen * theta**2, axis=1)
    return s


# ----------------------------------------------------------------------------- start values
def _grid_starts(Z, y, w, lo, hi, pen, shape, *, n_grid: int, n_starts: int) -> np.ndarray:
    """Candidate starts ``(B, S, P)`` from the c-profile grid (closed-form weighted LS)."""
    B, m, K = Z.shape
    P = 2 + K + int(shape)
    ymax = np.max(np.where(w > 0, y, -np.inf), axis=1)
    c_lo, c_hi = lo[:, 0], hi[:, 0]
    # Gaps c - max(P) on a log grid: the asymptote is usually just above the last points but
    # can sit far above them for curves still rising steeply.
    g_lo = np.maximum(c_lo - ymax, 0.0) + 1e-4
    g_hi = np.maximum(c_hi - ymax, g_lo * 1.01)
    t = np.linspace(0.0, 1.0, n_grid)
    gaps = g_lo[:, None] * (g_hi / g_lo)[:, None] ** t[None, :]  # (B, G)
    cgrid = ymax[:, None] + gaps
    d_values = np.array([0.3, 0.6, 1.0, 1.5, 2.5]) if shape else np.array([1.0])
    cands = []
    costs = []
    for d in d_values:
        Zd = Z.copy()
        if shape:
            Zd[:, :, 0] = np.maximum(Z[:, :, 0], 1e-300) ** d
        gap_pts = np.maximum(cgrid[:, :, None] - y[:, None, :], 1e-6)  # (B, G, m)
        v = np.log(gap_pts)
        W = w[:, None, :] * gap_pts**2
        W = W / np.maximum(W.sum(axis=2, keepdims=True), 1e-300)
        D = np.concatenate([np.ones((B, m, 1)), -Zd], axis=2)  # (B, m, 1+K)
        A = np.einsum("bgm,bmp,bmq->bgpq", W, D, D)
        r = np.einsum("bgm,bmp,bgm->bgp", W, D, v)
        tr = np.trace(A, axis1=2, axis2=3)[..., None, None]
        reg = 1e-9 * tr * np.eye(1 + K)
        if pen is not None:
            # penalty in parameter space, scaled as in the log problem (a rough start only)
            reg = reg + np.einsum("bp,pq->bpq", pen[:, 1 : 2 + K] * 1e-2, np.eye(1 + K))[:, None]
        sol = np.linalg.solve(A + reg, r[..., None])[..., 0]  # (B, G, 1+K)
        th = np.empty((B, n_grid, P))
        th[:, :, 0] = cgrid
        th[:, :, 1 : 2 + K] = sol
        if shape:
            th[:, :, 2 + K] = d
        th = np.clip(th, lo[:, None, :], hi[:, None, :])
        th = np.where(np.isfinite(th), th, 0.0)
        flat = th.reshape(B * n_grid, P)
        rep = lambda a: np.repeat(a, n_grid, axis=0)  # noqa: E731
        cost = _sse(
            flat,
            rep(Zd if not shape else Z),
            rep(y),
            rep(w),
            shape,
            None if pen is None else rep(pen),
        ).reshape(B, n_grid)
        cands.append(th)
        costs.append(cost)
    th_all = np.concatenate(cands, axis=1)
    cost_all = np.concatenate(costs, axis=1)
    cost_all = np.where(np.isfinite(cost_all), cost_all, np.inf)
    order = np.argsort(cost_all, axis=1)[:, :n_starts]
    return np.take_along_axis(th_all, order[:, :, None], axis=1)


# ----------------------------------------------------------------------------- polish
def _lm(
    theta, Z, y, w, lo, hi, pen, shape, *, max_iter: int, ftol: float = 1e-10, xtol: float = 1e-9
):
    """Bounded Levenberg-Marquardt for many curves at once.

    Bounds are handled by an active set (a coordinate at a bound whose gradient pushes
    outward is frozen for the step) plus projection. Returns (theta, cost, converged).
    """
    N, P = theta.shape
    theta = theta.copy()
    sw = np.sqrt(w)
    spen = None if pen is None else np.sqrt(pen)

    def rj(th, idx):
        f, Jf = _model_eval(th, Z[idx], shape)
        r = sw[idx] * (y[idx] - f)
        J = -sw[idx][:, :, None] * Jf
        if spen is not None:
            r = np.concatenate([r, spen[idx] * th], axis=1)
            J = np.concatenate([J, spen[idx][:, :, None] * np.eye(P)[None]], axis=1)
        return r, J

    idx_all = np.arange(N)
    r, J = rj(theta, idx_all)
    cost = np.sum(r**2, axis=1)
    mu = np.full(N, 1e-3)
    done = np.zeros(N, dtype=bool)
    converged = np.zeros(N, dtype=bool)
    eye = np.eye(P)
    for _ in range(max_iter):
        act = np.flatnonzero(~done)
        if act.size == 0:
            break
        th = theta[act]
        Ja, ra = J[act], r[act]
        g = np.einsum("nmp,nm->np", Ja, ra)
        A = np.einsum("nmp,nmq->npq", Ja, Ja)
        frozen = ((th <= lo[act]) & (g > 0)) | ((th >= hi[act]) & (g < 0))
        dA = np.diagonal(A, axis1=1, axis2=2)
        M = (
            A
            + (mu[act][:, None] * (dA + 1e-12 * (dA.max(axis=1, keepdims=True) + 1e-30)))[
                :, :, None
            ]
            * eye
        )
        keep = (~frozen).astype(float)
        M = M * keep[:, :, None] * keep[:, None, :] + (1.0 - keep)[:, :, None] * eye
        rhs = -g * keep
        try:
            delta = np.linalg.solve(M, rhs[..., None])[..., 0]
        except np.linalg.LinAlgError:
            delta = np.stack(
                [np.linalg.lstsq(M[i], rhs[i], rcond=None)[0] for i in range(len(act))]
            )
        new = np.clip(th + delta, lo[act], hi[act])
        r2, J2 = rj(new, act)
        cost2 = np.sum(r2**2, axis=1)
        better = np.isfinite(cost2) & (cost2 < cost[act])
        gain = np.where(better, cost[act] - cost2, 0.0)
        step = np.abs(new - th) <= xtol * (np.abs(th) + xtol)
        small = better & ((gain <= ftol * (cost[act] + 1e-20)) | step.all(axis=1))
        # a projected gradient that vanishes also means a (bounded) stationary point
        pg = np.abs(g * keep).max(axis=1) <= 1e-14 * (1.0 + cost[act])
        bi = act[better]
        theta[bi] = new[better]
        cost[bi] = cost2[better]
        r[bi] = r2[better]
        J[bi] = J2[better]
        mu[act] = np.where(better, np.maximum(mu[act] * 0.3, 1e-12), mu[act] * 8.0)
        stuck = mu[act] > 1e10
        fin = small | pg | stuck
        converged[act[fin]] = True
        done[act[fin]] = True
    return theta, cost, converged


def _scipy_polish(theta0, Z, y, w, lo, hi, pen, shape):
    """One curve, :func:`scipy.optimize.least_squares` (trf, bounded)."""
    sw = np.sqrt(w)
    spen = None if pen is None else np.sqrt(pen)
    P = theta0.size

    def fun(th):
        f, _ = _model_eval(th[None], Z[None], shape, need_jac=False)
        r = sw * (y - f[0])
        return r if spen is None else np.concatenate([r, spen * th])

    def jac(th):
        _, Jf = _model_eval(th[None], Z[None], shape)
        J = -sw[:, None] * Jf[0]
        return J if spen is None else np.concatenate([J, np.diag(spen)])

    lo_s = lo.copy()
    hi_s = np.where(hi > lo, hi, lo + 1e-12)
    x0 = np.clip(theta0, lo_s, hi_s)
    try:
        res = optimize.least_squares(
            fun, x0, jac=jac, bounds=(lo_s, hi_s), method="trf", x_scale="jac", max_nfev=100
        )
    except (ValueError, np.linalg.LinAlgError):
        return theta0, np.inf, False
    return res.x[:P], float(2 * res.cost), bool(res.success)


# ----------------------------------------------------------------------------- batch fitter
def _fit_batch(
    Z: np.ndarray,
    y: np.ndarray,
    w: np.ndarray,
    spec: _Spec,
    *,
    ridge: float,
    c_bounds: tuple[Any, float],
    require_increasing: bool,
    n_grid: int = 32,
    n_starts: int = 3,
    max_iter: int = 200,
    polish: str = "batched",
) -> dict[str, np.ndarray]:
    """Fit B padded curves. Z ``(B, m, K)`` raw sizes (already rescaled), y ``(B, m)``,
    w ``(B, m)`` in {0, 1} (0 = padding). Returns arrays keyed by result field."""
    B, m, K = Z.shape
    if m == 0:  # empty curves: one padding column keeps every reduction defined
        Z, y, w = np.ones((B, 1, K)), np.zeros((B, 1)), np.zeros((B, 1))
        m = 1
    P = 2 + K + int(spec.shape)
    flags: list[list[str]] = [[] for _ in range(B)]
    valid = (w > 0) & np.isfinite(y) & np.all(np.isfinite(Z), axis=2)
    n_bad = ((w > 0) & ~valid).sum(axis=1)
    for i in np.flatnonzero(n_bad):
        flags[i].append(f"nonfinite_points:{int(n_bad[i])}")
    w = valid.astype(float)
    y = np.where(valid, y, 0.0)
    Z = np.where(valid[:, :, None], Z, 1.0)
    n_pts = valid.sum(axis=1)
    hard = np.zeros(B, dtype=bool)

    def mark(mask, reason):
        for i in np.flatnonzero(mask & ~hard):
            flags[i].append(reason)
        hard[:] = hard | mask

    mark(n_pts < P + 1, "too_few_points")
    yv_max = np.max(np.where(valid, y, -np.inf), axis=1)
    yv_min = np.min(np.where(valid, y, np.inf), axis=1)
    mark(yv_max - yv_min <= 1e-12 * np.maximum(1.0, np.abs(yv_max)), "flat")
    mark(np.any(valid[:, :, None] & (Z < 0), axis=(1, 2)), "negative_sizes")
    if spec.log_sizes or spec.shape:
        mark(np.any(valid & (Z[:, :, 0] <= 0), axis=1), "nonpositive_sizes")
    if require_increasing and K == 1:
        # valid points in given order must have strictly increasing size
        zs = np.where(valid, Z[:, :, 0], np.nan)
        bad = np.zeros(B, dtype=bool)
        for i in range(B):
            zi = zs[i][valid[i]]
            bad[i] = zi.size > 1 and np.any(np.diff(zi) <= 0)
        mark(bad, "sizes_not_increasing")

    names_out = np.full((B, P), np.nan)
    sse = np.full(B, np.nan)
    conv = np.zeros(B, dtype=bool)
    ok = np.flatnonzero(~hard)
    if ok.size:
        Zo, yo, wo = Z[ok], y[ok], w[ok]
        if spec.log_sizes:
            Zo = np.log(np.maximum(Zo, 1e-300))
        ymax = np.max(np.where(wo > 0, yo, -np.inf), axis=1)
        c_lo_arg, c_hi_arg = c_bounds
        c_lo = ymax if c_lo_arg == "max" else np.minimum(float(c_lo_arg), ymax)
        c_hi = np.maximum(float(c_hi_arg), ymax + 1e-3)
        lo = np.full((ok.size, P), -np.inf)
        hi = np.full((ok.size, P), np.inf)
        lo[:, 0], hi[:, 0] = c_lo, c_hi
        lo[:, 1], hi[:, 1] = -50.0, 50.0
        lo[:, 2] = 0.0  # own rate a >= 0 (alpha >= 0 for pow3)
        if spec.shape:
            lo[:, 2 + K], hi[:, 2 + K] = 0.05, 5.0
        pen = None
        if ridge > 0 and K > 1:
            pen = np.zeros((ok.size, P))
            pen[:, 3 : 2 + K] = ridge
        starts = _grid_starts(Zo, yo, wo, lo, hi, pen, spec.shape, n_grid=n_grid, n_starts=n_starts)
        S = starts.shape[1]
        rep = lambda a: np.repeat(a, S, axis=0)  # noqa: E731
        th, cost, cv = _lm(
            starts.reshape(-1, P),
            rep(Zo),
            rep(yo),
            rep(wo),
            rep(lo),
            rep(hi),
            None if pen is None else rep(pen),
            spec.shape,
            max_iter=max_iter,
        )
        cost = np.where(np.isfinite(cost), cost, np.inf).reshape(ok.size, S)
        best = np.argmin(cost, axis=1)
        th = th.reshape(ok.size, S, P)[np.arange(ok.size), best]
        cv = cv.reshape(ok.size, S)[np.arange(ok.size), best]
        cost = cost[np.arange(ok.size), best]
        redo = np.flatnonzero(~cv) if polish == "batched" else np.arange(ok.size)
        for j in redo:
            t2, c2, s2 = _scipy_polish(
                th[j],
                Zo[j],
                yo[j],
                wo[j],
                lo[j],
                hi[j],
                None if pen is None else pen[j],
                spec.shape,
            )
            if polish == "scipy":
                th[j], cost[j], cv[j] = t2, c2, s2
            elif c2 <= cost[j]:  # fallback: keep scipy's answer only if it is no worse
                th[j], cost[j], cv[j] = t2, c2, s2
        # a transfer coefficient whose size never varies within the curve is not identified
        # (it merges into b): report NaN and say so instead of a meaningless 0
        for k in range(1, K):
            zk = np.where(wo > 0, Zo[:, :, k], np.nan)
            const = ~(np.nanmax(zk, axis=1) > np.nanmin(zk, axis=1))
            th[const, 2 + k] = np.nan
            for jj in np.flatnonzero(const):
                flags[ok[jj]].append(f"context_constant:{k}")
        names_out[ok] = th
        sse[ok] = _sse(th, Zo, yo, wo, spec.shape, None)
        conv[ok] = cv
        for jj, i in enumerate(ok):
            if not cv[jj]:
                flags[i].append("not_converged")
            if th[jj, 2] <= 1e-8:
                flags[i].append("rate_at_zero")
        # non-monotone (1-D curves only; surfaces mix regimes): along the own size, the last
        # third is below the first third, or the curve drops more than 0.1 below its running
        # maximum.
        for i in ok if K == 1 else ():
            zi = Z[i, :, 0][valid[i]]
            yi = y[i][valid[i]]
            o = np.argsort(zi, kind="stable")
            yi = yi[o]
            k = max(1, yi.size // 3)
            drop = np.max(np.maximum.accumulate(yi) - yi)
            if yi[-k:].mean() < yi[:k].mean() or drop > 0.1:
                flags[i].append("non_monotone")
    resid_ss_tot = np.array(
        [
            np.sum((y[i][valid[i]] - y[i][valid[i]].mean()) ** 2) if n_pts[i] else np.nan
            for i in range(B)
        ]
    )
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = 1.0 - sse / resid_ss_tot
        rmse = np.sqrt(sse / np.maximum(n_pts, 1))
    return {
        "theta": names_out,
        "sse": sse,
        "rmse": rmse,
        "r2": r2,
        "n_points": n_pts,
        "n_dropped": n_bad,
        "converged": conv,
        "flag": np.array([";".join(f) for f in flags], dtype=object),
    }


# ----------------------------------------------------------------------------- array level
@dataclass
class FitResult:
    """One fitted curve.

    Attributes
    ----------
    model: model name (see :data:`MODELS`).
    params: fitted parameters (rates per ``1/scale`` samples) plus ``rho_*`` ratios.
    sse, rmse, r2: residual sum of squares, root mean squared error (performance units), R^2.
    n_points, n_dropped: points used, non-finite points dropped.
    flag: ``;``-separated reasons (empty when the curve is well behaved).
    scale: sizes were divided by this before fitting.
    """

    model: str
    params: dict[str, float]
    sse: float
    rmse: float
    r2: float
    n_points: int
    n_dropped: int
    flag: str
    converged: bool
    scale: float = 1000.0
    context_names: tuple[str, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        """True when the curve has no flag at all."""
        return self.flag == ""

    def predict(self, n: Any, context: Any = None) -> np.ndarray:
        """Predicted performance at own sizes ``n`` (samples, shape ``(m,)``) and context sizes
        ``context`` (``(m,)`` or ``(m, J)``, samples; zeros when omitted)."""
        return predict(self.model, self.params, n, context, scale=self.scale)


def _as_design(n, context, spec: _Spec, scale: float) -> tuple[np.ndarray, list[str]]:
    n = np.asarray(n, dtype=np.float64).reshape(-1)
    if spec.n_context == 0:
        if context is not None:
            raise ConfigError(f"model {spec.name!r} takes no context sizes; drop `context`")
        Z = n[:, None]
        names: list[str] = []
    else:
        if context is None:
            raise ConfigError(
                f"model {spec.name!r} needs context sizes (`context`, samples of other tasks)"
            )
        C = np.asarray(context, dtype=np.float64)
        C = C[:, None] if C.ndim == 1 else C.reshape(n.size, C.shape[-1])
        if C.shape[0] != n.size:
            raise InputTableError(
                f"context has {C.shape[0]} rows but n has {n.size} sizes; pass one row per point"
            )
        if spec.n_context is not None and C.shape[1] != spec.n_context:
            raise ConfigError(
                f"model {spec.name!r} takes {spec.n_context} context column(s), got {C.shape[1]}"
            )
        Z = np.concatenate([n[:, None], C], axis=1)
        names = [f"n{j + 1}" for j in range(C.shape[1])]
    return Z / scale, names


def _rho(params: dict[str, float], spec: _Spec, names: Sequence[str]) -> dict[str, float]:
    a = params.get("a", np.nan)
    out = {}
    keys = [spec.transfer_name] if spec.transfer_name else [f"a_{c}" for c in names]
    if spec.n_context == 0:
        keys = []
    for k in keys:
        rk = "rho" + k[1:]  # a_S -> rho_S, a_ij -> rho_ij
        with np.errstate(divide="ignore", invalid="ignore"):
            out[rk] = float(params[k] / a) if a > 0 else np.nan
    return out


def fit_curve(
    model: str,
    n: Any,
    p: Any,
    context: Any = None,
    *,
    scale: float = 1000.0,
    ridge: float = 0.0,
    c_bounds: tuple[Any, float] = (0.0, 1.0),
    require_increasing: bool | None = None,
    polish: str = "batched",
) -> FitResult:
    """Fit one curve with ``model`` (see :data:`MODELS`).

    Parameters
    ----------
    n: own sample sizes, shape ``(m,)`` (samples; rescaled by ``scale`` inside).
    p: performance, shape ``(m,)`` (e.g. ROC-AUC).
    context: other tasks' sizes, ``(m,)`` for exp3.2/pairwise or ``(m, J)`` for multi.
    ridge: penalty ``ridge * sum_j a_j^2`` on the transfer coefficients (multi only).
    c_bounds: ``(lower, upper)`` for the asymptote; ``"max"`` = max observed performance.
    require_increasing: flag 1-D curves whose sizes are not strictly increasing
        (default: True for single-covariate models).
    polish: ``"batched"`` (numpy LM, scipy fallback) or ``"scipy"`` (least_squares always).

    Never raises on bad data: the result carries a ``flag`` instead.
    """
    spec = _spec(model)
    Z, names = _as_design(n, context, spec, scale)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    if p.size != Z.shape[0]:
        raise InputTableError(
            f"n has {Z.shape[0]} sizes but p has {p.size} values; pass equal lengths"
        )
    if require_increasing is None:
        require_increasing = spec.n_context == 0
    res = _fit_batch(
        Z[None],
        p[None],
        np.ones((1, p.size)),
        spec,
        ridge=ridge,
        c_bounds=c_bounds,
        require_increasing=require_increasing,
        polish=polish,
    )
    pnames = _param_names(spec, names)
    params = {k: float(v) for k, v in zip(pnames, res["theta"][0], strict=True)}
    params.update(_rho(params, spec, names))
    return FitResult(
        model=model,
        params=params,
        sse=float(res["sse"][0]),
        rmse=float(res["rmse"][0]),
        r2=float(res["r2"][0]),
        n_points=int(res["n_points"][0]),
        n_dropped=int(res["n_dropped"][0]),
        flag=str(res["flag"][0]),
        converged=bool(res["converged"][0]),
        scale=scale,
        context_names=tuple(names),
    )


def fit_exp3_curve(n: Any, p: Any, **kw: Any) -> FitResult:
    """EXP3 fit ``P = c - exp(b - a n/scale)`` of one curve; see :func:`fit_curve`."""
    return fit_curve("exp3", n, p, **kw)


def predict(
    model: str, params: Any, n: Any, context: Any = None, *, scale: float = 1000.0
) -> np.ndarray:
    """Evaluate ``model`` with ``params`` (a dict / Series / one-row mapping) at sizes ``n``.

    ``n`` shape ``(m,)`` in samples; ``context`` ``(m,)`` or ``(m, J)`` (zeros if omitted for
    transfer models). Returns performance, shape ``(m,)``.
    """
    spec = _spec(model)
    n = np.asarray(n, dtype=np.float64).reshape(-1)
    if spec.n_context == 0:
        Z = n[:, None] / scale
        names: list[str] = []
    else:
        if spec.name == "multi":
            keys = [k for k in params if str(k).startswith("a_")]
            names = [k[2:] for k in keys]
            J = len(keys)
        else:
            J, names = 1, ["n1"]
        C = (
            np.zeros((n.size, J))
            if context is None
            else np.asarray(context, float).reshape(n.size, J)
        )
        Z = np.concatenate([n[:, None], C], axis=1) / scale
    if spec.log_sizes:
        Z = np.log(np.maximum(Z, 1e-300))
    pn = _param_names(spec, names)
    theta = np.array([float(params[k]) for k in pn])[None]
    f, _ = _model_eval(theta, Z[None], spec.shape, need_jac=False)
    return f[0]


# ----------------------------------------------------------------------------- table level
def _batch_from_table(
    df: pd.DataFrame, keys: list[str], cols: list[str], y: str
) -> tuple[pd.DataFrame, np.ndarray, np.ndarray, np.ndarray]:
    """Pad the rows of each group into arrays ``(B, m, K)``, ``(B, m)``, mask ``(B, m)``."""
    if keys:
        g = df.groupby(keys, sort=True, dropna=False)
        gid = g.ngroup().to_numpy()
        groups = g.size().reset_index()[keys]
    else:
        gid = np.zeros(len(df), dtype=int)
        groups = pd.DataFrame(index=[0])
    B = int(gid.max()) + 1 if len(df) else 0
    pos = pd.Series(gid).groupby(gid).cumcount().to_numpy()
    counts = np.bincount(gid, minlength=B)
    m = int(counts.max()) if B else 0
    Z = np.ones((B, m, len(cols)))
    Y = np.zeros((B, m))
    W = np.zeros((B, m))
    Z[gid, pos] = df[cols].to_numpy(dtype=np.float64)
    Y[gid, pos] = df[y].to_numpy(dtype=np.float64)
    W[gid, pos] = 1.0
    return groups, Z, Y, W


def fit_curves(
    df: pd.DataFrame,
    model: str = "exp3",
    *,
    by: Sequence[str] = ("task",),
    x: str = "n_task",
    y: str = "value",
    context: str | Sequence[str] | None = None,
    fold: str | None = "fold",
    level: str = "fold",
    scale: float = 1000.0,
    ridge: float = 0.0,
    c_bounds: tuple[Any, float] = (0.0, 1.0),
    polish: str = "batched",
) -> pd.DataFrame:
    """Fit ``model`` to every curve of a long table of (sizes, performance) rows.

    Parameters
    ----------
    df: one row per measured point: grouping columns ``by``, own size ``x`` (samples),
        performance ``y``, context size column(s) ``context`` (samples), ``fold``.
    model: ``"exp3"``, ``"exp3.2"``, ``"pairwise"``, ``"multi"``, ``"pow3"``, ``"wbl4"``.
    level: ``"fold"`` one fit per group and fold (for tests across folds); ``"mean"`` one fit
        per group of the fold-mean curve (points with equal sizes averaged over folds);
        ``"pooled"`` one fit per group of all folds' points together.

    Returns
    -------
    DataFrame, one row per curve: ``by`` (+ ``fold`` at level "fold"), ``model``, the
    parameters (``c``, ``b``, ``a``/``alpha``, transfer coefficients, ``d``), ``rho_*``,
    ``sse``, ``rmse``, ``r2``, ``n_points``, ``n_dropped``, ``converged``, ``flag``.
    """
    spec = _spec(model)
    by = list(by)
    ctx = [] if context is None else ([context] if isinstance(context, str) else list(context))
    if spec.n_context == 0 and ctx:
        raise ConfigError(f"model {model!r} takes no context column; drop context={context!r}")
    if spec.n_context not in (0, None) and len(ctx) != spec.n_context:
        raise ConfigError(
            f"model {model!r} needs {spec.n_context} context column (e.g. context='n_context'), "
            f"got {ctx}"
        )
    if spec.n_context is None and not ctx:
        raise ConfigError("model 'multi' needs context=[partner size columns]")
    if level not in ("fold", "mean", "pooled"):
        raise ConfigError(f"level must be 'fold', 'mean' or 'pooled', not {level!r}")
    need = by + [x, y] + ctx + ([fold] if fold and level != "pooled" else [])
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise InputTableError(
            f"curve table lacks column(s) {missing}; it has {list(df.columns)}. "
            "Pass the right names via by=/x=/y=/context=/fold="
        )
    cols = [x] + ctx
    data = df[need].copy()
    keys = list(by)
    if level == "fold" and fold:
        keys = by + [fold]
    elif level == "mean":
        data = data.groupby(by + cols, sort=True, dropna=False)[y].mean().reset_index()
    require_inc = level != "pooled" and spec.n_context == 0
    data = data.sort_values(keys + cols, kind="stable")
    groups, Z, Y, W = _batch_from_table(data, keys, cols, y)
    Z = Z / scale
    if groups.shape[0] == 0:
        return pd.DataFrame(columns=[*keys, "model", *_param_names(spec, ctx), "flag"])
    res = _fit_batch(
        Z,
        Y,
        W,
        spec,
        ridge=ridge,
        c_bounds=c_bounds,
        require_increasing=require_inc,
        polish=polish,
    )
    out = groups.copy() if keys else pd.DataFrame(index=range(Z.shape[0]))
    out["model"] = model
    pn = _param_names(spec, ctx)
    for j, k in enumerate(pn):
        out[k] = res["theta"][:, j]
    if spec.n_context != 0:
        a = out["a"].to_numpy()
        tn = [spec.transfer_name] if spec.transfer_name else [f"a_{c}" for c in ctx]
        for k in tn:
            with np.errstate(divide="ignore", invalid="ignore"):
                out["rho" + k[1:]] = np.where(a > 0, out[k].to_numpy() / a, np.nan)
    for k in ("sse", "rmse", "r2", "n_points", "n_dropped", "converged", "flag"):
        out[k] = res[k]
    out["scale"] = scale
    return out


def fit_exp3(df: pd.DataFrame, **kw: Any) -> pd.DataFrame:
    """EXP3 on every curve of a long table; see :func:`fit_curves`."""
    return fit_curves(df, "exp3", **kw)


def fit_exp32(df: pd.DataFrame, *, context: str = "n_context", **kw: Any) -> pd.DataFrame:
    """EXP3.2 (contextual transfer, ``a_S``) on every task; rows with ``context == 0`` are the
    single-task points, rows with ``context > 0`` the all-task points. See :func:`fit_curves`."""
    return fit_curves(df, "exp3.2", context=context, **kw)


def fit_pairwise(df: pd.DataFrame, *, context: str = "n_context", **kw: Any) -> pd.DataFrame:
    """Pairwise model (``a_ij``) on every (task, partner) surface; see :func:`fit_curves`."""
    return fit_curves(df, "pairwise", context=context, **kw)


# ----------------------------------------------------------------------------- extrapolation
def extrapolation_error(
    n: Any,
    p: Any,
    *,
    models: Sequence[str] = ("exp3", "pow3", "wbl4"),
    n_train: int | None = None,
    train_fraction: float = 0.6,
    scale: float = 1000.0,
) -> pd.DataFrame:
    """Fit each 1-D model on the smallest sizes, predict the larger ones.

    ``n``, ``p``: one curve, shape ``(m,)``. The first ``n_train`` points (sorted by size;
    default ``ceil(train_fraction * m)``) are the training part. Returns one row per model:
    ``model``, ``mae`` (mean absolute error on the held-out larger sizes, performance units),
    ``last_error`` (signed error at the largest size), ``flag``.
    """
    n = np.asarray(n, dtype=np.float64).reshape(-1)
    p = np.asarray(p, dtype=np.float64).reshape(-1)
    df = pd.DataFrame({"curve": 0, "n": n, "p": p})
    return extrapolation_table(
        df,
        by=["curve"],
        x="n",
        y="p",
        fold=None,
        models=models,
        n_train=n_train,
        train_fraction=train_fraction,
        scale=scale,
    ).drop(columns="curve")


def extrapolation_table(
    df: pd.DataFrame,
    *,
    by: Sequence[str] = ("task",),
    x: str = "n_task",
    y: str = "value",
    fold: str | None = "fold",
    models: Sequence[str] = ("exp3", "pow3", "wbl4"),
    n_train: int | None = None,
    train_fraction: float = 0.6,
    scale: float = 1000.0,
) -> pd.DataFrame:
    """Extrapolation error of each model for every curve of a long table (see
    :func:`extrapolation_error`); one row per curve and model."""
    keys = list(by) + ([fold] if fold else [])
    d = df.sort_values(keys + [x], kind="stable").copy()
    d = d[np.isfinite(d[x].to_numpy(float)) & np.isfinite(d[y].to_numpy(float))]
    rank = d.groupby(keys, sort=False).cumcount().to_numpy()
    size = d.groupby(keys, sort=False)[x].transform("size").to_numpy()
    k = (
        np.full(len(d), int(n_train))
        if n_train is not None
        else np.ceil(train_fraction * size).astype(int)
    )
    train = rank < k
    rows = []
    for model in models:
        fits = fit_curves(
            d[train],
            model,
            by=list(by),
            x=x,
            y=y,
            fold=fold,
            level="fold" if fold else "pooled",
            scale=scale,
        )
        test = d[~train].merge(fits, on=keys, how="left", suffixes=("", "_fit"))
        spec = _spec(model)
        pn = _param_names(spec, [])
        Zt = test[x].to_numpy(float) / scale
        if spec.log_sizes:
            Zt = np.log(np.maximum(Zt, 1e-300))
        theta = test[pn].to_numpy(float)
        f, _ = _model_eval(theta, Zt[:, None, None], spec.shape, need_jac=False)
        test = test.assign(err=f[:, 0] - test[y].to_numpy(float))
        g = test.groupby(keys, sort=True)
        agg = g["err"].agg(mae=lambda e: np.mean(np.abs(e)), last_error="last").reset_index()
        agg = fits[keys + ["flag"]].merge(agg, on=keys, how="left")
        agg.loc[agg["mae"].isna() & (agg["flag"] == ""), "flag"] = "no_heldout_points"
        agg.insert(len(keys), "model", model)
        rows.append(agg)
    return pd.concat(rows, ignore_index=True)


# ----------------------------------------------------------------------------- simulation
def size_grid(n_max: float, start: float = 16.0, ratio: float = float(np.sqrt(2))) -> np.ndarray:
    """Geometric grid ``start * ratio**k <= n_max`` (samples, rounded), the study's default."""
    k = int(np.floor(np.log(n_max / start) / np.log(ratio) + 1e-9))
    return np.unique(np.round(start * ratio ** np.arange(k + 1)))


def simulate_curves(
    model: str,
    params: dict[str, float],
    n: Any,
    context: Any = None,
    *,
    n_folds: int = 10,
    n_repeats: int = 1,
    param_sd: dict[str, float] | None = None,
    noise_sd: float = 0.01,
    scale: float = 1000.0,
    seed: int = 0,
) -> pd.DataFrame:
    """Draw synthetic learning curves from ``model`` (for tests, benchmarks and the chapter).

    Noise model: each fold has its own parameters, ``theta_f = theta + N(0, param_sd^2)``
    (fold-to-fold variation of the learner), and each point gets independent Gaussian noise
    ``N(0, noise_sd^2)`` (test-set sampling noise of AUC). Values are clipped to ``[0, 1]``.

    Returns a long table: ``repeat``, ``fold``, ``n_task``, ``n_context`` (if any), ``value``.
    """
    spec = _spec(model)
    rng = np.random.default_rng(seed)
    n = np.asarray(n, dtype=np.float64).reshape(-1)
    Z, names = _as_design(n, context, spec, scale)
    if spec.log_sizes:
        Z = np.log(Z)
    pn = _param_names(spec, names)
    theta = np.array([params[k] for k in pn], dtype=float)
    sd = np.array([(param_sd or {}).get(k, 0.0) for k in pn], dtype=float)
    R, F, m = n_repeats, n_folds, n.size
    th = theta + sd * rng.standard_normal((R * F, len(pn)))
    f, _ = _model_eval(th, np.broadcast_to(Z, (R * F,) + Z.shape).copy(), spec.shape, False)
    val = np.clip(f + noise_sd * rng.standard_normal(f.shape), 0.0, 1.0)
    out = pd.DataFrame(
        {
            "repeat": np.repeat(np.arange(R), F * m),
            "fold": np.tile(np.repeat(np.arange(F), m), R),
            "n_task": np.tile(n, R * F),
            "value": val.reshape(-1),
        }
    )
    if spec.n_context:
        C = np.asarray(context, dtype=float).reshape(m, -1)
        out["n_context"] = np.tile(C[:, 0], R * F)
    elif spec.n_context is None:
        C = np.asarray(context, dtype=float).reshape(m, -1)
        for j in range(C.shape[1]):
            out[f"n{j + 1}"] = np.tile(C[:, j], R * F)
    return out


def with_single_task_points(
    df: pd.DataFrame,
    *,
    regime: str = "regime",
    single: str = "stl",
    pair: str = "pair",
    task: str = "task",
    partner: str = "partner",
    context: str = "n_context",
) -> pd.DataFrame:
    """Rows for pairwise fits: every pair row, plus the task's single-task rows copied once per
    partner (with ``context = 0``), so that ``fit_pairwise(by=[..., task, partner])`` sees the
    surface ``P_i(n_i, n_j)`` including ``n_j = 0``. Tasks without pair rows contribute nothing.
    """
    for col in (regime, task, partner, context):
        if col not in df.columns:
            raise InputTableError(f"table lacks column {col!r}; it has {list(df.columns)}")
    pr = df[df[regime] == pair]
    st = df[df[regime] == single]
    partners = pr[[task, partner]].drop_duplicates()
    st = st.drop(columns=[partner]).merge(partners, on=task, how="inner")
    st[context] = 0
    return pd.concat([st[pr.columns], pr], ignore_index=True)
