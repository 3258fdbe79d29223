"""Data sets as :class:`MultiTaskDataset`: KIBA, kinase200, Davis, synthetic, and a user's table.

>>> from mtlc import datasets
>>> ds = datasets.load("davis", features=False)

Every loader records in ``ds.info`` what it filtered, excluded and merged, with reasons; use
:func:`summary` for a JSON-able digest.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from mtlc.datasets._core import MultiTaskDataset
from mtlc.datasets._davis import davis
from mtlc.datasets._files import data_path
from mtlc.datasets._kiba import kiba
from mtlc.datasets._kinase200 import kinase200
from mtlc.datasets._synthetic import synthetic
from mtlc.datasets._table import from_table
from mtlc.errors import ConfigError

__all__ = [
    "MultiTaskDataset",
    "kiba",
    "kinase200",
    "davis",
    "synthetic",
    "from_table",
    "load",
    "summary",
    "data_path",
    "LOADERS",
]

LOADERS: dict[str, Callable[..., MultiTaskDataset]] = {
    "kiba": kiba,
    "kinase200": kinase200,
    "davis": davis,
    "synthetic": synthetic,
}


def load(name: str, **kw: Any) -> MultiTaskDataset:
    """Load a data set by name (``kiba``, ``kinase200``, ``davis``, ``synthetic``).

    Keyword arguments go to the loader. Unknown names raise :class:`ConfigError`; for a file of
    your own use :func:`from_table`.
    """
    if name not in LOADERS:
        raise ConfigError(
            f"unknown dataset {name!r}; known datasets: {', '.join(LOADERS)} "
            "(for your own CSV/Parquet use mtlc.datasets.from_table)"
        )
    try:
        return LOADERS[name](**kw)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise ConfigError(f"dataset {name!r}: {exc}") from exc
        raise


def _stats(a: np.ndarray) -> dict[str, float]:
    if len(a) == 0:
        return {}
    return {
        "min": int(a.min()),
        "median": float(np.median(a)),
        "mean": round(float(a.mean()), 2),
        "max": int(a.max()),
    }


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, np.integer):
        return int(x)
    if isinstance(x, np.floating):
        return float(x)
    if isinstance(x, np.bool_):
        return bool(x)
    return x


def summary(ds: MultiTaskDataset, *, details: bool = False) -> dict[str, Any]:
    """A JSON-able digest of a data set: counts, per-task size stats, exclusions and merges.

    For KIBA it holds both ``counts["full_matrix"]`` (the recipe on the whole matrix, e.g. 244
    tasks / 228,399 pairs / 51,097 compounds) and ``counts["structure_available"]`` (compounds
    with a SMILES, before merging duplicate structures, e.g. 201 / 144,733 / 3,816). Long lists
    (excluded compound ids, merge groups) are replaced by their length unless ``details``.
    """
    n_act = ds.tasks["n_active"].to_numpy()
    n_meas = ds.tasks["n_measured"].to_numpy()
    out: dict[str, Any] = {
        "dataset": ds.name,
        "compounds": ds.n_compounds,
        "tasks": ds.n_tasks,
        "pairs": ds.n_pairs,
        "actives": int(ds.y.sum()),
        "active_fraction": round(float(ds.y.mean()), 4) if ds.n_pairs else 0.0,
        "features": None
        if ds.X is None
        else {
            "n_bits": int(ds.X.shape[1]),
            "mean_bits_set": round(float(ds.X.getnnz(axis=1).mean()), 1) if ds.n_compounds else 0.0,
        },
        "per_task_measured": _stats(n_meas),
        "per_task_active": _stats(n_act),
        "per_task_inactive": _stats(n_meas - n_act),
    }
    info = dict(ds.info)
    for key in (
        "recipe",
        "recipe_rule",
        "label_rule",
        "threshold",
        "direction",
        "measured_matrix",
        "counts",
        "counts_before_featurize",
        "smiles_sources",
        "smiles_preference",
        "pairs_without_structure",
        "duplicates",
        "dropped_rows",
    ):
        if key in info:
            out[key] = info[key]
    excl = info.get("excluded_tasks", [])
    out["excluded_tasks"] = (
        excl if details else {"count": len(excl), "task_ids": [e["task_id"] for e in excl]}
    )
    if "recipe_dropped_tasks" in info:
        out["recipe_dropped_tasks"] = (
            info["recipe_dropped_tasks"] if details else len(info["recipe_dropped_tasks"])
        )
    if "featurize" in info:
        f = dict(info["featurize"])
        if not details:
            f["excluded"] = [e["compound_id"] for e in f["excluded"]][:20]
            f.pop("merged", None)
        out["featurize"] = f
    return _jsonable(out)
