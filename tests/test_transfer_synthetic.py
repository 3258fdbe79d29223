"""Planted transfer shows in the learning-curve pipeline (designs -> training -> store -> curves).

On a synthetic data set with two groups of three related tasks (cosine 0.91 between the task
weight vectors inside a group, 0 elsewhere) and three unrelated tasks, a target learned at a
small size (n = 32) together with every other task at full data (the ``context`` regime with
q = 1, i.e. all-task training) must beat the target learned alone (STL) when the target has
related tasks, and must not when it has none. Margins (ROC-AUC, mean over 3 folds): each
related target gains > 0.08; each unrelated target gains less than the smallest related gain
minus 0.08, and < 0.06. Measured here: related +0.18 and +0.17, unrelated +0.03 and -0.02.
"""

from __future__ import annotations

import numpy as np
import pytest

from mtlc.designs import DesignContext, make_design
from mtlc.store import ResultsStore
from mtlc.study import learning_curves, run_design

pytest.importorskip("mtlc.fleet", reason="the training engine (mtlc.fleet) has not landed")
synthetic = pytest.importorskip("mtlc.datasets._synthetic").synthetic
TrainConfig = pytest.importorskip("mtlc.training").TrainConfig


@pytest.mark.slow
def test_all_task_training_helps_related_targets_only(tmp_path):
    ds = synthetic(
        seed=0, n_compounds=900, n_tasks=9, n_features=256, bits_per_compound=20, n_groups=2,
        group_size=3, shared_strength=0.0, group_strength=1.0, task_noise=0.1,
        nonlinearity="linear",
    )  # fmt: skip
    groups = dict(zip(ds.tasks["task_id"], ds.truth["groups"], strict=True))
    related, unrelated = ["t00", "t04"], ["t06", "t07"]
    assert all(groups[t] >= 0 for t in related) and all(groups[t] == -1 for t in unrelated)
    folds = np.arange(ds.n_compounds) % 3
    np.random.default_rng(0).shuffle(folds)
    # No inner validation and no dropout: at n = 32 a 3-compound validation set only adds noise.
    cfg = TrainConfig(
        hidden=(32,), max_epochs=20, batch_size=32, val_fraction=0.0, dropout=0.0, device="cpu"
    )
    ctx = DesignContext(dataset=ds.name, config_hash=cfg.hash())
    targets = related + unrelated
    design = make_design(ds, folds, regime="stl", ctx=ctx, sizes=[32], targets=targets)
    design = design + make_design(
        ds, folds, regime="context", ctx=ctx, sizes=[32], qs=[1.0], targets=targets
    )
    summary = run_design(ds, design, tmp_path, cfg, progress=False, chunk_size=100)
    assert summary.failed == 0 and summary.done == 24
    curves = learning_curves(ResultsStore(tmp_path).read())
    assert (curves["n_folds"] == 3).all()
    mean = curves.pivot_table(index="task", columns="regime", values="mean")
    gain = mean["context"] - mean["stl"]
    assert (gain[related] > 0.08).all(), gain
    assert (gain[unrelated] < gain[related].min() - 0.08).all(), gain
    assert (gain[unrelated] < 0.06).all(), gain
