"""The evaluation's ROC-AUC and average precision equal scikit-learn's on tied and untied scores."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import average_precision_score, roc_auc_score

from mtlc.evaluate import score_task


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ties", [False, True])
def test_matches_sklearn(dtype, ties):
    rng = np.random.default_rng(1 + ties)
    for _ in range(80):
        n = int(rng.integers(2, 400))
        y = (rng.random(n) < rng.uniform(0.02, 0.98)).astype(np.int64)
        if y.sum() in (0, n):
            continue
        s = rng.normal(size=n).astype(dtype)
        if ties:
            s = np.round(s, 1)  # many equal scores
        r = score_task(y, s)
        assert r["roc_auc"] == pytest.approx(roc_auc_score(y, s), abs=1e-12)
        assert r["avg_precision"] == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_extremes():
    y = np.array([0, 0, 1, 1])
    assert score_task(y, np.array([0.1, 0.2, 0.3, 0.4]))["roc_auc"] == 1.0
    assert score_task(y, np.array([0.4, 0.3, 0.2, 0.1]))["roc_auc"] == 0.0
    r = score_task(y, np.zeros(4))  # all tied: AUC 1/2, AP = prevalence
    assert r["roc_auc"] == 0.5 and r["avg_precision"] == 0.5
