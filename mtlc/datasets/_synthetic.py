"""A synthetic multi-task data set with planted, known transfer between tasks.

Every estimator of transfer in this project (learning-curve coefficients, TAG affinities, the
foundation-model decomposition) is checked against this generator, so its ground truth is exact
by construction:

* **Features** look like folded fingerprints: each compound is a union of "substructure" motifs
  (small sets of bits) drawn with a power-law (Zipf) frequency, topped up with a few random
  background bits, about ``bits_per_compound`` set bits out of ``n_features``. Bits of one motif
  co-occur, as in real ECFP.
* **Latent space**: a fixed random projection of the bits, ``tanh`` of its standardized value,
  then whitened over the compound population, so ``z`` has mean 0 and identity covariance.
* **Tasks**: task i scores compounds by ``s_i(x) = w_i . z(x)`` with
  ``w_i ∝ sqrt(shared) u_shared + sqrt(group) u_g(i) + sqrt(own) u_i`` (normalized to unit
  length), where ``u_shared`` is common to all tasks, ``u_g`` to the tasks of group g and
  ``u_i`` private to task i. An unrelated task is a group of one: its group part is private too,
  so every task carries the same share of the shared factor and, with one group strength, every
  pair of tasks outside a common group has the same relatedness. With orthonormal ``u``
  vectors (the default) and whitened ``z``, the population correlation of two tasks' scores is
  exactly the cosine ``w_i . w_j``: that cosine is ``truth["relatedness"]``.
* **Labels**: a compound is active for task i when its score (plus optional Gaussian score
  noise) is above the task's ``1 - positive_rate`` quantile over all compounds; optional label
  flips; each task is measured on a random fraction ``density`` of the compounds.

Random streams are separate per ingredient (features, projection, task weights, measured
subsets, noise), so changing e.g. ``density`` or ``label_noise`` leaves the features and the
scores unchanged, and the measured subsets of a smaller density are subsets of those of a
larger one (same seed).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mtlc.datasets._core import MultiTaskDataset
from mtlc.errors import ConfigError

__all__ = ["synthetic", "restrict_truth"]

# Order of the independent random streams spawned from the seed (append only: reordering would
# change every data set generated so far).
_STREAMS = ("motifs", "compounds", "projection", "weights", "measured", "score_noise", "flips")


def _per_task(name: str, value: float | Sequence[float] | np.ndarray, k: int) -> np.ndarray:
    """Broadcast a float or a length-``k`` sequence to a float64 ``(k,)`` array."""
    arr = np.asarray(value, dtype=np.float64)
    if arr.ndim == 0:
        return np.full(k, float(arr))
    if arr.shape != (k,):
        raise ConfigError(
            f"synthetic: {name} must be a number or have one value per entry ({k}); "
            f"got shape {arr.shape}"
        )
    return arr.copy()


def _check_range(name: str, arr: np.ndarray, lo: float, hi: float, *, open_lo: bool) -> None:
    bad = (arr <= lo if open_lo else arr < lo) | (arr > hi) | ~np.isfinite(arr)
    if bad.any():
        bracket = "(" if open_lo else "["
        raise ConfigError(
            f"synthetic: {name} must lie in {bracket}{lo}, {hi}]; got {arr[bad][:3].tolist()}"
        )


def _group_ids(n_tasks: int, n_groups: int, group_size: int | Sequence[int]) -> np.ndarray:
    """Group id per task (tasks of a group are contiguous from t00), -1 for unrelated tasks."""
    if int(n_groups) != n_groups or n_groups < 0:
        raise ConfigError(f"synthetic: n_groups must be an integer >= 0, got {n_groups!r}")
    sizes = _per_task("group_size", group_size, n_groups).astype(np.int64)
    if (sizes < 2).any():
        raise ConfigError(
            f"synthetic: every group needs at least 2 tasks (a group of one is an unrelated "
            f"task); got group sizes {sizes.tolist()}"
        )
    if sizes.sum() > n_tasks:
        raise ConfigError(
            f"synthetic: {n_groups} groups of sizes {sizes.tolist()} need {int(sizes.sum())} "
            f"tasks but n_tasks={n_tasks}; raise n_tasks or lower n_groups/group_size"
        )
    groups = np.full(n_tasks, -1, dtype=np.int64)
    groups[: sizes.sum()] = np.repeat(np.arange(n_groups), sizes)
    return groups


def _fingerprints(
    n_compounds: int,
    n_features: int,
    bits_per_compound: float,
    n_motifs: int,
    motif_zipf: float,
    background: float,
    rng_motifs: np.random.Generator,
    rng_compounds: np.random.Generator,
) -> tuple[sp.csr_matrix, dict[str, Any]]:
    """Motif-based sparse 0/1 fingerprints, CSR float32 ``(n_compounds, n_features)``."""
    # Motifs: small bit sets (2 + Poisson(4) bits, like the few bits an ECFP environment and its
    # sub-environments set); their frequency falls off as rank^-motif_zipf.
    sizes = np.minimum(2 + rng_motifs.poisson(4.0, size=n_motifs), n_features)
    motifs = [np.sort(rng_motifs.choice(n_features, size=s, replace=False)) for s in sizes]
    log_w = -motif_zipf * np.log(np.arange(1, n_motifs + 1))

    # Bits per compound vary like molecule size (sd 25 % of the mean).
    target = np.rint(rng_compounds.normal(bits_per_compound, 0.25 * bits_per_compound, n_compounds))
    target = np.clip(target, 1, n_features).astype(np.int64)
    from_motifs = np.maximum(np.rint((1.0 - background) * target), 0).astype(np.int64)

    # Weighted sampling of motifs without replacement (Gumbel top-k): the order of the keys is
    # the order in which a compound picks up motifs. Chunked to bound memory.
    indptr = np.zeros(n_compounds + 1, dtype=np.int64)
    chunks: list[np.ndarray] = []
    n_motif_used = np.zeros(n_compounds, dtype=np.int64)
    chunk = max(1, 2_000_000 // max(n_motifs, 1))
    for start in range(0, n_compounds, chunk):
        stop = min(start + chunk, n_compounds)
        keys = log_w[None, :] + rng_compounds.gumbel(size=(stop - start, n_motifs))
        order = np.argsort(-keys, axis=1)
        for r, c in enumerate(range(start, stop)):
            bits = np.empty(0, dtype=np.int64)
            used = 0
            for m in order[r]:
                if len(bits) >= from_motifs[c]:
                    break
                bits = np.union1d(bits, motifs[m])
                used += 1
            n_motif_used[c] = used
            need = target[c] - len(bits)
            if need > 0:
                # Background bits: uniform over the bits not yet set (rare substructures).
                free = np.setdiff1d(np.arange(n_features), bits, assume_unique=True)
                extra = rng_compounds.choice(free, size=min(need, len(free)), replace=False)
                bits = np.union1d(bits, extra)
            chunks.append(bits)
            indptr[c + 1] = indptr[c] + len(bits)
    indices = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int64)
    X = sp.csr_matrix(
        (np.ones(len(indices), dtype=np.float32), indices.astype(np.int32), indptr),
        shape=(n_compounds, n_features),
    )
    X.sort_indices()
    counts = np.diff(indptr)
    stats = {
        "bits_per_compound_mean": float(counts.mean()),
        "bits_per_compound_min": int(counts.min()),
        "bits_per_compound_max": int(counts.max()),
        "motifs_per_compound_mean": float(n_motif_used.mean()),
        "n_bits_never_set": int((np.bincount(indices, minlength=n_features) == 0).sum()),
    }
    return X, stats


def _latent(
    X: sp.csr_matrix, n_latent: int, nonlinearity: str, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Whitened latent coordinates ``z`` ``(n_compounds, n_latent)`` and the projection used."""
    n, f = X.shape
    projection = rng.standard_normal((f, n_latent))
    raw = np.asarray(X @ projection, dtype=np.float64)
    raw = (raw - raw.mean(0)) / np.maximum(raw.std(0), 1e-12)
    if nonlinearity == "tanh":
        # Saturation: a compound's score stops growing once it has enough "good" bits.
        raw = np.tanh(raw)
    z = raw - raw.mean(0)
    cov = z.T @ z / n
    evals, evecs = np.linalg.eigh(cov)
    if evals.min() <= 1e-8 * max(evals.max(), 1e-300):
        raise ConfigError(
            f"synthetic: the {n_latent} latent dimensions are linearly dependent over "
            f"{n} compounds (too few compounds or too few distinct fingerprints); use more "
            f"compounds or a smaller n_latent"
        )
    # ZCA whitening: identity covariance over the population, so score correlations are exactly
    # the cosines of the task weight vectors.
    z = z @ (evecs / np.sqrt(evals)) @ evecs.T
    return z, projection


