"""train_models: result table, validation of specs, inner validation split, determinism."""

from __future__ import annotations

import numpy as np
import pytest
from _training_data import all_task_spec, stl_specs, toy

from mtlc.errors import ConfigError
from mtlc.evaluate import score_task
from mtlc.training import (
    RESULT_COLUMNS,
    ModelSpec,
    TrainConfig,
    prepare_specs,
    train_models,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ds():
    return toy(n=300, n_bits=96, k=4, nnz=10)


FAST = dict(hidden=(16,), max_epochs=4, batch_size=32)


def test_config_hash_is_stable_and_ignores_device():
    a = TrainConfig()
    assert a.hash() == TrainConfig().hash()
    assert len(a.hash()) == 12
    assert TrainConfig(device="cpu").hash() == a.hash()
    assert TrainConfig(hidden=(256,)).hash() != a.hash()
    assert TrainConfig(hidden=[128]).hash() == a.hash()  # list or tuple: same experiment
    assert TrainConfig(lr=2e-3).hash() != a.hash()
    # the options added later hash only when on: older configs keep their hash
    assert TrainConfig(min_steps=0, min_val_compounds=0).hash() == a.hash()
    assert TrainConfig(min_steps=100).hash() != a.hash()
    assert TrainConfig(min_val_compounds=8).hash() != a.hash()


@pytest.mark.parametrize(
    "kw",
    [
        dict(dropout=1.0),
        dict(val_fraction=1.0),
        dict(hidden=()),
        dict(dtype="float16"),
        dict(lr=0),
        dict(min_steps=-1),
        dict(min_val_compounds=-1),
    ],
)
def test_config_rejects_impossible_values(kw):
    with pytest.raises(ConfigError):
        TrainConfig(**kw)


def test_result_table(ds):
    specs = stl_specs(ds, [30, 50, 70, 90]) + [all_task_spec(ds)]
    calls = []
    cfg = TrainConfig(**FAST)
    df = train_models(ds, specs, cfg, progress=calls.append)
    assert sum(calls) == len(specs)
    n_rows = 2 * (4 + ds.n_tasks)  # eval tasks x metrics
    assert len(df) == n_rows
    for c in ["fold", "regime", *RESULT_COLUMNS]:
        assert c in df.columns
    assert set(df["metric"]) == {"roc_auc", "avg_precision"}
    assert set(df["task"]) == set(ds.tasks["task_id"])
    stl = df[(df.regime == "stl") & (df.metric == "roc_auc")]
    assert (stl["n_train_pairs"] + stl["n_val_pairs"]).tolist() == [30, 50, 70, 90]
    assert df["value"].notna().all()
    assert ((df.epochs >= 1) & (df.epochs <= 4) & (df.best_epoch <= df.epochs)).all()
    assert (df.train_seconds > 0).all()
    # metrics are those of score_task on the same compounds: recompute one AUC
    assert df.loc[df.metric == "roc_auc", "value"].between(0, 1).all()


def test_same_config_same_numbers(ds):
    specs = stl_specs(ds, [30, 50, 70, 90])
    cfg = TrainConfig(**FAST)
    a = train_models(ds, specs, cfg)
    b = train_models(ds, specs, cfg)
    np.testing.assert_array_equal(a["value"].to_numpy(), b["value"].to_numpy())
    c = train_models(ds, stl_specs(ds, [30, 50, 70, 90], seed=7), cfg)
    assert not np.array_equal(a["value"].to_numpy(), c["value"].to_numpy())


def test_learns_an_easy_task():
    ds = toy(n=600, n_bits=64, k=2, nnz=8, density=1.0, seed=1)
    cfg = TrainConfig(hidden=(32,), max_epochs=20, batch_size=64, dtype="float64")
    df = train_models(ds, stl_specs(ds, 400, test_every=4), cfg)
    assert df.loc[df.metric == "roc_auc", "value"].min() > 0.8


def test_undefined_metric_is_nan_with_note(ds):
    # a test fold holding only inactives of task 0
    t0 = ds.cols == 0
    neg = ds.rows[t0 & (ds.y == 0)][:5].astype(np.int64)
    train = ds.rows[t0 & ~np.isin(ds.rows, neg)][:40].astype(np.int64)
    spec = ModelSpec(train, np.zeros(len(train), np.int64), neg, np.array([0]), seed=0)
    df = train_models(ds, [spec], TrainConfig(**FAST))
    assert df["value"].isna().all()
    assert (df["note"] == "test fold has no actives").all()
    assert (df["n_test_neg"] == 5).all() and (df["n_test_pos"] == 0).all()


def test_inner_validation_is_by_compound(ds):
    spec = all_task_spec(ds)
    (pm,) = prepare_specs(ds, [spec], TrainConfig(val_fraction=0.2))
    assert np.intersect1d(pm.train_compounds, pm.val_compounds).size == 0
    n = len(np.unique(spec.train_rows))
    assert len(pm.val_compounds) == round(0.2 * n)
    assert pm.n_train_pairs + pm.n_val_pairs == len(spec.train_rows)
    assert not np.isin(pm.test_compounds, spec.train_rows).any()
    # only the spec's pairs are labels: a model given task 0 only has no other labels
    (stl,) = prepare_specs(ds, stl_specs(ds, [30, 30, 30, 30])[:1], TrainConfig())
    assert stl.train_mask.shape[1] == 1 and stl.tasks.tolist() == [0]


def test_eval_task_without_training_pairs_gets_a_head(ds):
    s = stl_specs(ds, [40, 40, 40, 40])[0]
    spec = ModelSpec(s.train_rows, s.train_cols, s.test_compounds, np.array([0, 2]), seed=1)
    (pm,) = prepare_specs(ds, [spec], TrainConfig())
    assert pm.tasks.tolist() == [0, 2]
    assert pm.train_mask[:, 1].sum() == 0
    df = train_models(ds, [spec], TrainConfig(**FAST))
    assert sorted(set(df["task"])) == ["t0", "t2"]


def test_bad_specs_are_named(ds):
    s = stl_specs(ds, [30, 30, 30, 30])[1]
    lab = set(zip(ds.rows.tolist(), ds.cols.tolist(), strict=True))
    c = next(i for i in range(ds.n_compounds) if (i, 1) not in lab and i not in s.test_compounds)
    bad = ModelSpec(
        np.r_[s.train_rows, c], np.r_[s.train_cols, 1], s.test_compounds, s.eval_tasks, 0
    )
    with pytest.raises(ConfigError, match="has no label"):
        prepare_specs(ds, [bad], TrainConfig())
    leak = ModelSpec(s.train_rows, s.train_cols, s.train_rows[:3], s.eval_tasks, 0)
    with pytest.raises(ConfigError, match="overlap"):
        prepare_specs(ds, [leak], TrainConfig())
    with pytest.raises(ConfigError, match="out of range"):
        prepare_specs(
            ds,
            [ModelSpec(s.train_rows, s.train_cols + 10, s.test_compounds, s.eval_tasks, 0)],
            TrainConfig(),
        )


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_score_task_matches_definition(dtype):
    y = np.array([0, 0, 1, 1, 0, 1])
    s = np.array([0.1, 0.4, 0.35, 0.8, 0.2, 0.9], dtype=dtype)
    r = score_task(y, s)
    # AUC: fraction of (pos, neg) pairs ordered correctly
    pairs = [(p, n) for p in s[y == 1] for n in s[y == 0]]
    assert r["roc_auc"] == pytest.approx(np.mean([p > n for p, n in pairs]))
    assert r["n_test_pos"] == 3 and r["n_test_neg"] == 3 and r["note"] == ""
    assert np.isnan(score_task(y, np.full(6, np.nan, dtype=dtype))["roc_auc"])


def test_min_val_compounds_rule(ds):
    """Inner validation of at least min_val_compounds, or none below 3x that many compounds."""
    cfg = TrainConfig(val_fraction=0.1, min_val_compounds=8)
    pms = prepare_specs(ds, stl_specs(ds, [23, 24, 40, 100]), cfg)
    n_val = [len(pm.val_compounds) for pm in pms]
    assert n_val == [0, 8, 8, 10]
    old = prepare_specs(ds, stl_specs(ds, [20, 24]), TrainConfig(val_fraction=0.1))
    assert [len(pm.val_compounds) for pm in old] == [2, 2]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_min_steps_trains_small_models_longer(ds, dtype):
    """A model with one batch per epoch takes min_steps steps; a big one keeps max_epochs."""
    cfg = TrainConfig(**FAST | dict(min_steps=12, min_val_compounds=8, dtype=dtype))
    df = train_models(ds, stl_specs(ds, [16, 30, 90, 90]), cfg)
    ep = df[df.metric == "roc_auc"].groupby("n_train_pairs")["epochs"].max()
    assert ep.loc[16] == 12  # 16 compounds, no validation: the whole 12-step budget
    assert ep.loc[22] >= 12  # 30 compounds, 8 held out: 1 batch per epoch, >= 12 epochs
    # 90 compounds, 9 held out: 81 -> 3 batches per epoch, 4 epochs = 12 steps
    assert ep.loc[81] <= 4
