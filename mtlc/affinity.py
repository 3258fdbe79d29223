"""Task Affinity Grouping (TAG): inter-task affinity by a lookahead on the shared trunk.

For a batch and a source task i, take one SGD step on the trunk parameters with task i's loss
alone, ``theta_s' = theta_s - lr * grad_{theta_s} L_i``, keep the heads, and measure how much
every target task's loss on the same batch changed::

    Z[i, j] = 1 - L_j(theta_s') / L_j(theta_s)          (Fifty et al. 2021, eq. 1)

``Z[i, j] > 0``: a step for i lowers j's loss (positive transfer from i to j). The official
code divides by ``lr``; here that is the option ``divide_by_lr`` (default False, the paper's
equation), and every result records which one it holds.

Two implementations give the same numbers:

* :func:`lookahead_reference`: one perturbed copy of the trunk per source task, autograd for
  each task's gradient. Simple and slow (a backward and a forward per source task); kept as the
  ground truth for tests.
* :func:`lookahead_fast`: all source tasks at once, using the network's structure. With the
  masked loss, task i's gradient only flows through the rows of the batch labelled for i, so
  the per-sample backward signals ``delta_l[p]`` of every labelled pair ``p`` (one backward over
  the batch in total) give every task's gradient. The lookahead never forms those gradients:
  for the sparse first layer, ``X (W1 - lr G_i) + b - lr g_i = X W1 + b - lr (X X^T + 1)[:, R_i]
  delta_1[R_i]`` with the batch Gram matrix ``X X^T`` computed once from the set bits; deeper
  layers use ``h' (W - lr G_i)^T = h' W^T - lr (h' h[R_i]^T) delta[R_i]``. The perturbed
  forwards are batched over source tasks, and the loss change is propagated as a difference
  (``log1p(sigmoid * expm1(dz))``), so that float32 keeps its precision when ``lr`` is small.
  The heads are evaluated only at labelled pairs: per row, one GEMM with every source task
  as a column, over blocks of rows (the perturbed forward is row-local once the per-pair
  signals are known). When labels are sparse, the last hidden layer is not run per source at
  all: its change is the linear part (ReLU slopes of the unperturbed forward), a pair-space
  product, plus exact corrections at the few units whose pre-activation can change sign
  (found with a bound on the change); this is exact, not an approximation.

Cheap baselines from the same per-pair signals: the inner products of per-task trunk
gradients ``<g_i, g_j>``, their cosine similarity, and the first-order shortcut
``Z[i, j] ~ lr <g_i, g_j> / L_j`` (the lookahead's Taylor expansion), which needs no perturbed
forward at all.

Probes run in **eval mode** (no dropout): the official code probes in train mode, where every
probe forward draws a new dropout mask and Z mixes the lookahead with dropout noise; eval mode
makes Z a deterministic function of (parameters, batch), which is also what lets the fast and
the reference implementations agree to 1e-6. The training steps themselves use dropout.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from mtlc.errors import ConfigError
from mtlc.models import MultiTaskNet, SparseBatch, masked_bce, resolve_device

__all__ = [
    "ProbeResult",
    "TagResult",
    "lookahead_fast",
    "lookahead_reference",
    "gradient_affinity",
    "tag_train",
    "round_mantissa",
    "load_tag",
    "tag_jobs",
    "tag_matrix",
    "tag_results_from_store",
]


# --------------------------------------------------------------------------- per-batch probes
@dataclass
class ProbeResult:
    """Affinities measured on one batch.

    All matrices are ``(n_tasks, n_tasks)`` float64 numpy arrays indexed ``[source, target]``,
    NaN where undefined: a source task with no labelled pair in the batch (its gradient is zero,
    so there is no lookahead) or a target task with none (no loss to compare). A target whose
    batch loss is numerically zero (below ``tiny / eps`` of the dtype, about 1e-31 in float32:
    every labelled pair predicted with a logit beyond ~70) is undefined too: ``Z`` and the
    first-order ``Z`` are ratios 0/0 there (in float32 they came out as +-1e26), and its
    gradient's direction is lost to underflow (its cosine row and column are NaN).

    Attributes
    ----------
    Z: exact lookahead affinity ``1 - L_j(theta_s') / L_j(theta_s)`` (divided by ``lr`` when
        ``divide_by_lr``); None when only gradient baselines were asked for.
    inner: ``<g_i, g_j>`` of per-task trunk gradients (``g`` of the per-task mean loss).
    cosine: ``inner / sqrt(inner_ii inner_jj)``.
    first_order: ``lr * inner / L_j`` (divided by ``lr`` when ``divide_by_lr``).
    loss: ``(n_tasks,)`` per-task mean loss on the batch at the current parameters (NaN: no pair).
    n_pairs: ``(n_tasks,)`` labelled pairs per task in the batch.
    """

    Z: np.ndarray | None
    inner: np.ndarray | None
    cosine: np.ndarray | None
    first_order: np.ndarray | None
    loss: np.ndarray
    n_pairs: np.ndarray
    lr: float
    divide_by_lr: bool


def _as_tensors(
    model: MultiTaskNet, y: Any, mask: Any
) -> tuple[torch.Tensor, torch.Tensor, torch.dtype, torch.device]:
    p = model.head.weight
    y_t = torch.as_tensor(np.asarray(y) if not torch.is_tensor(y) else y)
    m_t = torch.as_tensor(np.asarray(mask) if not torch.is_tensor(mask) else mask)
    return y_t.to(p.device, p.dtype), m_t.to(p.device, p.dtype), p.dtype, p.device


def _check_shapes(
    model: MultiTaskNet, batch: SparseBatch, y: torch.Tensor, m: torch.Tensor
) -> None:
    want = (batch.size, model.n_tasks)
    if tuple(y.shape) != want or tuple(m.shape) != want:
        raise ConfigError(
            f"labels and mask must have shape (batch, n_tasks) = {want}; got {tuple(y.shape)} "
            f"and {tuple(m.shape)}"
        )


class _eval_mode:
    """Context manager: eval mode (no dropout) for probes, restoring the previous mode."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.model, self.was = model, model.training

    def __enter__(self) -> None:
        self.model.eval()

    def __exit__(self, *exc: object) -> None:
        self.model.train(self.was)


def zero_loss(dtype: torch.dtype) -> float:
    """Batch losses below this are numerically zero for TAG's ratio: ``tiny / eps`` of the
    dtype (float32 9.9e-32, float64 1.0e-292), where a sum of per-pair losses stops having full
    relative precision (subnormal numbers)."""
    fi = torch.finfo(dtype)
    return float(fi.tiny / fi.eps)


def _finish(
    Z: np.ndarray | None,
    inner: np.ndarray | None,
    loss: np.ndarray,
    n: np.ndarray,
    *,
    lr: float,
    divide_by_lr: bool,
    min_loss: float = 0.0,
) -> ProbeResult:
    valid = n > 0
    undefined = ~(valid[:, None] & valid[None, :])
    # a target with a numerically zero loss: 1 - L'/L is 0/0 (see ProbeResult)
    zero = valid & ~(loss >= min_loss) if min_loss > 0 else np.zeros_like(valid)
    cosine = first_order = None
    if inner is not None:
        inner = inner.copy()
        inner[undefined] = np.nan
        d = np.sqrt(np.clip(np.diag(inner), 0, None))
        with np.errstate(invalid="ignore", divide="ignore"):
            cosine = inner / np.outer(d, d)
            first_order = inner / loss[None, :] * (1.0 if divide_by_lr else lr)
        # A task whose gradient is exactly zero on this batch (all its logits saturated) has no
        # direction: its cosine is undefined.
        cosine[~np.isfinite(cosine)] = np.nan
        cosine[zero, :] = np.nan
        cosine[:, zero] = np.nan
        first_order[:, zero] = np.nan
    if Z is not None:
        Z = Z.copy()
        Z[undefined] = np.nan
        Z[:, zero] = np.nan
        if divide_by_lr:
            Z = Z / lr
    return ProbeResult(Z, inner, cosine, first_order, loss, n, float(lr), bool(divide_by_lr))


def lookahead_reference(
    model: MultiTaskNet,
    batch: SparseBatch,
    y: Any,
    mask: Any,
    *,
    lr: float,
    divide_by_lr: bool = False,
) -> ProbeResult:
    """Straightforward TAG lookahead: a perturbed trunk per source task, autograd gradients.

    ``y``, ``mask``: ``(batch, n_tasks)`` labels (0/1) and labelled-pair mask. ``lr``: the
    lookahead step size. Probes in eval mode (no dropout). Costs one forward, then per source
    task one backward and one forward. Also returns the per-task gradient inner products
    (from flattened autograd gradients) for testing the fast ones.
    """
    y_t, m_t, dtype, _ = _as_tensors(model, y, mask)
    _check_shapes(model, batch, y_t, m_t)
    K = model.n_tasks
    n = m_t.sum(0).detach().cpu().numpy().astype(np.int64)
    params = dict(model.named_parameters())
    trunk = model.trunk_parameters()
    names = {id(p): k for k, p in params.items()}
    Z = np.full((K, K), np.nan)
    grads: list[torch.Tensor | None] = [None] * K
    with _eval_mode(model):
        per = masked_bce(model(batch), y_t, m_t, per_task=True)
        base = per.detach()
        for i in range(K):
            if n[i] == 0:
                continue
            g = torch.autograd.grad(per[i], trunk, retain_graph=True)
            grads[i] = torch.cat([t.reshape(-1) for t in g]).detach()
            new = dict(params)
            for p, gp in zip(trunk, g, strict=True):
                new[names[id(p)]] = (p - lr * gp).detach()
            with torch.no_grad():
                logits = torch.func.functional_call(model, new, (batch,))
                after = masked_bce(logits, y_t, m_t, per_task=True)
            Z[i] = (1 - after / base).cpu().numpy()
    inner = np.full((K, K), np.nan)
    valid = [i for i in range(K) if grads[i] is not None]
    if valid:
        G = torch.stack([grads[i] for i in valid])  # type: ignore[misc]
        inner[np.ix_(valid, valid)] = (G @ G.T).cpu().numpy()
    loss = np.where(n > 0, base.cpu().numpy(), np.nan)
    return _finish(
        Z,
        inner,
        loss.astype(np.float64),
        n,
        lr=lr,
        divide_by_lr=divide_by_lr,
        min_loss=zero_loss(dtype),
    )


