"""Fleet training: many independent networks trained together with stacked parameters.

A fleet of M models keeps every parameter as one stacked tensor with a leading model axis:

- first layer ``W1 (M, R, H0)`` used through ONE ``embedding_bag`` over ``M * R`` rows, each
  model's input bits offset by ``m * R``;
- later layers ``(M, H_in, H_out)`` applied with ``torch.baddbmm``;
- heads ``(M, H_last, T)``, one column per head of the model (padded with inert zero heads when
  models have fewer heads than the widest one).

Only the first-layer rows a model's *training* compounds can touch are trainable: a bit never set
in the training data has zero gradient forever, so its Adam moments stay 0 and its update is exactly
0 (with ``weight_decay == 0``; with weight decay every row is kept trainable). Those frozen rows keep
their initial values; their contribution to validation and test compounds is precomputed once
("frozen sums"). ``R`` is the widest model's count of trainable rows: small training sets give a
small, cheap first layer, exactly.

Models with different training-set sizes take different numbers of batches per epoch. Models are
sorted by batches per epoch (descending), so at step ``s`` of an epoch the models that still have a
batch form a prefix ``[:k]`` of the stacked tensors: every step works on contiguous views, no
masking, no copies. Within a step, batches are padded to the largest one (empty bags, zero loss
weight). A model that stops early is removed from the active set at the end of the epoch (its best
weights are kept in a separate snapshot).

Fleets are planned (:func:`plan_fleets`) under a memory budget (``TrainConfig.memory_budget_mb``):
:func:`fleet_memory` estimates every buffer a fleet allocates (parameters and Adam state at the
fleet's width, int8 label codes, bit lists, frozen sums, the per-epoch gradient-matrix entries,
one step's activations); :meth:`_Trainer.buffer_bytes` reports the real bytes for tests. A model
much narrower than the fleet's widest starts a new fleet, so small models do not pay for the
widest first layer. Grouping changes a model's numbers only at float rounding (padded batch
shapes sum in another order: float32 test scores within a few 1e-6, measured on kiba), which
can still swap two nearly tied test scores and so move an AUC on a small test fold.

Adam is the fused ``torch._fused_adam_`` kernel over per-model views (one step count per model, so
the bias correction is each model's own), falling back to an equivalent plain implementation
when that kernel is unavailable. Every random draw of a model comes from its own generators (batch
order, dropout), so its numbers do not depend on the fleet it is trained in.

Two engines (``TrainConfig.engine``) share this set-up (stacked parameters, compact first layers,
frozen sums, label codes, random streams, early stopping, test scoring):

- ``"torch"`` (:class:`_Trainer`, default, CPU or CUDA): every operation of a step applied to
  all active models at once, as described above;
- ``"compiled"`` (:class:`_CompiledTrainer`, CPU, one hidden layer): the models one after the
  other, each model's whole training one call of a numba kernel (:mod:`mtlc._compiled`), so a
  model's parameters and Adam moments stay in the CPU cache while it trains instead of streaming
  through memory once per operation; 2-4x faster on kiba's single-task cells
  (``benchmarks/bench_fleet.py``). Same numbers up to float rounding (tested).
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from mtlc.errors import ConfigError
from mtlc.models import resolve_device
from mtlc.training import PreparedModel, TrainConfig, TrainOutcome, batch_order, init_weights

__all__ = [
    "train_fleets",
    "train_fleet",
    "plan_fleets",
    "fleet_bytes",
    "fleet_memory",
    "FleetStats",
]

_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8
#: plan_fleets starts a new fleet at a model with fewer trainable rows than this fraction of
#: the fleet's widest model.
_NARROW = 0.75


@dataclass
class _Csr:
    """Rows of several models' compound lists in compact first-layer coordinates."""

    rowptr: np.ndarray  # (n_rows + 1,) int64 (int32 for a data set's own CSR)
    cidx: np.ndarray  # (nnz,) int32 compact row of each set bit (within its model)

    def bags(self, rows2d: np.ndarray, stride: int) -> tuple[np.ndarray, np.ndarray]:
        """Embedding-bag inputs for a ``(k, B)`` block of row ids (-1 = padding, empty bag).

        Bits of the block's model ``j`` (row ``j``) are shifted by ``j * stride``.
        """
        k, b = rows2d.shape
        flat = rows2d.ravel()
        valid = flat >= 0
        fr = np.where(valid, flat, 0)
        starts = self.rowptr[fr]
        counts = np.where(valid, self.rowptr[fr + 1] - starts, 0)
        offsets = np.zeros(len(flat), dtype=np.int64)
        np.cumsum(counts[:-1], out=offsets[1:])
        total = int(offsets[-1] + counts[-1]) if len(flat) else 0
        idx = np.repeat(starts - offsets, counts) + np.arange(total, dtype=np.int64)
        shift = np.repeat(np.repeat(np.arange(k, dtype=np.int64) * stride, b), counts)
        return self.cidx[idx] + shift, offsets


def _whole(X: sp.csr_matrix) -> _Csr:
    """The data set's CSR as a :class:`_Csr` (views of its own arrays: no int64 copies)."""
    return _Csr(rowptr=X.indptr, cidx=X.indices)


def _trainable_bits(X: sp.csr_matrix, compounds: np.ndarray, all_rows: bool) -> np.ndarray:
    """Columns set in any of ``compounds`` (all columns when ``all_rows``)."""
    if all_rows:
        return np.arange(X.shape[1], dtype=np.int64)
    bits = _whole(X).bags(np.asarray(compounds)[None, :], 0)[0]
    return _nonempty(np.flatnonzero(np.bincount(bits, minlength=X.shape[1])))


