"""Foundation-model context effects: pretrain a trunk on a context, then learn a target on top.

A trunk trained on many tasks is a small foundation model. For a target task ``i`` and one
cross-validation fold:

1. **Pretrain** a :class:`~mtlc.models.MultiTaskNet` on a *context*: every training pair (of the
   fold's training compounds) of the context tasks, one head per context task, Adam with early
   stopping on an inner validation split of those compounds. Contexts are named by strings:

   ==========================  ====================================================
   ``"scratch"``               nothing (a freshly initialized trunk)
   ``"all"``                   every task except the target
   ``"pair:T"``                task ``T`` alone
   ``"loo:T"``                 every task except the target and ``T`` (leave one out)
   ``"random:k=5:s=0"``        ``k`` tasks drawn at random (seed ``s``, per target)
   ==========================  ====================================================

   Trunks are cached on disk (:class:`TrunkCache`): the key is the data set, split, fold, the
   exact context training pairs, the seed and the training configuration's hash, so targets of
   a fold that share a context (e.g. ``pair:T``) reuse one trunk, and reruns retrain nothing.

2. **Learn the target** at graded sample sizes ``n_i`` (nested, stratified subsamples of the
   target's training pairs, :class:`mtlc.designs.FoldPools`) in two regimes:

   * ``foundation-probe``: linear probe, a logistic head (L2, ``C=probe_c``) on the frozen
     trunk's features (eval mode, no dropout);
   * ``foundation-finetune``: the whole network trained on the target, trunk initialized from
     the pretrained one, a fresh head; same optimizer and early stopping as pretraining.

   ``foundation-finetune`` with ``context="scratch"`` is plain single-task training: the
   reference every shift is measured against (:func:`context_shifts`).

Results go to a :class:`mtlc.store.ResultsStore` (resumable, one job per (fold, target, context,
regime, size)); the store schema has no ``context`` column, so the context name is stored in
``partner`` and :func:`read_foundation` exposes it as ``context``.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import time
import warnings
import zlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

from mtlc.datasets._core import MultiTaskDataset
from mtlc.designs import FoldPools, job_id
from mtlc.errors import ConfigError
from mtlc.evaluate import evaluation_rows
from mtlc.models import MultiTaskNet, SparseBatch, masked_bce, resolve_device
from mtlc.store import ResultsStore
from mtlc.training import TrainConfig

__all__ = [
    "REGIMES",
    "context_tasks",
    "TrunkCache",
    "pretrain_trunk",
    "learn_target",
    "run_foundation",
    "FoundationSummary",
    "read_foundation",
    "context_shifts",
    "summarize_shifts",
    "decompose",
    "n_equivalent",
    "label_partners",
    "decomposition_contexts",
]

REGIMES = {"probe": "foundation-probe", "finetune": "foundation-finetune"}


# --------------------------------------------------------------------------- contexts
def context_tasks(ds: MultiTaskDataset, target: str | int, context: str) -> list[int]:
    """Task indices (sorted) a context pretrains on, for ``target``; see the module docstring.

    Raises :class:`ConfigError` for an unknown context, a partner equal to the target or not
    in ``ds``, or ``k`` larger than the number of other tasks.
    """
    t = ds.task_index(target) if not isinstance(target, (int, np.integer)) else int(target)
    tid = str(ds.tasks["task_id"].iloc[t])
    others = [j for j in range(ds.n_tasks) if j != t]
    kind, _, rest = context.partition(":")
    if kind == "scratch" and not rest:
        return []
    if kind == "all" and not rest:
        return others
    if kind in ("pair", "loo"):
        try:
            j = ds.task_index(rest)
        except (KeyError, IndexError, ValueError):
            raise ConfigError(
                f"context {context!r}: task {rest!r} is not in {ds.name!r}; name a task id"
            ) from None
        if j == t:
            raise ConfigError(f"context {context!r} names the target {tid!r} itself")
        return [j] if kind == "pair" else [o for o in others if o != j]
    if kind == "random":
        opts = dict(p.split("=", 1) for p in rest.split(":") if "=" in p)
        try:
            k, s = int(opts.get("k", "")), int(opts.get("s", "0"))
        except ValueError:
            k = -1
        if k < 1 or k > len(others):
            raise ConfigError(
                f"context {context!r}: write random:k=K:s=SEED with 1 <= K <= {len(others)}"
            )
        rng = np.random.default_rng([s, zlib.crc32(tid.encode())])
        return sorted(rng.choice(others, size=k, replace=False).tolist())
    raise ConfigError(
        f"unknown context {context!r}; use scratch, all, pair:TASK, loo:TASK or random:k=K:s=SEED"
    )


# --------------------------------------------------------------------------- trunk cache
class TrunkCache:
    """Pretrained trunk weights on disk, one ``<key>.pt`` per trunk, written atomically.

    ``path=None`` keeps trunks in memory only (tests).
    """

    def __init__(self, path: str | os.PathLike | None = None) -> None:
        self.path = None if path is None else Path(path)
        self._mem: dict[str, tuple[dict[str, torch.Tensor], dict[str, Any]]] = {}
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> tuple[dict[str, torch.Tensor], dict[str, Any]] | None:
        if key in self._mem:
            self.hits += 1
            return self._mem[key]
        if self.path is not None:
            f = self.path / f"{key}.pt"
            if f.is_file():
                try:
                    blob = torch.load(f, map_location="cpu", weights_only=True)
                    out = (blob["state"], json.loads(blob["info"]))
                except Exception as exc:  # noqa: BLE001 - a bad cache file is retrained
                    warnings.warn(f"ignoring unreadable trunk cache {f}: {exc}", stacklevel=2)
                else:
                    self._mem[key] = out
                    self.hits += 1
                    return out
        self.misses += 1
        return None

    def put(self, key: str, state: dict[str, torch.Tensor], info: dict[str, Any]) -> None:
        self._mem[key] = (state, info)
        if self.path is None:
            return
        self.path.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save({"state": state, "info": json.dumps(info)}, buf)
        tmp = self.path / f".tmp-{os.getpid()}-{key}.pt"
        try:
            with open(tmp, "wb") as fh:
                fh.write(buf.getvalue())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path / f"{key}.pt")
        finally:
            if tmp.exists():
                tmp.unlink()


def _digest(*arrays: np.ndarray, extra: Mapping[str, Any]) -> str:
    h = hashlib.sha256(json.dumps(extra, sort_keys=True, default=str).encode())
    for a in arrays:
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
        h.update(b"|")
    return h.hexdigest()[:24]


# --------------------------------------------------------------------------- training loop
class _threads:
    """Run torch with ``n`` intra-op threads inside the block (None: leave as is).

    The networks here are small: on a shared 2-core machine two threads spend more time
    synchronizing than computing (measured: a pretraining run took 14 s with 2 threads, 5 s
    with 1, under load).
    """

    def __init__(self, n: int | None) -> None:
        self.n, self.old = n, torch.get_num_threads()
        self.pool: Any = None

    def __enter__(self) -> None:
        if self.n:
            from threadpoolctl import threadpool_limits

            torch.set_num_threads(int(self.n))
            # BLAS threads too: the probe's lbfgs on 2 threads under load was 20x slower
            self.pool = threadpool_limits(int(self.n))

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.old)
        if self.pool is not None:
            self.pool.restore_original_limits()


def _seed(*parts: Any) -> int:
    ints = [p if isinstance(p, (int, np.integer)) else zlib.crc32(str(p).encode()) for p in parts]
    return int(np.random.SeedSequence([int(i) for i in ints]).generate_state(1)[0])


def _new_net(n_features: int, n_heads: int, config: TrainConfig, seed: int) -> MultiTaskNet:
    torch.manual_seed(seed)
    return MultiTaskNet(n_features, n_heads, hidden=config.hidden, dropout=config.dropout)


def _split_val(comps: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, validation) compounds; validation empty when ``fraction`` is 0 or too few compounds."""
    n_val = 0
    if fraction > 0 and len(comps) >= 2:
        n_val = min(len(comps) - 1, max(1, int(round(fraction * len(comps)))))
    perm = np.random.default_rng(seed).permutation(len(comps))
    return np.sort(comps[perm[n_val:]]), np.sort(comps[perm[:n_val]])