def _dense_rows(batch: SparseBatch, n_features: int, dtype: torch.dtype) -> torch.Tensor:
    """Dense ``(batch, n_features)`` counts (repeated indices add up, like EmbeddingBag sum)."""
    dev = batch.indices.device
    counts = torch.diff(
        torch.cat([batch.offsets, torch.tensor([batch.indices.numel()], device=dev)])
    )
    row = torch.repeat_interleave(torch.arange(batch.size, device=dev), counts)
    X = torch.zeros(batch.size, n_features, dtype=dtype, device=dev)
    X.index_put_((row, batch.indices), torch.ones_like(row, dtype=dtype), accumulate=True)
    return X


def _row_pairs(
    bp: torch.Tensor, kp: torch.Tensor, B: int, K: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pairs grouped by row: ``per_row`` ``(B,)``, ``pair_of`` ``(B, t_max)`` (slot t of row b
    holds pair ``pair_of[b, t]`` in task order, padding ``P``), and the row-sorted ``order``,
    its rows ``b_sorted`` and slots ``slot``."""
    P = int(bp.numel())
    per_row = torch.bincount(bp, minlength=B)
    t_max = max(int(per_row.max()) if P else 0, 1)
    order = torch.argsort(bp * K + kp)  # row-sorted position -> task-sorted pair index
    b_sorted = bp[order]
    row_start = torch.cumsum(per_row, 0) - per_row
    slot = torch.arange(P, device=bp.device) - row_start[b_sorted]
    pair_of = torch.full((B, t_max), P, dtype=torch.long, device=bp.device)
    pair_of[b_sorted, slot] = order
    return per_row, pair_of, order, b_sorted, slot


def _take_rows(batch: SparseBatch, rows: torch.Tensor) -> SparseBatch:
    """Rows ``rows`` of a ``SparseBatch``, in that order."""
    dev = batch.indices.device
    ends = torch.cat([batch.offsets[1:], torch.tensor([batch.indices.numel()], device=dev)])
    starts = batch.offsets[rows]
    cnt = (ends - batch.offsets)[rows]
    new_off = torch.cumsum(cnt, 0) - cnt
    total = int(cnt.sum())
    idx = torch.repeat_interleave(starts - new_off, cnt) + torch.arange(total, device=dev)
    return SparseBatch(batch.indices[idx], new_off)


def _gradient_inner(
    h_list: list[torch.Tensor],
    d_ext: list[torch.Tensor],
    M1: torch.Tensor,
    bp: torch.Tensor,
    kp: torch.Tensor,
    n_t: torch.Tensor,
) -> np.ndarray:
    """``<g_i, g_j>`` over all trunk parameters, ``(K, K)``, from the per-pair signals.

    With ``M_1 = X X^T + 1`` and ``M_l = h_{l-1} h_{l-1}^T + 1`` (``+ 1``: the bias),
    ``<g_i, g_j> = sum_l sum_{p in i, q in j} M_l[b_p, b_q] <delta_l[p], delta_l[q]>``.
    Two equivalent evaluations; the cheaper one is used: in pair space (a ``(P, P)`` Gram,
    cost ``P^2 H``: sparse labels) or in row space (:func:`_inner_by_rows`, cost
    ``(B + K) P H``: dense labels). The single pair-space GEMM runs several times faster per
    operation than the row-space blocks, hence the factor 4 in the choice.
    """
    dtype, dev = M1.dtype, M1.device
    K, B, P = int(n_t.numel()), int(M1.shape[0]), int(bp.numel())
    deltas = [d[:P] for d in d_ext]  # d_ext: (P + 1, H) per-pair signals, last row 0
    Ms = [M1] + [h @ h.T + 1.0 for h in h_list[:-1]]
    src = torch.nonzero(n_t > 0).flatten()
    Ks = int(src.numel())
    if P <= 4 * (B + Ks):
        G = torch.zeros(P, P, dtype=dtype, device=dev)
        for M, d in zip(Ms, deltas, strict=True):
            G += M[bp][:, bp] * (d @ d.T)
        A = torch.zeros(K, P, dtype=dtype, device=dev).index_add_(0, kp, G)
        return (
            torch.zeros(K, K, dtype=dtype, device=dev).index_add_(1, kp, A).double().cpu().numpy()
        )
    # row space: Q_i = M D_i (D_i: task i's pair signals at their rows), contracted with the
    # pair signals of every target task at its labelled rows, block of rows by block of rows
    n_long = n_t.long()
    perm = torch.argsort(n_long[src], descending=True, stable=True)
    src_sorted = src[perm]
    counts = n_long[src_sorted]
    r_max = int(counts.max())
    start = torch.cumsum(n_long, 0) - n_long
    ar = torch.arange(r_max, device=dev)
    pidx = start[src_sorted][:, None] + ar[None, :]
    pidx = torch.where(ar[None, :] < counts[:, None], pidx, torch.full_like(pidx, P))
    rows_pad = torch.cat([bp, bp.new_zeros(1)])[pidx]
    per_row, pair_of, *_ = _row_pairs(bp, kp, B, K)
    buckets, row_slot, slots, task = _slot_layout(per_row, pair_of, kp, K)
    out = np.zeros((K, K))
    out[src_sorted.cpu().numpy()] = (
        _inner_by_rows(
            Ms,
            d_ext,
            buckets=buckets,
            row_slot=row_slot,
            slots=slots,
            task=task,
            K=K,
            pidx=pidx,
            rows_pad=rows_pad,
            counts=counts,
            group=_GROUP,
        )
        .double()
        .cpu()
        .numpy()
    )
    return out


def _inner_by_rows(
    Ms: list[torch.Tensor],
    d_ext: list[torch.Tensor],
    *,
    buckets: list[tuple[int, int, int, int]],
    row_slot: np.ndarray,
    slots: torch.Tensor,
    task: torch.Tensor,
    K: int,
    pidx: torch.Tensor,
    rows_pad: torch.Tensor,
    counts: torch.Tensor,
    group: int,
) -> torch.Tensor:
    """``<g_i, g_j>`` ``(S, K)`` for the sources of ``pidx`` (as in :func:`_dense_by_rows`).

    ``sum_l sum_{q in j} <Q_{l,i}[b_q], delta_l[q]>`` with ``Q_{l,i} = M_l[:, R_i]
    delta_l[R_i]``: the first-layer product of the lookahead without the step and the ReLU,
    and a pair head whose rows are the target pairs' own signals. Cost per layer
    ``(B + S) P H`` instead of the ``S^2 B H`` of whole per-task row sums.
    """
    M1 = Ms[0]
    dtype, dev = M1.dtype, M1.device
    S = int(pidx.shape[0])
    widths = [d.shape[1] for d in d_ext]
    counts_np = counts.cpu().numpy()
    groups = [(g0, min(S, g0 + group), max(int(counts_np[g0]), 1)) for g0 in range(0, S, group)]
    rows_g = [rows_pad[g0:g1, :r] for g0, g1, r in groups]
    D_g = [[d[pidx[g0:g1, :r]] for d in d_ext] for g0, g1, r in groups]
    B_act = buckets[-1][1] if buckets else 0
    nb = max(1, _BLOCK_FLOATS // (S * max(widths)))
    blocks = [(b0, min(B_act, b0 + nb)) for b0 in range(0, B_act, nb)]
    buf = torch.empty(S * min(nb, B_act) * max(widths), dtype=dtype, device=dev)
    max_slots = max((int(row_slot[b1] - row_slot[b0]) for b0, b1 in blocks), default=0)
    dz_buf = torch.empty(max_slots * S, dtype=dtype, device=dev)
    d_buf = torch.empty(max_slots * max(widths), dtype=dtype, device=dev)
    acc = torch.zeros(K + 1, S, dtype=dtype, device=dev)
    for b0, b1 in blocks:
        n = b1 - b0
        s0, s1 = int(row_slot[b0]), int(row_slot[b1])
        dz = dz_buf[: (s1 - s0) * S].view(s1 - s0, S)
        for li, (M, H) in enumerate(zip(Ms, widths, strict=True)):
            Q = buf[: S * n * H].view(S, n, H)
            Mb = M[:, b0:b1]
            for (g0, g1, _), rg, Dl in zip(groups, rows_g, D_g, strict=True):
                torch.bmm(Mb[rg].transpose(1, 2), Dl[li], out=Q[g0:g1])
            Db = d_buf[: (s1 - s0) * H].view(s1 - s0, H)
            torch.index_select(d_ext[li], 0, slots[s0:s1], out=Db)  # padding: the zero row P
            for bk0, bk1, t, off in buckets:
                lo, hi = max(bk0, b0), min(bk1, b1)
                if lo >= hi:
                    continue
                o, m = off + (lo - bk0) * t, hi - lo
                torch.bmm(
                    Db[o - s0 : o - s0 + m * t].view(m, t, H),
                    Q[:, lo - b0 : hi - b0, :].permute(1, 2, 0),
                    out=dz[o - s0 : o - s0 + m * t].view(m, t, S),
                )
            acc.index_add_(0, task[s0:s1], dz)
    return acc[:K].T


def _exact_lookahead(
    model: MultiTaskNet,
    a_list: list[torch.Tensor],
    h_list: list[torch.Tensor],
    d_ext: list[torch.Tensor],
    M1: torch.Tensor,
    z: torch.Tensor,
    y: torch.Tensor,
    n_t: torch.Tensor,
    bp: torch.Tensor,
    kp: torch.Tensor,
    src: torch.Tensor,
    lr: float,
    chunk: int,
    path: str = "auto",
    max_candidates: float = 0.02,
) -> np.ndarray:
    """Exact Z rows ``(len(src), K)`` for the source tasks ``src`` (see :func:`lookahead_fast`).

    Everything is propagated as a change relative to the unperturbed forward (``da``, ``dh``,
    ``dz``, loss change), which keeps float32 precise when ``lr`` is small.

    Two exact evaluations of the logit change ``dz`` at the labelled pairs:

    * ``"dense"``: every hidden layer's change materialized for every source, ``(C, B, H)``.
    * ``"linear"``: layers below the last materialized as above; the last hidden layer is
      written as its linear part (ReLU slopes of the unperturbed forward) plus corrections at
      the units whose pre-activation changes sign. The linear part is a pair-space product
      (``(P, P)`` matrices, cheap when labels are sparse); sign changes can only occur where
      ``|a| <= max |da|``, which a cheap bound on ``|da|`` narrows to a few candidate units,
      where the change is recomputed exactly. A chunk with more than ``max_candidates`` (a
      fraction of its units) falls back to ``"dense"``.
    ``"auto"`` picks ``"linear"`` when its pair-space products are the cheaper.
    """
    dtype, dev = z.dtype, z.device
    B, K = z.shape
    P = int(bp.numel())
    L = len(h_list)
    S = int(src.numel())
    # Sources in decreasing order of labelled rows, so that a chunk pads its pair lists only to
    # its own longest (bucketing: matters when labels are dense and uneven).
    n_long = n_t.long()
    perm = torch.argsort(n_long[src], descending=True, stable=True)
    src = src[perm]
    perm_np = perm.cpu().numpy()
    # Padded per-source pair lists (S, r_max); padding points at an extra all-zero pair P.
    counts = n_long[src]
    r_max = int(counts.max())
    start = torch.cumsum(n_long, 0) - n_long
    ar = torch.arange(r_max, device=dev)
    pidx = start[src][:, None] + ar[None, :]
    pidx = torch.where(ar[None, :] < counts[:, None], pidx, torch.full_like(pidx, P))
    rows_pad = torch.cat([bp, bp.new_zeros(1)])[pidx]  # (S, r_max)
    deltas = [d[:P] for d in d_ext]  # d_ext: (P + 1, H) per-pair signals, last row 0
    # relu(a + da) - relu(a) = max(da, -a) + min(a, 0): exact (= da) while a stays positive.
    neg_a = [-a for a in a_list]
    a_min0 = [a.clamp(max=0) for a in a_list]
    # Pairs grouped by row: slot t of row b holds pair pair_of[b, t] (task order), pad -> P.
    per_row, pair_of, order, b_sorted, slot = _row_pairs(bp, kp, B, K)
    t_max = pair_of.shape[1]
    inv_order = torch.argsort(order)
    Wh = model.head.weight
    H_L = Wh.shape[1]

    def by_rows(V: torch.Tensor) -> torch.Tensor:
        """(P, H) per-pair vectors -> (B, H, t_max) row-grouped, zero padded."""
        out = torch.zeros(B, t_max, V.shape[1], dtype=dtype, device=dev)
        out[b_sorted, slot] = V[order]
        return out.transpose(1, 2)

    def rows_to_pairs(R: torch.Tensor) -> torch.Tensor:
        """(B, C, t_max) row-grouped values -> (C, P) in task order."""
        return R[b_sorted, :, slot].T[:, inv_order]

    # Per-pair loss pieces (task order): bce(z+dz) - bce(z) = log1p(sig(-s z) expm1(-s dz))
    yp, zp = y[bp, kp], z[bp, kp]
    sgn = (2 * yp - 1)[None]
    sig_neg = torch.sigmoid(-sgn * zp[None])
    base = torch.zeros(K, dtype=dtype, device=dev)
    base.index_add_(0, kp, F.binary_cross_entropy_with_logits(zp, yp, reduction="none"))
    base = base.clamp_min(torch.finfo(dtype).tiny)

    last = L - 1
    pos_last = (a_list[last] > 0).to(dtype)
    H_below = h_list[last - 1].shape[1] if L > 1 else 0
    if path == "auto":
        if L == 1:  # small bmm + elementwise passes vs one (P, P, H) GEMM (about 4x faster)
            linear = P * P < 4 * S * B * (r_max + 8)
        else:  # the last layer's dense forward per source vs the pair-space products
            linear = P * P * H_L + P * H_below * H_L < S * B * H_below * H_L
        path = "linear" if linear else "dense"
    if path not in ("linear", "dense"):
        raise ConfigError(f"path must be 'auto', 'linear' or 'dense', got {path!r}")
    if path == "linear":
        V = Wh[kp] * pos_last[bp]  # (P, H_L): head row through the unperturbed ReLU slopes
        # (P+1, P): VD_ext[q, p] = <V[p], delta_L[q]>, row P = 0 (padding)
        VD_ext = torch.cat([deltas[last] @ V.T, V.new_zeros(1, P)], 0)
        dmax = torch.cat([deltas[last].abs().amax(1), deltas[last].new_zeros(1)])  # (P+1,)
        U, wmax = None, 0.0
        if L > 1:
            W_L = model.layers[last - 1].weight  # (H_L, H_{L-1})
            U = by_rows(V @ W_L)  # (B, H_{L-1}, t_max)
            wmax = float(W_L.norm(dim=1).max())
        a_abs_sorted, a_abs_idx = a_list[last].abs().sort(dim=1)
        kp_ext = torch.cat([kp, kp.new_zeros(1)])

    out = np.empty((S, K))
    if path == "dense":
        head = _pair_head_tables(Wh, y, z, bp, kp, pair_of, per_row)
        dL = _dense_by_rows(
            model,
            a_list,
            h_list,
            d_ext,
            M1,
            head,
            K=K,
            pidx=pidx,
            rows_pad=rows_pad,
            counts=counts,
            lr=lr,
            group=_GROUP,
        )
        out[perm_np] = (-dL / base).double().cpu().numpy()
        return out
    # ---- "linear": the layers below the last materialized per chunk of sources
    n_full = L - 1
    M1s = M1 * -lr  # first-layer Gram pre-scaled by -lr (saves a pass per chunk)
    if L == 1:
        # nothing of size (chunk, B, H) is formed: take all sources at once if memory allows
        chunk = max(chunk, min(S, int(5e7 // max(1, r_max * (P + B)))))
    # (B, B) Gram matrices of the hidden layers (+1: the bias), for the deeper lookahead terms
    Hgs = [h @ h.T + 1.0 for h in h_list[:-1]]
    if L > 1:
        hb = h_list[last - 1]
        Hg = Hgs[last - 1]
    # Reused buffers: fresh (chunk, B, H) tensors every chunk cost more in page faults than
    # the arithmetic that fills them.
    c_max = min(chunk, S)
    buf_da = [torch.empty(c_max, B, h.shape[1], dtype=dtype, device=dev) for h in h_list[:n_full]]
    for c0 in range(0, S, chunk):
        sl = slice(c0, c0 + chunk)
        r_c = int(counts[c0])  # the chunk's longest pair list (sources sorted by count)
        pi, rp = pidx[sl, :r_c], rows_pad[sl, :r_c]
        C = int(pi.shape[0])
        rows_out = perm_np[sl]
        dh: torch.Tensor | None = None
        for li in range(n_full):
            da = buf_da[li][:C]
            if li == 0:
                # first layer: da1 = -lr (X X^T + 1)[:, R_i] delta_1[R_i]  (M1 is symmetric)
                torch.bmm(M1s[rp].transpose(1, 2), d_ext[0][pi], out=da)
            else:
                # h' (W - lr G_i)^T + b - lr g_i = h' W^T + b - lr (h' h[R_i]^T + 1) delta[R_i]
                W = model.layers[li - 1].weight
                hb_l = h_list[li - 1]
                Tt_l = torch.baddbmm(Hgs[li - 1][rp], hb_l[rp], dh.transpose(1, 2))  # (C, r, B)
                torch.matmul(dh, W.T, out=da)
                da.baddbmm_(Tt_l.transpose(1, 2), d_ext[li][pi], alpha=-lr)
            dh = torch.maximum(da, neg_a[li], out=da).add_(a_min0[li])  # in place
        # coefficients of the last layer's lookahead term, (C, r_max, B) layout
        if L == 1:
            Tt = M1[rp]
        else:
            Tt = torch.baddbmm(Hg[rp], hb[rp], dh.transpose(1, 2))
        dz = _linear_last_layer(
            model,
            a_list[last],
            d_ext[last],
            pidx=pi,
            Tt=Tt,
            dh=dh,
            VD_ext=VD_ext,
            dmax=dmax,
            U=U,
            wmax=wmax,
            a_abs_sorted=a_abs_sorted,
            a_abs_idx=a_abs_idx,
            pair_of=pair_of,
            kp_ext=kp_ext,
            rows_to_pairs=rows_to_pairs,
            lr=lr,
            bp=bp,
            max_candidates=max_candidates,
        )
        if dz is None:  # too many sign-change candidates: exact dense evaluation
            out[rows_out] = _exact_lookahead(
                model,
                a_list,
                h_list,
                d_ext,
                M1,
                z,
                y,
                n_t,
                bp,
                kp,
                src[sl],
                lr,
                chunk,
                path="dense",
            )
            continue
        dl = torch.log1p(sig_neg * torch.expm1(-sgn * dz))
        dL = torch.zeros(C, K, dtype=dtype, device=dev).index_add_(1, kp, dl)
        # Z = 1 - L'/L = -(L' - L)/L, both per-task means over the same n_j pairs
        out[rows_out] = (-dL / base).double().cpu().numpy()
    return out


# Floats per (sources, rows, H) block buffer of the dense path (32 MB in float32); tests lower
# it to force several row blocks.
_BLOCK_FLOATS = 1 << 23
# Sources per group in the dense path's Gram terms (groups pad pair lists to their longest).
_GROUP = 8


@dataclass
class _PairHead:
    """Labelled pairs laid out row by row for the head, rows in buckets of similar pair count.

    Bucket ``(b0, b1, t, off)``: rows ``b0:b1``, each padded to ``t`` slots, at ``off`` in the
    flat slot order; ``row_slot`` ``(B + 1,)``: first slot of every row (rows without pairs
    have none). Buckets are fewest when rows come sorted by decreasing pair count, but any
    order is correct. ``W_ext`` ``(K + 1, H)``: the head weights and a zero row (padding).
    Per slot: ``slots`` its pair (``P`` for padding), ``task`` its task (``K`` for padding),
    ``neg_sgn = 1 - 2 y`` (0 for padding, which makes the slot's loss change exactly 0) and
    ``sig_neg = sigmoid(-sgn z)`` at the unperturbed logit.
    """

    buckets: list[tuple[int, int, int, int]]
    row_slot: np.ndarray
    slots: torch.Tensor
    W_ext: torch.Tensor
    task: torch.Tensor
    neg_sgn: torch.Tensor
    sig_neg: torch.Tensor


def _pair_head_tables(
    Wh: torch.Tensor,
    y: torch.Tensor,
    z: torch.Tensor,
    bp: torch.Tensor,
    kp: torch.Tensor,
    pair_of: torch.Tensor,
    per_row: torch.Tensor,
    *,
    slack: float = 0.8,
) -> _PairHead:
    """Build :class:`_PairHead` (``per_row``: labelled pairs per row)."""
    K, H = Wh.shape
    buckets, row_slot, slots, task = _slot_layout(per_row, pair_of, kp, K, slack=slack)
    real = task < K
    safe = torch.where(real, slots, torch.zeros_like(slots))
    W_ext = torch.cat([Wh, Wh.new_zeros(1, H)])  # row K: padding
    yp, zp = y[bp[safe], kp[safe]], z[bp[safe], kp[safe]]
    sgn = torch.where(real, 2 * yp - 1, torch.zeros_like(yp))
    sig_neg = torch.where(real, torch.sigmoid(-sgn * zp), torch.zeros_like(zp))
    return _PairHead(buckets, row_slot, slots, W_ext, task, -sgn[:, None], sig_neg[:, None])


def _slot_layout(
    per_row: torch.Tensor,
    pair_of: torch.Tensor,
    kp: torch.Tensor,
    K: int,
    *,
    slack: float = 0.8,
) -> tuple[list[tuple[int, int, int, int]], np.ndarray, torch.Tensor, torch.Tensor]:
    """Row buckets, first slot per row, pair per slot (``P``: padding), task per slot (``K``)."""
    P = int(kp.numel())
    counts = per_row.cpu().numpy()
    B = len(counts)
    buckets: list[tuple[int, int, int, int]] = []
    row_slot = np.zeros(B + 1, dtype=np.int64)
    b0, off = 0, 0
    while b0 < B:
        t = int(counts[b0])
        if t == 0:  # a row without pairs: no slots
            row_slot[b0 + 1] = off
            b0 += 1
            continue
        # a bucket pads its rows to its first one; close it at a longer row or at one shorter
        # than slack * t (padding would exceed 1/slack - 1 of a row's pairs)
        b1 = b0 + 1
        while b1 < B and slack * t <= counts[b1] <= t:
            b1 += 1
        buckets.append((b0, b1, t, off))
        row_slot[b0 + 1 : b1 + 1] = off + t * np.arange(1, b1 - b0 + 1)
        off += (b1 - b0) * t
        b0 = b1
    slots = (
        torch.cat([pair_of[a:b, :t].reshape(-1) for a, b, t, _ in buckets])
        if buckets
        else pair_of.new_zeros(0)
    )
    real = slots < P
    task = torch.where(real, kp[torch.where(real, slots, 0)], torch.full_like(slots, K))
    return buckets, row_slot, slots, task


def _dense_by_rows(
    model: MultiTaskNet,
    a_list: list[torch.Tensor],
    h_list: list[torch.Tensor],
    d_ext: list[torch.Tensor],
    M1: torch.Tensor,
    head: _PairHead,
    *,
    K: int,
    pidx: torch.Tensor,
    rows_pad: torch.Tensor,
    counts: torch.Tensor,
    lr: float,
    group: int,
) -> torch.Tensor:
    """Summed loss change ``(S, K)`` of every target for every source (the "dense" path).

    Sources in the order of ``pidx`` (``(S, r_max)`` padded pair lists, sorted by decreasing
    ``counts``; ``rows_pad`` their rows). Once the per-pair signals are known, the perturbed
    forward is row-local, so it runs over blocks of rows with **all** sources at once: per
    block and layer one ``(S, rows, H)`` buffer of about ``_BLOCK_FLOATS`` floats, and the
    head product of a row takes every source as a GEMM column. In the Gram terms, sources go
    in groups of ``group`` that pad their pair lists only to their own longest. Rows without
    labelled pairs are skipped (no target loss reads them). Rows must be sorted by
    decreasing pair count (``head`` is built that way).
    """
    dtype, dev = M1.dtype, M1.device
    S, L = int(pidx.shape[0]), len(h_list)
    counts_np = counts.cpu().numpy()
    groups = []
    for g0 in range(0, S, group):
        g1 = min(S, g0 + group)
        groups.append((g0, g1, max(int(counts_np[g0]), 1)))
    # pre-gathered per group, reused by every row block: pair signals (Cg, r, H_l), pair rows,
    # and the hidden activations at those rows for the deeper Gram terms
    rows_g = [rows_pad[g0:g1, :r] for g0, g1, r in groups]
    D_g = [[d[pidx[g0:g1, :r]] for d in d_ext] for g0, g1, r in groups]
    Hrow_g = [[h[rg] for h in h_list[:-1]] for rg in rows_g]
    M1s = M1 * -lr
    Hgs = [h @ h.T + 1.0 for h in h_list[:-1]]
    neg_a = [-a for a in a_list]
    a_min0 = [a.clamp(max=0) for a in a_list]
    # rows after the last bucket have no pairs: never processed
    B_act = head.buckets[-1][1] if head.buckets else 0
    row_slot = head.row_slot
    widths = [a.shape[1] for a in a_list]
    nb = max(1, _BLOCK_FLOATS // (S * max(widths)))
    blocks = [(b0, min(B_act, b0 + nb)) for b0 in range(0, B_act, nb)]
    bufs = [torch.empty(S * min(nb, B_act) * w, dtype=dtype, device=dev) for w in widths]
    max_slots = max((int(row_slot[b1] - row_slot[b0]) for b0, b1 in blocks), default=0)
    dz_buf = torch.empty(max_slots * S, dtype=dtype, device=dev)
    # head rows of the block's slots, gathered per block (a (slots, H) table for the whole
    # batch would be a large fresh allocation: page faults)
    w_buf = torch.empty(max_slots * widths[-1], dtype=dtype, device=dev)
    dL = torch.zeros(K + 1, S, dtype=dtype, device=dev)
    H_L = widths[-1]
    for b0, b1 in blocks:
        n = b1 - b0
        dh = torch.empty(0)
        for li in range(L):
            H = widths[li]
            da = bufs[li][: S * n * H].view(S, n, H)
            if li == 0:
                # da1[i, b] = -lr sum_{q in R_i} (X X^T + 1)[b, b_q] delta_1[q]  (M1 symmetric)
                Mb = M1s[:, b0:b1]
                for (g0, g1, _), rg, Dl in zip(groups, rows_g, D_g, strict=True):
                    torch.bmm(Mb[rg].transpose(1, 2), Dl[0], out=da[g0:g1])
            else:
                # h' (W - lr G_i)^T + b - lr g_i - (h W^T + b)
                #   = dh W^T - lr (h'[b] . h[b_q] + 1) delta[q], summed over q in R_i
                W = model.layers[li - 1].weight
                torch.matmul(dh.view(S * n, -1), W.T, out=da.view(S * n, H))
                Hb = Hgs[li - 1][:, b0:b1]
                for gi, ((g0, g1, _), rg, Dl) in enumerate(zip(groups, rows_g, D_g, strict=True)):
                    Tt = torch.baddbmm(
                        Hb[rg].transpose(1, 2), dh[g0:g1], Hrow_g[gi][li - 1].transpose(1, 2)
                    )  # (Cg, n, r)
                    da[g0:g1].baddbmm_(Tt, Dl[li], alpha=-lr)
            # relu(a + da) - relu(a), in place
            dh = torch.maximum(da, neg_a[li][b0:b1], out=da).add_(a_min0[li][b0:b1])
        # head at the block's labelled pairs, every source a column
        s0, s1 = int(row_slot[b0]), int(row_slot[b1])
        dz = dz_buf[: (s1 - s0) * S].view(s1 - s0, S)
        Wb = w_buf[: (s1 - s0) * H_L].view(s1 - s0, H_L)
        torch.index_select(head.W_ext, 0, head.task[s0:s1], out=Wb)
        for bk0, bk1, t, off in head.buckets:
            lo, hi = max(bk0, b0), min(bk1, b1)
            if lo >= hi:
                continue
            o = off + (lo - bk0) * t
            m = hi - lo
            torch.bmm(
                Wb[o - s0 : o - s0 + m * t].view(m, t, H_L),
                dh[:, lo - b0 : hi - b0, :].permute(1, 2, 0),
                out=dz[o - s0 : o - s0 + m * t].view(m, t, S),
            )
        dl = dz.mul_(head.neg_sgn[s0:s1]).expm1_().mul_(head.sig_neg[s0:s1]).log1p_()
        dL.index_add_(0, head.task[s0:s1], dl)
    return dL[:K].T


def _linear_last_layer(
    model: MultiTaskNet,
    a_last: torch.Tensor,
    d_last: torch.Tensor,
    *,
    pidx: torch.Tensor,
    Tt: torch.Tensor,
    dh: torch.Tensor | None,
    VD_ext: torch.Tensor,
    dmax: torch.Tensor,
    U: torch.Tensor | None,
    wmax: float,
    a_abs_sorted: torch.Tensor,
    a_abs_idx: torch.Tensor,
    pair_of: torch.Tensor,
    kp_ext: torch.Tensor,
    rows_to_pairs: Any,
    lr: float,
    bp: torch.Tensor,
    max_candidates: float,
) -> torch.Tensor | None:
    """Logit change ``(C, P)`` at the labelled pairs, last hidden layer linearized + corrected.

    ``Tt``: ``(C, r_max, B)`` coefficients of the last layer's lookahead term
    (``M1[:, R_i]`` for one layer, ``h'_{L-1} h_{L-1}[R_i]^T + 1`` otherwise); ``dh``: the
    change of the layer below (None for one layer); ``d_last``: the last layer's per-pair
    signals with a zero row appended (index P). Returns None when more than
    ``max_candidates`` of the chunk's units could change sign.
    """
    dev = Tt.device
    C, _, B = Tt.shape
    P = VD_ext.shape[1]
    H = a_last.shape[1]
    Wh = model.head.weight
    # linear part: V[p] . da_i[b_p] = dh_i[b_p] . U[p] - lr sum_q T_i[b_p, q] <V[p], delta[q]>
    dz = (Tt[:, :, bp] * VD_ext[pidx]).sum(1).mul_(-lr)  # (C, P)
    if dh is not None:
        dz += rows_to_pairs(torch.einsum("cbh,bht->bct", dh, U))
    # bound on max_h |da_i[b, h]| per (source, row); a unit can flip only if |a| <= bound
    beta = lr * (Tt.abs() * dmax[pidx][:, :, None]).sum(1)  # (C, B)
    if dh is not None:
        beta += dh.norm(dim=2) * wmax
    beta = beta * (1 + 1e-3) + 1e-30
    n_cand = torch.searchsorted(a_abs_sorted, beta.T.contiguous(), right=True).T  # (C, B)
    total = int(n_cand.sum())
    if total > max_candidates * C * B * H:
        return None
    if total == 0:
        return dz
    flat = n_cand.reshape(-1)
    owner = torch.repeat_interleave(torch.arange(C * B, device=dev), flat)
    first = torch.cumsum(flat, 0) - flat
    j = torch.arange(total, device=dev) - first[owner]
    ci, b = owner // B, owner % B
    h = a_abs_idx[b, j]
    # exact pre-activation change at the candidate units
    da = -lr * (Tt[ci, :, b] * d_last[pidx[ci], h[:, None]]).sum(-1)
    if dh is not None:
        da += (dh[ci, b, :] * model.layers[-1].weight[h]).sum(-1)
    a = a_last[b, h]
    moved = a + da
    # true change minus linear part: only where the sign flips
    corr = torch.where(
        a > 0,
        torch.where(moved <= 0, -moved, torch.zeros_like(a)),
        torch.where(moved > 0, moved, torch.zeros_like(a)),
    )
    nz = corr != 0
    if not bool(nz.any()):
        return dz
    ci, b, h, corr = ci[nz], b[nz], h[nz], corr[nz]
    tgt = pair_of[b]  # (N, t_max) pairs at row b, pad = P
    vals = Wh[kp_ext[tgt], h[:, None]] * corr[:, None]
    vals = torch.where(tgt < P, vals, torch.zeros_like(vals))
    dz_ext = torch.cat([dz, dz.new_zeros(C, 1)], 1)
    dz_ext.index_put_((ci[:, None].expand_as(tgt), tgt), vals, accumulate=True)
    return dz_ext[:, :P]


def lookahead_fast(
    model: MultiTaskNet,
    batch: SparseBatch,
    y: Any,
    mask: Any,
    *,
    lr: float,
    divide_by_lr: bool = False,
    exact: bool = True,
    gradients: bool = True,
    chunk: int = 16,
    path: str = "auto",
    max_candidates: float = 0.02,
) -> ProbeResult:
    """All-source-task TAG lookahead in one batched pass (same numbers as the reference).

    Parameters
    ----------
    model: the network (any depth of trunk); probed in eval mode, parameters untouched.
    batch: ``SparseBatch`` of ``B`` compounds; ``y``, ``mask``: ``(B, n_tasks)``.
    lr: lookahead step size.
    exact: compute the exact lookahead Z (the perturbed forwards, the expensive part).
    gradients: compute the gradient inner products, cosine similarity and first-order Z
        (cost per layer: a ``(P, P)`` Gram matrix, ``P`` = labelled pairs in the batch, when
        labels are sparse, else ``(B + K) P H`` in row blocks).
    chunk: source tasks per vectorized block of the "linear" path (bounds its memory at about
        ``chunk * B * max(hidden)`` floats). The "dense" path and the row-space gradient
        products work in blocks of rows with every source at once, in buffers of about 32 MB.
    path: how the last hidden layer is evaluated: "dense" (every layer's change materialized
        per source and row block, the head evaluated at the labelled pairs only), "linear"
        (linear part in pair space plus exact corrections where a unit changes sign) or
        "auto" (the cheaper: "linear" when labels are sparse); all exact.
    max_candidates: "linear" falls back to "dense" for a chunk when more than this fraction
        of its units could change sign (large ``lr``).

    Cost: one forward, one backward restricted to the labelled pairs, and (``exact``) per source
    task a ``(B, r_i)`` matmul for the first layer (``r_i``: labelled rows of task i) and a
    batched forward of the layers above it, except the last hidden layer on the "linear" path;
    heads are evaluated only at labelled pairs (``S P H`` for all ``S`` sources, as one GEMM
    per row with the sources as columns). Rows are processed in decreasing order of their
    labelled pairs (every result is a sum over rows; only float rounding depends on the order).
    """
    y_t, m_t, dtype, dev = _as_tensors(model, y, mask)
    _check_shapes(model, batch, y_t, m_t)
    K = model.n_tasks
    # Rows in decreasing order of labelled pairs (every result is a sum over rows, so the
    # order is free): the pair head then takes contiguous row blocks of similar pair count.
    order = torch.argsort(m_t.sum(1), descending=True, stable=True)
    batch, y_t, m_t = _take_rows(batch, order), y_t[order], m_t[order]
    n_t = m_t.sum(0)
    n = n_t.detach().cpu().numpy().astype(np.int64)
    with torch.no_grad(), _eval_mode(model):
        # ---- forward, keeping pre-activations
        a_list = [model.embed(batch.indices, batch.offsets) + model.bias0]
        h_list = [F.relu(a_list[0])]
        for layer in model.layers:
            a_list.append(layer(h_list[-1]))
            h_list.append(F.relu(a_list[-1]))
        Wh, bh = model.head.weight, model.head.bias
        z = h_list[-1] @ Wh.T + bh  # (B, K)
        per = (F.binary_cross_entropy_with_logits(z, y_t, reduction="none") * m_t).sum(0)
        loss_t = per / n_t.clamp_min(1)
        # ---- labelled pairs, grouped by task
        kp, bp = torch.nonzero(m_t.T > 0, as_tuple=True)  # (task, row), sorted by task
        P = int(bp.numel())
        zp, yp = z[bp, kp], y_t[bp, kp]
        r = (torch.sigmoid(zp) - yp) / n_t[kp]  # d L_k / d z at each pair
        # ---- per-pair backward: delta_l[p] = d L_{k_p} / d a_l at row b_p, pair p's share
        # Written into (P + 1, H) buffers whose last row stays 0 (the padding pair), with few
        # (P, H) temporaries: when P H is large, every fresh one costs its page faults.
        L = len(h_list)
        d_ext: list[torch.Tensor] = [torch.empty(0)] * L
        e = Wh.index_select(0, kp).mul_(r[:, None])  # (P, H_L)
        for li in range(L - 1, -1, -1):
            d = torch.empty(P + 1, a_list[li].shape[1], dtype=dtype, device=dev)
            torch.index_select((a_list[li] > 0).to(dtype), 0, bp, out=d[:P])
            d[:P].mul_(e)
            d[P].zero_()
            d_ext[li] = d
            if li > 0:
                e = d[:P] @ model.layers[li - 1].weight
        del e
        # (B, B) first-layer Gram X X^T + 1 (+ 1: the bias); row b of X X^T is the sum of the
        # columns of X at row b's set bits: an EmbeddingBag over X^T, about 50 B^2 additions
        # instead of a B^2 F GEMM
        XT = _dense_rows(batch, model.n_features, dtype).T.contiguous()
        M1 = F.embedding_bag(batch.indices, XT, batch.offsets, mode="sum").add_(1.0)

        inner = None
        if gradients and P:
            inner = _gradient_inner(h_list, d_ext, M1, bp, kp, n_t)
        elif gradients:
            inner = np.full((K, K), np.nan)

        Z = None
        if exact:
            Z = np.full((K, K), np.nan)
            src = torch.nonzero(n_t > 0).flatten()
            if src.numel():
                Z[src.cpu().numpy()] = _exact_lookahead(
                    model,
                    a_list,
                    h_list,
                    d_ext,
                    M1,
                    z,
                    y_t,
                    n_t,
                    bp,
                    kp,
                    src,
                    lr,
                    chunk,
                    path=path,
                    max_candidates=max_candidates,
                )
        loss = np.where(n > 0, loss_t.double().cpu().numpy(), np.nan)
    return _finish(Z, inner, loss, n, lr=lr, divide_by_lr=divide_by_lr, min_loss=zero_loss(dtype))


def gradient_affinity(
    model: MultiTaskNet, batch: SparseBatch, y: Any, mask: Any, *, lr: float = 1e-3
) -> ProbeResult:
    """The cheap baselines only: gradient inner products, cosine, first-order Z (no lookahead)."""
    return lookahead_fast(model, batch, y, mask, lr=lr, exact=False, gradients=True)


# --------------------------------------------------------------------------- training loop
#: Keys of ``TagResult.cost``: seconds, optimizer steps and passes of training and of the probes.
TAG_COST_KEYS = (
    "train_seconds",
    "probe_seconds",
    "train_steps",
    "probe_steps",
    "train_forward",
    "train_backward",
    "probe_forward",
    "probe_backward",
)


@dataclass
class TagResult:
    """Affinities averaged over a TAG training run.

    Matrices are ``(n_tasks, n_tasks)`` float64, ``[source, target]``, NaN where never measured.

    Attributes
    ----------
    affinity: exact lookahead Z averaged over the probe steps (NaN-aware: a pair is averaged
        over the steps where both tasks had labels in the batch), or None when only the
        first-order shortcut was computed.
    counts: int ``(K, K)`` number of probe steps behind each affinity.
    history: ``(n_epochs, K, K)`` per-epoch means of Z; ``history_counts`` the step counts.
    cosine, first_order: the gradient baselines averaged the same way (None if not computed).
    task_ids: task names in index order.
    settings: lookahead ``lr``, ``divide_by_lr``, ``probe_mode`` ("eval"), ``every``, method...
    cost: wall seconds of training steps vs probe steps, their counts, and forward/backward
        passes in single-batch network equivalents (``probe_forward`` counts one per source task
        per probe step, because the batched perturbed forward does that much arithmetic).
    info: bookkeeping (training compounds without any label, tasks with no training label,
        ``zero_loss_target_steps``: (probe step, target) pairs left out of Z, the first-order Z
        and the cosine because the target's batch loss was numerically zero, see ProbeResult).
    history_loss: ``(n_epochs,)`` mean training loss per epoch.
    model: the trained network (when ``keep_model``).
    cosine_history: ``(n_epochs, K, K)`` per-epoch means of the gradient cosine (None if not
        computed); averaged over the same probe steps as ``cosine``.
    """

    affinity: np.ndarray | None
    counts: np.ndarray
    history: np.ndarray | None
    history_counts: np.ndarray
    cosine: np.ndarray | None
    first_order: np.ndarray | None
    task_ids: list[str]
    settings: dict[str, Any]
    cost: dict[str, float]
    info: dict[str, Any] = field(default_factory=dict)
    history_loss: np.ndarray | None = None
    model: MultiTaskNet | None = None
    cosine_history: np.ndarray | None = None

    def to_frame(self) -> pd.DataFrame:
        """Long table: source, target, affinity, n_steps, cosine, first_order (off-diagonal)."""
        K = len(self.task_ids)
        i, j = np.nonzero(~np.eye(K, dtype=bool))
        ids = np.asarray(self.task_ids, dtype=object)

        def col(a: np.ndarray | None) -> np.ndarray:
            return np.full(len(i), np.nan) if a is None else a[i, j]

        return pd.DataFrame(
            {
                "source": ids[i],
                "target": ids[j],
                "affinity": col(self.affinity),
                "n_steps": self.counts[i, j],
                "cosine": col(self.cosine),
                "first_order": col(self.first_order),
            }
        )


class _Mean:
    """NaN-aware running mean of (K, K) matrices, overall and per epoch."""

    def __init__(self, K: int, epochs: int) -> None:
        self.s = np.zeros((K, K))
        self.c = np.zeros((K, K), dtype=np.int64)
        self.es = np.zeros((epochs, K, K))
        self.ec = np.zeros((epochs, K, K), dtype=np.int64)

    def add(self, epoch: int, M: np.ndarray) -> None:
        ok = np.isfinite(M)
        v = np.where(ok, M, 0.0)
        self.s += v
        self.c += ok
        self.es[epoch] += v
        self.ec[epoch] += ok

    def mean(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.c > 0, self.s / np.maximum(self.c, 1), np.nan)

    def history(self) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(self.ec > 0, self.es / np.maximum(self.ec, 1), np.nan)


_DEFAULTS: dict[str, Any] = {
    "hidden": (512,),
    "dropout": 0.2,
    "lr": 1e-3,
    "batch_size": 512,
    "epochs": 20,
    "weight_decay": 0.0,
    "seed": 0,
    "device": "auto",
    "dtype": "float32",
}


_ALIASES = {"epochs": ("epochs", "max_epochs")}  # TrainConfig calls it max_epochs


def _resolve(name: str, explicit: Any, config: Any) -> Any:
    if explicit is not None:
        return explicit
    if config is not None:
        for key in _ALIASES.get(name, (name,)):
            v = config.get(key) if isinstance(config, dict) else getattr(config, key, None)
            if v is not None:
                return v
    return _DEFAULTS[name]


def tag_train(
    ds: Any,
    train_idx: np.ndarray | None = None,
    *,
    config: Any = None,
    hidden: Sequence[int] | None = None,
    dropout: float | None = None,
    lr: float | None = None,
    batch_size: int | None = None,
    epochs: int | None = None,
    weight_decay: float | None = None,
    seed: int | None = None,
    device: str | torch.device | None = None,
    every: int = 10,
    lookahead_lr: float | None = None,
    divide_by_lr: bool = False,
    method: str = "fast",
    exact: bool = True,
    gradients: bool = True,
    dtype: torch.dtype | str | None = None,
    keep_model: bool = False,
    chunk: int = 16,
) -> TagResult:
    """Train the all-task network and measure TAG affinities every ``every`` steps.

    Training is ordinary all-task training (Adam, dropout, masked BCE summed over tasks); at
    steps 0, every, 2*every, ... the current batch is probed before the update (eval mode, see
    the module docstring) and the per-batch affinities are averaged.

    Parameters
    ----------
    ds: a ``MultiTaskDataset`` with features ``X``.
    train_idx: compound indices to train on (default: all compounds).
    config: optional ``mtlc.training.TrainConfig`` (or dict) supplying hidden, dropout, lr,
        batch_size, epochs (``max_epochs``), weight_decay, seed, device, dtype; explicit
        keywords win. TAG trains a fixed number of epochs: no early stopping (the affinities
        are a property of the training trajectory, not of a selected model).
    every: probe period in steps (TAG's default 10).
    lookahead_lr: lookahead step size (default: the training ``lr``).
    divide_by_lr: divide Z (and the first-order Z) by ``lookahead_lr`` as the official code does.
    method: "fast" (:func:`lookahead_fast`) or "reference" (:func:`lookahead_reference`).
    exact, gradients: what the fast probe computes (exact Z; gradient baselines).
    dtype: parameter dtype, torch dtype or "float32"/"float64" (default float32).
    """
    if getattr(ds, "X", None) is None:
        raise ConfigError(
            f"data set {getattr(ds, 'name', '?')!r} has no features; featurize it first "
            "(mtlc.features.featurize)"
        )
    if method not in ("fast", "reference"):
        raise ConfigError(f"method must be 'fast' or 'reference', got {method!r}")
    if every < 1:
        raise ConfigError(f"every must be >= 1, got {every}")
    if not exact and (method == "reference" or not gradients):
        raise ConfigError("exact=False needs method='fast' and gradients=True")
    hidden = tuple(_resolve("hidden", hidden, config))
    dropout = float(_resolve("dropout", dropout, config))
    lr = float(_resolve("lr", lr, config))
    batch_size = int(_resolve("batch_size", batch_size, config))
    epochs = int(_resolve("epochs", epochs, config))
    weight_decay = float(_resolve("weight_decay", weight_decay, config))
    seed = int(_resolve("seed", seed, config))
    dev = resolve_device(_resolve("device", device, config))
    la_lr = float(lr if lookahead_lr is None else lookahead_lr)
    dtype = _resolve("dtype", dtype, config)
    if isinstance(dtype, str):
        if dtype not in ("float32", "float64"):
            raise ConfigError(f"dtype must be 'float32' or 'float64', got {dtype!r}")
        dtype = getattr(torch, dtype)

    idx = np.arange(ds.n_compounds) if train_idx is None else np.asarray(train_idx, dtype=np.int64)
    X = sp.csr_matrix(ds.X[idx])
    lab = sp.csr_matrix(ds.labels_sparse()[idx])
    K = ds.n_tasks
    has_label = np.diff(lab.indptr) > 0
    task_n = np.bincount(lab.indices, minlength=K)
    info = {
        "n_train_compounds": len(idx),
        "compounds_without_label": int((~has_label).sum()),
        "tasks_without_train_label": [str(t) for t in ds.tasks["task_id"].to_numpy()[task_n == 0]],
    }

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = MultiTaskNet(X.shape[1], K, hidden=hidden, dropout=dropout).to(dev, dtype)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    z_mean, c_mean, f_mean = _Mean(K, epochs), _Mean(K, epochs), _Mean(K, epochs)
    ep_loss = np.zeros(epochs)
    cost = dict.fromkeys(TAG_COST_KEYS, 0.0)
    step = 0
    zero_steps = 0  # (probe step, target) pairs left out: the target's batch loss underflowed
    for epoch in range(epochs):
        order = rng.permutation(len(idx))
        losses = []
        for s in range(0, len(order), batch_size):
            rows = np.sort(order[s : s + batch_size])
            batch = SparseBatch.from_csr(X, rows, device=dev)
            v = torch.as_tensor(lab[rows].toarray(), device=dev)
            yb, mb = (v == 1).to(dtype), (v != 0).to(dtype)
            if step % every == 0:
                t0 = time.perf_counter()
                if method == "fast":
                    pr = lookahead_fast(
                        model,
                        batch,
                        yb,
                        mb,
                        lr=la_lr,
                        divide_by_lr=divide_by_lr,
                        exact=exact,
                        gradients=gradients,
                        chunk=chunk,
                    )
                else:
                    pr = lookahead_reference(
                        model, batch, yb, mb, lr=la_lr, divide_by_lr=divide_by_lr
                    )
                cost["probe_seconds"] += time.perf_counter() - t0
                n_src = int((pr.n_pairs > 0).sum())
                zero_steps += int(((pr.n_pairs > 0) & ~(pr.loss >= zero_loss(dtype))).sum())
                cost["probe_steps"] += 1
                cost["probe_forward"] += 1 + (n_src if exact else 0)
                cost["probe_backward"] += 1 if method == "fast" else n_src
                if pr.Z is not None:
                    z_mean.add(epoch, pr.Z)
                if pr.cosine is not None:
                    c_mean.add(epoch, pr.cosine)
                if pr.first_order is not None:
                    f_mean.add(epoch, pr.first_order)
            t0 = time.perf_counter()
            model.train()
            opt.zero_grad(set_to_none=True)
            loss = masked_bce(model(batch), yb, mb)
            loss.backward()
            opt.step()
            losses.append(float(loss.detach()))
            cost["train_seconds"] += time.perf_counter() - t0
            cost["train_steps"] += 1
            cost["train_forward"] += 1
            cost["train_backward"] += 1
            step += 1
        ep_loss[epoch] = float(np.mean(losses)) if losses else np.nan
    has_z = exact or method == "reference"
    has_g = gradients or method == "reference"
    info["zero_loss_target_steps"] = zero_steps
    counts = (z_mean if has_z else c_mean).c
    settings = {
        "lookahead_lr": la_lr,
        "divide_by_lr": bool(divide_by_lr),
        "probe_mode": "eval",
        "every": int(every),
        "method": method,
        "hidden": list(hidden),
        "dropout": dropout,
        "lr": lr,
        "batch_size": batch_size,
        "epochs": epochs,
        "weight_decay": weight_decay,
        "seed": seed,
        "dtype": str(dtype).replace("torch.", ""),
        "affinity_definition": "1 - L_j(theta') / L_j(theta)"
        + (" divided by lookahead_lr" if divide_by_lr else ""),
    }
    return TagResult(
        affinity=z_mean.mean() if has_z else None,
        counts=counts.copy(),
        history=z_mean.history() if has_z else None,
        history_counts=(z_mean if has_z else c_mean).ec.copy(),
        cosine=c_mean.mean() if has_g else None,
        first_order=f_mean.mean() if has_g else None,
        task_ids=[str(t) for t in ds.tasks["task_id"].to_numpy()],
        settings=settings,
        cost={k: float(v) for k, v in cost.items()},
        info=info,
        history_loss=ep_loss,
        model=model if keep_model else None,
        cosine_history=c_mean.history() if has_g else None,
    )


# --------------------------------------------------------------------------- stored TAG runs
#: Columns of a TAG store's part files (one part per job, see :func:`write_tag_part`).
TAG_PART_COLUMNS = ("job_id", "status", "source", "target", "epoch", "z", "cosine", "n_steps")
#: Job-level columns :func:`load_tag` adds to every row (from the part's metadata).
TAG_JOB_COLUMNS = (
    "dataset",
    "recipe",
    "task_set",
    "split",
    "fold",
    "seed",
    "config_hash",
    *TAG_COST_KEYS,
    "cpu_seconds",
)
_TAG_META_KEY = b"mtlc_tag"
_TAG_PART_GLOB = "part-*.parquet"


def round_mantissa(x: Any, bits: int | None) -> np.ndarray:
    """``x`` as float32 with its mantissa rounded to ``bits`` stored bits (1..23, None: 23).

    Keeps float32's range (TAG's Z is about 1e-6 to 1e-4, subnormal in float16) and bounds the
    relative error by ``2**-(bits + 1)``; the dropped low bits are zeros, which Parquet's
    byte-stream-split encoding then compresses away. NaN stays NaN.
    """
    a = np.array(x, dtype=np.float32, copy=True)
    if bits is None or bits >= 23:
        return a
    if not 1 <= bits < 23:
        raise ConfigError(f"mantissa bits must be in 1..23, got {bits}")
    drop = 23 - int(bits)
    u = a.view(np.uint32)
    finite = np.isfinite(a)
    # round half away from zero on the magnitude; a carry into the exponent is the right result
    r = (u + np.uint32(1 << (drop - 1))) & np.uint32((0xFFFFFFFF << drop) & 0xFFFFFFFF)
    u[finite] = r[finite]
    return a


def tag_part_table(
    result: TagResult,
    *,
    job_id: str,
    epoch_rows: bool = True,
    mantissa_bits: int | None = None,
) -> Any:
    """The pair rows of one TAG job as an Arrow table (:data:`TAG_PART_COLUMNS`).

    Rows with ``epoch = -1`` hold the whole run (``result.affinity``, ``cosine``, ``counts``:
    step-weighted means over every probe step); with ``epoch_rows`` also one block per epoch
    (``history``, ``cosine_history``, ``history_counts``). Every off-diagonal (source, target)
    pair has a row, NaN where never measured. ``z`` is the lookahead affinity as ``tag_train``
    computed it (not divided by lr unless its settings say so), float32 with the mantissa
    rounded to ``mantissa_bits``. ``cosine`` is symmetric, so it is stored only where the
    source's index is below the target's (null elsewhere); :func:`load_tag` mirrors it.
    """
    import pyarrow as pa

    if result.affinity is None:
        raise ConfigError("a TAG store needs the exact lookahead Z (tag_train with exact=True)")
    K = len(result.task_ids)
    i, j = np.nonzero(~np.eye(K, dtype=bool))
    blocks = [(-1, result.affinity, result.cosine, result.counts)]
    if epoch_rows and result.history is not None:
        ch = result.cosine_history
        for e in range(result.history.shape[0]):
            blocks.append(
                (
                    e,
                    result.history[e],
                    None if ch is None else ch[e],
                    result.history_counts[e],
                )
            )
    ids = np.asarray(result.task_ids, dtype=object)
    nb, npair = len(blocks), len(i)
    z = np.concatenate([round_mantissa(Z[i, j], mantissa_bits) for _, Z, _, _ in blocks])
    upper = i < j
    cos_parts = []
    for _, _, C, _ in blocks:
        c = (
            np.full(npair, np.nan, np.float32)
            if C is None
            else round_mantissa(C[i, j], mantissa_bits)
        )
        cos_parts.append(np.where(upper, c, np.nan).astype(np.float32))
    cos = np.concatenate(cos_parts)
    cos_mask = ~np.tile(upper, nb)  # null (not NaN) where mirrored: costs nothing to store
    steps = np.concatenate([np.asarray(Nm[i, j], dtype=np.int32) for _, _, _, Nm in blocks])
    epoch = np.repeat(np.asarray([b[0] for b in blocks], dtype=np.int16), npair)
    return pa.table(
        {
            "job_id": pa.array([job_id] * (nb * npair), pa.string()),
            "status": pa.array(["ok"] * (nb * npair), pa.string()),
            "source": pa.array(np.tile(ids[i], nb).tolist(), pa.string()),
            "target": pa.array(np.tile(ids[j], nb).tolist(), pa.string()),
            "epoch": pa.array(epoch, pa.int16()),
            "z": pa.array(z, pa.float32(), from_pandas=False),
            "cosine": pa.array(cos, pa.float32(), mask=cos_mask),
            "n_steps": pa.array(steps, pa.int32()),
        }
    )


def write_tag_part(store: Any, table: Any, meta: dict[str, Any]) -> Any:
    """Write one job's part atomically into the TAG store directory ``store``; its path.

    ``meta`` (JSON-able: the job's key, configuration, cost, task ids, status, note) goes into
    the Parquet file's metadata. Temporary file, ``fsync``, ``os.replace``, directory ``fsync``:
    a SIGKILL leaves the whole part or none of it (the pattern of :class:`mtlc.store.ResultsStore`,
    whose ``done_job_ids`` reads these parts too: they carry its ``job_id`` and ``status``).
    """
    import json
    import os
    import uuid
    from pathlib import Path

    from mtlc.store import _fsync_dir, write_parquet_atomic

    path = Path(store)
    path.mkdir(parents=True, exist_ok=True)
    md = dict(table.schema.metadata or {})
    md[_TAG_META_KEY] = json.dumps(meta, sort_keys=True).encode()
    table = table.replace_schema_metadata(md)
    name = f"part-{time.time_ns():020d}-{uuid.uuid4().hex[:8]}.parquet"
    final = path / name
    write_parquet_atomic(
        table,
        final,
        tmp=path / f".tmp-part-{os.getpid()}-{name}",
        compression_level=19,
        use_byte_stream_split=["z", "cosine"],
        use_dictionary=["job_id", "status", "source", "target"],
    )
    _fsync_dir(path)
    return final


def failed_tag_table(job_id: str) -> Any:
    """The one-row part of a failed job (status ``failed``; the reason is in the metadata)."""
    import pyarrow as pa

    return pa.table(
        {
            "job_id": pa.array([job_id], pa.string()),
            "status": pa.array(["failed"], pa.string()),
            "source": pa.array([None], pa.string()),
            "target": pa.array([None], pa.string()),
            "epoch": pa.array([-1], pa.int16()),
            "z": pa.array([np.nan], pa.float32()),
            "cosine": pa.array([None], pa.float32()),
            "n_steps": pa.array([0], pa.int32()),
        }
    )


def _tag_parts(store: Any) -> list[tuple[Any, dict[str, Any]]]:
    """(path, metadata) of every part, newest last; the newest part of a job wins."""
    import json
    from pathlib import Path

    import pyarrow.parquet as pq

    from mtlc.errors import MtlcError

    path = Path(store)
    if not path.is_dir():
        raise MtlcError(
            f"TAG store {path} does not exist or is not a directory: run `mtlc tag --store "
            f"{path} ...` first, or pass the directory it wrote"
        )
    out = []
    for p in sorted(path.glob(_TAG_PART_GLOB)):
        try:
            md = pq.read_schema(p).metadata or {}
        except Exception as exc:  # noqa: BLE001 - any reader failure means the file is bad
            raise MtlcError(
                f"TAG part {p} is unreadable ({type(exc).__name__}: {exc}); delete it and rerun "
                "the same mtlc tag command (only that job is recomputed)"
            ) from None
        if _TAG_META_KEY not in md:
            raise MtlcError(
                f"{p} is not a TAG part (no mtlc_tag metadata): {path} is another kind of "
                "results store; load it with mtlc.store.ResultsStore"
            )
        out.append((p, json.loads(md[_TAG_META_KEY])))
    newest: dict[str, int] = {}
    for k, (_, m) in enumerate(out):
        newest[m["job_id"]] = k
    return [out[k] for k in sorted(newest.values())]


def tag_jobs(store: Any) -> pd.DataFrame:
    """One row per job of a TAG store: key, status, note, configuration and cost.

    Columns: ``job_id``, ``status`` ("ok" / "failed"), ``note`` (failure reason), the job key
    (``dataset, recipe, task_set, split, n_folds, split_seed, fold, seed``), ``config_hash``,
    ``epochs``, ``every``, ``mantissa_bits``, ``epoch_rows`` (per-epoch rows stored),
    ``n_tasks``, the cost (``train_seconds, probe_seconds``: wall seconds inside ``tag_train``;
    ``cpu_seconds, wall_seconds`` of the whole job; pass counts as in ``TagResult.cost``),
    ``n_train_compounds`` and ``zero_loss_target_steps`` (probe-step targets left out because
    their batch loss underflowed, see :class:`ProbeResult`).
    """
    rows = []
    for p, m in _tag_parts(store):
        r = {k: m.get(k) for k in ("job_id", "status", "note")}
        r.update(m.get("key", {}))
        r["config_hash"] = m.get("config_hash")
        s = m.get("settings", {})
        r.update({k: s.get(k) for k in ("epochs", "every")})
        r["mantissa_bits"] = m.get("mantissa_bits")
        r["epoch_rows"] = m.get("epoch_rows")
        r["n_tasks"] = len(m.get("task_ids", []))
        r.update(m.get("cost", {}))
        info = m.get("info", {})
        r["n_train_compounds"] = info.get("n_train_compounds")
        r["zero_loss_target_steps"] = info.get("zero_loss_target_steps")
        r["part"] = p.name
        rows.append(r)
    return pd.DataFrame(rows)


def load_tag(store: Any, *, costs: bool = True) -> pd.DataFrame:
    """A TAG store (written by ``mtlc tag``) as one tidy table.

    One row per (dataset, split, fold, seed, epoch, source, target) of every successful job:

    - ``epoch``: 0, 1, ... for per-epoch means, ``-1`` for the whole run (the step-weighted mean
      over every probe step, i.e. ``TagResult.affinity``). Stores written with
      ``--epoch-rows none`` (or for other folds than ``--epoch-rows`` lists) hold only ``-1``.
    - ``z``: the lookahead affinity ``Z[source -> target] = 1 - L_t(theta') / L_t(theta)``,
      mean over the probe steps, **not divided by lr** (unless the job's settings say
      ``divide_by_lr``; ``mtlc tag`` never does); float32 values (mantissa possibly rounded,
      see :func:`round_mantissa` and ``tag_jobs(store)["mantissa_bits"]``) returned as float64.
    - ``cosine``: the per-task trunk-gradient cosine averaged the same way (symmetric; stored
      once per unordered pair and mirrored here).
    - ``n_steps``: probe steps behind the value (both tasks labelled in the batch); NaN
      values with ``n_steps = 0`` are pairs never measured, kept as rows.
    - job columns: ``dataset, recipe, task_set, split, fold, seed, config_hash``, and with
      ``costs`` the job's cost columns (:data:`TAG_JOB_COLUMNS`: seconds and pass counts as in
      ``TagResult.cost``, plus ``cpu_seconds`` of the whole job).

    Failed jobs have no rows here; :func:`tag_jobs` lists them with their reason.
    """
    import pyarrow.parquet as pq

    frames = []
    for p, m in _tag_parts(store):
        if m.get("status") != "ok":
            continue
        t = pq.read_table(p, columns=list(TAG_PART_COLUMNS)).to_pandas()
        t = t.drop(columns=["status"])
        ids = m["task_ids"]
        pos = {tid: k for k, tid in enumerate(ids)}
        si = t["source"].map(pos).to_numpy()
        ti = t["target"].map(pos).to_numpy()
        ep = t["epoch"].to_numpy()
        cos = t["cosine"].to_numpy(dtype=np.float64, na_value=np.nan)
        # mirror the symmetric cosine: (s, t) takes (t, s)'s value where it was not stored
        epochs = np.unique(ep)
        eix = np.searchsorted(epochs, ep)
        K = len(ids)
        C = np.full((len(epochs), K, K), np.nan)
        C[eix, si, ti] = cos
        C = np.where(np.isnan(C), C.transpose(0, 2, 1), C)
        t["cosine"] = C[eix, si, ti]
        t["z"] = t["z"].astype(np.float64)
        t["epoch"] = t["epoch"].astype(np.int64)
        key = m.get("key", {})
        for c in ("dataset", "recipe", "task_set", "split"):
            t[c] = key.get(c)
        for c in ("fold", "seed"):
            t[c] = int(key.get(c, -1))
        t["config_hash"] = m.get("config_hash")
        if costs:
            for c in TAG_JOB_COLUMNS[7:]:
                t[c] = float(m.get("cost", {}).get(c, np.nan))
        frames.append(t)
    lead = ["dataset", "recipe", "task_set", "split", "fold", "seed", "epoch", "source", "target"]
    if not frames:
        cols = [*lead, "z", "cosine", "n_steps", "config_hash", "job_id"]
        return pd.DataFrame(columns=cols + (list(TAG_JOB_COLUMNS[7:]) if costs else []))
    df = pd.concat(frames, ignore_index=True)
    rest = [c for c in df.columns if c not in lead]
    return df[lead + rest]


def _whole_run(df: pd.DataFrame, value: str) -> pd.DataFrame:
    """Per (job, source, target): the whole-run value (``epoch == -1`` rows, or the
    step-weighted mean of the per-epoch rows for a job that has no ``-1`` rows)."""
    whole = df[df["epoch"] == -1]
    have = set(whole["job_id"])
    rest = df[(df["epoch"] >= 0) & ~df["job_id"].isin(have)]
    if len(rest):
        w = rest["n_steps"].astype(np.float64).where(rest[value].notna(), 0.0)
        agg = (
            rest.assign(_wv=rest[value].fillna(0.0) * w, _w=w)
            .groupby(["job_id", "fold", "seed", "source", "target"], sort=False)[["_wv", "_w"]]
            .sum()
            .reset_index()
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            agg[value] = np.where(agg["_w"] > 0, agg["_wv"] / agg["_w"], np.nan)
        whole = pd.concat([whole, agg.drop(columns=["_wv", "_w"])], ignore_index=True)
    return whole


def tag_matrix(
    df: pd.DataFrame,
    task_ids: Sequence[str],
    *,
    value: str = "z",
    fold: int | None = None,
) -> np.ndarray:
    """A ``(K, K)`` float64 matrix ``[source, target]`` from a :func:`load_tag` table.

    Per job the whole-run value (step-weighted mean over its probe steps, i.e. over epochs);
    then the plain mean over jobs: seeds, and folds unless ``fold`` picks one (NaN-aware: a
    job where a pair was never measured does not count for it). ``value``: ``"z"`` or
    ``"cosine"``. Rows and columns follow ``task_ids``; tasks absent from ``df`` and the
    diagonal are NaN. Rows of several data sets or splits are refused (select one first).
    """
    if value not in ("z", "cosine"):
        raise ConfigError(f"value must be 'z' or 'cosine', got {value!r}")
    missing = [c for c in ("job_id", "epoch", "source", "target", value) if c not in df.columns]
    if missing:
        raise ConfigError(f"tag_matrix needs a load_tag table; columns {missing} are missing")
    for c in ("dataset", "split"):
        if c in df.columns and df[c].nunique() > 1:
            raise ConfigError(
                f"the table mixes {c}s {sorted(df[c].unique())}: select one before tag_matrix"
            )
    if fold is not None:
        df = df[df["fold"] == int(fold)]
        if not len(df):
            raise ConfigError(f"no rows for fold {fold} in the table")
    whole = _whole_run(df, value)
    mean = whole.groupby(["source", "target"], sort=False)[value].mean()
    ids = [str(t) for t in task_ids]
    pos = {t: k for k, t in enumerate(ids)}
    K = len(ids)
    M = np.full((K, K), np.nan)
    s = mean.index.get_level_values(0).map(pos)
    t = mean.index.get_level_values(1).map(pos)
    ok = np.asarray(s.notna() & t.notna())
    M[np.asarray(s[ok], dtype=np.int64), np.asarray(t[ok], dtype=np.int64)] = mean.to_numpy()[ok]
    M[np.eye(K, dtype=bool)] = np.nan
    return M


def _stack(
    ep: np.ndarray, s: np.ndarray, t: np.ndarray, v: np.ndarray, K: int, fill: float
) -> np.ndarray:
    """``(n_epochs, K, K)`` from long (epoch, source index, target index, value) arrays."""
    levels = np.unique(ep)
    A = np.full((len(levels), K, K), fill, dtype=np.float64)
    A[np.searchsorted(levels, ep), s, t] = v
    return A


def _stack_masked(
    ep: np.ndarray,
    s: np.ndarray,
    t: np.ndarray,
    vals: dict[str, np.ndarray],
    K: int,
    mask: np.ndarray,
    col: str,
    fill: float,
) -> np.ndarray:
    return _stack(ep[mask], s[mask], t[mask], vals[col][mask], K, fill)


def tag_results_from_store(
    df: pd.DataFrame, task_ids: Sequence[str] | None = None
) -> list[TagResult]:
    """One :class:`TagResult` per stored job of a :func:`load_tag` table, in (split, fold, seed)
    order, for :func:`mtlc.approx.tag_pair_test` and other code written for ``tag_train``.

    ``affinity``, ``cosine``, ``counts``: the whole-run rows. ``history`` /
    ``history_counts`` / ``cosine_history``: the per-epoch rows when the job has them; else the
    whole-run matrix as a single "epoch" (so ``tag_pair_test(..., unit="epoch")`` needs stores
    written with per-epoch rows; ``unit="seed"`` treats each job, e.g. each fold, as one
    replicate). ``task_ids``: index order (default: sorted ids of the table). ``settings``
    names the job; ``cost`` holds the job's cost columns when the table has them.
    """
    if not len(df):
        raise ConfigError("the table holds no TAG rows")
    ids = (
        [str(t) for t in task_ids]
        if task_ids is not None
        else sorted(set(df["source"]) | set(df["target"]))
    )
    pos = {t: k for k, t in enumerate(ids)}
    K = len(ids)
    out = []
    order = [c for c in ("split", "fold", "seed", "job_id") if c in df.columns]
    for job, g in df.sort_values(order).groupby("job_id", sort=False):
        g = g[g["source"].isin(pos) & g["target"].isin(pos)]
        if not (g["epoch"] == -1).any():  # a table without whole-run rows: rebuild them
            w = _whole_run(g, "z").assign(epoch=-1)
            w["cosine"] = _whole_run(g, "cosine")["cosine"].to_numpy()
            n = g.groupby(["source", "target"], sort=False)["n_steps"].sum()
            w["n_steps"] = n.reindex(pd.MultiIndex.from_frame(w[["source", "target"]])).to_numpy()
            g = pd.concat([g, w[[c for c in g.columns if c in w.columns]]], ignore_index=True)
        s = g["source"].map(pos).to_numpy(dtype=np.int64)
        t = g["target"].map(pos).to_numpy(dtype=np.int64)
        ep = g["epoch"].to_numpy()
        whole = ep == -1
        per = ep >= 0

        vals = {c: g[c].to_numpy() for c in ("z", "cosine", "n_steps")}
        mats = functools.partial(_stack_masked, ep, s, t, vals, K)
        aff, cos = mats(whole, "z", np.nan)[0], mats(whole, "cosine", np.nan)[0]
        cnt = mats(whole, "n_steps", 0).astype(np.int64)[0]
        if per.any():
            hist, chist = mats(per, "z", np.nan), mats(per, "cosine", np.nan)
            hcnt = mats(per, "n_steps", 0).astype(np.int64)
        else:
            hist, chist, hcnt = aff[None], cos[None], cnt[None]
        row = g.iloc[0]
        cost = {c: float(row[c]) for c in TAG_JOB_COLUMNS[7:] if c in g.columns}
        settings = {"job_id": str(job), "from_store": True, "per_epoch": bool(per.any())}
        for c in ("dataset", "split", "fold", "seed", "config_hash"):
            if c in g.columns:
                v = row[c]
                settings[c] = int(v) if c in ("fold", "seed") else str(v)
        out.append(
            TagResult(
                affinity=aff,
                counts=cnt,
                history=hist,
                history_counts=hcnt,
                cosine=cos,
                first_order=None,
                task_ids=ids,
                settings=settings,
                cost=cost,
                cosine_history=chist,
            )
        )
    return out