@dataclass(frozen=True)
class FleetStats:
    """Sizes of one model that decide its fleet's memory (see :func:`fleet_memory`).

    ``n_rows``: trainable first-layer rows; ``n_heads``: heads; ``n_train``/``n_val``/``n_test``:
    compounds; ``nnz_train``/``nnz_val``/``nnz_test``: set fingerprint bits over those compounds.
    """

    n_rows: int
    n_heads: int
    n_train: int
    n_val: int
    n_test: int
    nnz_train: int
    nnz_val: int
    nnz_test: int
    n_features: int = 2048

    @classmethod
    def of(
        cls,
        X: sp.csr_matrix,
        m: PreparedModel,
        n_rows: int,
        *,
        counts: np.ndarray | None = None,
    ) -> FleetStats:
        """Stats of a prepared model with ``n_rows`` trainable rows (``counts``: bits per row
        of ``X``, when already computed)."""
        cnt = np.diff(X.indptr) if counts is None else counts
        return cls(
            n_rows=int(n_rows),
            n_heads=m.n_heads,
            n_train=len(m.train_compounds),
            n_val=len(m.val_compounds),
            n_test=len(m.test_compounds),
            nnz_train=int(cnt[m.train_compounds].sum()),
            nnz_val=int(cnt[m.val_compounds].sum()),
            nnz_test=int(cnt[m.test_compounds].sum()),
            n_features=int(X.shape[1]),
        )


def fleet_bytes(n_rows: int, n_heads: int, config: TrainConfig) -> int:
    """Bytes of one model's trainable state: parameters, best snapshot and the two Adam
    moments (4 copies of every parameter) plus the first layer's gradient buffer."""
    h = config.hidden
    n = n_rows * h[0] + h[0] + sum(a * b + b for a, b in zip(h[:-1], h[1:], strict=True))
    n += h[-1] * n_heads + n_heads
    item = 4 if config.dtype == "float32" else 8
    return (4 * n + n_rows * h[0]) * item


def fleet_memory(stats: Sequence[FleetStats], config: TrainConfig) -> dict[str, int]:
    """Estimated peak bytes of one fleet's buffers, by kind (and ``"total"``).

    Counts everything :class:`_Trainer` allocates that grows with the fleet:

    - ``state``: per model, 4 copies of every parameter (weights, best snapshot, two Adam
      moments) at the fleet's width ``R`` (the widest model's trainable rows) and ``T`` heads,
      plus the first layer's gradient buffer ``(R, H0)``;
    - ``labels``: int8 label codes ``(n_train + n_val, T)`` of every model;
    - ``bits``: compact set bits of train/val/test compounds (int32) and row pointers (int64);
    - ``frozen``: precomputed first-layer sums of frozen rows for validation and test compounds
      ``(n, H0)``; ``setup``: the float64 parts they are assembled from and one model's
      full-width initial weights (freed before training; counted anyway);
    - ``entries``: the per-fleet (model, row, compound) list of training bits and the per-epoch
      sort of it that builds the sparse gradient matrices;
    - ``step``: one training step's activations, dropout masks, labels, gradients and sparse
      transposed batch matrix for all models at once;
    - ``eval``: one validation/test block (bounded by construction).

    The inputs (the data set, the prepared models) are the caller's and are not counted.
    """
    agg = _Agg()
    for st in stats:
        agg.add(st)
    return agg.memory(config)


class _Agg:
    """Running sums and maxima of :class:`FleetStats` (the planner adds models one by one)."""

    def __init__(self) -> None:
        self.M = self.R = self.T = self.nf = self.max_tr = 0
        self.n_tr = self.n_va = self.n_te = self.nnz_tr = self.nnz_vt = 0

    def add(self, s: FleetStats) -> None:
        self.M += 1
        self.R, self.T = max(self.R, s.n_rows), max(self.T, s.n_heads)
        self.nf, self.max_tr = max(self.nf, s.n_features), max(self.max_tr, s.n_train)
        self.n_tr += s.n_train
        self.n_va += s.n_val
        self.n_te += s.n_test
        self.nnz_tr += s.nnz_train
        self.nnz_vt += s.nnz_val + s.nnz_test

    def copy(self) -> _Agg:
        out = _Agg()
        out.__dict__.update(self.__dict__)
        return out

    def memory(self, cfg: TrainConfig) -> dict[str, int]:
        if self.M == 0:
            return {"total": 0}
        item = 4 if cfg.dtype == "float32" else 8
        M, R, T, h0 = self.M, self.R, self.T, cfg.hidden[0]
        n_tr, n_va, n_te = self.n_tr, self.n_va, self.n_te
        b = min(cfg.batch_size, self.max_tr)
        widths = sum(cfg.hidden)
        out = {
            "state": M * fleet_bytes(R, T, cfg),
            "labels": (n_tr + n_va + 2) * T,
            "bits": 4 * (self.nnz_tr + self.nnz_vt) + 8 * (n_tr + n_va + n_te + 3),
            "frozen": (n_va + n_te + 2) * h0 * item,
            # set-up only: the float64 frozen sums of every model before they are stacked, and
            # one model's full-width initial weights (float32 and a float64 copy)
            "setup": (n_va + n_te) * h0 * 8 + self.nf * h0 * 12,
            # em, ec, eg (int32 each) + per epoch: sort order (int64), step ids (int16), row maps
            "entries": self.nnz_tr * (12 + 8 + 2) + n_tr * 10,
            # per model and batch slot: ~8 live (k, b, H) tensors per hidden layer
            # (pre-activation, ReLU, dropout mask, masked, their gradients) and ~8 (k, b, T) ones
            # (logits, codes, labels, mask, loss terms, gradients); the transposed batch matrix
            # holds ~60 bits per compound (int64 column + value) and a row pointer per row
            "step": M * b * (8 * widths + 8 * T) * item + M * b * 60 * (8 + item) + M * R * 8,
            "eval": 2_000_000 * (4 * item + 8) + 2_000_000 // h0 * T * (8 + 3 * item),
        }
        out["total"] = sum(out.values())
        return out


