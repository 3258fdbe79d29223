"""Compiled CPU kernels (numba) of the ``compiled`` training engine (see :mod:`mtlc.fleet`).

One call of :func:`train_model` trains ONE one-hidden-layer network: its epochs
(:func:`train_epoch`: every batch's forward as a sum of the set bits' first-layer rows, masked
BCE, backward, then row by row the first-layer gradient and its Adam update, Adam over the
other parameters; then the inner validation loss), early stopping and best-epoch snapshots.
The fleet's models are trained one after the other, so a model's state (parameters and Adam
moments: 3 x R x H floats, under 3 MB for kiba's widest single-task models) stays in the CPU
cache for its whole training. The torch engine instead applies every operation to all models
at once, which streams every model's state through main memory once per operation and step.

The two hot loops, summing first-layer rows (forward) and summing a row's compounds' gradients
then its Adam update (backward), are LLVM vector code written with ``numba.extending.intrinsic``
(:func:`_make_row_sum`, :func:`_make_row_grad_adam`): a row of H = 128 float32 stays in eight
64-byte registers while the rows are added, which the loop vectorizer does not do (it
re-loads and re-stores the output row for every added row: 2x slower, measured).
:func:`fill_uniform` draws the dropout uniforms from the model's own numpy ``PCG64`` stream,
bit for bit what ``Generator.random(dtype=np.float32)`` draws, 2.5x faster (four interleaved
states; numpy's float32 draws cost about as much as the whole forward pass).

The arithmetic is the torch engine's (same initial weights, batches, dropout masks, loss and Adam
update as ``torch._fused_adam_``, with ``sqrt(v) * (1 / bc2)`` for ``sqrt(v) / bc2``); sums run
in another order, so numbers agree at float rounding.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from mtlc.fleet import _verdict as _py_verdict

_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8

# error_model="numpy": no ZeroDivisionError checks, so the inner loops over hidden units
# vectorize (3x faster Adam, measured)
_JIT = dict(cache=True, nogil=True, error_model="numpy")
# small helpers are inlined in numba's IR: as calls they cost more than their short loops
_INLINE = dict(_JIT, inline="always")

# the early-stopping rule of both engines, compiled (one definition: mtlc.fleet._verdict)
_verdict = njit(**_JIT)(_py_verdict)


@njit(**_JIT)
def _adam_coef(lr, step):  # pragma: no cover - compiled
    """Step size ``lr / (1 - beta1^t)`` and ``1 / sqrt(1 - beta2^t)``, in float64 (as torch)."""
    return lr / (1.0 - _BETA1**step), 1.0 / math.sqrt(1.0 - _BETA2**step)


@njit(**_INLINE)
def _adam_apply(p, g, m, v, step_size, inv_bc2, wd):  # pragma: no cover - compiled
    """One Adam update (``torch._fused_adam_`` arithmetic) of flat ``p`` with gradient ``g``,
    element-wise in the parameters' dtype."""
    dt = p.dtype.type
    ss, ib2 = dt(step_size), dt(inv_bc2)
    b1c, b2, b2c, eps, wdt = dt(1.0 - _BETA1), dt(_BETA2), dt(1.0 - _BETA2), dt(_EPS), dt(wd)
    for i in range(p.shape[0]):
        gi = g[i]
        if wd != 0.0:
            gi = gi + wdt * p[i]
        mi = m[i] + b1c * (gi - m[i])
        vi = b2 * v[i] + b2c * gi * gi
        m[i] = mi
        v[i] = vi
        p[i] = p[i] - ss * mi / (math.sqrt(vi) * ib2 + eps)


# ---- vector intrinsics: a block of ``nvec`` 64-byte vectors of a row held in registers


def _vec(context, dtype):
    """(element type, element bytes, lanes, vector type) of one 64-byte vector of ``dtype``."""
    elt = context.get_data_type(dtype)
    isz = context.get_abi_sizeof(elt)
    return elt, isz, 64 // isz, ir.VectorType(elt, 64 // isz)


