"""TAG affinities: the fast all-task lookahead equals the straightforward one, and means something."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlc.affinity import gradient_affinity, lookahead_fast, lookahead_reference, tag_train
from mtlc.datasets._core import MultiTaskDataset
from mtlc.errors import ConfigError
from mtlc.models import MultiTaskNet, SparseBatch, masked_bce

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _problem(
    *,
    B: int = 48,
    F: int = 96,
    K: int = 6,
    hidden: tuple[int, ...] = (16,),
    dtype: torch.dtype = torch.float64,
    seed: int = 0,
    density: float = 0.35,
    bits: int = 8,
    empty_task: bool = True,
):
    rng = np.random.default_rng(seed)
    X = sp.random(B, F, density=bits / F, random_state=seed, format="csr")
    X.data[:] = 1
    torch.manual_seed(seed)
    net = MultiTaskNet(F, K, hidden=hidden, dropout=0.3).to(dtype)
    y = (rng.random((B, K)) < 0.4).astype(np.float64)
    m = (rng.random((B, K)) < density).astype(np.float64)
    m[0, :] = 1  # every task has at least one labelled pair ...
    if empty_task:
        m[:, -1] = 0  # ... except the last one: no value this step
    return net, SparseBatch.from_csr(X), y, m


@pytest.mark.parametrize("hidden", [(16,), (16, 12)])
def test_fast_equals_reference_float64(hidden):
    net, batch, y, m = _problem(hidden=hidden)
    fast = lookahead_fast(net, batch, y, m, lr=0.1, chunk=4)  # several chunks
    ref = lookahead_reference(net, batch, y, m, lr=0.1)
    assert np.array_equal(np.isnan(fast.Z), np.isnan(ref.Z))
    # the task without labels: no value as source nor as target
    assert np.isnan(fast.Z[-1]).all() and np.isnan(fast.Z[:, -1]).all()
    assert np.isfinite(fast.Z[:-1, :-1]).all()
    assert np.nanmax(np.abs(ref.Z)) > 1e-3  # a non-trivial lookahead
    assert np.nanmax(np.abs(fast.Z - ref.Z)) < 1e-6
    scale = np.nanmax(np.abs(ref.inner))
    assert np.nanmax(np.abs(fast.inner - ref.inner)) < 1e-9 * scale
    np.testing.assert_allclose(fast.loss, ref.loss, rtol=1e-12)


@pytest.mark.parametrize("hidden", [(16,), (16, 12), (8, 8, 8)])
@pytest.mark.parametrize("lr", [1e-3, 1.0])
def test_linear_and_dense_paths_equal_reference(hidden, lr):
    """Both exact evaluations of the last layer agree with the reference, including large steps
    where many ReLU units change sign (the linear path's corrections) and the fallback."""
    net, batch, y, m = _problem(hidden=hidden)
    ref = lookahead_reference(net, batch, y, m, lr=lr)
    for path, cap in [("dense", 0.02), ("linear", 1.0), ("linear", 0.0)]:
        fast = lookahead_fast(net, batch, y, m, lr=lr, path=path, max_candidates=cap, chunk=3)
        assert np.nanmax(np.abs(fast.Z - ref.Z)) < 1e-9, (path, cap)


def test_linear_path_corrects_sign_changes():
    """At lr = 1 many first-layer units flip sign; the linear part alone would be wrong."""
    net, batch, y, m = _problem(hidden=(16,))
    lr = 1.0
    net.eval()
    yt, mt = torch.tensor(y), torch.tensor(m)
    per = masked_bce(net(batch), yt, mt, per_task=True)
    g = torch.autograd.grad(per[0], net.trunk_parameters())
    a0 = net.embed(batch.indices, batch.offsets) + net.bias0
    emb = F.embedding_bag(batch.indices, net.embed.weight - lr * g[0], batch.offsets, mode="sum")
    a1 = emb + net.bias0 - lr * g[1]
    assert int(((a0 > 0) != (a1 > 0)).sum()) > 10
    ref = lookahead_reference(net, batch, y, m, lr=lr)
    fast = lookahead_fast(net, batch, y, m, lr=lr, path="linear", max_candidates=1.0)
    assert np.nanmax(np.abs(fast.Z - ref.Z)) < 1e-9
    with pytest.raises(ConfigError, match="path"):
        lookahead_fast(net, batch, y, m, lr=lr, path="magic")


@pytest.mark.parametrize("hidden", [(16,), (16, 12), (8, 8, 8)])
def test_dense_path_row_blocks_groups_and_unlabelled_rows(monkeypatch, hidden):
    """The dense path over several row blocks and source groups, with dense labels of uneven
    density per row and rows without any label, equals the reference (float64, large step)."""
    import mtlc.affinity as aff

    net, batch, y, m = _problem(B=40, K=9, hidden=hidden, density=0.6, empty_task=False)
    m[5:9] = 0  # unlabelled rows: skipped by the head, still inputs of the first-layer Gram
    m[20:30, 3:] = 0  # rows of a few pairs next to rows of many: several row buckets
    ref = lookahead_reference(net, batch, y, m, lr=0.5)
    monkeypatch.setattr(aff, "_BLOCK_FLOATS", 9 * 16 * 7)  # about 7 rows per block
    monkeypatch.setattr(aff, "_GROUP", 2)
    small = lookahead_fast(net, batch, y, m, lr=0.5, path="dense")
    monkeypatch.undo()
    one = lookahead_fast(net, batch, y, m, lr=0.5, path="dense")
    assert np.isfinite(ref.Z).all()
    assert np.nanmax(np.abs(small.Z - ref.Z)) < 1e-9
    assert np.nanmax(np.abs(one.Z - ref.Z)) < 1e-9


def test_pair_head_tables_cover_every_pair_once_in_any_row_order():
    from mtlc.affinity import _pair_head_tables

    rng = np.random.default_rng(1)
    B, K, H = 30, 7, 5
    m = rng.random((B, K)) < 0.5
    m[[3, 11, 12, 29]] = False  # rows without pairs, also between rows with pairs
    m[0] = True
    mt = torch.tensor(m, dtype=torch.float64)
    kp, bp = torch.nonzero(mt.T > 0, as_tuple=True)
    P = int(bp.numel())
    per_row = torch.bincount(bp, minlength=B)
    order = torch.argsort(bp * K + kp)
    row_start = torch.cumsum(per_row, 0) - per_row
    slot = torch.arange(P) - row_start[bp[order]]
    pair_of = torch.full((B, int(per_row.max())), P, dtype=torch.long)
    pair_of[bp[order], slot] = order
    Wh = torch.randn(K, H, dtype=torch.float64)
    y = torch.zeros(B, K, dtype=torch.float64)
    z = torch.zeros(B, K, dtype=torch.float64)
    head = _pair_head_tables(Wh, y, z, bp, kp, pair_of, per_row, slack=0.8)
    real = head.neg_sgn[:, 0] != 0
    assert int(real.sum()) == P  # every pair once, padding slots have sign 0
    width = np.diff(head.row_slot)  # slots per row: its pairs plus padding, none if no pairs
    assert (width >= per_row.numpy()).all() and (width[per_row.numpy() == 0] == 0).all()
    for b0, b1, t, off in head.buckets:
        assert (per_row[b0:b1] <= t).all() and (per_row[b0:b1] >= 0.8 * t).all()
        assert head.row_slot[b0] == off and head.row_slot[b1] == off + (b1 - b0) * t
    # the task of every real slot is the task of its pair, rows in order
    got = sorted(
        (b, int(head.task[head.row_slot[b] + j]))
        for b in range(B)
        for j in range(int(head.row_slot[b + 1] - head.row_slot[b]))
        if bool(real[head.row_slot[b] + j])
    )
    assert got == sorted(zip(bp.tolist(), kp.tolist(), strict=True))
    assert np.all(head.row_slot[[3, 11, 12, 29]] == head.row_slot[[4, 12, 13, 30]])


@settings(max_examples=12, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    depth=st.integers(1, 3),
    K=st.integers(1, 7),
    B=st.integers(2, 40),
    density=st.floats(0.05, 1.0),
    lr=st.sampled_from([1e-3, 0.05, 0.5]),
)
def test_fast_equals_reference_random_shapes(seed, depth, K, B, density, lr):
    hidden = (12, 10, 8)[:depth]
    net, batch, y, m = _problem(
        B=B, K=K, F=40, hidden=hidden, seed=seed, density=density, bits=5, empty_task=False
    )
    fast = lookahead_fast(net, batch, y, m, lr=lr, chunk=3)
    ref = lookahead_reference(net, batch, y, m, lr=lr)
    lin = lookahead_fast(net, batch, y, m, lr=lr, chunk=2, path="linear", max_candidates=1.0)
    dense = lookahead_fast(net, batch, y, m, lr=lr, path="dense")
    assert np.array_equal(np.isnan(fast.Z), np.isnan(ref.Z))
    assert np.array_equal(np.isnan(dense.Z), np.isnan(ref.Z))
    if np.isfinite(ref.Z).any():
        assert np.nanmax(np.abs(lin.Z - ref.Z)) < 1e-6
        assert np.nanmax(np.abs(dense.Z - ref.Z)) < 1e-6
        assert np.nanmax(np.abs(fast.Z - ref.Z)) < 1e-6
        scale = np.nanmax(np.abs(ref.inner))
        assert np.nanmax(np.abs(fast.inner - ref.inner)) <= 1e-9 * scale


@pytest.mark.parametrize("density", [0.05, 1.0])  # pair-space vs row-space gradient Gram
@pytest.mark.parametrize("hidden", [(16,), (16, 12)])
def test_gradient_inner_products_both_evaluations(density, hidden):
    net, batch, y, m = _problem(B=40, K=9, hidden=hidden, density=density)
    fast = lookahead_fast(net, batch, y, m, lr=0.1, chunk=4)
    ref = lookahead_reference(net, batch, y, m, lr=0.1)
    scale = np.nanmax(np.abs(ref.inner))
    assert np.array_equal(np.isnan(fast.inner), np.isnan(ref.inner))
    assert np.nanmax(np.abs(fast.inner - ref.inner)) < 1e-9 * scale
    assert np.nanmax(np.abs(fast.Z - ref.Z)) < 1e-6


@pytest.mark.parametrize("path", ["auto", "dense"])
@pytest.mark.parametrize("hidden", [(16,), (16, 12)])
def test_float32_fast_matches_float64(hidden, path):
    """float32 probes agree with float64 to a small fraction of the affinity scale."""
    net64, batch, y, m = _problem(hidden=hidden)
    net32 = MultiTaskNet(net64.n_features, net64.n_tasks, hidden=hidden)
    net32.load_state_dict({k: v.float() for k, v in net64.state_dict().items()})
    for lr in (1e-3, 0.1):
        z64 = lookahead_reference(net64, batch, y, m, lr=lr).Z
        z32 = lookahead_fast(net32, batch, y, m, lr=lr, path=path).Z
        scale = np.nanmax(np.abs(z64))
        # the change is propagated as a difference, so float32 keeps relative precision
        # even when Z is O(1e-5) (lr = 1e-3)
        assert np.nanmax(np.abs(z32 - z64)) < 1e-3 * scale


def test_divide_by_lr_and_probe_leaves_model_untouched():
    net, batch, y, m = _problem()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    net.train()
    a = lookahead_fast(net, batch, y, m, lr=0.05)
    b = lookahead_fast(net, batch, y, m, lr=0.05, divide_by_lr=True)
    r = lookahead_reference(net, batch, y, m, lr=0.05, divide_by_lr=True)
    assert net.training  # mode restored
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k])
    np.testing.assert_allclose(b.Z, a.Z / 0.05, rtol=1e-12)
    np.testing.assert_allclose(b.first_order, a.first_order / 0.05, rtol=1e-12)
    assert np.nanmax(np.abs(b.Z - r.Z)) < 1e-6 / 0.05
    # eval-mode probes are deterministic despite dropout
    c = lookahead_fast(net, batch, y, m, lr=0.05)
    assert np.array_equal(a.Z, c.Z, equal_nan=True)


