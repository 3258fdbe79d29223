"""Cross-validation folds over compounds, sample-size grids and nested subsamples.

Folds are assigned per compound, so a test compound is unseen for every task. Everything is
seeded: the same arguments give the same arrays on every machine.
"""

from __future__ import annotations

import hashlib
import io
import json
import warnings
from collections.abc import Sequence

import numpy as np
import rdkit
from rdkit import Chem, rdBase
from rdkit.Chem.Scaffolds import MurckoScaffold

from mtlc.datasets._core import MultiTaskDataset
from mtlc.datasets._files import atomic_write_bytes, cache_dir
from mtlc.errors import ConfigError, InputTableError

__all__ = ["kfold", "scaffolds", "size_grid", "nested_subsample", "inner_validation"]

SPLITS = ("compound", "scaffold")


# --------------------------------------------------------------------------- scaffolds
def _scaffolds_uncached(smiles: Sequence[str]) -> np.ndarray:
    out = np.empty(len(smiles), dtype=object)
    block = rdBase.BlockLogs()
    try:
        for i, s in enumerate(smiles):
            with rdBase.CaptureErrorLog():
                mol = Chem.MolFromSmiles(s) if s else None
            if mol is None:
                raise InputTableError(
                    f"SMILES {s!r} (compound position {i}) cannot be parsed for a scaffold split; "
                    "featurize the data set first (mtlc.features.featurize excludes such compounds)"
                )
            out[i] = MurckoScaffold.MurckoScaffoldSmiles(mol=mol)
    finally:
        del block
    return out


def scaffolds(smiles: Sequence[str], *, cache: bool = True) -> np.ndarray:
    """Bemis-Murcko scaffold SMILES (RDKit ``MurckoScaffoldSmiles``, not generic) per compound.

    Acyclic compounds get ``""``. Cached on disk keyed by the SMILES list (``MTLC_CACHE_DIR``).
    Returns an object array of shape ``(len(smiles),)``.
    """
    smiles = [str(s) if s is not None else "" for s in smiles]
    if not cache:
        return _scaffolds_uncached(smiles)
    h = hashlib.sha256(json.dumps(["murcko-v1", rdkit.__version__]).encode())
    for s in smiles:
        h.update(s.encode() + b"\n")
    path = cache_dir() / "scaffolds" / f"{h.hexdigest()}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return z["scaffold"].astype(object)
        except (OSError, ValueError, KeyError):
            pass
    out = _scaffolds_uncached(smiles)
    buf = io.BytesIO()
    np.savez(buf, scaffold=out.astype(str))
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as exc:
        warnings.warn(f"could not write scaffold cache {path}: {exc}", stacklevel=2)
    return out


def _structure_column(ds: MultiTaskDataset) -> list[str]:
    # the largest fragment (after featurize) keeps counter-ions out of the scaffold
    col = "canonical_smiles" if "canonical_smiles" in ds.compounds.columns else "smiles"
    smi = ds.compounds[col].tolist()
    missing = [i for i, s in enumerate(smi) if s is None or (isinstance(s, float) and np.isnan(s))]
    if missing:
        raise InputTableError(
            f"data set {ds.name!r} has {len(missing)} compound(s) without SMILES (e.g. "
            f"{ds.compounds['compound_id'].iloc[missing[0]]!r}); a scaffold split needs "
            "structures: featurize the data set or use split='compound'"
        )
    return smi


# --------------------------------------------------------------------------- folds
def _balanced_assign(group_sizes: np.ndarray, n_folds: int, rng: np.random.Generator) -> np.ndarray:
    """Fold per group: largest group first, each to the currently smallest fold."""
    order = rng.permutation(len(group_sizes))
    # stable sort on the shuffled order: equal-size groups keep a seeded random order
    order = order[np.argsort(-group_sizes[order], kind="stable")]
    fold_size = np.zeros(n_folds, dtype=np.int64)
    assign = np.empty(len(group_sizes), dtype=np.int64)
    for g in order:
        f = int(np.argmin(fold_size))  # lowest index among equally small folds
        assign[g] = f
        fold_size[f] += group_sizes[g]
    return assign


