"""Steps shared by the loaders: thresholding, duplicate pairs, single-class tasks, featurization."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mtlc.datasets._core import MultiTaskDataset
from mtlc.errors import InputTableError


def drop_single_class(
    table: pd.DataFrame, *, name: str, task_col: str = "task_id"
) -> tuple[pd.DataFrame, list[dict[str, Any]]]:
    """Remove tasks whose labels are all 0 or all 1 (no ROC-AUC possible), with a report.

    Returns the reduced table and one dict per excluded task (``task_id``, ``reason``,
    ``n_measured``, ``n_active``). Raises :class:`InputTableError` if no task is left.
    """
    if len(table) == 0:
        raise InputTableError(f"data set {name!r} has no labelled pairs")
    g = table.groupby(task_col)["label"].agg(["size", "sum"])
    bad = g[(g["sum"] == 0) | (g["sum"] == g["size"])]
    excluded = [
        {
            "task_id": str(t),
            "reason": "single class: all inactive" if r["sum"] == 0 else "single class: all active",
            "n_measured": int(r["size"]),
            "n_active": int(r["sum"]),
        }
        for t, r in bad.iterrows()
    ]
    if len(bad) == len(g):
        raise InputTableError(
            f"every task of {name!r} has a single class after thresholding "
            f"({len(g)} tasks, {int(g['sum'].sum())} actives in {int(g['size'].sum())} pairs); "
            "choose a threshold (or direction) that splits the values"
        )
    if excluded:
        table = table[~table[task_col].isin(bad.index)]
    return table, excluded


def finish(
    name: str,
    table: pd.DataFrame,
    *,
    smiles: pd.Series | dict[str, str] | None,
    info: dict[str, Any],
    features: bool,
    drop_single: bool = True,
) -> MultiTaskDataset:
    """Long table (compound_id, task_id, label, value) -> data set, optionally featurized.

    Single-class tasks are excluded first (recorded in ``info["excluded_tasks"]``).
    """
    info = dict(info)
    if drop_single:
        table, excl = drop_single_class(table, name=name)
        info["excluded_tasks"] = list(info.get("excluded_tasks", [])) + excl
    ds = MultiTaskDataset.from_long(name, table, smiles=smiles, info=info)
    info_counts = {
        "compounds": ds.n_compounds,
        "tasks": ds.n_tasks,
        "pairs": ds.n_pairs,
        "actives": int(ds.y.sum()),
    }
    ds.info["counts_before_featurize"] = info_counts
    if features:
        from mtlc.features import featurize

        ds = featurize(ds)
    return ds


def as_str_ids(values: Any) -> np.ndarray:
    """Ids as a numpy array of Python str (pandas may hand back Arrow strings)."""
    return np.asarray(pd.Series(values).astype(str).to_numpy(dtype=object))
