"""Compiled CPU kernels (numba) of the ``compiled`` training engine (see :mod:`mtlc.fleet`).

One call of :func:`train_epoch` runs one epoch of ONE one-hidden-layer network: every batch
(forward as a sum of the set bits' first-layer rows, masked BCE, backward, then row by row the
first-layer gradient and its Adam update, Adam over the other parameters) and then the inner
validation loss. The fleet's models are trained one after the other, epoch by epoch, so a
model's state (parameters and Adam moments: 3 x R x H floats, under 3 MB for kiba's widest
single-task models) stays in the CPU cache for its whole training. The torch engine
instead applies every operation to all models at once, which streams every model's state
through main memory once per operation and step.

The arithmetic is the torch engine's (same initial weights, batches, dropout masks, loss and Adam
update as ``torch._fused_adam_``); sums run in another order, so numbers agree at float rounding.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8

# error_model="numpy": no ZeroDivisionError checks, so the inner loops over hidden units
# vectorize (3x faster Adam, measured)
_JIT = dict(cache=True, nogil=True, error_model="numpy")


@njit(**_JIT)
def _adam_coef(lr, step):  # pragma: no cover - compiled
    """Step size ``lr / (1 - beta1^t)`` and ``sqrt(1 - beta2^t)``, in float64 (as torch)."""
    return lr / (1.0 - _BETA1**step), math.sqrt(1.0 - _BETA2**step)


@njit(**_JIT)
def _adam_apply(p, g, m, v, step_size, bc2s, wd):  # pragma: no cover - compiled
    """One Adam update (``torch._fused_adam_`` arithmetic) of flat ``p`` with gradient ``g``,
    element-wise in the parameters' dtype."""
    dt = p.dtype.type
    ss, b2s = dt(step_size), dt(bc2s)
    b1c, b2, b2c, eps, wdt = dt(1.0 - _BETA1), dt(_BETA2), dt(1.0 - _BETA2), dt(_EPS), dt(wd)
    for i in range(p.shape[0]):
        gi = g[i]
        if wd != 0.0:
            gi = gi + wdt * p[i]
        mi = m[i] + b1c * (gi - m[i])
        vi = b2 * v[i] + b2c * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] - ss * mi / (math.sqrt(vi) / b2s + eps)


@njit(**_JIT)
def _add_rows(out, src, idx, start, end):  # pragma: no cover - compiled
    """``out += src[idx[e]]`` for e in [start, end), in that order of rows."""
    H = out.shape[0]
    e = start
    # four rows per pass over ``out``: a quarter of its loads and stores (1.5x, measured)
    while e + 4 <= end:
        s_a, s_b, s_c, s_d = src[idx[e]], src[idx[e + 1]], src[idx[e + 2]], src[idx[e + 3]]
        for h in range(H):
            out[h] += (s_a[h] + s_b[h]) + (s_c[h] + s_d[h])
        e += 4
    while e < end:
        s_a = src[idx[e]]
        for h in range(H):
            out[h] += s_a[h]
        e += 1


@njit(**_JIT)
def _hidden(w1, b1, rowptr, cidx, r, extra, out):  # pragma: no cover - compiled
    """Pre-activation of one compound: ``b1 + extra + sum of its bits' rows of w1``."""
    for h in range(out.shape[0]):
        out[h] = b1[h] + extra[h]
    _add_rows(out, w1, cidx, rowptr[r], rowptr[r + 1])