def test_first_order_and_cosine():
    net, batch, y, m = _problem()
    small = lookahead_fast(net, batch, y, m, lr=1e-4)
    ok = np.isfinite(small.Z)
    # Z ~ lr <g_i, g_j> / L_j for a small step
    err = np.abs(small.first_order[ok] - small.Z[ok])
    assert err.max() < 0.02 * np.abs(small.Z[ok]).max()
    # ... and not for a large one (the approximation is a first-order Taylor term)
    big = lookahead_fast(net, batch, y, m, lr=5.0)
    okb = np.isfinite(big.Z)
    assert np.abs(big.first_order[okb] - big.Z[okb]).max() > 0.05 * np.abs(big.Z[okb]).max()
    cos = small.cosine
    d = np.diag(cos)[:-1]
    np.testing.assert_allclose(d, 1.0, rtol=1e-9)
    np.testing.assert_allclose(cos, cos.T, equal_nan=True, rtol=1e-9)
    assert np.nanmax(np.abs(cos)) <= 1 + 1e-9
    g = gradient_affinity(net, batch, y, m, lr=1e-4)
    assert g.Z is None
    np.testing.assert_allclose(g.first_order, small.first_order, rtol=1e-12, equal_nan=True)


def test_shape_errors():
    net, batch, y, m = _problem()
    with pytest.raises(ConfigError, match="shape"):
        lookahead_fast(net, batch, y[:, :-1], m[:, :-1], lr=0.1)