def _dense(ds: MultiTaskDataset, pair_idx: np.ndarray, tasks: Sequence[int], comps: np.ndarray):
    """Dense (len(comps), len(tasks)) labels and mask of the given pairs (indices into ds.rows)."""
    local = {int(t): k for k, t in enumerate(tasks)}
    r = np.searchsorted(comps, ds.rows[pair_idx])
    ok = (r < len(comps)) & (comps[np.minimum(r, len(comps) - 1)] == ds.rows[pair_idx])
    c = np.array([local[int(t)] for t in ds.cols[pair_idx]], dtype=np.int64)
    Y = np.zeros((len(comps), len(tasks)), dtype=np.float32)
    M = np.zeros_like(Y)
    Y[r[ok], c[ok]] = ds.y[pair_idx][ok]
    M[r[ok], c[ok]] = 1.0
    return Y, M


def _fit(
    net: MultiTaskNet,
    X: sp.csr_matrix,
    comps: np.ndarray,
    Y: np.ndarray,
    M: np.ndarray,
    config: TrainConfig,
    seed: int,
    min_steps: int = 0,
) -> dict[str, Any]:
    """Adam on masked BCE with early stopping on an inner validation split (by compound).

    Trains ``net`` in place (best epoch kept) and returns epochs, best_epoch, seconds, n_val.
    ``min_steps``: at least this many optimizer steps are allowed (``max_epochs`` and
    ``patience`` are stretched by the same factor when an epoch has few batches), so that a
    target with 16 samples (one batch per epoch) is not stopped after 15 steps.
    """
    t0 = time.perf_counter()
    dev = resolve_device(config.device)
    dt = config.torch_dtype
    net.to(device=dev, dtype=dt)
    s_split, s_order, s_drop = (_seed(seed, k) for k in ("split", "order", "dropout"))
    fit_c, val_c = _split_val(np.arange(len(comps)), config.val_fraction, s_split)
    opt = torch.optim.Adam(
        [p for p in net.parameters() if p.requires_grad],
        lr=config.lr,
        weight_decay=config.weight_decay,
    )
    torch.manual_seed(s_drop)
    tY, tM = torch.as_tensor(Y, dtype=dt, device=dev), torch.as_tensor(M, dtype=dt, device=dev)
    xv = SparseBatch.from_csr(X, comps[val_c], device=dev)
    rng = np.random.default_rng(s_order)
    best, best_epoch, epoch = float("inf"), 0, 0
    best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
    per_epoch = max(1, -(-len(fit_c) // config.batch_size))
    stretch = max(1.0, min_steps / (per_epoch * config.max_epochs))
    max_epochs = int(np.ceil(config.max_epochs * stretch))
    patience = int(np.ceil(config.patience * stretch))
    for epoch in range(1, max_epochs + 1):
        net.train()
        perm = fit_c[rng.permutation(len(fit_c))]
        for s in range(0, len(perm), config.batch_size):
            b = perm[s : s + config.batch_size]
            loss = masked_bce(net(SparseBatch.from_csr(X, comps[b], device=dev)), tY[b], tM[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if len(val_c):
            net.eval()
            with torch.no_grad():
                vl = float(masked_bce(net(xv), tY[val_c], tM[val_c]))
        else:
            vl = -float(epoch)  # no validation: the last epoch is kept
        if vl < best:
            best, best_epoch = vl, epoch
            best_state = {k: v.detach().clone() for k, v in net.state_dict().items()}
        elif epoch - best_epoch >= patience:
            break
    net.load_state_dict(best_state)
    net.eval()
    return {
        "epochs": epoch,
        "best_epoch": best_epoch,
        "seconds": time.perf_counter() - t0,
        "n_val": int(M[val_c].sum()),
        "n_train": int(M[fit_c].sum()),
    }


def _trunk_state(net: MultiTaskNet) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().to("cpu", torch.float64).clone()
        for k, v in net.state_dict().items()
        if not k.startswith("head.")
    }


def pretrain_trunk(
    ds: MultiTaskDataset,
    pools: FoldPools,
    tasks: Sequence[int],
    config: TrainConfig,
    *,
    seed: int = 0,
    cache: TrunkCache | None = None,
    split: str = "",
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Trunk weights after training on every training pair of ``tasks`` in ``pools``' fold.

    Returns ``(state, info)``: ``state`` the trunk's ``state_dict`` entries (float64, CPU;
    no head), ``info`` with ``n_pairs``, ``epochs``, ``best_epoch``, ``seconds``, ``cached``.
    With no tasks (scratch) the trunk is the seeded random initialization (nothing cached).
    """
    tasks = sorted(int(t) for t in tasks)
    n_feat = ds.X.shape[1]
    init_seed = _seed(seed, pools.fold, "pretrain", *tasks)
    if not tasks:
        net = _new_net(n_feat, 1, config, _seed(seed, pools.fold, "scratch"))
        return _trunk_state(net), {"n_pairs": 0, "epochs": 0, "seconds": 0.0, "cached": False}
    pair_idx = np.concatenate([pools.take(t, int(pools.available[t])) for t in tasks])
    key = _digest(
        pair_idx,
        extra={
            "dataset": ds.name,
            "shape": [ds.n_compounds, ds.n_tasks, n_feat],
            "split": split,
            "fold": pools.fold,
            "seed": seed,
            "config": config.hash(),
            "tasks": [str(ds.tasks["task_id"].iloc[t]) for t in tasks],
        },
    )
    if cache is not None:
        hit = cache.get(key)
        if hit is not None:
            return hit[0], {**hit[1], "cached": True}
    comps = np.unique(ds.rows[pair_idx]).astype(np.int64)
    Y, M = _dense(ds, pair_idx, tasks, comps)
    net = _new_net(n_feat, len(tasks), config, init_seed)
    fit = _fit(net, ds.X, comps, Y, M, config, init_seed)
    info = {"n_pairs": int(len(pair_idx)), **fit, "key": key}
    state = _trunk_state(net)
    if cache is not None:
        cache.put(key, state, info)
    return state, {**info, "cached": False}


def _features(net: MultiTaskNet, X: sp.csr_matrix, comps: np.ndarray) -> np.ndarray:
    net.eval()
    dev = next(net.parameters()).device
    with torch.no_grad():
        return net.trunk(SparseBatch.from_csr(X, comps, device=dev)).double().cpu().numpy()


def learn_target(
    ds: MultiTaskDataset,
    trunk: Mapping[str, torch.Tensor],
    train_pairs: np.ndarray,
    test_compounds: np.ndarray,
    target: int,
    config: TrainConfig,
    *,
    mode: str,
    seed: int,
    probe_c: float = 1.0,
    min_steps: int = 300,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
    """Learn ``target`` from ``train_pairs`` (indices into ``ds.rows``) on top of ``trunk``.

    ``mode="probe"``: logistic regression (L2, ``C=probe_c``, lbfgs) on the frozen trunk's
    features; ``mode="finetune"``: the network (trunk from ``trunk``, new head seeded by
    ``seed``) trained on the target with early stopping, allowed at least ``min_steps``
    optimizer steps (see :func:`_fit`; otherwise small ``n`` is undertrained and every
    context looks better than scratch). Returns ``(test_y, test_mask,
    scores, info)`` over the test compounds labelled for the target (``(m, 1)`` arrays).
    """
    from sklearn.linear_model import LogisticRegression

    if mode not in REGIMES:
        raise ConfigError(f"mode must be one of {list(REGIMES)}, got {mode!r}")
    lookup = ds.labels_sparse().tocsr()
    test_lab = lookup[np.asarray(test_compounds)][:, [target]].toarray().ravel()
    test_c = np.asarray(test_compounds)[test_lab != 0]
    ty = (test_lab[test_lab != 0] > 0).astype(np.float64)[:, None]
    tm = np.ones_like(ty)
    comps = np.sort(ds.rows[train_pairs].astype(np.int64))
    net = _new_net(ds.X.shape[1], 1, config, _seed(seed, "head"))
    sd = net.state_dict()
    sd.update({k: v.to(sd[k].dtype) for k, v in trunk.items()})
    net.load_state_dict(sd)
    t0 = time.perf_counter()
    if mode == "probe":
        F_tr = _features(net, ds.X, comps)
        Y, _ = _dense(ds, train_pairs, [target], comps)
        y = Y[:, 0]
        if y.min() == y.max():
            scores = np.zeros(len(test_c))
        else:
            clf = LogisticRegression(C=probe_c, max_iter=2000)
            clf.fit(F_tr, y)
            scores = clf.decision_function(_features(net, ds.X, test_c))
        info = {
            "epochs": 0,
            "best_epoch": 0,
            "seconds": time.perf_counter() - t0,
            "n_val": 0,
            "n_train": len(comps),
        }
    else:
        Y, M = _dense(ds, train_pairs, [target], comps)
        info = _fit(net, ds.X, comps, Y, M, config, seed, min_steps=min_steps)
        scores = _features_logits(net, ds.X, test_c)
    return ty, tm, np.asarray(scores, dtype=np.float64).reshape(-1, 1), info


def _features_logits(net: MultiTaskNet, X: sp.csr_matrix, comps: np.ndarray) -> np.ndarray:
    net.eval()
    dev = next(net.parameters()).device
    with torch.no_grad():
        return net(SparseBatch.from_csr(X, comps, device=dev)).double().cpu().numpy()[:, 0]


# --------------------------------------------------------------------------- study runner
@dataclass
class FoundationSummary:
    """What :func:`run_foundation` did: jobs, trunks, cost (seconds) and skipped design points."""

    jobs: int = 0
    skipped: int = 0
    done: int = 0
    failed: int = 0
    trunks_trained: int = 0
    trunks_cached: int = 0
    pretrain_seconds: float = 0.0
    target_seconds: float = 0.0
    seconds: float = 0.0
    pretrain: list[dict[str, Any]] = field(default_factory=list)
    not_run: list[dict[str, Any]] = field(default_factory=list)
    #: Job ids of every job of the call (run now or stored before): selects exactly this
    #: configuration's rows in a store that also holds other runs.
    job_ids: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return (
            f"foundation: {self.jobs} jobs ({self.skipped} already stored, {self.done} run, "
            f"{self.failed} failed); trunks: {self.trunks_trained} trained, "
            f"{self.trunks_cached} from cache; pretraining {self.pretrain_seconds:.1f} s, "
            f"targets {self.target_seconds:.1f} s, total {self.seconds:.1f} s; "
            f"{len(self.not_run)} design points not run"
        )


def _sizes(
    available: int,
    sizes: str | Sequence[int],
    max_size: int | None,
    ratio: float = 2**0.5,
) -> list[int]:
    from mtlc.splits import size_grid

    cap = available if max_size is None else min(available, int(max_size))
    if isinstance(sizes, str):
        if sizes != "auto":
            raise ConfigError(f"sizes must be 'auto' or a list of integers, got {sizes!r}")
        return [int(s) for s in size_grid(cap, ratio=ratio)] if cap >= 1 else []
    return sorted({int(s) for s in sizes if 0 < int(s) <= cap})


def run_foundation(
    ds: MultiTaskDataset,
    *,
    targets: Iterable[str | int],
    contexts: Sequence[str] | Mapping[str, Sequence[str]] = ("scratch", "all"),
    folds: np.ndarray,
    fold_subset: Sequence[int] | None = None,
    sizes: str | Sequence[int] = "auto",
    max_size: int | None = None,
    modes: Sequence[str] = ("probe", "finetune"),
    config: TrainConfig | None = None,
    seed: int = 0,
    store: ResultsStore | str | os.PathLike,
    cache: TrunkCache | str | os.PathLike | None = None,
    split: str = "compound",
    recipe: str = "",
    task_set: str = "foundation",
    probe_c: float = 1.0,
    min_steps: int = 300,
    threads: int | None = 1,
    size_ratio: float = 2**0.5,
    pretrain_epochs: int | None = None,
) -> FoundationSummary:
    """Pretrain context trunks and learn each target on top, storing test metrics.

    Parameters
    ----------
    targets: task ids (or indices) to learn.
    contexts: context names for every target, or a mapping target id -> its context names
        (e.g. ``pair:``/``loo:`` partners chosen per target).
    folds: fold id per compound (``mtlc.splits.kfold``); ``fold_subset`` the test folds run
        (default: all).
    sizes: ``"auto"`` (geometric grid from 16 by sqrt(2) up to the target's training pairs,
        capped at ``max_size``) or explicit target sample sizes.
    modes: ``"probe"`` and/or ``"finetune"`` (stored as regimes ``foundation-probe`` /
        ``foundation-finetune``).
    store: results store (resumable: jobs already stored are skipped, and a context whose jobs
        are all stored is not even pretrained).
    cache: a :class:`TrunkCache` or its directory (None: in memory for this call).
    min_steps: least optimizer steps a fine-tuned target may take (see :func:`learn_target`).
    threads: torch intra-op threads while training (default 1: these networks are small;
        None leaves torch's setting alone).
    size_ratio: ratio of the ``"auto"`` size grid (default sqrt(2); 2 halves the number of
        sizes, and so the fine-tuning cost, keeping the smallest and the full size).
    pretrain_epochs: ``max_epochs`` of the context pretraining only (None: ``config``'s).
        Pretraining many tasks is cheap and converges later than one target's fine-tuning
        (KIBA, all 200 other tasks: best epoch about 27); stored jobs record it (their ids
        change only when it is set, so stores made without it stay valid).

    A size whose target subsample has one class only is not trained and is recorded as a
    failed row (reason in ``note``), as the learning-curve runner does.
    """
    config = config or TrainConfig()
    store = store if isinstance(store, ResultsStore) else ResultsStore(store)
    cache = cache if isinstance(cache, TrunkCache) else TrunkCache(cache)
    for m in modes:
        if m not in REGIMES:
            raise ConfigError(f"unknown mode {m!r}; use {list(REGIMES)}")
    if ds.X is None:
        raise ConfigError(f"data set {ds.name!r} has no features; load it with features=True")
    t_start = time.perf_counter()
    chash = config.hash()
    tids = ds.tasks["task_id"].astype(str).to_numpy()
    tgt_idx = [
        ds.task_index(t) if not isinstance(t, (int, np.integer)) else int(t) for t in targets
    ]
    fold_ids = sorted(set(np.asarray(folds).tolist())) if fold_subset is None else list(fold_subset)
    done_ids = store.done_job_ids()
    summ = FoundationSummary()
    pre_config = (
        config if pretrain_epochs is None else replace(config, max_epochs=int(pretrain_epochs))
    )
    with _threads(threads):
        _run(
            ds,
            pools_args=(folds, fold_ids, seed),
            tgt_idx=tgt_idx,
            tids=tids,
            contexts=contexts,
            sizes=sizes,
            max_size=max_size,
            size_ratio=float(size_ratio),
            modes=modes,
            config=config,
            pre_config=pre_config,
            pretrain_epochs=pretrain_epochs,
            store=store,
            cache=cache,
            split=split,
            recipe=recipe,
            task_set=task_set,
            probe_c=probe_c,
            chash=chash,
            min_steps=min_steps,
            done_ids=done_ids,
            summ=summ,
        )
    summ.seconds = time.perf_counter() - t_start
    return summ


def _run(
    ds,
    *,
    pools_args,
    tgt_idx,
    tids,
    contexts,
    sizes,
    max_size,
    size_ratio,
    modes,
    config,
    pre_config,
    pretrain_epochs,
    store,
    cache,
    split,
    recipe,
    task_set,
    probe_c,
    chash,
    min_steps,
    done_ids,
    summ,
) -> None:
    folds, fold_ids, seed = pools_args
    for fold in fold_ids:
        pools = FoldPools(ds, folds, int(fold), seed)
        for t in tgt_idx:
            tid = str(tids[t])
            ctx_list = contexts.get(tid, ()) if isinstance(contexts, Mapping) else contexts
            grid = _sizes(int(pools.available[t]), sizes, max_size, size_ratio)
            for ctx in ctx_list:
                ctasks = context_tasks(ds, t, ctx)
                n_ctx = int(sum(pools.available[j] for j in ctasks))
                jobs = []
                for mode in modes:
                    for n in grid:
                        key = {
                            "dataset": ds.name,
                            "recipe": recipe,
                            "task_set": task_set,
                            "split": split,
                            "fold": int(fold),
                            "seed": int(seed),
                            "regime": REGIMES[mode],
                            "target": tid,
                            "partner": ctx,
                            "n_level": int(n),
                            "probe_c": float(probe_c) if mode == "probe" else None,
                            "min_steps": int(min_steps) if mode == "finetune" else None,
                        }
                        if pretrain_epochs is not None:
                            # only when set: job ids of stores made without it stay valid
                            key["pretrain_epochs"] = int(pretrain_epochs)
                        jobs.append((mode, int(n), key, job_id(key, chash)))
                summ.jobs += len(jobs)
                summ.job_ids.extend(j[3] for j in jobs)
                todo = [j for j in jobs if j[3] not in done_ids]
                summ.skipped += len(jobs) - len(todo)
                if not todo:
                    continue
                state, pinfo = pretrain_trunk(
                    ds, pools, ctasks, pre_config, seed=seed, cache=cache, split=split
                )
                if ctasks:
                    if pinfo["cached"]:
                        summ.trunks_cached += 1
                    else:
                        summ.trunks_trained += 1
                        summ.pretrain_seconds += pinfo["seconds"]
                summ.pretrain.append(
                    {"fold": int(fold), "target": tid, "context": ctx, "n_tasks": len(ctasks)}
                    | {k: v for k, v in pinfo.items() if k != "key"}
                )
                rows = []
                for mode, n, key, jid in todo:
                    pair_idx = pools.take(t, n)
                    base = {
                        k: v
                        for k, v in key.items()
                        if k not in ("n_level", "probe_c", "min_steps", "pretrain_epochs")
                    } | {
                        "q": float("nan"),
                        "n_level": n,
                        "task": tid,
                        "n_task": n,
                        "n_context": n_ctx,
                        "config_hash": chash,
                        "job_id": jid,
                        "task_sizes": json.dumps({tid: n}),
                    }
                    yv = ds.y[pair_idx]
                    if yv.min() == yv.max():
                        rows.append(
                            base
                            | {
                                "metric": "",
                                "value": float("nan"),
                                "status": "failed",
                                "note": f"training subsample of the target has one class only; "
                                f"{tid} at n={n} has {int(yv.sum())} actives",
                            }
                        )
                        summ.failed += 1
                        continue
                    ty, tm, sc, info = learn_target(
                        ds,
                        state,
                        pair_idx,
                        pools.test_compounds,
                        t,
                        config,
                        mode=mode,
                        seed=_seed(seed, int(fold), tid, n),
                        probe_c=probe_c,
                        min_steps=min_steps,
                    )
                    summ.target_seconds += info["seconds"]
                    for r in evaluation_rows(ty, tm, sc, np.array([tid], dtype=object)):
                        rows.append(
                            base
                            | r
                            | {
                                "status": "ok",
                                "epochs": info["epochs"],
                                "best_epoch": info["best_epoch"],
                                "train_seconds": info["seconds"],
                                "n_train_pairs": info["n_train"],
                                "n_val_pairs": info["n_val"],
                            }
                        )
                    summ.done += 1
                if rows:
                    store.append(pd.DataFrame(rows))
            too_big = [] if isinstance(sizes, str) else [s for s in sizes if s not in grid]
            for s in too_big:
                summ.not_run.append(
                    {
                        "fold": int(fold),
                        "target": tid,
                        "n": int(s),
                        "reason": f"size above the {int(pools.available[t])} training pairs "
                        f"of {tid} in fold {fold} (or max_size)",
                    }
                )


def read_foundation(store: ResultsStore | str | os.PathLike | pd.DataFrame) -> pd.DataFrame:
    """The successful foundation rows of a store, with ``context`` (= ``partner``) and ``mode``."""
    df = (
        store
        if isinstance(store, pd.DataFrame)
        else (store if isinstance(store, ResultsStore) else ResultsStore(store)).read(status="ok")
    )
    df = df[df["regime"].isin(REGIMES.values())].copy()
    df["context"] = df["partner"].astype(str)
    df["mode"] = df["regime"].str.replace("foundation-", "", regex=False)
    return df.reset_index(drop=True)


# --------------------------------------------------------------------------- shifts
def n_equivalent(
    p: np.ndarray, c: float, b: float, a: float, *, scale: float = 1000.0, cap: float = np.inf
) -> np.ndarray:
    """Scratch sample size reaching performance ``p`` on the EXP3 curve ``c - exp(b - a n/scale)``.

    ``n = scale (b - log(c - p)) / a``, clipped to ``[0, cap]`` (``cap`` where ``p >= c``:
    the scratch curve never gets there). NaN when the parameters are not finite or ``a <= 0``.
    """
    p = np.asarray(p, dtype=np.float64)
    if not (np.isfinite(c) and np.isfinite(b) and np.isfinite(a)) or a <= 0:
        return np.full(p.shape, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        n = scale * (b - np.log(np.maximum(c - p, 0.0))) / a
    n = np.where(p >= c, cap, n)
    return np.clip(np.where(np.isfinite(p), n, np.nan), 0.0, cap)


def context_shifts(
    df: pd.DataFrame,
    *,
    metric: str = "roc_auc",
    reference: str = "scratch",
    reference_regime: str = "foundation-finetune",
    cap_factor: float = 10.0,
    scale: float = 1000.0,
) -> pd.DataFrame:
    """Per (regime, target, context, fold): how the context moves the target's learning curve.

    The reference is the ``reference`` context of ``reference_regime`` (default: training from
    scratch, i.e. fine-tuning a random trunk) in the same fold. Columns:

    - ``gain``: mean over the sizes both curves have of ``P_ctx(n) - P_ref(n)`` (AUC points;
      the area between the curves on the size grid), ``gain_small`` / ``gain_full`` at the
      smallest / largest common size;
    - ``c``, ``a``, ``b``, ``flag``: EXP3 fit of the context curve (``curves.fit_exp3``),
      ``c_ref`` etc. of the reference, ``delta_c = c - c_ref``;
    - ``multiplier``: median over sizes of ``n_eq(P_ctx(n)) / n`` where ``n_eq`` inverts the
      reference's EXP3 fit (:func:`n_equivalent`, capped at ``cap_factor`` times the largest
      size; ``n_capped`` counts capped points): how many scratch samples one sample with the
      context is worth;
    - ``delta_n``: median of ``n_eq - n`` (scratch samples the context is worth);
      ``rho = delta_n / n_context``: target samples one context sample is worth (METHOD.md's
      ``a_iS / a_i`` when both curves share the rate).
    """
    from mtlc.curves import fit_exp3

    d = df[df["metric"] == metric]
    if "context" not in d.columns:
        d = d.assign(context=d["partner"].astype(str))
    keys = ["regime", "target", "context", "fold", "n_task"]
    d = d.groupby(keys, as_index=False).agg(value=("value", "mean"), n_context=("n_context", "max"))
    fits = fit_exp3(
        d.dropna(subset=["value"]),
        by=("regime", "target", "context"),
        x="n_task",
        y="value",
        fold="fold",
        scale=scale,
    )
    fits = fits.set_index(["regime", "target", "context", "fold"])
    ref = d[(d["regime"] == reference_regime) & (d["context"] == reference)]
    if ref.empty:
        raise ConfigError(
            f"no reference curves ({reference_regime}, context {reference!r}) in the table; "
            "run that context too"
        )
    out = []
    for (reg, tgt, ctx, fold), g in d.groupby(["regime", "target", "context", "fold"]):
        if reg == reference_regime and ctx == reference:
            continue
        r = ref[(ref["target"] == tgt) & (ref["fold"] == fold)]
        if r.empty:
            continue
        m = g.merge(r[["n_task", "value"]], on="n_task", suffixes=("", "_ref")).dropna(
            subset=["value", "value_ref"]
        )
        if m.empty:
            continue
        m = m.sort_values("n_task")
        diff = (m["value"] - m["value_ref"]).to_numpy()
        fr = fits.loc[(reference_regime, tgt, reference, fold)]
        fc = fits.loc[(reg, tgt, ctx, fold)] if (reg, tgt, ctx, fold) in fits.index else None
        n = m["n_task"].to_numpy(dtype=float)
        cap = cap_factor * float(n.max())
        neq = n_equivalent(
            m["value"].to_numpy(),
            float(fr["c"]),
            float(fr["b"]),
            float(fr["a"]),
            scale=scale,
            cap=cap,
        )
        ok = np.isfinite(neq)
        n_ctx = int(g["n_context"].max())
        dn = float(np.median(neq[ok] - n[ok])) if ok.any() else np.nan
        row = {
            "regime": reg,
            "target": tgt,
            "context": ctx,
            "fold": fold,
            "n_context": n_ctx,
            "n_sizes": len(m),
            "gain": float(diff.mean()),
            "gain_small": float(diff[0]),
            "gain_full": float(diff[-1]),
            "multiplier": float(np.median(neq[ok] / n[ok])) if ok.any() else np.nan,
            "delta_n": dn,
            "rho": dn / n_ctx if n_ctx > 0 else np.nan,
            "n_capped": int(np.sum(neq[ok] >= cap)),
            "c_ref": float(fr["c"]),
            "a_ref": float(fr["a"]),
            "flag_ref": str(fr["flag"]),
        }
        if fc is not None:
            row |= {
                "c": float(fc["c"]),
                "a": float(fc["a"]),
                "b": float(fc["b"]),
                "flag": str(fc["flag"]),
                "delta_c": float(fc["c"]) - float(fr["c"]),
            }
        out.append(row)
    return pd.DataFrame(out)


_STATS = ("gain", "gain_small", "gain_full", "multiplier", "delta_n", "rho", "delta_c")


def summarize_shifts(
    shifts: pd.DataFrame,
    *,
    by: Sequence[str] = ("regime", "target", "context"),
    level: float = 0.95,
) -> pd.DataFrame:
    """Fold means with t-intervals of every shift statistic (``<stat>``, ``<stat>_lo/_hi``).

    ``multiplier`` is summarized on the log scale (geometric mean and interval).
    """
    from mtlc.stats import t_summary

    rows = []
    for key, g in shifts.groupby(list(by), sort=True):
        row = dict(zip(by, key if isinstance(key, tuple) else (key,), strict=True))
        row["n_folds"] = int(g["fold"].nunique())
        row["n_context"] = float(g["n_context"].mean())
        for s in _STATS:
            if s not in g.columns:
                continue
            v = g[s].to_numpy(dtype=float)
            if s == "multiplier":
                v = np.log(np.where(v > 0, v, np.nan))
            ts = t_summary(v[None, :], level=level)
            est, lo, hi = ts["estimate"][0], ts["ci_lo"][0], ts["ci_hi"][0]
            if s == "multiplier":
                est, lo, hi = np.exp(est), np.exp(lo), np.exp(hi)
            row[s], row[f"{s}_lo"], row[f"{s}_hi"] = float(est), float(lo), float(hi)
        rows.append(row)
    return pd.DataFrame(rows)


def decompose(shifts: pd.DataFrame, *, stat: str = "delta_n") -> pd.DataFrame:
    """Pairwise vs contextual transfer per (regime, target), from fold-level shifts.

    For each target: ``all`` (the all-context shift), ``pair_sum`` (sum of the single-partner
    shifts measured), ``pair_mean``, ``additivity = all / pair_sum`` (1: the context is the sum
    of its pairs; < 1: redundant partners; > 1: contextual transfer beyond the pairs), and per
    partner ``j`` (long rows, ``partner`` column): ``pair`` (j alone), ``loo`` (all but j),
    ``drop = all - loo`` (what removing j from the context costs) and
    ``redundancy = pair - drop`` (large when j transfers alone but adds little to the rest).
    Also ``rho_all`` vs ``rho_pair_wmean``, the n-weighted mean of the partners' ``rho``
    (METHOD.md section 2: equal under pure pairwise transfer). Values are fold means.
    """
    s = shifts.groupby(["regime", "target", "context"], as_index=False)[
        [stat, "rho", "n_context"]
    ].mean()
    rows = []
    for (reg, tgt), g in s.groupby(["regime", "target"]):
        ctx = g.set_index("context")
        if "all" not in ctx.index:
            continue
        v_all = float(ctx.loc["all", stat])
        pairs = [c for c in ctx.index if c.startswith("pair:")]
        for c in pairs:
            j = c.split(":", 1)[1]
            loo = float(ctx.loc[f"loo:{j}", stat]) if f"loo:{j}" in ctx.index else np.nan
            rows.append(
                {
                    "regime": reg,
                    "target": tgt,
                    "partner": j,
                    "stat": stat,
                    "all": v_all,
                    "pair": float(ctx.loc[c, stat]),
                    "loo": loo,
                    "drop": v_all - loo,
                    "redundancy": float(ctx.loc[c, stat]) - (v_all - loo),
                }
            )
        psum = float(ctx.loc[pairs, stat].sum()) if pairs else np.nan
        w = ctx.loc[pairs, "n_context"].to_numpy(dtype=float) if pairs else np.array([])
        rp = ctx.loc[pairs, "rho"].to_numpy(dtype=float) if pairs else np.array([])
        okw = np.isfinite(rp) & (w > 0)
        rows.append(
            {
                "regime": reg,
                "target": tgt,
                "partner": None,
                "stat": stat,
                "all": v_all,
                "pair_sum": psum,
                "pair_mean": float(ctx.loc[pairs, stat].mean()) if pairs else np.nan,
                "n_pairs": len(pairs),
                "additivity": v_all / psum if pairs and psum != 0 else np.nan,
                "rho_all": float(ctx.loc["all", "rho"]),
                "rho_pair_wmean": float(np.sum(w[okw] * rp[okw]) / np.sum(w[okw]))
                if okw.any()
                else np.nan,
            }
        )
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- partners
def label_partners(
    ds: MultiTaskDataset, targets: Iterable[str | int], *, min_overlap: int = 30
) -> dict[str, tuple[str, str]]:
    """A "related" and an "unrelated" partner per target, from the labels alone.

    ``phi[j, i]`` = mean product of the +-1 activity labels of tasks ``j`` and ``i`` over the
    compounds both measure (tasks sharing fewer than ``min_overlap`` compounds are left out).
    The related partner maximizes ``phi``, the unrelated one minimizes ``|phi|``. Returns
    ``{target id: (related id, unrelated id)}``; raises :class:`ConfigError` for a target that
    shares ``min_overlap`` compounds with no other task.
    """
    L = ds.labels_sparse().tocsc().astype(np.float64)  # +1 active, -1 inactive, 0 unmeasured
    M = (L != 0).astype(np.float64)
    overlap = (M.T @ M).toarray()
    agree = (L.T @ L).toarray()
    with np.errstate(invalid="ignore", divide="ignore"):
        phi = np.where(overlap >= min_overlap, agree / overlap, np.nan)
    np.fill_diagonal(phi, np.nan)
    ids = ds.tasks["task_id"].astype(str).to_numpy()
    out = {}
    for t in targets:
        i = ds.task_index(t) if not isinstance(t, (int, np.integer)) else int(t)
        col = phi[:, i]
        if not np.isfinite(col).any():
            raise ConfigError(
                f"task {ids[i]!r} shares fewer than {min_overlap} measured compounds with every "
                "other task; lower min_overlap or name its partners"
            )
        rel = int(np.nanargmax(col))
        unrel = int(np.nanargmin(np.where(np.isfinite(col), np.abs(col), np.nan)))
        out[str(ids[i])] = (str(ids[rel]), str(ids[unrel]))
    return out


def decomposition_contexts(partners: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """The contexts of the decomposition per target: scratch, all, and pair/loo per partner."""
    return {
        t: ["scratch", "all", *[f"pair:{p}" for p in ps], *[f"loo:{p}" for p in ps]]
        for t, ps in partners.items()
    }