def synthetic(
    *,
    n_compounds: int = 4000,
    n_tasks: int = 12,
    n_features: int = 2048,
    bits_per_compound: float = 50,
    n_groups: int | None = None,
    group_size: int | Sequence[int] = 3,
    n_latent: int | None = None,
    shared_strength: float = 0.5,
    group_strength: float | Sequence[float] = 1.0,
    task_noise: float | Sequence[float] = 0.3,
    score_noise: float = 0.0,
    label_noise: float = 0.0,
    density: float | Sequence[float] = 1.0,
    positive_rate: float | Sequence[float] = 0.3,
    nonlinearity: str = "tanh",
    n_motifs: int = 300,
    motif_zipf: float = 1.0,
    background: float = 0.2,
    seed: int = 0,
) -> MultiTaskDataset:
    """A multi-task binary data set with planted transfer and its exact ground truth.

    Parameters
    ----------
    n_compounds, n_tasks, n_features:
        Size of the data set; ``n_features`` is the fingerprint width in bits.
    bits_per_compound:
        Mean number of set bits per compound (sd 25 % of it), like ECFP4's ~50 of 2048.
    n_groups, group_size:
        ``n_groups`` groups of related tasks, of ``group_size`` tasks each (an int, or one size
        per group; each >= 2). Groups take tasks t00, t01, ... in order; the remaining tasks
        are unrelated (group -1). ``n_groups=None`` (default) means ``len(group_size)`` for a
        sequence, else ``min(3, n_tasks // group_size)`` (3 groups of 3 and 3 unrelated tasks
        at the default 12 tasks); the value used is in ``info["params"]``.
    n_latent:
        Dimension of the latent space. ``None`` (default) uses exactly the number of
        independent directions needed (1 shared + one per group + one per task), so all of
        them are orthonormal and ``truth["relatedness"]`` is determined by the strengths
        alone. A smaller value draws random (not orthogonal) unit directions; the truth then
        holds the realized cosines.
    shared_strength, group_strength, task_noise:
        Variance shares (>= 0) of the shared direction, the group direction (a number or one
        per group) and the task's own direction (a number or one per task) in ``w_i`` before it
        is normalized. An unrelated task's group part is private, i.e. it adds to its own part
        with the mean group strength. Same-group relatedness is ``(s + g) / (s + g + o)``,
        other pairs ``s / (s + g + o)`` (for scalar strengths).
    score_noise:
        Standard deviation of Gaussian noise added to each (compound, task) score, in units
        of the score's standard deviation (1). Lowers the attainable AUC.
    label_noise:
        Probability of flipping each label after thresholding.
    density:
        Fraction of compounds measured per task, in (0, 1] (a number or one per task). The
        measured compounds are random and independent across tasks.
    positive_rate:
        Fraction of actives per task over all compounds (a number or one per task), in (0, 1).
    nonlinearity:
        ``"tanh"`` (default) or ``"linear"``: applied to the standardized projection of the bits
        before whitening.
    n_motifs, motif_zipf, background:
        Number of substructure motifs, the exponent of their rank-frequency power law, and the
        fraction of a compound's bits drawn uniformly at random instead of from motifs.
    seed:
        Seed of all randomness; same arguments give an identical data set.

    Returns
    -------
    MultiTaskDataset
        ``name="synthetic"``; compounds ``syn000001``... (SMILES None); tasks ``t00``... with a
        ``group`` column; ``X`` CSR float32 0/1 ``(n_compounds, n_features)``; ``value`` the
        (noisy) score of each labelled pair (higher = more active); ``info`` the generating
        parameters, the seed and counts (unlabelled compounds, label flips, bits per compound);
        ``truth`` a dict:

        - ``relatedness``: ``(n_tasks, n_tasks)`` cosine of the task weight vectors = population
          correlation of the noiseless scores; diagonal 1.
        - ``groups``: ``(n_tasks,)`` group id, -1 for unrelated tasks.
        - ``related_pairs``: ``(n_tasks, n_tasks)`` bool, same group, diagonal False.
        - ``shared_strength`` (float), ``group_strength`` ``(n_groups,)``, ``task_noise``
          ``(n_tasks,)``: the strengths used.
        - ``weights``: ``(n_tasks, n_latent)`` unit vectors ``w_i``.
        - ``directions``: dict with ``shared`` ``(n_latent,)``, ``group``
          ``(n_groups, n_latent)`` and ``own`` ``(n_tasks, n_latent)`` unit vectors.
        - ``latent``: ``(n_compounds, n_latent)`` whitened ``z``; ``projection``:
          ``(n_features, n_latent)`` random projection of the bits.
        - ``scores``: ``(n_compounds, n_tasks)`` noiseless scores ``z @ weights.T`` (mean 0,
          variance 1 per task); ``thresholds``: ``(n_tasks,)`` activity thresholds on the
          noisy score; ``score_correlation``: ``(n_tasks, n_tasks)`` empirical correlation of
          the noisy scores.
        - ``task_ids``: ``(n_tasks,)`` ids, to align the truth after ``ds.subset`` (see
          :func:`restrict_truth`); ``params``: the generating parameters.

    Examples
    --------
    >>> from mtlc.datasets._synthetic import synthetic
    >>> ds = synthetic(n_compounds=500, n_tasks=6, n_groups=1, group_size=3, seed=1)
    >>> ds.X.shape, ds.n_tasks
    ((500, 2048), 6)
    >>> ds.truth["groups"].tolist()
    [0, 0, 0, -1, -1, -1]
    >>> round(float(ds.truth["relatedness"][0, 1]), 3)  # (0.5 + 1) / (0.5 + 1 + 0.3)
    0.833
    >>> round(float(ds.truth["relatedness"][0, 4]), 3)  # 0.5 / 1.8
    0.278
    """
    # ---------------------------------------------------------------- validate
    for name, v, lo in (
        ("n_compounds", n_compounds, 2),
        ("n_tasks", n_tasks, 1),
        ("n_features", n_features, 1),
        ("n_motifs", n_motifs, 1),
    ):
        if int(v) != v or v < lo:
            raise ConfigError(f"synthetic: {name} must be an integer >= {lo}, got {v!r}")
    n_compounds, n_tasks, n_features, n_motifs = (
        int(n_compounds),
        int(n_tasks),
        int(n_features),
        int(n_motifs),
    )
    if not 0 < bits_per_compound <= n_features:
        raise ConfigError(
            f"synthetic: bits_per_compound must be in (0, n_features={n_features}], "
            f"got {bits_per_compound}"
        )
    if nonlinearity not in ("tanh", "linear"):
        raise ConfigError(
            f"synthetic: nonlinearity must be 'tanh' or 'linear', got {nonlinearity!r}"
        )
    if n_groups is None:
        if np.ndim(group_size) == 0:
            n_groups = min(3, n_tasks // max(int(group_size), 1))  # type: ignore[arg-type]
        else:
            n_groups = len(group_size)  # type: ignore[arg-type]
    groups = _group_ids(n_tasks, n_groups, group_size)
    g_str = _per_task("group_strength", group_strength, n_groups)
    o_str = _per_task("task_noise", task_noise, n_tasks)
    dens = _per_task("density", density, n_tasks)
    prate = _per_task("positive_rate", positive_rate, n_tasks)
    _check_range("density", dens, 0.0, 1.0, open_lo=True)
    _check_range("positive_rate", prate, 0.0, 1.0, open_lo=True)
    if (prate >= 1).any():
        raise ConfigError(f"synthetic: positive_rate must be < 1, got {prate.max()}")
    _check_range("label_noise", np.array([label_noise], dtype=float), 0.0, 0.5, open_lo=False)
    _check_range("background", np.array([background], dtype=float), 0.0, 1.0, open_lo=False)
    for name, arr in (
        ("shared_strength", np.array([shared_strength], dtype=float)),
        ("group_strength", g_str),
        ("task_noise", o_str),
        ("score_noise", np.array([score_noise], dtype=float)),
        ("motif_zipf", np.array([motif_zipf], dtype=float)),
    ):
        if (arr < 0).any() or not np.isfinite(arr).all():
            raise ConfigError(f"synthetic: {name} must be finite and >= 0, got {arr.tolist()}")
    unrelated = groups < 0
    g_bar = float(g_str.mean()) if n_groups else float(np.mean(np.atleast_1d(group_strength)))
    own_var = o_str + np.where(unrelated, g_bar, 0.0)
    group_var = np.where(unrelated, 0.0, g_str[np.maximum(groups, 0)] if n_groups else 0.0)
    total = shared_strength + group_var + own_var
    if (total <= 0).any():
        raise ConfigError(
            "synthetic: every task needs a positive total strength "
            "(shared_strength + group_strength + task_noise > 0)"
        )
    n_dirs = 1 + n_groups + n_tasks
    n_lat = n_dirs if n_latent is None else int(n_latent)
    if n_lat < 1:
        raise ConfigError(f"synthetic: n_latent must be >= 1, got {n_latent}")
    if n_lat >= n_compounds:
        raise ConfigError(
            f"synthetic: n_latent={n_lat} needs more compounds than that (n_compounds="
            f"{n_compounds}) to whiten the latent space; raise n_compounds or set a smaller "
            f"n_latent"
        )

    params: dict[str, Any] = {
        "n_compounds": n_compounds,
        "n_tasks": n_tasks,
        "n_features": n_features,
        "bits_per_compound": float(bits_per_compound),
        "n_groups": int(n_groups),
        "group_size": np.asarray(group_size).tolist(),
        "n_latent": n_lat,
        "shared_strength": float(shared_strength),
        "group_strength": g_str.tolist(),
        "task_noise": o_str.tolist(),
        "score_noise": float(score_noise),
        "label_noise": float(label_noise),
        "density": dens.tolist(),
        "positive_rate": prate.tolist(),
        "nonlinearity": nonlinearity,
        "n_motifs": n_motifs,
        "motif_zipf": float(motif_zipf),
        "background": float(background),
        "seed": int(seed),
    }
    rngs = dict(
        zip(
            _STREAMS,
            (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(len(_STREAMS))),
            strict=True,
        )
    )

    # ---------------------------------------------------------------- features and latent space
    X, fp_stats = _fingerprints(
        n_compounds,
        n_features,
        float(bits_per_compound),
        n_motifs,
        float(motif_zipf),
        float(background),
        rngs["motifs"],
        rngs["compounds"],
    )
    z, projection = _latent(X, n_lat, nonlinearity, rngs["projection"])

    # ---------------------------------------------------------------- task weights
    if n_lat >= n_dirs:
        q, r = np.linalg.qr(rngs["weights"].standard_normal((n_lat, n_dirs)))
        dirs = (q * np.sign(np.diag(r))).T  # (n_dirs, n_lat), orthonormal rows
    else:
        dirs = rngs["weights"].standard_normal((n_dirs, n_lat))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    u_shared, u_group, u_own = dirs[0], dirs[1 : 1 + n_groups], dirs[1 + n_groups :]
    weights = np.sqrt(shared_strength) * u_shared[None, :] + np.sqrt(own_var)[:, None] * u_own
    if n_groups:
        gpart = np.where(unrelated[:, None], 0.0, u_group[np.maximum(groups, 0)])
        weights = weights + np.sqrt(group_var)[:, None] * gpart
    weights /= np.linalg.norm(weights, axis=1, keepdims=True)
    relatedness = weights @ weights.T
    relatedness = (relatedness + relatedness.T) / 2
    np.fill_diagonal(relatedness, 1.0)
    related_pairs = (groups[:, None] == groups[None, :]) & (groups[:, None] >= 0)
    np.fill_diagonal(related_pairs, False)

    # ---------------------------------------------------------------- scores and labels
    scores = z @ weights.T  # (n_compounds, n_tasks), mean 0, variance 1 per task
    noisy = scores
    if score_noise > 0:
        noisy = scores + score_noise * rngs["score_noise"].standard_normal(scores.shape)
    thresholds = np.array(
        [np.quantile(noisy[:, i], 1.0 - prate[i]) for i in range(n_tasks)], dtype=np.float64
    )
    active = noisy > thresholds[None, :]
    # Measured subsets: the m_i compounds with the smallest random keys, so the subsets of a
    # smaller density are nested in those of a larger one.
    keys = rngs["measured"].random((n_compounds, n_tasks))
    n_meas = np.maximum(np.rint(dens * n_compounds).astype(np.int64), 1)
    ranks = np.argsort(np.argsort(keys, axis=0, kind="stable"), axis=0, kind="stable")
    measured = ranks < n_meas[None, :]
    flips = rngs["flips"].random((n_compounds, n_tasks)) < label_noise
    labels = active ^ flips

    rows, cols = np.nonzero(measured)  # row-major: sorted by (compound, task)
    width = max(6, len(str(n_compounds)))
    compound_ids = np.array([f"syn{i:0{width}d}" for i in range(1, n_compounds + 1)])
    twidth = max(2, len(str(n_tasks - 1)))
    task_ids = np.array([f"t{i:0{twidth}d}" for i in range(n_tasks)])
    n_unlabelled = int((~measured.any(axis=1)).sum())
    info: dict[str, Any] = {
        "recipe": "synthetic",
        "source": "mtlc.datasets.synthetic (planted transfer)",
        "seed": int(seed),
        "params": params,
        "direction": "higher score = more active; value = noisy score",
        "n_compounds_unlabelled": n_unlabelled,
        "n_label_flips": int((flips & measured).sum()),
        "features": fp_stats,
        # Nothing is dropped: compounds without any measured task stay (with their features).
        "exclusions": {},
    }
    ds = MultiTaskDataset(
        name="synthetic",
        compounds=pd.DataFrame({"compound_id": compound_ids, "smiles": [None] * n_compounds}),
        tasks=pd.DataFrame({"task_id": task_ids, "group": groups}),
        rows=rows.astype(np.int32),
        cols=cols.astype(np.int32),
        y=labels[rows, cols].astype(np.int8),
        value=noisy[rows, cols].astype(np.float64),
        X=X,
        info=info,
    )
    ds._recount()
    score_corr = np.corrcoef(noisy, rowvar=False) if n_tasks > 1 else np.ones((1, 1))
    ds.truth = {
        "relatedness": relatedness,
        "groups": groups,
        "related_pairs": related_pairs,
        "shared_strength": float(shared_strength),
        "group_strength": g_str,
        "task_noise": o_str,
        "weights": weights,
        "directions": {"shared": u_shared, "group": u_group, "own": u_own},
        "latent": z,
        "projection": projection,
        "scores": scores,
        "thresholds": thresholds,
        "score_correlation": np.atleast_2d(score_corr),
        "task_ids": task_ids,
        "params": params,
    }
    return ds


# Truth entries indexed by task along their axes: (name, axes).
_TASK_AXES: dict[str, tuple[int, ...]] = {
    "relatedness": (0, 1),
    "related_pairs": (0, 1),
    "score_correlation": (0, 1),
    "groups": (0,),
    "task_noise": (0,),
    "weights": (0,),
    "thresholds": (0,),
    "task_ids": (0,),
    "scores": (1,),
}


def restrict_truth(truth: dict[str, Any], task_ids: Sequence[str] | np.ndarray) -> dict[str, Any]:
    """The ground truth restricted (and reordered) to the given task ids.

    ``MultiTaskDataset.subset`` keeps ``truth`` as it was; call
    ``restrict_truth(ds.truth, ds.tasks["task_id"])`` to align it with the subset's tasks.
    Compound-indexed entries (``latent``, ``scores`` rows) are left for all compounds.
    """
    all_ids = list(np.asarray(truth["task_ids"]))
    try:
        idx = np.array([all_ids.index(t) for t in task_ids], dtype=np.int64)
    except ValueError as e:
        raise ConfigError(f"restrict_truth: {e}; known task ids are {all_ids[:5]}...") from e
    out = dict(truth)
    out["directions"] = dict(truth["directions"])
    out["directions"]["own"] = truth["directions"]["own"][idx]
    for name, axes in _TASK_AXES.items():
        arr = np.asarray(truth[name])
        for ax in axes:
            arr = np.take(arr, idx, axis=ax)
        out[name] = arr
    return out