def _row_at(builder, arr, row, col_bytes, elt):
    """Pointer to ``arr[row, col]`` of a 2-D array (row stride from the array)."""
    i8p = ir.IntType(8).as_pointer()
    st0 = cgutils.unpack_tuple(builder, arr.strides, 2)[0]
    off = builder.add(builder.mul(row, st0), col_bytes)
    return builder.bitcast(builder.gep(builder.bitcast(arr.data, i8p), [off]), elt.as_pointer())


def _lane_ptr(builder, base, k, lanes, vt):
    i64 = ir.IntType(64)
    return builder.bitcast(builder.gep(base, [ir.Constant(i64, k * lanes)]), vt.as_pointer())


def _sum_rows_ir(builder, src, idx, start, end, col_bytes, elt, isz, lanes, vt, slots):
    """``slots[k] += src[idx[e], col + k * lanes : ...]`` for e in [start, end), in order."""
    i64 = ir.IntType(64)
    with cgutils.for_range_slice(builder, start, end, ir.Constant(i64, 1), inc=True) as (e, _):
        r = builder.load(builder.gep(idx.data, [e]))
        r = builder.sext(r, i64) if r.type.width < 64 else r
        base = _row_at(builder, src, r, col_bytes, elt)
        for k, slot in enumerate(slots):
            x = builder.load(_lane_ptr(builder, base, k, lanes, vt), align=isz)
            builder.store(builder.fadd(builder.load(slot), x), slot)


def _make_row_sum(nvec: int):
    """Intrinsic ``f(out, src, idx, start, end, col)``: ``out[col : col + nvec * lanes]``
    (1-D) ``+= sum of src[idx[e], same columns]`` over e in [start, end)."""

    @intrinsic
    def row_sum(typingctx, out, src, idx, start, end, col):
        i = types.int64
        sig = types.void(out, src, idx, i, i, i)

        def codegen(context, builder, signature, args):
            o, s, ix = (
                context.make_array(t)(context, builder, a)
                for t, a in zip(signature.args[:3], args[:3], strict=True)
            )
            start, end, col = args[3:]
            elt, isz, lanes, vt = _vec(context, signature.args[0].dtype)
            obase = builder.gep(o.data, [col])
            optr = [_lane_ptr(builder, obase, k, lanes, vt) for k in range(nvec)]
            slots = [cgutils.alloca_once(builder, vt) for _ in range(nvec)]
            for p, slot in zip(optr, slots, strict=True):
                builder.store(builder.load(p, align=isz), slot)
            col_bytes = builder.mul(col, ir.Constant(ir.IntType(64), isz))
            _sum_rows_ir(builder, s, ix, start, end, col_bytes, elt, isz, lanes, vt, slots)
            for p, slot in zip(optr, slots, strict=True):
                builder.store(builder.load(slot), p, align=isz)
            return context.get_dummy_value()

        return sig, codegen

    return row_sum


def _splat(builder, vt, x):
    v = ir.Constant(vt, ir.Undefined)
    for i in range(vt.count):
        v = builder.insert_element(v, x, ir.Constant(ir.IntType(32), i))
    return v


