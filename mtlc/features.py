"""Compound features: ECFP4 (Morgan radius 2) bit vectors, stored sparse, cached on disk.

Standardization is deliberately light: keep the largest fragment (drops salts and solvents),
canonical SMILES of that fragment identify duplicate structures, and Morgan bits are computed on
it. Nothing is dropped silently: unparsable SMILES are excluded with their pairs and listed in
``ds.info["featurize"]``, merged duplicate structures are counted there too.
"""

from __future__ import annotations

import hashlib
import io
import json
import multiprocessing
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from functools import partial
from typing import Any

import numpy as np
import pandas as pd
import rdkit
import scipy.sparse as sp
from rdkit import Chem, rdBase
from rdkit.Chem import rdFingerprintGenerator
from rdkit.Chem.MolStandardize import rdMolStandardize

from mtlc.datasets._common import binarize, merge_pairs
from mtlc.datasets._core import MultiTaskDataset
from mtlc.datasets._files import atomic_write_bytes, cache_dir
from mtlc.errors import ConfigError, InputTableError

__all__ = ["binarize", "ecfp", "featurize", "merge_pairs", "standardize"]

_CACHE_VERSION = "ecfp-v1"


# --------------------------------------------------------------------------- per molecule
def _largest_fragment(mol: Chem.Mol, chooser: Any) -> Chem.Mol:
    # the chooser costs as much as parsing; most molecules have one fragment, skip it for them
    if len(Chem.GetMolFrags(mol)) > 1:
        return chooser.choose(mol)
    return mol


def standardize(
    smiles_list: Sequence[str | None], *, radius: int = 2, n_bits: int = 2048
) -> dict[str, Any]:
    """Parse, keep the largest fragment, canonicalize and fingerprint each SMILES (no cache).

    Returns a dict with ``ok`` (bool, ``(n,)``), ``canonical`` (canonical SMILES of the largest
    fragment, ``""`` for failures), ``reason`` (``""`` or why parsing failed), ``indptr`` and
    ``indices`` (CSR structure of the on-bits, ``n`` rows) and ``n_rdkit_errors`` (RDKit error-log
    messages captured and silenced). RDKit warnings are blocked while this runs.
    """
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    chooser = rdMolStandardize.LargestFragmentChooser()
    n = len(smiles_list)
    ok = np.zeros(n, dtype=bool)
    canonical: list[str] = [""] * n
    reason: list[str] = [""] * n
    indptr = np.zeros(n + 1, dtype=np.int64)
    chunks: list[np.ndarray] = []
    n_err = 0
    block = rdBase.BlockLogs()  # warnings (e.g. valence notes) are noise here
    try:
        for i, smi in enumerate(smiles_list):
            bits = np.empty(0, dtype=np.int32)
            if smi is None or (isinstance(smi, float) and np.isnan(smi)) or not str(smi).strip():
                reason[i] = "no SMILES"
            else:
                with rdBase.CaptureErrorLog() as cap:
                    mol = Chem.MolFromSmiles(str(smi))
                    if mol is not None and mol.GetNumAtoms() > 0:
                        mol = _largest_fragment(mol, chooser)
                        canonical[i] = Chem.MolToSmiles(mol)
                        bits = np.fromiter(gen.GetFingerprint(mol).GetOnBits(), dtype=np.int32)
                        ok[i] = True
                msgs = [m for m in cap.messages.splitlines() if m.strip()]
                n_err += len(msgs)
                if not ok[i]:
                    reason[i] = (
                        "RDKit could not parse it: " + msgs[-1].split("] ", 1)[-1]
                        if msgs
                        else "RDKit could not parse it (empty molecule)"
                    )
            chunks.append(bits)
            indptr[i + 1] = indptr[i] + len(bits)
    finally:
        del block
    indices = np.concatenate(chunks) if chunks else np.empty(0, dtype=np.int32)
    return {
        "ok": ok,
        "canonical": np.array(canonical, dtype=str),
        "reason": np.array(reason, dtype=str),
        "indptr": indptr,
        "indices": indices.astype(np.int32),
        "n_rdkit_errors": np.int64(n_err),
    }


# below this many molecules, starting worker processes costs more than it saves
_PARALLEL_MIN = 20_000


def _n_jobs(n: int) -> int:
    env = os.environ.get("MTLC_N_JOBS")
    if env:
        try:
            return max(1, int(env))
        except ValueError:
            raise ConfigError(f"MTLC_N_JOBS must be an integer, got {env!r}") from None
    if n < _PARALLEL_MIN:
        return 1
    return max(1, min(4, os.cpu_count() or 1))


