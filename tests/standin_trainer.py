"""A tiny, deterministic stand-in for ``mtlc.training.train_models`` (tests only).

Scores a test compound for task t by its dot product with (mean fingerprint of the task's
training actives - mean of its training inactives). No randomness, no torch: the numbers depend
only on the spec, so the store and runner tests do not depend on the training engine.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score


@dataclass(frozen=True)
class StandInConfig:
    """What run_design needs from a config: ``hash()``. ``sleep``: seconds per spec."""

    sleep: float = 0.0
    fail_task: str | None = None  # raise while training a spec evaluating this task

    def hash(self) -> str:
        return "standin0"


def centroid_trainer(ds, specs, config, *, progress=None) -> pd.DataFrame:
    lab = ds.label_matrix(np.float64)
    ids = ds.tasks["task_id"].astype(str).to_numpy()
    X = ds.X.tocsr()
    rows = []
    for s in specs:
        if getattr(config, "sleep", 0.0):
            time.sleep(config.sleep)
        for t in np.asarray(s.eval_tasks):
            if getattr(config, "fail_task", None) == ids[t]:
                raise RuntimeError(f"planted failure on {ids[t]}")
            sel = np.asarray(s.train_cols) == t
            r = np.asarray(s.train_rows)[sel]
            y = lab[r, t]
            w = np.zeros(X.shape[1])
            if (y == 1).any():
                w += np.asarray(X[r[y == 1]].mean(axis=0)).ravel()
            if (y == 0).any():
                w -= np.asarray(X[r[y == 0]].mean(axis=0)).ravel()
            tc = np.asarray(s.test_compounds)
            tc = tc[~np.isnan(lab[tc, t])]
            yt = lab[tc, t]
            sc = X[tc] @ w
            npos = int(yt.sum())
            nneg = len(yt) - npos
            ok = npos > 0 and nneg > 0
            for metric, fn in (
                ("roc_auc", roc_auc_score),
                ("avg_precision", average_precision_score),
            ):
                rows.append(
                    {
                        **dict(s.key),
                        "task": ids[t],
                        "metric": metric,
                        "value": float(fn(yt, sc)) if ok else float("nan"),
                        "note": "" if ok else "test fold lacks a class",
                        "n_test_pos": npos,
                        "n_test_neg": nneg,
                        "epochs": 1,
                        "best_epoch": 1,
                        "train_seconds": 0.0,
                        "n_train_pairs": len(s.train_rows),
                    }
                )
        if progress is not None:
            progress(1)
    return pd.DataFrame(rows)


def small_synthetic(seed: int = 0, n_compounds: int = 600):
    from mtlc.datasets import synthetic

    return synthetic(
        seed=seed, n_compounds=n_compounds, n_tasks=6, n_groups=2, group_size=2, density=0.6
    )