def _make_row_grad_adam(nvec: int):
    """Intrinsic ``f(p, m, v, src, idx, start, end, row, col, ss, ib2, wd)``: the gradient of
    row ``row`` of the first layer, ``g = sum of src[idx[e]]`` over e in [start, end) (columns
    ``col .. col + nvec * lanes``), then that row's Adam update of ``p``, ``m``, ``v`` (2-D),
    :func:`_adam_apply`'s arithmetic, without writing ``g`` anywhere."""

    @intrinsic
    def row_grad_adam(typingctx, p, m, v, src, idx, start, end, row, col, ss, ib2, wd):
        i, fl = types.int64, p.dtype
        sig = types.void(p, m, v, src, idx, i, i, i, i, fl, fl, fl)

        def codegen(context, builder, signature, args):
            pa, ma, va, s, ix = (
                context.make_array(t)(context, builder, a)
                for t, a in zip(signature.args[:5], args[:5], strict=True)
            )
            start, end, row, col, ss, ib2, wd = args[5:]
            elt, isz, lanes, vt = _vec(context, fl)
            col_bytes = builder.mul(col, ir.Constant(ir.IntType(64), isz))
            slots = [cgutils.alloca_once(builder, vt) for _ in range(nvec)]
            for slot in slots:
                builder.store(ir.Constant(vt, None), slot)
            _sum_rows_ir(builder, s, ix, start, end, col_bytes, elt, isz, lanes, vt, slots)

            def const(x):
                return ir.Constant(vt, [ir.Constant(elt, x)] * lanes)

            b1c, b2, b2c, eps = const(1.0 - _BETA1), const(_BETA2), const(1.0 - _BETA2), const(_EPS)
            vss, vib2, vwd = (_splat(builder, vt, x) for x in (ss, ib2, wd))
            has_wd = builder.fcmp_ordered("!=", wd, ir.Constant(elt, 0.0))
            sqrt = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(vt, [vt]), f"llvm.sqrt.v{lanes}f{8 * isz}"
            )
            bases = [_row_at(builder, a, row, col_bytes, elt) for a in (pa, ma, va)]
            for k, slot in enumerate(slots):
                pp, mp, vp = (_lane_ptr(builder, b, k, lanes, vt) for b in bases)
                pk, mk, vk = (builder.load(q, align=isz) for q in (pp, mp, vp))
                g = builder.load(slot)
                g = builder.select(has_wd, builder.fadd(g, builder.fmul(vwd, pk)), g)
                mi = builder.fadd(mk, builder.fmul(b1c, builder.fsub(g, mk)))
                vi = builder.fadd(builder.fmul(b2, vk), builder.fmul(builder.fmul(b2c, g), g))
                den = builder.fadd(builder.fmul(builder.call(sqrt, [vi]), vib2), eps)
                builder.store(mi, mp, align=isz)
                builder.store(vi, vp, align=isz)
                builder.store(builder.fsub(pk, builder.fdiv(builder.fmul(vss, mi), den)), pp,
                              align=isz)  # fmt: skip
            return context.get_dummy_value()

        return sig, codegen

    return row_grad_adam


_row_sum8, _row_sum1 = _make_row_sum(8), _make_row_sum(1)
_row_grad_adam8, _row_grad_adam1 = _make_row_grad_adam(8), _make_row_grad_adam(1)


@njit(**_INLINE)
def _add_rows(out, src, idx, start, end):  # pragma: no cover - compiled
    """``out += src[idx[e]]`` for e in [start, end), in that order: blocks of 8 vectors, then
    single vectors, then the last columns one by one."""
    H = out.shape[0]
    lanes = 64 // out.itemsize
    c = 0
    while c + 8 * lanes <= H:
        _row_sum8(out, src, idx, start, end, c)
        c += 8 * lanes
    while c + lanes <= H:
        _row_sum1(out, src, idx, start, end, c)
        c += lanes
    if c < H:
        for e in range(start, end):
            s = src[idx[e]]
            for h in range(c, H):
                out[h] += s[h]


@njit(**_INLINE)
def _row_grad_adam(p, m, v, src, idx, start, end, row, ss, ib2, wd):  # pragma: no cover
    """Row ``row`` of ``p`` (2-D): gradient = sum of ``src[idx[e]]`` over e in [start, end),
    then its Adam update, vector blocks as :func:`_add_rows`."""
    H = p.shape[1]
    dt = p.dtype.type
    lanes = 64 // p.itemsize
    c = 0
    while c + 8 * lanes <= H:
        _row_grad_adam8(p, m, v, src, idx, start, end, row, c, dt(ss), dt(ib2), dt(wd))
        c += 8 * lanes
    while c + lanes <= H:
        _row_grad_adam1(p, m, v, src, idx, start, end, row, c, dt(ss), dt(ib2), dt(wd))
        c += lanes
    if c < H:
        g = np.zeros(H - c, dtype=p.dtype)
        for e in range(start, end):
            s = src[idx[e]]
            for h in range(c, H):
                g[h - c] += s[h]
        _adam_apply(p[row, c:], g, m[row, c:], v[row, c:], ss, ib2, wd)


@njit(cache=True, nogil=True, error_model="numpy", fastmath={"reassoc"})
def _dot(a, b):  # pragma: no cover - compiled
    """``sum(a * b)`` with partial sums in vector lanes (``reassoc``: a serial sum waits out
    every addition's latency; this head product was a third of an epoch, measured)."""
    s = a.dtype.type(0.0)
    for h in range(a.shape[0]):
        s += a[h] * b[h]
    return s


