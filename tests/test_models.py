"""MultiTaskNet and masked_bce against dense reference computations, float32 and float64."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlc.models import MultiTaskNet, SparseBatch, masked_bce, resolve_device

DTYPES = [torch.float32, torch.float64]


def _x(n=7, f=20, seed=0):
    rng = np.random.default_rng(seed)
    d = (rng.random((n, f)) < 0.3).astype(np.float32)
    d[3] = 0  # an empty row: an empty bag
    return sp.csr_matrix(d)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden", [(8,), (8, 5)])
def test_forward_equals_dense(dtype, hidden):
    X = _x()
    torch.manual_seed(0)
    net = MultiTaskNet(20, 3, hidden=hidden, dropout=0.5).to(dtype).eval()
    xb = SparseBatch.from_csr(X)
    dense = xb.to_dense(20, dtype=dtype)
    np.testing.assert_array_equal(dense.numpy(), X.toarray())
    h = torch.relu(dense @ net.embed.weight + net.bias0)
    for layer in net.layers:
        h = torch.relu(layer(h))
    ref = net.head(h)
    tol = 1e-6 if dtype == torch.float32 else 1e-12
    torch.testing.assert_close(net(xb), ref, rtol=tol, atol=tol)
    assert net(xb).dtype == dtype
    assert len(net.trunk_parameters()) == 2 + 2 * (len(hidden) - 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_masked_bce_is_sum_of_per_task_means(dtype):
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(6, 3, generator=g, dtype=dtype)
    y = (torch.rand(6, 3, generator=g) > 0.5).to(dtype)
    mask = torch.tensor(
        [[1, 0, 0], [1, 1, 0], [0, 1, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=dtype
    )
    per = masked_bce(logits, y, mask, per_task=True)
    for t in range(3):
        m = mask[:, t] > 0
        want = (
            torch.nn.functional.binary_cross_entropy_with_logits(logits[m, t], y[m, t])
            if m.any()
            else torch.zeros((), dtype=dtype)
        )
        torch.testing.assert_close(per[t], want)
    torch.testing.assert_close(masked_bce(logits, y, mask), per.sum())
    assert per[2] == 0  # a task without labels contributes nothing


@settings(max_examples=25, deadline=None)
@given(
    labels=st.lists(st.booleans(), min_size=1, max_size=12),
    data=st.data(),
)
def test_masked_bce_ignores_unlabelled_entries(labels, data):
    """Whatever sits under mask == 0 (logits, labels) never changes the loss."""
    n = len(labels)
    mask = torch.tensor(labels, dtype=torch.float64).view(n, 1)
    logits = torch.tensor(
        data.draw(st.lists(st.floats(-5, 5), min_size=n, max_size=n)), dtype=torch.float64
    ).view(n, 1)
    y = torch.tensor(
        data.draw(st.lists(st.booleans(), min_size=n, max_size=n)), dtype=torch.float64
    ).view(n, 1)
    other = torch.where(mask > 0, logits, logits + 3.0)
    flipped = torch.where(mask > 0, y, 1 - y)
    a = masked_bce(logits, y, mask)
    torch.testing.assert_close(a, masked_bce(other, flipped, mask))
    assert a >= 0


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