def plan_fleets(
    X: sp.csr_matrix,
    models: Sequence[PreparedModel],
    config: TrainConfig,
    *,
    max_bytes: int | None = None,
    max_models: int = 512,
    bits: Sequence[np.ndarray] | None = None,
) -> list[list[int]]:
    """Group model positions into fleets: same number of heads, similar batch counts and widths.

    Within a head count, models are sorted by (batches per epoch, trainable rows), then cut into
    consecutive chunks whose estimated memory (:func:`fleet_memory`, every buffer of the fleet)
    stays within ``max_bytes`` (default ``config.memory_budget_mb`` MB) and ``max_models``, and
    whose models have at least 3/4 of the widest one's trainable rows.
    A model whose estimate alone exceeds the budget still trains, in a fleet of its own.
    ``bits``: the models' trainable first-layer rows, when already known.
    """
    budget = config.memory_budget_mb * 2**20 if max_bytes is None else int(max_bytes)
    if bits is None:
        bits = [_trainable_bits(X, m.train_compounds, config.weight_decay > 0) for m in models]
    counts = np.diff(X.indptr)
    groups: dict[int, list[int]] = {}
    for i, m in enumerate(models):
        groups.setdefault(m.n_heads, []).append(i)
    fleets = []
    for _, idx in sorted(groups.items()):
        info = []
        for i in idx:
            r = len(bits[i])
            info.append((-models[i].n_batches(config.batch_size), -r, i, r))
        info.sort()
        cur: list[int] = []
        agg = _Agg()
        for _, _, i, r in info:
            st = FleetStats.of(X, models[i], r, counts=counts)
            nxt = agg.copy()
            nxt.add(st)
            # a much narrower model starts a new fleet: every model of a fleet pays for the
            # widest one's first layer (Adam, gradient buffer), for as long as it trains
            narrow = r < _NARROW * agg.R
            if cur and (len(cur) >= max_models or narrow or nxt.memory(config)["total"] > budget):
                fleets.append(cur)
                cur, nxt = [], _Agg()
                nxt.add(st)
            cur.append(i)
            agg = nxt
        if cur:
            fleets.append(cur)
    return fleets


def train_fleets(
    X: sp.csr_matrix,
    models: Sequence[PreparedModel],
    config: TrainConfig,
    *,
    progress: Callable[[int], None] | None = None,
    max_bytes: int | None = None,
) -> list[TrainOutcome]:
    """Train all prepared models, fleet by fleet; outcomes in the order of ``models``.

    ``max_bytes``: memory budget per fleet (default ``config.memory_budget_mb`` MB).
    """
    X = sp.csr_matrix(X)
    bits = [_trainable_bits(X, m.train_compounds, config.weight_decay > 0) for m in models]
    out: list[TrainOutcome | None] = [None] * len(models)
    for fleet in plan_fleets(X, models, config, max_bytes=max_bytes, bits=bits):
        with _threads(config, models[fleet[0]].n_heads):
            res = train_fleet(X, [models[i] for i in fleet], config, bits=[bits[i] for i in fleet])
        for i, r in zip(fleet, res, strict=True):
            out[i] = r
        if progress is not None:
            progress(len(fleet))
    return out  # type: ignore[return-value]


@contextlib.contextmanager
def _threads(config: TrainConfig, n_heads: int) -> Iterator[None]:
    """torch's CPU threads for one fleet (``TrainConfig.torch_threads``; 0 = auto: one thread
    for one- or two-head models), restored afterwards."""
    n = config.torch_threads or (1 if n_heads <= 2 else 0)
    before = torch.get_num_threads()
    if n and n != before:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _fused_adam_available(dev: torch.device, dt: torch.dtype) -> bool:
    if not hasattr(torch, "_fused_adam_"):
        return False
    try:
        p = [torch.zeros(2, device=dev, dtype=dt)]
        g = [torch.ones(2, device=dev, dtype=dt)]
        m = [torch.zeros(2, device=dev, dtype=dt)]
        v = [torch.zeros(2, device=dev, dtype=dt)]
        s = [torch.ones((), device=dev, dtype=torch.float32)]
        torch._fused_adam_(
            p, g, m, v, [], s, amsgrad=False, lr=1e-3, beta1=_BETA1, beta2=_BETA2,
            weight_decay=0.0, eps=_EPS, maximize=False, grad_scale=None, found_inf=None,
        )  # fmt: skip
        return bool(torch.allclose(p[0], torch.full_like(p[0], -1e-3), rtol=1e-4))
    except (RuntimeError, NotImplementedError, TypeError):
        return False


def _verdict(
    v: float,
    epoch: int,
    best_loss: float,
    best_epoch: int,
    e_min: int,
    e_max: int,
    patience: int,
    has_val: bool,
) -> tuple[bool, bool, bool]:
    """Early stopping after an epoch with validation loss ``v``: (improved, stop, snapshot).

    Stop when the budget ``e_max`` is spent, or after ``patience`` epochs without a strict
    improvement once ``e_min`` epochs are done. A model without inner validation "improves"
    every epoch (``v = -epoch``) and keeps its last one: its weights are snapshotted only when
    it stops (small models train min_steps epochs; copying every epoch was a sizeable share
    of their time).
    """
    improved = v < best_loss
    stop = epoch >= e_max or (not improved and epoch >= e_min and epoch - best_epoch >= patience)
    return improved, stop, improved and (stop or has_val)