@njit(**_JIT)
def train_epoch(
    w1, b1, w2, b2,  # (R, H), (H,), (H, T), (T,): one model's parameters, updated in place
    mw1, vw1, mb1, vb1, mw2, vw2, mb2, vb2,  # its Adam moments
    step,  # optimizer steps taken so far (int)
    n_rows,  # trainable first-layer rows of this model (rows >= n_rows are padding: skipped)
    order, batch_size,  # (n,) this epoch's training row ids in batch order
    rowptr, cidx, lab,  # training rows' bits (compact coordinates) and int8 label codes
    u, p_drop,  # (n, H) float32 dropout uniforms in batch order (unused when p_drop == 0)
    lr, wd,
    va_rows, va_rowptr, va_cidx, va_lab, va_frozen,  # inner validation compounds
):  # pragma: no cover - compiled  # fmt: skip
    """One epoch of one model; returns (steps taken so far, validation loss)."""
    H, T = w2.shape[0], w2.shape[1]
    dt = w1.dtype.type
    n = order.shape[0]
    bs = min(batch_size, n)
    pre = np.empty((bs, H), dtype=w1.dtype)
    act = np.empty((bs, H), dtype=w1.dtype)
    keep = np.ones((bs, H), dtype=w1.dtype)  # dropout multipliers: 0 or 1 / (1 - p)
    dz = np.empty((bs, T), dtype=w1.dtype)
    da = np.empty(H, dtype=w1.dtype)
    w2t = np.empty((T, H), dtype=w1.dtype)  # heads' weights, one contiguous row per head
    gb1 = np.zeros(H, dtype=w1.dtype)
    gw2 = np.zeros((H, T), dtype=w1.dtype)
    gb2 = np.zeros(T, dtype=w1.dtype)
    cnt = np.zeros(T, dtype=w1.dtype)
    zero = np.zeros(H, dtype=w1.dtype)
    scale = dt(1.0 / (1.0 - p_drop))
    pd = np.float32(p_drop)
    grow = np.empty(H, dtype=w1.dtype)
    rstart = np.zeros(n_rows + 1, dtype=np.int64)
    fill = np.empty(n_rows, dtype=np.int64)
    nnz = 0
    for i in range(n):
        nnz += rowptr[order[i] + 1] - rowptr[order[i]]
    comp = np.empty(nnz, dtype=np.int32)  # batch position of the compound of each bit
    for s0 in range(0, n, batch_size):
        nb = min(batch_size, n - s0)
        for t in range(T):
            for h in range(H):
                w2t[t, h] = w2[h, t]
        # forward: first layer, ReLU, dropout
        for i in range(nb):
            _hidden(w1, b1, rowptr, cidx, order[s0 + i], zero, pre[i])
            if p_drop > 0:
                for h in range(H):
                    keep[i, h] = scale if u[s0 + i, h] >= pd else dt(0.0)
            for h in range(H):
                act[i, h] = max(pre[i, h], dt(0.0)) * keep[i, h]
        # heads and the masked BCE: per head, the mean over the batch's labelled compounds
        cnt[:] = 0.0
        for i in range(nb):
            for t in range(T):
                if lab[order[s0 + i], t] > 0:
                    cnt[t] += 1.0
        for i in range(nb):
            r = order[s0 + i]
            for t in range(T):
                code = lab[r, t]
                if code == 0:
                    dz[i, t] = 0.0
                    continue
                z = b2[t]
                for h in range(H):
                    z += act[i, h] * w2t[t, h]
                sig = dt(1.0) / (dt(1.0) + math.exp(-z))
                dz[i, t] = (sig - (dt(1.0) if code == 2 else dt(0.0))) / max(cnt[t], dt(1.0))
        # backward: heads, hidden layer (through dropout and ReLU), first-layer scatter
        for i in range(nb):
            da[:] = 0.0
            for t in range(T):
                d = dz[i, t]
                if d != 0.0:
                    gb2[t] += d
                    for h in range(H):
                        gw2[h, t] += act[i, h] * d
                        da[h] += d * w2t[t, h]
            for h in range(H):
                g = da[h] * keep[i, h] if pre[i, h] > 0 else dt(0.0)
                pre[i, h] = g
                gb1[h] += g
        step += 1
        # first layer: the batch's bits sorted by row (a counting sort), then row by row the
        # gradient (sum of d(pre) of the row's compounds, in batch order) and its Adam update
        # at once: no dense gradient written, read back and zeroed
        rstart[:] = 0
        for i in range(nb):
            r = order[s0 + i]
            for e in range(rowptr[r], rowptr[r + 1]):
                rstart[cidx[e] + 1] += 1
        for c in range(n_rows):
            rstart[c + 1] += rstart[c]
        fill[:] = rstart[:n_rows]
        for i in range(nb):
            r = order[s0 + i]
            for e in range(rowptr[r], rowptr[r + 1]):
                c = cidx[e]
                comp[fill[c]] = i
                fill[c] += 1
        ss, b2s = _adam_coef(lr, step)
        for c in range(n_rows):
            grow[:] = 0.0
            _add_rows(grow, pre, comp, rstart[c], rstart[c + 1])
            _adam_apply(w1[c], grow, mw1[c], vw1[c], ss, b2s, wd)
        # the other parameters, then their gradients zeroed for the next batch
        _adam_apply(b1, gb1, mb1, vb1, ss, b2s, wd)
        _adam_apply(w2.reshape(H * T), gw2.reshape(H * T), mw2.reshape(H * T),
                    vw2.reshape(H * T), ss, b2s, wd)  # fmt: skip
        _adam_apply(b2, gb2, mb2, vb2, ss, b2s, wd)
        gb1[:] = 0.0
        gw2[:] = 0.0
        gb2[:] = 0.0
    return step, val_loss(w1, b1, w2, b2, va_rows, va_rowptr, va_cidx, va_lab, va_frozen)


@njit(**_JIT)
def val_loss(w1, b1, w2, b2, rows, rowptr, cidx, lab, frozen):  # pragma: no cover - compiled
    """Inner validation loss (no dropout): sum over heads of the mean BCE over labelled rows.

    ``rows`` index ``rowptr``/``lab`` and ``frozen`` (the rows' sums of frozen first-layer rows).
    """
    H, T = w2.shape[0], w2.shape[1]
    dt = w1.dtype.type
    tot = np.zeros(T, dtype=w1.dtype)
    cnt = np.zeros(T, dtype=w1.dtype)
    pre = np.empty(H, dtype=w1.dtype)
    for i in range(rows.shape[0]):
        r = rows[i]
        _hidden(w1, b1, rowptr, cidx, r, frozen[r], pre)
        for t in range(T):
            code = lab[r, t]
            if code == 0:
                continue
            z = b2[t]
            for h in range(H):
                if pre[h] > 0:
                    z += pre[h] * w2[h, t]
            y = dt(1.0) if code == 2 else dt(0.0)
            # BCE with logits, the stable form
            tot[t] += max(z, dt(0.0)) - z * y + math.log1p(math.exp(-abs(z)))
            cnt[t] += 1.0
    out = 0.0
    for t in range(T):
        out += tot[t] / max(cnt[t], dt(1.0))
    return out
