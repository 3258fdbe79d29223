"""The in-memory type shared by every loader: a sparse multi-task binary data set."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import scipy.sparse as sp

from mtlc.errors import ConfigError, InputTableError


@dataclass
class MultiTaskDataset:
    """A sparse multi-task binary data set.

    Labels are stored as coordinate lists, one entry per measured (compound, task) pair, so a
    data set with 50,000 compounds and 200 tasks at 2 % density costs a few MB.

    Attributes
    ----------
    name:
        Data set name, e.g. ``"kiba"``.
    compounds:
        One row per compound, in index order: ``compound_id`` (str), ``smiles`` (str or None).
    tasks:
        One row per task, in index order: ``task_id`` (str), ``n_measured``, ``n_active``,
        ``n_inactive`` (ints, recomputed from the labels).
    rows, cols:
        ``int32`` arrays of shape ``(n_pairs,)``: compound index and task index of each pair.
    y:
        ``int8`` array ``(n_pairs,)``: 1 = active, 0 = inactive.
    value:
        ``float64`` array ``(n_pairs,)``: the raw measurement the label was derived from
        (NaN when the source gave labels only).
    X:
        Features, ``scipy.sparse.csr_matrix`` of shape ``(n_compounds, n_bits)``, ``float32``
        0/1 (e.g. ECFP4 bits), or None before featurization.
    info:
        Provenance and bookkeeping: recipe, threshold, direction, counts before filtering,
        exclusions (with reasons), merges. Everything that was dropped is recorded here.
    truth:
        Ground truth for synthetic data (None for real data).
    """

    name: str
    compounds: pd.DataFrame
    tasks: pd.DataFrame
    rows: np.ndarray
    cols: np.ndarray
    y: np.ndarray
    value: np.ndarray
    X: sp.csr_matrix | None = None
    info: dict[str, Any] = field(default_factory=dict)
    truth: dict[str, Any] | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_long(
        cls,
        name: str,
        table: pd.DataFrame,
        *,
        compound_col: str = "compound_id",
        task_col: str = "task_id",
        label_col: str = "label",
        value_col: str | None = "value",
        smiles: pd.Series | dict[str, str] | None = None,
        info: dict[str, Any] | None = None,
    ) -> MultiTaskDataset:
        """Build from a long table with one row per labelled (compound, task) pair.

        ``smiles`` maps compound id -> SMILES (compounds without one get None). Compounds and
        tasks are sorted by id so that the same table always gives the same indices.
        Duplicated (compound, task) rows are an error: resolve them before calling.
        """
        need = [compound_col, task_col, label_col]
        missing = [c for c in need if c not in table.columns]
        if missing:
            raise InputTableError(
                f"table for {name!r} lacks column(s) {missing}; it has {list(table.columns)}"
            )
        t = table.dropna(subset=[label_col])
        dup = t.duplicated([compound_col, task_col])
        if dup.any():
            ex = t.loc[dup, [compound_col, task_col]].iloc[0].tolist()
            raise InputTableError(
                f"table for {name!r} has {int(dup.sum())} duplicated (compound, task) rows, "
                f"e.g. {ex}; aggregate them first (one label per pair)"
            )
        comp_ids = np.sort(t[compound_col].astype(str).unique())
        task_ids = np.sort(t[task_col].astype(str).unique())
        rows = np.searchsorted(comp_ids, t[compound_col].astype(str).to_numpy()).astype(np.int32)
        cols = np.searchsorted(task_ids, t[task_col].astype(str).to_numpy()).astype(np.int32)
        y = t[label_col].to_numpy().astype(np.int8)
        if not np.isin(y, (0, 1)).all():
            raise InputTableError(f"labels of {name!r} must be 0 or 1")
        if value_col is not None and value_col in t.columns:
            value = t[value_col].to_numpy(dtype=np.float64)
        else:
            value = np.full(len(t), np.nan)
        order = np.lexsort((cols, rows))
        if smiles is not None:
            smap = pd.Series(smiles) if isinstance(smiles, dict) else smiles
            smi = smap.reindex(comp_ids).astype(object).where(lambda s: s.notna(), None)
            smi_values = smi.to_numpy(dtype=object)
        else:
            smi_values = np.full(len(comp_ids), None, dtype=object)
        compounds = pd.DataFrame({"compound_id": comp_ids, "smiles": smi_values})
        ds = cls(
            name=name,
            compounds=compounds,
            tasks=pd.DataFrame({"task_id": task_ids}),
            rows=rows[order],
            cols=cols[order],
            y=y[order],
            value=value[order],
            info=dict(info or {}),
        )
        ds._recount()
        return ds

    def _recount(self) -> None:
        k = len(self.tasks)
        n = np.bincount(self.cols, minlength=k)
        a = np.bincount(self.cols, weights=self.y, minlength=k).astype(np.int64)
        counts = ("task_id", "n_measured", "n_active", "n_inactive")
        base = self.tasks[["task_id"]].assign(n_measured=n, n_active=a, n_inactive=n - a)
        # Keep per-task annotations (e.g. the synthetic data's planted ``group``) after the counts.
        for c in self.tasks.columns:
            if c not in counts:
                base[c] = self.tasks[c].to_numpy()
        self.tasks = base

    # ------------------------------------------------------------------ shape
    @property
    def n_compounds(self) -> int:
        return len(self.compounds)

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @property
    def n_pairs(self) -> int:
        return len(self.y)

    def __repr__(self) -> str:
        feat = "none" if self.X is None else f"{self.X.shape[1]} bits"
        return (
            f"MultiTaskDataset({self.name!r}: {self.n_compounds} compounds, {self.n_tasks} tasks, "
            f"{self.n_pairs} labelled pairs, {self.y.mean() if self.n_pairs else 0:.1%} active, "
            f"features {feat})"
        )

    # ------------------------------------------------------------------ views
    def label_matrix(self, dtype: Any = np.float32) -> np.ndarray:
        """Dense ``(n_compounds, n_tasks)`` labels: 1, 0, or NaN where unmeasured."""
        m = np.full((self.n_compounds, self.n_tasks), np.nan, dtype=dtype)
        m[self.rows, self.cols] = self.y
        return m

    def labels_sparse(self) -> sp.csr_matrix:
        """Sparse ``(n_compounds, n_tasks)`` with 1 = active, -1 = inactive, 0 = unmeasured."""
        data = np.where(self.y == 1, 1, -1).astype(np.int8)
        return sp.csr_matrix((data, (self.rows, self.cols)), shape=(self.n_compounds, self.n_tasks))

    def long(self) -> pd.DataFrame:
        """The labels as a long table: compound_id, task_id, label, value."""
        return pd.DataFrame(
            {
                "compound_id": self.compounds["compound_id"].to_numpy()[self.rows],
                "task_id": self.tasks["task_id"].to_numpy()[self.cols],
                "label": self.y,
                "value": self.value,
            }
        )

    def task_index(self, task: str | int) -> int:
        """Index of a task given its id or index."""
        if isinstance(task, (int, np.integer)):
            if not 0 <= task < self.n_tasks:
                raise IndexError(f"task index {task} out of range 0..{self.n_tasks - 1}")
            return int(task)
        hits = np.flatnonzero(self.tasks["task_id"].to_numpy() == task)
        if len(hits) == 0:
            raise KeyError(f"no task {task!r} in {self.name!r}")
        return int(hits[0])

    def task_indices(self, tasks: Iterable[str | int] | None = None) -> list[int]:
        """Indices of ``tasks`` (ids or indices; None = every task), in the order given.

        An unknown task is a :class:`~mtlc.errors.ConfigError` naming it and the data set.
        """
        if tasks is None:
            return list(range(self.n_tasks))
        out = []
        for t in tasks:
            try:
                out.append(self.task_index(t))
            except (KeyError, IndexError) as exc:
                raise ConfigError(f"unknown task {t!r} for {self.name!r}: {exc}") from None
        return out

    # ------------------------------------------------------------------ subsetting
    def subset(
        self,
        *,
        tasks: np.ndarray | list | None = None,
        compounds: np.ndarray | None = None,
        drop_empty_compounds: bool = True,
    ) -> MultiTaskDataset:
        """A new data set restricted to some tasks (indices or ids) and/or compounds (indices).

        Compounds left without any label are dropped (``drop_empty_compounds``), and the count of
        what was dropped is recorded in ``info["subset"]``.
        """
        keep_t = np.arange(self.n_tasks)
        if tasks is not None:
            keep_t = np.array([self.task_index(t) for t in tasks], dtype=np.int64)
        keep_c = np.arange(self.n_compounds) if compounds is None else np.asarray(compounds)
        tmap = np.full(self.n_tasks, -1, dtype=np.int64)
        tmap[keep_t] = np.arange(len(keep_t))
        cmask = np.zeros(self.n_compounds, dtype=bool)
        cmask[keep_c] = True
        sel = (tmap[self.cols] >= 0) & cmask[self.rows]
        if drop_empty_compounds:
            used = np.zeros(self.n_compounds, dtype=bool)
            used[self.rows[sel]] = True
            cmask &= used
        cidx = np.flatnonzero(cmask)
        cmap = np.full(self.n_compounds, -1, dtype=np.int64)
        cmap[cidx] = np.arange(len(cidx))
        rows = cmap[self.rows[sel]].astype(np.int32)
        cols = tmap[self.cols[sel]].astype(np.int32)
        order = np.lexsort((cols, rows))
        info = dict(self.info)
        info["subset"] = {
            "tasks_kept": len(keep_t),
            "tasks_dropped": self.n_tasks - len(keep_t),
            "compounds_kept": len(cidx),
            "compounds_dropped": self.n_compounds - len(cidx),
            "pairs_dropped": int(self.n_pairs - sel.sum()),
        }
        ds = MultiTaskDataset(
            name=self.name,
            compounds=self.compounds.iloc[cidx].reset_index(drop=True),
            tasks=self.tasks.iloc[keep_t].reset_index(drop=True),
            rows=rows[order],
            cols=cols[order],
            y=self.y[sel][order],
            value=self.value[sel][order],
            X=None if self.X is None else self.X[cidx],
            info=info,
            truth=self.truth,
        )
        ds._recount()
        return ds