# ----------------------------------------------------------------------------- training loop
def _dataset(n: int = 480, F: int = 128, seed: int = 0) -> MultiTaskDataset:
    """Tasks a and a_copy have identical labels, b is another rule, noise has random labels."""
    rng = np.random.default_rng(seed)
    X = (rng.random((n, F)) < 12 / F).astype(np.float32)
    w1, w2 = rng.standard_normal(F), rng.standard_normal(F)
    s1, s2 = X @ w1, X @ w2
    labels = {
        "a": (s1 > np.median(s1)).astype(int),
        "a_copy": (s1 > np.median(s1)).astype(int),
        "b": (s2 > np.median(s2)).astype(int),
        "noise": rng.integers(0, 2, n),
    }
    rows = []
    for t, lab in labels.items():
        for c in range(n):
            rows.append((f"c{c:04d}", t, int(lab[c])))
    table = pd.DataFrame(rows, columns=["compound_id", "task_id", "label"])
    ds = MultiTaskDataset.from_long("toy", table, value_col=None)
    ds.X = sp.csr_matrix(X)  # compound ids sort in creation order
    return ds


def test_identical_tasks_high_affinity_random_task_low():
    ds = _dataset()
    res = tag_train(
        ds, hidden=(32,), dropout=0.1, lr=3e-3, batch_size=64, epochs=4, every=2, seed=1
    )
    t = {name: i for i, name in enumerate(res.task_ids)}
    Z, cos = res.affinity, res.cosine
    a, ac, b, noise = t["a"], t["a_copy"], t["b"], t["noise"]
    assert Z[a, ac] > 0 and Z[ac, a] > 0
    assert Z[a, ac] > 3 * abs(Z[noise, ac]) and Z[ac, a] > 3 * abs(Z[noise, a])
    assert Z[a, ac] > Z[b, ac] and Z[a, ac] > Z[noise, ac]
    # the heads differ, so identical tasks' trunk gradients are far from parallel, but far
    # more aligned than with an unrelated task
    assert cos[a, ac] > 0.15 and abs(cos[a, noise]) < cos[a, ac] / 4
    # bookkeeping
    assert res.history.shape == (4, 4, 4)
    assert res.settings["divide_by_lr"] is False and res.settings["probe_mode"] == "eval"
    steps = 4 * int(np.ceil(480 / 64))
    assert res.cost["train_steps"] == steps and res.cost["train_forward"] == steps
    assert res.cost["probe_steps"] == int(np.ceil(steps / 2))
    assert res.counts[a, ac] == res.cost["probe_steps"]
    assert res.history_counts[:, a, ac].sum() == res.counts[a, ac]
    assert res.history_loss[-1] < res.history_loss[0]
    frame = res.to_frame()
    assert len(frame) == 12 and set(frame.columns) >= {"source", "target", "affinity"}


