"""Per-task test metrics: ROC-AUC and average precision over labelled compounds only.

A metric that is undefined (the test fold lacks actives or inactives for the task) is NaN with a
note that says why, never dropped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = ["METRICS", "score_task", "evaluation_rows"]

#: Metric names, in the order they appear in result tables.
METRICS = ("roc_auc", "avg_precision")


def score_task(y: np.ndarray, scores: np.ndarray) -> dict[str, Any]:
    """ROC-AUC and average precision of one task.

    ``y``: (n,) 0/1 labels; ``scores``: (n,) higher = more likely active (logits or
    probabilities, only the order matters). Returns ``roc_auc``, ``avg_precision`` (NaN when
    undefined), ``note`` ("" when defined), ``n_test_pos``, ``n_test_neg``.
    """
    y = np.asarray(y).astype(np.int64).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    n_pos = int(y.sum())
    n_neg = int(len(y) - n_pos)
    out: dict[str, Any] = {"n_test_pos": n_pos, "n_test_neg": n_neg, "note": ""}
    if len(y) == 0:
        out.update(roc_auc=np.nan, avg_precision=np.nan, note="test fold has no labelled compounds")
    elif n_pos == 0:
        out.update(roc_auc=np.nan, avg_precision=np.nan, note="test fold has no actives")
    elif n_neg == 0:
        out.update(roc_auc=np.nan, avg_precision=np.nan, note="test fold has no inactives")
    elif not np.isfinite(s).all():
        out.update(roc_auc=np.nan, avg_precision=np.nan, note="non-finite scores (diverged)")
    else:
        auc, ap = _auc_ap(y, s)
        out.update(roc_auc=auc, avg_precision=ap)
    return out


def _auc_ap(y: np.ndarray, s: np.ndarray) -> tuple[float, float]:
    """ROC-AUC and average precision as ``sklearn.metrics.roc_auc_score`` and
    ``average_precision_score`` define them (ties: one threshold per distinct score; AUC by the
    trapezoid rule), equal to them within 1e-15 and about 60x faster on a test fold of ~100
    compounds (their input validation dominated the study runner's evaluation time).

    ``y``: (n,) int 0/1 with both classes; ``s``: (n,) float64 scores.
    """
    order = np.argsort(s, kind="mergesort")[::-1]
    ss = s[order]
    idx = np.r_[np.flatnonzero(np.diff(ss)), len(ss) - 1]  # last row of each distinct score
    tps = np.cumsum(y[order])[idx].astype(np.float64)
    fps = 1 + idx - tps
    auc = float(np.trapezoid(np.r_[0, tps] / tps[-1], np.r_[0, fps] / fps[-1]))
    ap = float(np.sum(np.diff(np.r_[0, tps / tps[-1]]) * (tps / (tps + fps))))
    return auc, ap


def evaluation_rows(
    y: np.ndarray, mask: np.ndarray, scores: np.ndarray, task_ids: Sequence[Any]
) -> list[dict[str, Any]]:
    """Long rows (task, metric, value, note, n_test_pos, n_test_neg) for several tasks.

    ``y``, ``mask``, ``scores``: (n_compounds, n_tasks); column j belongs to ``task_ids[j]``;
    only compounds with ``mask`` set are scored for a task.
    """
    rows = []
    for j, tid in enumerate(task_ids):
        m = np.asarray(mask[:, j]) > 0
        r = score_task(y[m, j], scores[m, j])
        for metric in METRICS:
            rows.append(
                {
                    "task": tid,
                    "metric": metric,
                    "value": r[metric],
                    "note": r["note"],
                    "n_test_pos": r["n_test_pos"],
                    "n_test_neg": r["n_test_neg"],
                }
            )
    return rows