def _concat(parts: list[dict[str, Any]]) -> dict[str, Any]:
    offsets = np.cumsum([0] + [int(p["indptr"][-1]) for p in parts])
    indptr = [parts[0]["indptr"][:1]] + [
        p["indptr"][1:] + off for p, off in zip(parts, offsets[:-1], strict=True)
    ]
    return {
        "ok": np.concatenate([p["ok"] for p in parts]),
        "canonical": np.concatenate([p["canonical"] for p in parts]).astype(str),
        "reason": np.concatenate([p["reason"] for p in parts]).astype(str),
        "indptr": np.concatenate(indptr),
        "indices": np.concatenate([p["indices"] for p in parts]),
        "n_rdkit_errors": np.int64(sum(int(p["n_rdkit_errors"]) for p in parts)),
    }


def _standardize_parallel(
    smiles_list: Sequence[str | None], *, radius: int, n_bits: int
) -> dict[str, Any]:
    """:func:`standardize` in contiguous chunks on worker processes (same result, in order).

    Workers are spawned, not forked: the parent may hold torch or Jupyter threads. The number
    of workers is ``$MTLC_N_JOBS`` or, for 20,000 molecules and more, up to 4 CPUs.
    """
    smiles_list = list(smiles_list)
    jobs = _n_jobs(len(smiles_list))
    if jobs == 1:
        return standardize(smiles_list, radius=radius, n_bits=n_bits)
    bounds = np.linspace(0, len(smiles_list), 4 * jobs + 1).astype(int)
    chunks = [smiles_list[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        parts = list(pool.map(partial(standardize, radius=radius, n_bits=n_bits), chunks))
    return _concat(parts)


def _cache_key(smiles_list: Sequence[str | None], radius: int, n_bits: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([_CACHE_VERSION, rdkit.__version__, radius, n_bits]).encode())
    for s in smiles_list:
        h.update(b"\x00" if s is None else str(s).encode() + b"\n")
    return h.hexdigest()


def _standardize_cached(
    smiles_list: Sequence[str | None], *, radius: int, n_bits: int, cache: bool
) -> dict[str, Any]:
    if not cache:
        return _standardize_parallel(smiles_list, radius=radius, n_bits=n_bits)
    path = cache_dir() / "features" / f"{_cache_key(smiles_list, radius, n_bits)}.npz"
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as z:
                return {k: z[k] for k in z.files}
        except (OSError, ValueError, KeyError):  # torn or foreign file: recompute it
            pass
    out = _standardize_parallel(smiles_list, radius=radius, n_bits=n_bits)
    buf = io.BytesIO()
    np.savez(buf, **out)
    try:
        atomic_write_bytes(path, buf.getvalue())
    except OSError as exc:  # an unwritable cache costs time, not correctness
        warnings.warn(f"could not write feature cache {path}: {exc}", stacklevel=3)
    return out


def ecfp(
    smiles_list: Sequence[str], *, radius: int = 2, n_bits: int = 2048, cache: bool = True
) -> sp.csr_matrix:
    """ECFP bit vectors of the largest fragment of each SMILES.

    Returns a ``scipy.sparse.csr_matrix`` of shape ``(len(smiles_list), n_bits)``, float32 0/1.
    Raises :class:`InputTableError` naming the first unparsable SMILES (use :func:`featurize` to
    exclude such compounds with a report instead).
    """
    res = _standardize_cached(list(smiles_list), radius=radius, n_bits=n_bits, cache=cache)
    bad = np.flatnonzero(~res["ok"])
    if len(bad):
        i = int(bad[0])
        raise InputTableError(
            f"{len(bad)} SMILES could not be parsed, e.g. position {i} {smiles_list[i]!r}: "
            f"{res['reason'][i]}; fix or remove them"
        )
    return _csr(res, n_bits)


def _identical_rows(X: sp.csr_matrix) -> dict[str, Any]:
    """Distinct structures with the same bits (stereoisomers, bit collisions): kept, counted."""
    X = X.tocsr()
    X.sort_indices()
    ind, ptr = X.indices, X.indptr
    keys = pd.Series([ind[ptr[i] : ptr[i + 1]].tobytes() for i in range(X.shape[0])])
    counts = keys.map(keys.value_counts())
    return {
        "compounds": int((counts > 1).sum()),
        "groups": int(keys[counts > 1].nunique()),
        "note": "different structures (e.g. stereoisomers) with identical ECFP bits; kept apart",
    }


def _csr(res: dict[str, Any], n_bits: int, rows: np.ndarray | None = None) -> sp.csr_matrix:
    n = len(res["ok"])
    m = sp.csr_matrix(
        (np.ones(len(res["indices"]), dtype=np.float32), res["indices"], res["indptr"]),
        shape=(n, n_bits),
    )
    return m if rows is None else m[rows]


# --------------------------------------------------------------------------- data sets
def featurize(
    ds: MultiTaskDataset, *, radius: int = 2, n_bits: int = 2048, cache: bool = True
) -> MultiTaskDataset:
    """Add ECFP features (``ds.X``) to a data set, excluding and merging with a report.

    - Compounds whose SMILES is missing or unparsable are excluded with all their pairs; ids
      and reasons go to ``info["featurize"]["excluded"]``.
    - Compounds with the same canonical SMILES of the largest fragment are merged into the one
      with the smallest id; their pairs are collapsed by :func:`merge_pairs` (median raw value
      re-thresholded when raw values exist, else majority label, ties active). The counts of
      merged compounds and changed pairs are in ``info["featurize"]``.
    - Tasks left with one class after merging are excluded (``info["excluded_tasks"]``).

    Returns a new data set with ``X`` of shape ``(n_compounds, n_bits)`` (CSR float32 0/1) and a
    ``canonical_smiles`` column in ``compounds``. The input is not modified.
    """
    from mtlc.datasets._common import drop_single_class

    smiles = ds.compounds["smiles"].tolist()
    if all(s is None or (isinstance(s, float) and np.isnan(s)) for s in smiles):
        raise InputTableError(
            f"data set {ds.name!r} has no SMILES, so it cannot be featurized; supply structures "
            "(a smiles column or a ChEMBL ID -> SMILES table)"
        )
    res = _standardize_cached(smiles, radius=radius, n_bits=n_bits, cache=cache)
    ok = res["ok"].astype(bool)
    ids = ds.compounds["compound_id"].to_numpy()
    bad = np.flatnonzero(~ok)
    excluded = [
        {"compound_id": str(ids[i]), "smiles": smiles[i], "reason": str(res["reason"][i])}
        for i in bad
    ]
    pair_ok = ok[ds.rows]
    n_pairs_excl = int((~pair_ok).sum())
    if len(bad):
        warnings.warn(
            f"{ds.name}: {len(bad)} compound(s) without a usable structure excluded with "
            f"{n_pairs_excl} labelled pair(s); see info['featurize']['excluded']",
            stacklevel=2,
        )
    canon = res["canonical"].astype(object)
    # representative of each structure: the smallest compound id (ids are sorted already)
    good = np.flatnonzero(ok)
    first = pd.Series(ids[good]).groupby(canon[good], sort=False).transform("min").to_numpy()
    rep = np.array(ids, dtype=object)
    rep[good] = first
    moved = first != ids[good]
    merged_groups = {
        str(r): [str(x) for x in grp]
        for r, grp in pd.Series(ids[good][moved]).groupby(first[moved], sort=True)
    }
    n_merged_away = int(moved.sum())

    long = ds.long()[pair_ok]
    long = long.assign(compound_id=rep[ds.rows[pair_ok]])
    collapsed, mstats = merge_pairs(
        long, threshold=ds.info.get("threshold"), direction=ds.info.get("direction")
    )
    smap = pd.Series(np.array(smiles, dtype=object), index=ids)
    info = dict(ds.info)
    info["featurize"] = {
        "fingerprint": f"Morgan radius {radius}, {n_bits} bits, largest fragment (RDKit "
        f"{rdkit.__version__})",
        "compounds_in": int(ds.n_compounds),
        "pairs_in": int(ds.n_pairs),
        "excluded_compounds": len(bad),
        "excluded_pairs": n_pairs_excl,
        "excluded": excluded,
        "merge_rule": "same canonical SMILES of the largest fragment -> one compound (smallest "
        "id); per task: median raw value re-thresholded if all values exist, else majority "
        "label with ties active",
        "merged_compounds": n_merged_away,
        "merge_groups": len(merged_groups),
        "merged": merged_groups,
        "merged_pairs_removed": mstats["duplicate_rows"],
        "merged_pairs_affected": mstats["pairs_affected"],
        "merged_pairs_conflicting": mstats["conflicting_pairs"],
        "compounds_out": None,
        "pairs_out": None,
        "rdkit_errors_captured": int(res["n_rdkit_errors"]),
    }
    collapsed, excl_tasks = drop_single_class(collapsed, name=ds.name)
    if excl_tasks:
        info["excluded_tasks"] = list(info.get("excluded_tasks", [])) + [
            dict(e, reason=e["reason"] + " (after merging duplicate structures)")
            for e in excl_tasks
        ]
    out = MultiTaskDataset.from_long(ds.name, collapsed, smiles=smap, info=info)
    out.truth = ds.truth
    # feature rows follow the new compound order
    pos = pd.Series(np.arange(len(ids)), index=ids)
    rows = pos.reindex(out.compounds["compound_id"]).to_numpy()
    out.X = _csr(res, n_bits, rows)
    out.compounds = out.compounds.assign(canonical_smiles=res["canonical"][rows].astype(object))
    out.info["featurize"]["identical_fingerprints"] = _identical_rows(out.X)
    out.info["featurize"]["compounds_out"] = out.n_compounds
    out.info["featurize"]["pairs_out"] = out.n_pairs
    return out