@njit(**_INLINE)
def _hidden(w1, b1, rowptr, cidx, r, extra, out):  # pragma: no cover - compiled
    """Pre-activation of one compound: ``b1 + extra + sum of its bits' rows of w1``."""
    for h in range(out.shape[0]):
        out[h] = b1[h] + extra[h]
    _add_rows(out, w1, cidx, rowptr[r], rowptr[r + 1])


@njit(**_INLINE)
def _empty64(n, H, dtype):  # pragma: no cover - compiled
    """``np.empty((n, H))`` starting on a 64-byte boundary (rows of 128 float32 then never
    straddle a cache line: 1.4x faster row sums, measured)."""
    buf = np.empty(n * H + 16, dtype=dtype)
    off = ((-buf.ctypes.data) % 64) // buf.itemsize
    return buf[off : off + n * H].reshape((n, H))


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
    rstart, comp, resort,  # (n_rows + 1,) int64, (nnz,) int32: the batch's bits sorted by row
):  # pragma: no cover - compiled  # fmt: skip
    """One epoch of one model; returns (steps taken so far, validation loss).

    ``rstart``/``comp`` hold, after a batch, where each first-layer row's compounds start and
    their batch positions (``comp`` must hold the bits of the largest batch). An epoch of
    several batches sorts every batch; an epoch of one batch (the whole set, in the same order
    every epoch) sorts only when ``resort`` (its first epoch) and reuses them after.
    """
    H, T = w2.shape[0], w2.shape[1]
    dt = w1.dtype.type
    n = order.shape[0]
    bs = min(batch_size, n)
    pre = _empty64(bs, H, w1.dtype)  # pre-activations, then their gradients
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
    fill = np.empty(n_rows, dtype=np.int64)
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
                z = b2[t] + _dot(act[i], w2t[t])
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
        if resort or nb < n:
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
        ss, ib2 = _adam_coef(lr, step)
        for c in range(n_rows):
            _row_grad_adam(w1, mw1, vw1, pre, comp, rstart[c], rstart[c + 1], c, ss, ib2, wd)
        # the other parameters, then their gradients zeroed for the next batch
        _adam_apply(b1, gb1, mb1, vb1, ss, ib2, wd)
        _adam_apply(w2.reshape(H * T), gw2.reshape(H * T), mw2.reshape(H * T),
                    vw2.reshape(H * T), ss, ib2, wd)  # fmt: skip
        _adam_apply(b2, gb2, mb2, vb2, ss, ib2, wd)
        gb1[:] = 0.0
        gw2[:] = 0.0
        gb2[:] = 0.0
    return step, val_loss(w1, b1, w2, b2, va_rows, va_rowptr, va_cidx, va_lab, va_frozen)