def kfold(
    ds: MultiTaskDataset,
    *,
    n_folds: int = 10,
    split: str = "compound",
    seed: int = 0,
) -> np.ndarray:
    """Fold id (0..n_folds-1) for every compound of ``ds``; shape ``(n_compounds,)``, int64.

    ``split="compound"``: a seeded random permutation dealt round-robin, so fold sizes differ
    by at most one. ``split="scaffold"``: compounds with the same Bemis-Murcko scaffold
    (plain ``MurckoScaffoldSmiles`` of the largest fragment) share a fold; acyclic compounds
    are each their own group; groups go largest first to the currently smallest fold (equal
    sizes in seeded random order), so fold sizes differ by at most the largest group's size.
    """
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    n = ds.n_compounds
    if not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ConfigError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    if n_folds > n:
        raise ConfigError(
            f"n_folds={n_folds} is more than the {n} compounds of {ds.name!r}; use at most {n} folds"
        )
    rng = np.random.default_rng(seed)
    if split == "compound":
        folds = np.empty(n, dtype=np.int64)
        folds[rng.permutation(n)] = np.arange(n) % n_folds
        return folds
    scaf = scaffolds(_structure_column(ds))
    # empty scaffold (acyclic): a group of its own, so give it a unique key
    keys = np.where(
        scaf == "", np.char.add("acyclic:", np.arange(n).astype(str)).astype(object), scaf
    )
    uniq, inv = np.unique(keys.astype(str), return_inverse=True)
    sizes = np.bincount(inv, minlength=len(uniq))
    if len(uniq) < n_folds:
        raise ConfigError(
            f"{ds.name!r} has only {len(uniq)} scaffold groups, fewer than n_folds={n_folds}; "
            "use fewer folds or split='compound'"
        )
    return _balanced_assign(sizes, n_folds, rng)[inv]


# --------------------------------------------------------------------------- sizes
def size_grid(n_max: int, *, start: int = 16, ratio: float = 2**0.5) -> np.ndarray:
    """Geometric sample-size grid ``start, start*ratio, ...`` rounded, unique, ending at ``n_max``.

    ``n_max`` is always the last point (even when it is close to the previous one); if ``n_max
    <= start`` the grid is just ``[n_max]``. Returns int64, strictly increasing.
    """
    n_max = int(n_max)
    if n_max < 1:
        raise ConfigError(f"n_max must be >= 1, got {n_max}")
    if start < 1 or ratio <= 1:
        raise ConfigError(f"need start >= 1 and ratio > 1, got start={start}, ratio={ratio}")
    pts = []
    k = 0
    while True:
        v = int(round(start * ratio**k))
        if v >= n_max:
            break
        pts.append(v)
        k += 1
    return np.unique(np.array(pts + [n_max], dtype=np.int64))


def nested_subsample(
    indices: np.ndarray | Sequence[int], sizes: np.ndarray | Sequence[int], *, seed: int
) -> list[np.ndarray]:
    """Nested random subsets of ``indices``, one per size.

    One seeded permutation; the subset of size ``s`` is its first ``s`` entries (returned
    sorted), so every smaller subset is contained in every larger one. Sizes need not be sorted
    but must lie in ``0..len(indices)``.
    """
    idx = np.asarray(indices)
    sizes = np.asarray(sizes, dtype=np.int64)
    if len(np.unique(idx)) != len(idx):
        raise ConfigError("indices for nested_subsample must be unique")
    if sizes.size and (sizes.min() < 0 or sizes.max() > len(idx)):
        raise ConfigError(
            f"sample sizes must lie in 0..{len(idx)} (the number of indices), got "
            f"{sizes.min()}..{sizes.max()}"
        )
    perm = np.random.default_rng(seed).permutation(idx)
    return [np.sort(perm[:s]) for s in sizes]


def inner_validation(
    train_idx: np.ndarray | Sequence[int], *, fraction: float = 0.1, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split training indices into (fit, validation) for early stopping, never touching test.

    The validation part holds ``max(1, round(fraction * n))`` indices drawn at random with
    ``seed``; both parts are returned sorted and are disjoint. Needs at least 2 indices.
    """
    idx = np.asarray(train_idx)
    if not 0 < fraction < 1:
        raise ConfigError(f"fraction must be in (0, 1), got {fraction}")
    if len(idx) < 2:
        raise ConfigError(f"inner validation needs at least 2 training indices, got {len(idx)}")
    n_val = min(len(idx) - 1, max(1, int(round(fraction * len(idx)))))
    perm = np.random.default_rng(seed).permutation(idx)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])