class _Trainer:
    """One fleet's state and loop (see the module docstring)."""

    #: device forced by an engine (None: ``TrainConfig.device``)
    _device: str | None = None

    def __init__(
        self,
        X: sp.csr_matrix,
        models: Sequence[PreparedModel],
        config: TrainConfig,
        bits: Sequence[np.ndarray] | None = None,
    ):
        self.cfg = config
        self.dev = resolve_device(self._device or config.device)
        self.dt = config.torch_dtype
        self.models = list(models)
        M = len(models)
        nf = X.shape[1]
        hid = config.hidden
        self.T = T = max(m.n_heads for m in models)
        all_rows = config.weight_decay > 0
        X = sp.csr_matrix(X)
        whole = _whole(X)
        if bits is None:
            bits = [_trainable_bits(X, m.train_compounds, all_rows) for m in models]
        self.R = R = max(len(b) for b in bits)
        self.n_rows = np.array([len(b) for b in bits], dtype=np.int64)
        dt, dev = self.dt, self.dev

        # ---- parameters, compact first layer, frozen sums of val/test compounds
        shapes = [(R, hid[0]), (hid[0],)]
        for a, b in zip(hid[:-1], hid[1:], strict=True):
            shapes += [(a, b), (b,)]
        shapes += [(hid[-1], T), (T,)]
        params = [torch.zeros((M, *s), dtype=dt, device=dev) for s in shapes]
        frozen_val, frozen_test = [], []
        tr_rows, va_rows, te_rows = [], [], []
        for j, (m, b) in enumerate(zip(models, bits, strict=True)):
            w = init_weights(nf, m.n_heads, hid, m.init_seed)
            params[0][j, : len(b)] = w[0][torch.from_numpy(b)]
            for i in range(1, len(shapes) - 2):
                params[i][j] = w[i]
            params[-2][j, :, : m.n_heads] = w[-2]
            params[-1][j, : m.n_heads] = w[-1]
            lut = np.full(nf, -1, dtype=np.int64)
            lut[b] = np.arange(len(b))
            for comps, fz, rows in (
                (m.train_compounds, None, tr_rows),
                (m.val_compounds, frozen_val, va_rows),
                (m.test_compounds, frozen_test, te_rows),
            ):
                ind, off = whole.bags(comps[None, :], 0)
                ptr = np.append(off, len(ind))
                c = lut[ind]
                keep = c >= 0
                kept = np.diff(_ptr(keep, ptr))
                rows.append((c[keep].astype(np.int32), kept))
                if fz is not None:
                    if (~keep).any():
                        # frozen rows keep their initial values: sum them once, in float64
                        # (only the rows these compounds use are converted)
                        used, local = np.unique(ind[~keep], return_inverse=True)
                        fz.append(
                            F.embedding_bag(
                                torch.from_numpy(local.astype(np.int64)),
                                w[0][torch.from_numpy(used)].double(),
                                torch.from_numpy(_ptr(~keep, ptr)[:-1]),
                                mode="sum",
                            ).numpy()
                        )
                    else:
                        fz.append(np.zeros((len(comps), hid[0])))
        self.params = params
        self.best = [p.clone() for p in self.params]
        self._optimizer_state()
        self._static: tuple | None = None
        self._views: tuple | None = None
        self._ent: tuple | None = None

        self.tr = _stack_csr(tr_rows)
        self.va = _stack_csr(va_rows)
        self.te = _stack_csr(te_rows)
        n_tr = np.array([len(m.train_compounds) for m in models])
        n_va = np.array([len(m.val_compounds) for m in models])
        n_te = np.array([len(m.test_compounds) for m in models])
        self.tr_start = np.concatenate([[0], np.cumsum(n_tr)])[:-1]
        self.va_start = np.concatenate([[0], np.cumsum(n_va)])[:-1]
        self.te_start = np.concatenate([[0], np.cumsum(n_te)])[:-1]
        self.n_tr, self.n_va, self.n_te = n_tr, n_va, n_te

        def lab(codes: list[np.ndarray]) -> torch.Tensor:
            # int8 label codes (0 unlabelled, 1 inactive, 2 active), one byte per cell; one
            # extra all-zero row at the end: padding row id -1 picks it
            out = np.zeros((sum(len(c) for c in codes) + 1, T), dtype=np.int8)
            a = 0
            for c in codes:
                out[a : a + len(c), : c.shape[1]] = c
                a += len(c)
            return torch.from_numpy(out).to(dev)

        self.tr_lab = lab([m.train_lab for m in models])
        self.va_lab = lab([m.val_lab for m in models])

        def stack(parts: list[np.ndarray]) -> torch.Tensor:
            out = torch.zeros((sum(len(p) for p in parts) + 1, hid[0]), dtype=dt, device=dev)
            a = 0
            for p in parts:
                out[a : a + len(p)] = torch.from_numpy(p)
                a += len(p)
            return out

        self.frozen_val = stack(frozen_val)
        self.frozen_test = stack(frozen_test)
        self.drop_gen = [np.random.default_rng(m.dropout_seed) for m in models]
        self.order_rng = [batch_order(m.order_seed, len(m.train_compounds)) for m in models]

    def _optimizer_state(self) -> None:
        """Adam moments, step counts and the first-layer gradient buffer of every model."""
        M, R, H = len(self.models), self.R, self.cfg.hidden[0]
        self.exp_avg = [torch.zeros_like(p) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p) for p in self.params]
        self.steps = torch.zeros((len(self.params), M), dtype=torch.float32, device=self.dev)
        self.fused = _fused_adam_available(self.dev, self.dt)
        self._gbuf = torch.empty((M * R, H), dtype=self.dt, device=self.dev)

    def buffer_bytes(self) -> dict[str, int]:
        """Bytes actually held by the fleet's persistent buffers, by the kinds of
        :func:`fleet_memory` (``state``, ``labels``, ``bits``, ``frozen``, ``entries``)."""

        def nb(*xs: object) -> int:
            return sum(
                x.numel() * x.element_size() if isinstance(x, torch.Tensor) else x.nbytes
                for x in xs
            )

        out = {
            "state": nb(*self.params, *self.best, *self.exp_avg, *self.exp_avg_sq, self._gbuf),
            "labels": nb(self.tr_lab, self.va_lab),
            "bits": nb(*(a for c in (self.tr, self.va, self.te) for a in (c.rowptr, c.cidx))),
            "frozen": nb(self.frozen_val, self.frozen_test),
            "entries": nb(*self._entries()),
        }
        return out

    # ------------------------------------------------------------------ forward
    def _first(
        self, w1: torch.Tensor, flat_idx: torch.Tensor, offsets: torch.Tensor, k: int, b: int
    ) -> torch.Tensor:
        """First layer without bias, ``(k, b, H0)``: per bag, the sum of its bits' rows."""
        return F.embedding_bag(flat_idx, w1.reshape(k * self.R, -1), offsets, mode="sum").view(
            k, b, -1
        )

    def _forward(
        self,
        ps: Sequence[torch.Tensor],
        flat_idx: np.ndarray,
        offsets: np.ndarray,
        k: int,
        b: int,
        extra: torch.Tensor | None = None,
        masks: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """Logits ``(k, b, T)`` of the first ``k`` models in ``ps`` on a padded block of bags."""
        fi = torch.from_numpy(flat_idx).to(self.dev)
        of = torch.from_numpy(offsets).to(self.dev)
        return self._rest(self._first(ps[0], fi, of, k, b), ps, extra, masks)

    def _rest(
        self,
        h0: torch.Tensor,
        ps: Sequence[torch.Tensor],
        extra: torch.Tensor | None = None,
        masks: Sequence[torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """From first-layer sums ``(k, b, H0)`` to logits ``(k, b, T)`` (``ps[0]`` unused)."""
        h = h0 + ps[1].unsqueeze(1)
        if extra is not None:
            h = h + extra
        h = F.relu(h)
        if masks is not None:
            h = h * masks[0]
        n_mid = (len(ps) - 4) // 2
        for i in range(n_mid):
            h = F.relu(torch.baddbmm(ps[3 + 2 * i].unsqueeze(1), h, ps[2 + 2 * i]))
            if masks is not None:
                h = h * masks[1 + i]
        return torch.baddbmm(ps[-1].unsqueeze(1), h, ps[-2])

    def _labels(
        self, codes: torch.Tensor, rows: np.ndarray, k: int, b: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """0/1 labels and mask ``(k, b, T)`` of a ``(k, b)`` block of row ids (-1 = padding)."""
        c = codes[torch.from_numpy(rows.ravel()).to(self.dev)].view(k, b, -1)
        return (c == 2).to(self.dt), (c > 0).to(self.dt)

    @staticmethod
    def _loss(logits: torch.Tensor, y: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        """Per-model loss ``(k,)``: sum over heads of the mean BCE over labelled pairs."""
        el = F.binary_cross_entropy_with_logits(logits, y, reduction="none") * m
        return (el.sum(1) / m.sum(1).clamp_min(1)).sum(1)

    def _dropout_masks(self, pos: np.ndarray, sizes: np.ndarray, b: int) -> list[torch.Tensor]:
        p = self.cfg.dropout
        out = []
        for width in self.cfg.hidden:
            # numpy's PCG64 fills float32 uniforms several times faster than torch's CPU generator
            u = np.ones((len(pos), b, width), dtype=np.float32)
            for j, (mi, nb) in enumerate(zip(pos, sizes, strict=True)):
                if nb:
                    self.drop_gen[mi].random(out=u[j, :nb], dtype=np.float32)
            keep = torch.from_numpy(u).to(self.dev) >= p
            out.append(keep.to(self.dt).mul_(1 / (1 - p)))
        return out

    # ------------------------------------------------------------------ optimizer
    def _adam(self, k: int, grads: Sequence[torch.Tensor]) -> None:
        cfg = self.cfg
        self.steps[:, :k] += 1
        if self.fused:
            if self._views is None:
                # per-model views (their own step counts) of every active model, per parameter;
                # rebuilt only when stopped models are dropped
                self._views = tuple(
                    [list(t.unbind(0)) for t in ts]
                    for ts in (self.params, self.exp_avg, self.exp_avg_sq, self.steps)
                )
            ps, ms, vs, ss = ([v for per in lst for v in per[:k]] for lst in self._views)
            gs = [v for g in grads for v in g.unbind(0)]
            torch._fused_adam_(
                ps, gs, ms, vs, [], ss, amsgrad=False, lr=cfg.lr, beta1=_BETA1, beta2=_BETA2,
                weight_decay=cfg.weight_decay, eps=_EPS, maximize=False, grad_scale=None,
                found_inf=None,
            )  # fmt: skip
            return
        with torch.no_grad():
            for i, g in enumerate(grads):
                p, m, v = self.params[i][:k], self.exp_avg[i][:k], self.exp_avg_sq[i][:k]
                if cfg.weight_decay:
                    g = g.add(p, alpha=cfg.weight_decay)
                step = self.steps[i, :k].to(self.dt)
                shape = (k,) + (1,) * (p.dim() - 1)
                bc1 = (1 - _BETA1**step).view(shape)
                bc2s = (1 - _BETA2**step).sqrt().view(shape)
                m.mul_(_BETA1).add_(g, alpha=1 - _BETA1)
                v.mul_(_BETA2).addcmul_(g, g, value=1 - _BETA2)
                denom = (v.sqrt() / bc2s).add_(_EPS)
                p.sub_(m / denom * (cfg.lr / bc1))

    # ------------------------------------------------------------------ loop
    def run(self) -> list[TrainOutcome]:
        cfg = self.cfg
        t0 = time.perf_counter()
        M = len(self.models)
        bs = cfg.batch_size
        nb = np.array([m.n_batches(bs) for m in self.models])
        if np.any(np.diff(nb) > 0):
            raise ValueError("models of a fleet must be sorted by batches per epoch, descending")
        active = np.arange(M)  # active position j holds model active[j]
        best_loss = np.full(M, np.inf)
        best_epoch = np.zeros(M, dtype=np.int64)
        epochs = np.zeros(M, dtype=np.int64)
        model_steps = np.zeros(M, dtype=np.int64)
        losses: list[list[float]] = [[] for _ in range(M)]
        budget = np.array([m.epoch_budget(cfg) for m in self.models], dtype=np.int64).reshape(M, 2)
        e_min, e_max = budget[:, 0], budget[:, 1]
        for epoch in range(1, int(e_max.max(initial=0)) + 1):
            if len(active) == 0:
                break
            k_all = len(active)
            nb_a = nb[active]
            if nb_a.max() == 1:
                st = self._full_batch(active)
                self._step(None, active, st[4], st[5], static=st)
                model_steps[active] += 1
                nb_a = nb_a[:0]
            # per-epoch permuted training rows, padded to the widest model
            width = int(nb_a.max(initial=0)) * bs
            rows = np.full((k_all, width), -1, dtype=np.int64)
            for j, mi in enumerate(active[: len(nb_a)]):
                # one batch holds the whole set: its order does not change the gradient, and
                # natural order keeps the model's numbers the same on the full-batch fast path
                n_mi = self.n_tr[mi]
                perm = np.arange(n_mi) if nb[mi] == 1 else self.order_rng[mi].permutation(n_mi)
                rows[j, : len(perm)] = self.tr_start[mi] + perm
            n_steps = int(nb_a.max(initial=0))
            if n_steps:
                tb = self._epoch_transposed(active, rows, n_steps)
            for s in range(n_steps):
                k = int((nb_a > s).sum())
                blk = rows[:k, s * bs : (s + 1) * bs]
                sizes = (blk >= 0).sum(1)
                b = int(sizes.max())
                blk = blk[:, :b]
                self._step(blk, active[:k], sizes, b, xt=tb(s, k, b))
                model_steps[active[:k]] += 1
            epochs[active] = epoch
            vl = self._val_losses(active)
            stop = np.zeros(len(active), dtype=bool)
            improved = []
            for j, mi in enumerate(active):
                v = vl[j] if self.n_va[mi] else -float(epoch)
                losses[mi].append(float(v))
                better, stop[j], snap = _verdict(
                    v, epoch, best_loss[mi], best_epoch[mi], e_min[mi], e_max[mi],
                    cfg.patience, bool(self.n_va[mi]),
                )  # fmt: skip
                if better:
                    best_loss[mi], best_epoch[mi] = v, epoch
                if snap:
                    improved.append(j)
            with torch.no_grad():
                # slice copies run at memcpy speed, unlike index_select; one per run of
                # consecutive positions whose model ids are consecutive too
                for a, b in _runs(np.asarray(improved, dtype=np.int64), active):
                    for p, bst in zip(self.params, self.best, strict=True):
                        bst[active[a] : active[a] + b - a].copy_(p[a:b])
            if stop.any():
                keep = np.flatnonzero(~stop)
                self._compact(keep)
                active = active[keep]
        wall = time.perf_counter() - t0
        scores = self._test_scores()
        share = model_steps / max(1, model_steps.sum())
        return [
            TrainOutcome(
                test_scores=scores[i],
                epochs=int(epochs[i]),
                best_epoch=int(best_epoch[i]),
                seconds=float(wall * share[i]),
                val_losses=losses[i],
            )
            for i in range(M)
        ]

    @torch.no_grad()
    def _compact(self, keep: np.ndarray) -> None:
        """Drop stopped models in place: position j takes position keep[j] (keep increasing)."""
        for lst in (self.params, self.exp_avg, self.exp_avg_sq):
            for i, p in enumerate(lst):
                for j, src in enumerate(keep):
                    if src != j:  # src > j, never overwritten before it is read
                        p[j].copy_(p[src])
                lst[i] = p[: len(keep)]
        self.steps = self.steps[:, torch.as_tensor(keep, device=self.dev)]
        self._static = None
        self._views = None

    def _full_batch(self, active: np.ndarray) -> tuple:
        """Static inputs when every active model takes one batch per epoch (its whole set).

        The batch is then the same set every epoch; its order does not change the loss (a sum),
        so it is kept in natural order and the first layer's gradient is one sparse-dense
        product with the transposed bag matrix, built once (torch's embedding_bag backward
        sorts the indices every step, several times slower).
        """
        if self._static is None:
            k = len(active)
            n = self.n_tr[active]
            b = int(n.max())
            rows = self._padded_rows(active, self.tr_start, self.n_tr, 0, b)
            flat_idx, offsets = self.tr.bags(rows, self.R)
            fi = torch.from_numpy(flat_idx).to(self.dev)
            of = torch.from_numpy(offsets).to(self.dev)
            xt = self._epoch_transposed(active, rows, 1)(0, k, b)  # (k*R, k*b)
            self._static = (rows, fi, of, xt, n, b)
        return self._static

    def _entries(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every set bit of every model's training compounds, sorted by (model, compact row).

        Returns (model position in the fleet, compact row, global training row id). Built once
        per fleet with scipy's linear-time CSR -> CSC conversion per model; dropping stopped
        models keeps the order, so it never needs sorting again.
        """
        if self._ent is None:
            em, ec, eg = [], [], []
            for j in range(len(self.models)):
                a, n = self.tr_start[j], self.n_tr[j]
                ptr = self.tr.rowptr[a : a + n + 1] - self.tr.rowptr[a]
                idx = self.tr.cidx[self.tr.rowptr[a] : self.tr.rowptr[a + n]]
                csc = sp.csr_matrix(
                    (np.ones(len(idx), np.int8), idx, ptr), shape=(n, self.R)
                ).tocsc()
                cnt = np.diff(csc.indptr)
                em.append(np.full(len(idx), j, dtype=np.int32))
                ec.append(np.repeat(np.arange(self.R, dtype=np.int32), cnt))
                eg.append((a + csc.indices).astype(np.int32))
            self._ent = (np.concatenate(em), np.concatenate(ec), np.concatenate(eg))
        return self._ent

    def _epoch_transposed(
        self, active: np.ndarray, rows: np.ndarray, n_steps: int
    ) -> Callable[[int, int, int], torch.Tensor]:
        """Per step, the transposed bag matrix ``(k*R, k*b)`` (CSR) of this epoch's batches.

        ``grad W1 = X_b^T @ grad h0`` as one sparse-dense product into a reusable buffer;
        torch's embedding_bag backward sorts the indices every step and allocates a dense
        gradient, several times slower. One stable radix sort per epoch (by batch) yields
        every step's entries already sorted by row.
        """
        em, ec, eg = self._entries()
        pos = np.full(len(self.models), -1, dtype=np.int64)
        pos[active] = np.arange(len(active))
        if len(active) < len(self.models):
            keep = pos[em] >= 0
            em, ec, eg = em[keep], ec[keep], eg[keep]
        bs = self.cfg.batch_size
        n_rows = int(self.tr.rowptr.shape[0] - 1)
        step_of = np.zeros(n_rows, dtype=np.int16)
        slot_of = np.zeros(n_rows, dtype=np.int64)
        valid = rows >= 0
        q = np.broadcast_to(np.arange(rows.shape[1]), rows.shape)[valid]
        g = rows[valid]
        step_of[g] = q // bs
        slot_of[g] = q % bs
        es = step_of[eg]
        order = np.argsort(es, kind="stable")  # radix sort on int16
        bounds = np.searchsorted(es[order], np.arange(n_steps + 1))
        del es

        def build(s: int, k: int, b: int) -> torch.Tensor:
            sl = order[bounds[s] : bounds[s + 1]]
            ep = pos[em[sl]]
            r = ep * self.R + ec[sl]
            col = ep * b + slot_of[eg[sl]]
            crow = np.zeros(k * self.R + 1, dtype=np.int64)
            np.cumsum(np.bincount(r, minlength=k * self.R), out=crow[1:])
            with warnings.catch_warnings():  # "sparse CSR support is in beta"
                warnings.simplefilter("ignore", UserWarning)
                return torch.sparse_csr_tensor(
                    torch.from_numpy(crow),
                    torch.from_numpy(col),
                    torch.ones(len(col), dtype=self.dt),
                    size=(k * self.R, k * b),
                ).to(self.dev)

        return build

    def _step(
        self,
        blk: np.ndarray | None,
        ids: np.ndarray,
        sizes: np.ndarray,
        b: int,
        static: tuple | None = None,
        xt: torch.Tensor | None = None,
    ) -> None:
        k = len(ids)
        rest = [p[:k].detach().requires_grad_() for p in self.params[1:]]
        w1 = self.params[0][:k]
        if static is not None:
            blk, fi, of, xt, _, _ = static
        else:
            flat_idx, offsets = self.tr.bags(blk, self.R)
            fi = torch.from_numpy(flat_idx).to(self.dev)
            of = torch.from_numpy(offsets).to(self.dev)
        with torch.no_grad():
            h0 = self._first(w1, fi, of, k, b)
        leaves = [h0.requires_grad_(), *rest]
        masks = self._dropout_masks(ids, sizes, b) if self.cfg.dropout > 0 else None
        logits = self._rest(h0, [w1, *rest], masks=masks)
        y, m = self._labels(self.tr_lab, blk, k, b)
        loss = self._loss(logits, y, m).sum()
        grads = list(torch.autograd.grad(loss, leaves))
        g1 = self._gbuf[: k * self.R]
        torch.addmm(g1, xt, grads[0].reshape(k * b, -1), beta=0, out=g1)
        grads[0] = g1.view(k, self.R, -1)
        self._adam(k, grads)

    def _padded_rows(
        self, ids: np.ndarray, start: np.ndarray, n: np.ndarray, lo: int, hi: int
    ) -> np.ndarray:
        """(k, hi - lo) row ids of compounds lo..hi of each model, -1 where a model has fewer."""
        rows = np.full((len(ids), hi - lo), -1, dtype=np.int64)
        for j, mi in enumerate(ids):
            c = max(0, min(n[mi], hi) - lo)
            rows[j, :c] = start[mi] + lo + np.arange(c)
        return rows

    @torch.no_grad()
    def _val_losses(self, active: np.ndarray) -> np.ndarray:
        k = len(active)
        out = np.zeros(k)
        vmax = int(self.n_va[active].max()) if k else 0
        if vmax == 0:
            return out
        chunk = max(1, 2_000_000 // max(1, vmax * self.cfg.hidden[0]))
        for a in range(0, k, chunk):
            ids = active[a : a + chunk]
            rows = self._padded_rows(ids, self.va_start, self.n_va, 0, vmax)
            ps = [p[a : a + len(ids)] for p in self.params]
            logits = self._eval_block(ps, self.va, rows, self.frozen_val)
            y, m = self._labels(self.va_lab, rows, len(ids), vmax)
            out[a : a + len(ids)] = self._loss(logits, y, m).double().cpu().numpy()
        return out

    def _eval_block(
        self, ps: Sequence[torch.Tensor], csr: _Csr, rows: np.ndarray, frozen: torch.Tensor
    ) -> torch.Tensor:
        k, b = rows.shape
        flat_idx, offsets = csr.bags(rows, self.R)
        sel = torch.from_numpy(rows.ravel()).to(self.dev)
        extra = frozen[sel].view(k, b, -1)
        return self._forward(ps, flat_idx, offsets, k, b, extra=extra)

    @torch.no_grad()
    def _test_scores(self) -> list[np.ndarray]:
        M = len(self.models)
        out: list[np.ndarray] = []
        tmax = int(self.n_te.max()) if M else 0
        ids_all = np.arange(M)
        if tmax == 0:
            return [np.zeros((0, m.n_heads)) for m in self.models]
        chunk = max(1, 2_000_000 // max(1, tmax * self.cfg.hidden[0]))
        for a in range(0, M, chunk):
            ids = ids_all[a : a + chunk]
            rows = self._padded_rows(ids, self.te_start, self.n_te, 0, tmax)
            ps = [p[a : a + len(ids)] for p in self.best]
            logits = self._eval_block(ps, self.te, rows, self.frozen_test)
            logits = logits.double().cpu().numpy()
            for j, mi in enumerate(ids):
                out.append(logits[j, : self.n_te[mi], : self.models[mi].n_heads])
        return out


def _runs(pos: np.ndarray, ids: np.ndarray) -> list[tuple[int, int]]:
    """Half-open ranges [a, b) of ``pos`` that are consecutive in position and in ``ids``."""
    if len(pos) == 0:
        return []
    brk = np.flatnonzero((np.diff(pos) != 1) | (np.diff(ids[pos]) != 1)) + 1
    starts = np.r_[0, brk]
    ends = np.r_[brk, len(pos)]
    return [(int(pos[s]), int(pos[e - 1]) + 1) for s, e in zip(starts, ends, strict=True)]


def _nonempty(bits: np.ndarray) -> np.ndarray:
    return bits if len(bits) else np.zeros(1, dtype=np.int64)


def _ptr(keep: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """indptr of a CSR after dropping the entries where ``keep`` is False."""
    c = np.concatenate([[0], np.cumsum(keep)])
    return c[indptr]


def _stack_csr(parts: list[tuple[np.ndarray, np.ndarray]]) -> _Csr:
    cidx = np.concatenate([p[0] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    counts = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0, dtype=np.int64)
    rowptr = np.zeros(len(counts) + 1, dtype=np.int64)
    np.cumsum(counts, out=rowptr[1:])
    return _Csr(rowptr=rowptr, cidx=cidx.astype(np.int32, copy=False))


class _CompiledTrainer(_Trainer):
    """The ``compiled`` engine: the fleet's models one after the other, each model's training
    one call of :func:`mtlc._compiled.train_model`, so a model's state stays in the CPU cache (see
    :mod:`mtlc._compiled`). Same set-up (stacked parameters, frozen sums, label codes), random
    streams, early stopping and test scoring as :class:`_Trainer`."""

    _device = "cpu"

    def _optimizer_state(self) -> None:
        # models train one after the other: one model's Adam moments, reused (its step count
        # lives in the kernel's loop); no gradient buffer (the first layer is updated row by row)
        self.exp_avg = [torch.zeros_like(p[:1]) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p[:1]) for p in self.params]
        self._gbuf = torch.zeros((0, self.cfg.hidden[0]), dtype=self.dt)

    def run(self) -> list[TrainOutcome]:
        try:
            from mtlc._compiled import pcg64_state, set_pcg64_state, train_model
        except ImportError as exc:  # numba is a dependency; a broken install says so
            raise ConfigError(
                f"TrainConfig.engine='compiled' needs numba ({exc}): pip install numba, or "
                "use engine='torch'"
            ) from None

        cfg = self.cfg
        p_drop = float(cfg.dropout)
        H = cfg.hidden[0]
        arr = [t.numpy() for t in self.params]
        mom = [t.numpy() for t in self.exp_avg]
        sq = [t.numpy() for t in self.exp_avg_sq]
        best = [t.numpy() for t in self.best]
        rowptr, cidx, lab = self.tr.rowptr, self.tr.cidx, self.tr_lab.numpy()
        va_ptr, va_idx, va_lab = self.va.rowptr, self.va.cidx, self.va_lab.numpy()
        va_frozen = self.frozen_val.numpy()
        no_u = np.zeros((0, H), dtype=np.float32)
        out_meta = []
        for j, m in enumerate(self.models):
            t0 = time.perf_counter()
            n, bs = int(self.n_tr[j]), cfg.batch_size
            e_min, e_max = m.epoch_budget(cfg)
            va_rows = self.va_start[j] + np.arange(self.n_va[j], dtype=np.int64)
            for x in (*mom, *sq):
                x.fill(0.0)
            u = np.empty((n, H), dtype=np.float32) if p_drop > 0 else no_u
            start = self.tr_start[j]
            if m.n_batches(bs) == 1:  # one batch holds the whole set: natural order
                orders = start + np.arange(n, dtype=np.int64)[None, :]
            else:  # every epoch's order at once: the same stream the torch engine draws
                orders = start + np.stack([self.order_rng[j].permutation(n) for _ in range(e_max)])
            gen = self.drop_gen[j]
            st = pcg64_state(gen)  # the dropout stream, drawn in compiled code
            losses = np.empty(e_max)
            epoch, best_epoch = train_model(
                *(a[j] for a in arr), *(x[0] for pair in zip(mom, sq, strict=True) for x in pair),
                *(b[j] for b in best),
                int(self.n_rows[j]), orders, bs, rowptr, cidx, lab, st, u, p_drop, cfg.lr,
                cfg.weight_decay, va_rows, va_ptr, va_idx, va_lab, va_frozen,
                e_min, e_max, cfg.patience, losses,
            )  # fmt: skip
            set_pcg64_state(gen, st)
            out_meta.append((epoch, best_epoch, time.perf_counter() - t0, losses[:epoch].tolist()))
        scores = self._test_scores()
        return [
            TrainOutcome(
                test_scores=scores[i], epochs=e, best_epoch=be, seconds=float(sec), val_losses=ls
            )
            for i, (e, be, sec, ls) in enumerate(out_meta)
        ]


def train_fleet(
    X: sp.csr_matrix,
    models: Sequence[PreparedModel],
    config: TrainConfig,
    *,
    bits: Sequence[np.ndarray] | None = None,
) -> list[TrainOutcome]:
    """Train one fleet of prepared models together; outcomes in the order of ``models``.

    ``bits``: the models' trainable first-layer rows when already known (as ``plan_fleets``
    computes them).
    """
    nb = np.array([m.n_batches(config.batch_size) for m in models])
    order = np.argsort(-nb, kind="stable")  # most batches first: active models form a prefix
    b_sorted = None if bits is None else [bits[i] for i in order]
    trainer = _CompiledTrainer if config.engine == "compiled" else _Trainer
    res = trainer(X, [models[i] for i in order], config, bits=b_sorted).run()
    out: list[TrainOutcome] = [None] * len(models)  # type: ignore[list-item]
    for j, i in enumerate(order):
        out[i] = res[j]
    return out
