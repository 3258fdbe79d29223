"""Steps shared by the loaders: thresholding, duplicate pairs, single-class tasks, featurization."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from mtlc.datasets._core import MultiTaskDataset
from mtlc.errors import ConfigError, InputTableError


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
    """Ids as an object array of Python str.

    pandas 3 stores strings as Arrow arrays by default, and its ``isin`` against another Arrow
    array iterates element by element in Python (10 s for the KIBA matrix); object arrays use a
    hash table (milliseconds).
    """
    return np.array([str(v) for v in values], dtype=object)


def obj_series(values: Any, index: Any) -> pd.Series:
    """A Series with an object-dtype index of str ids (see :func:`as_str_ids`)."""
    return pd.Series(
        np.asarray(values, dtype=object), index=pd.Index(as_str_ids(index), dtype=object)
    )


# --------------------------------------------------------------------------- pair merging
def merge_pairs(
    table: pd.DataFrame,
    *,
    threshold: float | None,
    direction: str | None,
    compound_col: str = "compound_id",
    task_col: str = "task_id",
) -> tuple[pd.DataFrame, dict[str, int]]:
    """Collapse duplicated (compound, task) rows of a long table to one label per pair.

    Rule: when every row of the pair has a raw ``value`` and a threshold is known, take the
    median value and threshold it again (``direction`` ``"greater"``: active if value >=
    threshold, ``"less"``: active if value <= threshold). Otherwise take the majority label, ties
    counted as active (the median of the 0/1 labels, rounded up).

    Returns the collapsed table (columns compound, task, label, value) and counts:
    ``duplicate_rows`` (rows removed), ``pairs_affected`` (pairs that had several rows) and
    ``conflicting_pairs`` (pairs whose rows disagreed on the label).
    """
    t = table[[compound_col, task_col, "label", "value"]]
    dup = t.duplicated([compound_col, task_col], keep=False)
    if not dup.any():
        return t.reset_index(drop=True), {
            "duplicate_rows": 0,
            "pairs_affected": 0,
            "conflicting_pairs": 0,
        }
    single = t[~dup]
    g = t[dup].groupby([compound_col, task_col], sort=False)
    agg = g.agg(
        value=("value", "median"),
        n_value=("value", "count"),
        n=("label", "size"),
        mean_label=("label", "mean"),
        min_label=("label", "min"),
        max_label=("label", "max"),
    ).reset_index()
    by_value = agg["n_value"].eq(agg["n"]) & (threshold is not None)
    if threshold is not None:
        lab_v = binarize(agg["value"].to_numpy(), threshold, direction or "greater")
    else:
        lab_v = np.zeros(len(agg), dtype=np.int8)
    lab_m = (agg["mean_label"].to_numpy() >= 0.5).astype(np.int8)
    agg["label"] = np.where(by_value.to_numpy(), lab_v, lab_m).astype(np.int8)
    # keep a median value only where every row had one
    agg["value"] = agg["value"].where(agg["n_value"].eq(agg["n"]))
    stats = {
        "duplicate_rows": int(dup.sum() - len(agg)),
        "pairs_affected": len(agg),
        "conflicting_pairs": int((agg["min_label"] != agg["max_label"]).sum()),
    }
    out = pd.concat([single, agg[[compound_col, task_col, "label", "value"]]], ignore_index=True)
    return out, stats


def binarize(values: np.ndarray, threshold: float, direction: str) -> np.ndarray:
    """0/1 labels: ``greater`` -> value >= threshold is active; ``less`` -> value <= threshold."""
    v = np.asarray(values, dtype=np.float64)
    if direction == "greater":
        return (v >= threshold).astype(np.int8)
    if direction == "less":
        return (v <= threshold).astype(np.int8)
    raise ConfigError(f"direction must be 'greater' or 'less', got {direction!r}")