@njit(**_JIT)
def train_model(
    w1, b1, w2, b2,  # one model's parameters, updated in place
    mw1, vw1, mb1, vb1, mw2, vw2, mb2, vb2,  # its Adam moments (zero)
    best_w1, best_b1, best_w2, best_b2,  # where the best epoch's parameters are copied
    n_rows, orders, batch_size, rowptr, cidx, lab,
    st, u, p_drop,  # PCG64 state of the model's dropout stream (fill_uniform), (n, H) scratch
    lr, wd,
    va_rows, va_rowptr, va_cidx, va_lab, va_frozen,
    e_min, e_max, patience, losses,  # epoch budget; (e_max,) float64 out: validation losses
):  # pragma: no cover - compiled  # fmt: skip
    """The whole training of one model: epochs of :func:`train_epoch` with early stopping
    (``mtlc.fleet._verdict``) and best-epoch snapshots; returns (epochs run, best epoch).

    ``orders``: (1, n) when the epoch is one batch in natural order, else (e_max, n): each
    epoch's batch order, drawn beforehand from the model's generator (the same stream as the
    torch engine, which draws one per epoch). A model without inner validation records
    ``-epoch`` as its loss (it keeps its last epoch).
    """
    n = orders.shape[1]
    has_val = va_rows.shape[0] > 0
    one_batch = orders.shape[0] == 1
    rstart = np.zeros(n_rows + 1, dtype=np.int64)
    nnz = 0
    for i in range(n):
        nnz += rowptr[orders[0, i] + 1] - rowptr[orders[0, i]]
    comp = np.empty(nnz, dtype=np.int32)
    step, best_loss, best_epoch, epoch = 0, np.inf, 0, 0
    for epoch in range(1, e_max + 1):
        order = orders[0] if one_batch else orders[epoch - 1]
        if p_drop > 0:
            fill_uniform(st, u)
        step, vl = train_epoch(
            w1, b1, w2, b2, mw1, vw1, mb1, vb1, mw2, vw2, mb2, vb2, step, n_rows, order,
            batch_size, rowptr, cidx, lab, u, p_drop, lr, wd,
            va_rows, va_rowptr, va_cidx, va_lab, va_frozen,
            rstart, comp, epoch == 1,
        )  # fmt: skip
        v = vl if has_val else -float(epoch)
        losses[epoch - 1] = v
        better, stop, snap = _verdict(
            v, epoch, best_loss, best_epoch, e_min, e_max, patience, has_val
        )
        if better:
            best_loss, best_epoch = v, epoch
        if snap:
            best_w1[:] = w1
            best_b1[:] = b1
            best_w2[:] = w2
            best_b2[:] = b2
        if stop:
            break
    return epoch, best_epoch


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


# ---- dropout uniforms: numpy's PCG64 stream, drawn in compiled code

_M128 = (2549297995355413924 << 64) + 4865540595714422341  # PCG64's multiplier
_LANES = 4  # interleaved states: the 128-bit multiplications of 4 draws run side by side
_U64 = (1 << 64) - 1


def _halves(x: int) -> tuple[np.uint64, np.uint64]:
    return np.uint64(x >> 64), np.uint64(x & _U64)


_MH, _ML = _halves(_M128)
_MKH, _MKL = _halves(pow(_M128, _LANES, 1 << 128))  # multiplier of _LANES steps
_SKH, _SKL = _halves(sum(pow(_M128, i, 1 << 128) for i in range(_LANES)) % (1 << 128))
_Z64 = np.uint64(0)
_LO32 = np.uint64(0xFFFFFFFF)


@intrinsic
def _affine128(typingctx, hi, lo, ahi, alo, bhi, blo):
    """``a * x + b`` modulo 2^128 with every 128-bit number given as (high, low) uint64."""
    u = types.uint64
    sig = types.UniTuple(u, 2)(u, u, u, u, u, u)

    def codegen(context, builder, signature, args):
        i64, i128 = ir.IntType(64), ir.IntType(128)
        c64 = ir.Constant(i128, 64)

        def wide(h, lo_):
            return builder.or_(builder.shl(builder.zext(h, i128), c64), builder.zext(lo_, i128))

        x = builder.add(builder.mul(wide(args[2], args[3]), wide(args[0], args[1])),
                        wide(args[4], args[5]))  # fmt: skip
        out = [builder.trunc(builder.lshr(x, c64), i64), builder.trunc(x, i64)]
        return context.make_tuple(builder, signature.return_type, out)

    return sig, codegen


@njit(**_INLINE)
def _xsl_rr(hi, lo):  # pragma: no cover - compiled
    """PCG64's output of a state: (high ^ low) rotated right by the top 6 bits."""
    x = hi ^ lo
    r = hi >> np.uint64(58)
    return (x >> r) | (x << ((np.uint64(64) - r) & np.uint64(63)))


@njit(**_INLINE)
def _u24(x):  # pragma: no cover - compiled
    """numpy's float32 of a 32-bit draw: its top 24 bits times 2^-24 (exact)."""
    return np.float32(np.int64(x >> np.uint64(8))) * np.float32(1.0 / 16777216.0)


