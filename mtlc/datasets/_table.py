"""A user's own long table (CSV or Parquet) as a multi-task data set."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from mtlc.datasets._common import as_str_ids, binarize, finish, merge_pairs
from mtlc.datasets._core import MultiTaskDataset
from mtlc.errors import ConfigError, InputTableError


def _read(path_or_df: str | os.PathLike | pd.DataFrame) -> tuple[pd.DataFrame, str]:
    if isinstance(path_or_df, pd.DataFrame):
        return path_or_df, "the given DataFrame"
    path = Path(path_or_df)
    if not path.is_file():
        raise InputTableError(f"table {path} does not exist; give a CSV or Parquet file")
    try:
        if path.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(path), str(path)
        return pd.read_csv(path), str(path)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise InputTableError(
            f"table {path} could not be read ({exc}); give a CSV or Parquet file"
        ) from exc


def from_table(
    path_or_df: str | os.PathLike | pd.DataFrame,
    *,
    smiles_col: str = "smiles",
    task_col: str = "task",
    label_col: str = "label",
    value_col: str | None = None,
    threshold: float | None = None,
    direction: str = "greater",
    compound_col: str | None = None,
    features: bool = True,
    name: str = "table",
) -> MultiTaskDataset:
    """Load a long table with one row per (compound, task) measurement.

    Either 0/1 labels (``label_col``) or raw values (``value_col``) with a ``threshold`` and a
    ``direction`` (``"greater"``: active if value >= threshold, e.g. pKd; ``"less"``: active if
    value <= threshold, e.g. raw KIBA or IC50). Compounds are identified by ``compound_col``, or
    by the SMILES string when it is None (structures written differently are merged later by
    :func:`mtlc.features.featurize`).

    Duplicated (compound, task) rows are merged: median value then threshold again; for labels
    the majority, ties active. Their count is in ``info["duplicates"]``. Rows with an empty
    compound, task, SMILES or label/value are dropped and counted in ``info["dropped_rows"]``.
    """
    df, where = _read(path_or_df)
    if direction not in ("greater", "less"):
        raise ConfigError(f"direction must be 'greater' or 'less', got {direction!r}")
    use_value = value_col is not None
    need = [smiles_col, task_col, value_col if use_value else label_col]
    if compound_col is not None:
        need.append(compound_col)
    missing = [c for c in need if c not in df.columns]
    if missing:
        hint = (
            f"rename the columns or pass smiles_col=/task_col=/{'value_col' if use_value else 'label_col'}="
            + ("/compound_col=" if compound_col else "")
        )
        if not use_value and label_col in missing:
            hint += "; for raw measurements pass value_col=, threshold= and direction="
        raise InputTableError(
            f"{where} lacks column(s) {missing}; it has {list(df.columns)}; {hint}"
        )
    if use_value and threshold is None:
        raise InputTableError(
            f"{where}: values in column {value_col!r} need a threshold to become labels; "
            "pass threshold= (and direction='greater' or 'less')"
        )
    cid = compound_col or smiles_col
    t = pd.DataFrame(
        {
            "compound_id": df[cid],
            "task_id": df[task_col],
            "smiles": df[smiles_col],
        }
    )
    if use_value:
        vals = pd.to_numeric(df[value_col], errors="coerce")
        bad = vals.isna() & df[value_col].notna()
        if bad.any():
            ex = df.loc[bad, value_col].iloc[0]
            raise InputTableError(
                f"{where}: column {value_col!r} holds {int(bad.sum())} non-numeric value(s), "
                f"e.g. {ex!r}; clean them or leave the cells empty"
            )
        t["value"] = vals.to_numpy(dtype=np.float64)
    else:
        lab = pd.to_numeric(df[label_col], errors="coerce")
        ok = lab.isna() | lab.isin([0, 1])
        if not ok.all() or (lab.isna() & df[label_col].notna()).any():
            bad = df.loc[~ok | (lab.isna() & df[label_col].notna()), label_col]
            raise InputTableError(
                f"{where}: column {label_col!r} must hold 0/1 labels but has {bad.iloc[0]!r} "
                f"({len(bad)} bad row(s)); for raw values pass value_col=, threshold= and direction="
            )
        t["label_raw"] = lab
        t["value"] = np.nan
    key_cols = ["compound_id", "task_id", "smiles", "value" if use_value else "label_raw"]
    empty = t[key_cols].isna().any(axis=1)
    n_dropped = int(empty.sum())
    t = t[~empty].copy()
    if len(t) == 0:
        raise InputTableError(
            f"{where} has no complete rows (compound, task, smiles and label/value)"
        )
    t["compound_id"] = as_str_ids(t["compound_id"])
    t["task_id"] = as_str_ids(t["task_id"])
    if use_value and threshold is not None:
        t["label"] = binarize(t["value"].to_numpy(), threshold, direction)
    else:
        t["label"] = t["label_raw"].astype(np.int8)
    smiles = t.drop_duplicates("compound_id").set_index("compound_id")["smiles"]
    n_smiles_conflicts = int(t.groupby("compound_id")["smiles"].nunique().gt(1).sum())
    long, dstats = merge_pairs(
        t, threshold=threshold if use_value else None, direction=direction if use_value else None
    )
    info = {
        "source": where,
        "threshold": None if threshold is None else float(threshold),
        "direction": direction if use_value else None,
        "label_rule": (
            f"active if {value_col} {'>=' if direction == 'greater' else '<='} {threshold}"
            if use_value
            else f"labels from column {label_col!r}"
        ),
        "dropped_rows": n_dropped,
        "duplicates": dict(
            dstats,
            rule="per (compound, task): median value thresholded again; labels: majority, ties active",
            compounds_with_several_smiles=n_smiles_conflicts,
        ),
    }
    return finish(name, long, smiles=smiles, info=info, features=features)
