"""The compiled engine's kernels against plain numpy: vector row sums, the fused row gradient +
Adam update, and the dropout uniforms drawn from numpy's own PCG64 stream."""

from __future__ import annotations

import math

import numpy as np
import pytest

C = pytest.importorskip("mtlc._compiled")

# widths: scalar tail only, one vector, vectors + tail, the study's 128, two 8-vector blocks
WIDTHS = [1, 7, 16, 100, 128, 200, 256]
DTYPES = [np.float32, np.float64]


def _rows(dtype, H, seed=0):
    rng = np.random.default_rng(seed)
    src = rng.normal(size=(40, H)).astype(dtype)
    idx = rng.integers(0, 40, 60).astype(np.int32)
    return src, idx


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H", WIDTHS)
def test_add_rows_is_the_sequential_sum(dtype, H):
    src, idx = _rows(dtype, H)
    out = np.random.default_rng(1).normal(size=H).astype(dtype)
    ref = out.copy()
    for e in range(5, 47):  # the same order of additions as the kernel
        ref += src[idx[e]]
    C._add_rows(out, src, idx, 5, 47)
    np.testing.assert_array_equal(out, ref)


def _adam_ref(p, g, m, v, ss, ib2, wd):
    """torch's Adam update in the kernels' arithmetic, element-wise in numpy."""
    dt = p.dtype.type
    g = g + dt(wd) * p if wd else g
    m[:] = m + dt(1 - 0.9) * (g - m)
    v[:] = dt(0.999) * v + dt(1 - 0.999) * g * g
    p[:] = p - dt(ss) * m / (np.sqrt(v) * dt(ib2) + dt(1e-8))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("H", WIDTHS)
@pytest.mark.parametrize("wd", [0.0, 1e-2])
def test_row_grad_adam_equals_sum_then_adam(dtype, H, wd):
    src, idx = _rows(dtype, H, seed=2)
    rng = np.random.default_rng(3)
    p = rng.normal(size=(4, H)).astype(dtype)
    m = rng.normal(size=(4, H)).astype(dtype) * dtype(1e-2)
    v = rng.random((4, H)).astype(dtype) * dtype(1e-3)
    ss, ib2 = C._adam_coef(1e-3, 3)
    assert math.isclose(ib2, 1 / math.sqrt(1 - 0.999**3))
    P, Mo, V = p.copy(), m.copy(), v.copy()
    g = np.zeros(H, dtype)
    for e in range(3, 20):
        g += src[idx[e]]
    _adam_ref(P[2], g, Mo[2], V[2], ss, ib2, wd)
    C._row_grad_adam(p, m, v, src, idx, 3, 20, 2, ss, ib2, wd)
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == np.float32 else dict(rtol=1e-14, atol=1e-15)
    for got, want in ((p, P), (m, Mo), (v, V)):
        np.testing.assert_allclose(got, want, **tol)
    # the other rows are untouched
    np.testing.assert_array_equal(np.delete(p, 2, 0), np.delete(P, 2, 0))


@pytest.mark.parametrize("seed", [0, 7, 12345])
def test_fill_uniform_is_numpys_float32_stream(seed):
    ref, gen = np.random.default_rng(seed), np.random.default_rng(seed)
    st = C.pcg64_state(gen)
    # even and odd counts: an odd count leaves half a 64-bit draw for the next call
    for shape in [(230, 128), (3, 7), (1,), (0,), (5, 5), (16,), (17,), (2, 9), (64, 33)]:
        want = ref.random(shape, dtype=np.float32)
        got = np.empty(shape, np.float32)
        C.fill_uniform(st, got)
        np.testing.assert_array_equal(got, want)
    C.set_pcg64_state(gen, st)
    assert gen.bit_generator.state == ref.bit_generator.state
    assert gen.random(5).tolist() == ref.random(5).tolist()


def test_pcg64_state_only_for_pcg64():
    with pytest.raises(ValueError, match="got a MT19937 generator"):
        C.pcg64_state(np.random.Generator(np.random.MT19937(0)))