@njit(**_JIT)
def fill_uniform(st, out):  # pragma: no cover - compiled
    """Fill ``out`` (float32, any shape, C order) with what ``Generator.random(dtype=float32)``
    of a ``PCG64`` generator draws, bit for bit, and advance its state ``st`` (see
    :func:`pcg64_state`) as numpy would: each 64-bit draw gives two float32, low half first,
    an odd count keeps the high half for the next call."""
    flat = out.reshape(out.size)
    n = flat.shape[0]
    i = 0
    if st[4] != 0 and n > 0:
        flat[0] = _u24(st[5])
        st[4] = 0
        i = 1
    hi, lo, ih, il = st[0], st[1], st[2], st[3]
    last = st[5]  # numpy keeps the high half of its last draw, even once used
    k = (n - i) // 2  # whole 64-bit draws
    j = 0
    if k >= 2 * _LANES:
        ch, cl = _affine128(ih, il, _SKH, _SKL, _Z64, _Z64)  # inc * (1 + M + M^2 + M^3)
        h0, l0 = _affine128(hi, lo, _MH, _ML, ih, il)
        h1, l1 = _affine128(h0, l0, _MH, _ML, ih, il)
        h2, l2 = _affine128(h1, l1, _MH, _ML, ih, il)
        h3, l3 = _affine128(h2, l2, _MH, _ML, ih, il)
        while True:
            x0, x1, x2, x3 = _xsl_rr(h0, l0), _xsl_rr(h1, l1), _xsl_rr(h2, l2), _xsl_rr(h3, l3)
            flat[i] = _u24(x0 & _LO32)
            flat[i + 1] = _u24(x0 >> np.uint64(32))
            flat[i + 2] = _u24(x1 & _LO32)
            flat[i + 3] = _u24(x1 >> np.uint64(32))
            flat[i + 4] = _u24(x2 & _LO32)
            flat[i + 5] = _u24(x2 >> np.uint64(32))
            flat[i + 6] = _u24(x3 & _LO32)
            flat[i + 7] = _u24(x3 >> np.uint64(32))
            i += 2 * _LANES
            j += _LANES
            hi, lo, last = h3, l3, x3 >> np.uint64(32)
            if j + _LANES > k:
                break
            h0, l0 = _affine128(h0, l0, _MKH, _MKL, ch, cl)
            h1, l1 = _affine128(h1, l1, _MKH, _MKL, ch, cl)
            h2, l2 = _affine128(h2, l2, _MKH, _MKL, ch, cl)
            h3, l3 = _affine128(h3, l3, _MKH, _MKL, ch, cl)
    while j < k:
        hi, lo = _affine128(hi, lo, _MH, _ML, ih, il)
        x = _xsl_rr(hi, lo)
        flat[i] = _u24(x & _LO32)
        last = x >> np.uint64(32)
        flat[i + 1] = _u24(last)
        i += 2
        j += 1
    if i < n:
        hi, lo = _affine128(hi, lo, _MH, _ML, ih, il)
        x = _xsl_rr(hi, lo)
        flat[i] = _u24(x & _LO32)
        st[4] = 1
        last = x >> np.uint64(32)
    st[0] = hi
    st[1] = lo
    st[5] = last


def pcg64_state(gen: np.random.Generator) -> np.ndarray:
    """A ``PCG64`` generator's state as uint64 [state high, low, inc high, low, has_uint32,
    uinteger] for :func:`fill_uniform` (every model's dropout generator is
    ``np.random.default_rng(seed)``, a PCG64)."""
    s = gen.bit_generator.state
    if s.get("bit_generator") != "PCG64":
        raise ValueError(
            f"fill_uniform draws numpy's PCG64 stream, got a {s.get('bit_generator')} generator"
        )
    v, inc = int(s["state"]["state"]), int(s["state"]["inc"])
    return np.array([v >> 64, v & _U64, inc >> 64, inc & _U64, s["has_uint32"], s["uinteger"]],
                    dtype=np.uint64)  # fmt: skip


def set_pcg64_state(gen: np.random.Generator, st: np.ndarray) -> None:
    """Write a state advanced by :func:`fill_uniform` back into ``gen``."""
    s = gen.bit_generator.state
    s["state"]["state"] = (int(st[0]) << 64) | int(st[1])
    s["has_uint32"], s["uinteger"] = int(st[4]), int(st[5])
    gen.bit_generator.state = s