def test_tag_train_fast_equals_reference_and_is_seeded():
    ds = _dataset(n=120, F=48)
    kw = dict(
        hidden=(8, 6),
        batch_size=32,
        epochs=2,
        every=3,
        seed=3,
        lookahead_lr=0.1,
        dtype=torch.float64,
        device="cpu",
    )
    fast = tag_train(ds, np.arange(100), **kw)
    ref = tag_train(ds, np.arange(100), method="reference", **kw)
    again = tag_train(ds, np.arange(100), **kw)
    assert np.nanmax(np.abs(fast.affinity - ref.affinity)) < 1e-6
    assert np.array_equal(fast.affinity, again.affinity, equal_nan=True)
    assert np.array_equal(fast.counts, ref.counts)
    assert ref.cost["probe_backward"] > fast.cost["probe_backward"]
    assert fast.info["n_train_compounds"] == 100


def test_tag_train_config_and_errors():
    ds = _dataset(n=64, F=32)
    res = tag_train(
        ds, config={"hidden": (8,), "epochs": 1, "batch_size": 32}, every=1, exact=False
    )
    assert res.affinity is None and res.first_order is not None
    assert res.settings["hidden"] == [8] and res.settings["epochs"] == 1
    from mtlc.training import TrainConfig

    cfg = TrainConfig(hidden=(6,), max_epochs=2, batch_size=16, dtype="float64")
    res = tag_train(ds, config=cfg, every=5, seed=0)
    assert res.settings["epochs"] == 2 and res.settings["dtype"] == "float64"
    assert res.settings["hidden"] == [6] and res.history.shape == (2, 2 * 2, 2 * 2)
    with pytest.raises(ConfigError, match="method"):
        tag_train(ds, method="magic")
    ds.X = None
    with pytest.raises(ConfigError, match="featur"):
        tag_train(ds)
