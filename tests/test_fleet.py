"""Fleet training equals training each model alone (same init, split, batch order).

Every equality test runs for both engines: ``torch`` (all models of a fleet per operation) and
``compiled`` (numba kernels, one model after the other).
"""

from __future__ import annotations

import numpy as np
import pytest
from _training_data import all_task_spec, stl_specs, toy

import mtlc.fleet as fleet
from mtlc.errors import ConfigError
from mtlc.evaluate import score_task
from mtlc.fleet import plan_fleets, train_fleet, train_fleets
from mtlc.training import TrainConfig, prepare_specs, train_reference


def _auc(pm, scores) -> np.ndarray:
    out = []
    for j, loc in enumerate(pm.eval_local):
        m = pm.test_mask[:, j] > 0
        out.append(score_task(pm.test_y[m, j], scores[m, loc])["roc_auc"])
    return np.array(out)


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ds():
    return toy(n=360, n_bits=96, k=5, nnz=10)


CASES = {
    # one batch per epoch: the static full-batch path
    "full_batch": dict(sizes=[40, 60, 80, 100, 30], cfg=dict(batch_size=128)),
    # several batches, different counts per model, early stopping on
    "multi_batch": dict(sizes=[20, 45, 70, 100, 130], cfg=dict(batch_size=16, patience=2)),
    "two_layers": dict(sizes=[50, 90, 60, 70, 40], cfg=dict(batch_size=32, hidden=(24, 12))),
    "weight_decay": dict(sizes=[50, 90, 60, 70, 40], cfg=dict(batch_size=32, weight_decay=1e-3)),
    # small models get more epochs than max_epochs (min_steps), some have no inner validation
    "min_steps": dict(
        sizes=[12, 20, 45, 70, 130],
        cfg=dict(batch_size=32, patience=1, min_steps=20, min_val_compounds=8),
    ),
}


ENGINES = ["torch", "compiled"]


@pytest.mark.parametrize(
    ("case", "engine"),
    # the compiled engine trains one hidden layer (deeper trunks are a ConfigError, tested below)
    [(c, e) for c in sorted(CASES) for e in ENGINES if (c, e) != ("two_layers", "compiled")],
)
def test_fleet_matches_one_at_a_time_float64(ds, case, engine):
    c = CASES[case]
    cfg = TrainConfig(
        **{"hidden": (16,), "dropout": 0.0, "max_epochs": 7, "dtype": "float64", "device": "cpu"}
        | c["cfg"]
        | {"engine": engine}
    )
    pms = prepare_specs(ds, stl_specs(ds, c["sizes"]), cfg)
    fl = train_fleet(ds.X, pms, cfg)
    for pm, a in zip(pms, fl, strict=True):
        b = train_reference(ds.X, pm, cfg)
        assert (a.epochs, a.best_epoch) == (b.epochs, b.best_epoch)
        np.testing.assert_allclose(a.val_losses, b.val_losses, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(a.test_scores, b.test_scores, rtol=1e-7, atol=1e-9)
        np.testing.assert_array_less(
            np.abs(_auc(pm, a.test_scores) - _auc(pm, b.test_scores)), 1e-4
        )
    if case == "multi_batch":  # early stopping really happened for some model
        assert any(o.epochs < cfg.max_epochs for o in fl)
    if case == "min_steps":
        for pm, o in zip(pms, fl, strict=True):
            nb = pm.n_batches(cfg.batch_size)
            assert o.epochs * nb >= cfg.min_steps  # never stopped before min_steps
            assert o.epochs <= max(cfg.max_epochs, -(-cfg.min_steps // nb))
        assert max(o.epochs for o in fl) == 20  # one batch per epoch: 20 epochs, not 7


@pytest.mark.parametrize("engine", ENGINES)
def test_multi_head_fleet_matches_reference_float64(ds, engine):
    cfg = TrainConfig(
        hidden=(16,), dropout=0.0, max_epochs=5, batch_size=64, dtype="float64", engine=engine
    )
    specs = [all_task_spec(ds, seed=s) for s in (1, 2)]
    pms = prepare_specs(ds, specs, cfg)
    fl = train_fleet(ds.X, pms, cfg)
    for pm, a in zip(pms, fl, strict=True):
        b = train_reference(ds.X, pm, cfg)
        np.testing.assert_allclose(a.test_scores, b.test_scores, rtol=1e-7, atol=1e-9)
        assert a.test_scores.shape == (len(pm.test_compounds), ds.n_tasks)


@pytest.mark.parametrize("engine", ENGINES)
def test_fleet_matches_reference_float32(ds, engine):
    cfg = TrainConfig(
        hidden=(16,), dropout=0.0, max_epochs=5, batch_size=32, dtype="float32", engine=engine
    )
    pms = prepare_specs(ds, stl_specs(ds, [40, 60, 80, 100, 30]), cfg)
    fl = train_fleet(ds.X, pms, cfg)
    for pm, a in zip(pms, fl, strict=True):
        b = train_reference(ds.X, pm, cfg)
        np.testing.assert_allclose(a.test_scores, b.test_scores, rtol=1e-3, atol=1e-4)
        np.testing.assert_array_less(
            np.abs(_auc(pm, a.test_scores) - _auc(pm, b.test_scores)), 2e-3
        )


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_model_does_not_depend_on_its_fleet(ds, dtype, engine):
    """Per-spec generators: a model's numbers are the same alone or among others, dropout on."""
    cfg = TrainConfig(
        hidden=(16,), dropout=0.3, max_epochs=5, batch_size=24, dtype=dtype, engine=engine
    )
    pms = prepare_specs(ds, stl_specs(ds, [40, 60, 80, 100, 30]), cfg)
    together = train_fleet(ds.X, pms, cfg)
    tol = 1e-10 if dtype == "float64" else 1e-4
    for i in (0, 3):
        alone = train_fleet(ds.X, [pms[i]], cfg)[0]
        np.testing.assert_allclose(alone.test_scores, together[i].test_scores, rtol=tol, atol=tol)
        assert alone.epochs == together[i].epochs


@pytest.mark.parametrize("engine", ENGINES)
def test_dropout_on_mean_auc_agrees(engine):
    """With dropout the masks differ (fleet: per-model generator, loop: torch global RNG);
    the mean AUC over tasks must agree within 0.005."""
    ds = toy(n=900, n_bits=128, k=12, nnz=12, density=0.8, seed=3)
    cfg = TrainConfig(
        hidden=(32,), dropout=0.2, max_epochs=10, batch_size=64, dtype="float64", engine=engine
    )
    pms = prepare_specs(ds, stl_specs(ds, 300, test_every=3), cfg)
    fl = train_fleet(ds.X, pms, cfg)
    a = np.concatenate([_auc(pm, o.test_scores) for pm, o in zip(pms, fl, strict=True)])
    b = np.concatenate([_auc(pm, train_reference(ds.X, pm, cfg).test_scores) for pm in pms])
    assert abs(np.mean(a) - np.mean(b)) < 0.005
    assert np.mean(a) > 0.7  # it learned something


@pytest.mark.parametrize(
    ("dtype", "tol"), [("float64", 1e-10), ("float32", 1e-4)], ids=["float64", "float32"]
)
def test_compiled_engine_equals_torch_engine_with_dropout(ds, dtype, tol):
    """Dropout on, several batches, early stopping, min_steps: the two engines draw the same
    masks and batches, so they agree up to float rounding, epoch for epoch."""
    kw = dict(hidden=(16,), dropout=0.3, max_epochs=8, batch_size=24, patience=2, dtype=dtype)
    kw |= dict(min_steps=12, min_val_compounds=8)
    pms = prepare_specs(ds, stl_specs(ds, [12, 40, 60, 100, 130]), TrainConfig(**kw))
    a = train_fleets(ds.X, pms, TrainConfig(**kw))
    b = train_fleets(ds.X, pms, TrainConfig(**kw, engine="compiled"))
    for x, y in zip(a, b, strict=True):
        assert (x.epochs, x.best_epoch) == (y.epochs, y.best_epoch)
        np.testing.assert_allclose(x.val_losses, y.val_losses, rtol=tol, atol=tol)
        np.testing.assert_allclose(x.test_scores, y.test_scores, rtol=tol, atol=tol)
    assert len({o.epochs for o in a}) > 1  # early stopping and min_steps both acted


def test_compare_engines_side_by_side(ds):
    """``compare_engines``: one row per (model, task) with both engines' AUC and epochs, one
    row per engine with its CPU time; the engines agree model by model."""
    from mtlc.training import compare_engines

    cfg = TrainConfig(hidden=(16,), dropout=0.2, max_epochs=6, batch_size=32, dtype="float64")
    specs = stl_specs(ds, [40, 60, 80, 100, 30])
    per_model, per_engine = compare_engines(ds, specs, cfg)
    assert len(per_model) == 5 and per_model["task"].nunique() == 5
    np.testing.assert_allclose(per_model["auc_torch"], per_model["auc_compiled"], atol=1e-12)
    assert (per_model["epochs_torch"] == per_model["epochs_compiled"]).all()
    assert per_engine["engine"].tolist() == ["torch", "compiled"]
    assert (per_engine["models"] == 5).all() and (per_engine["cpu_seconds"] > 0).all()
    assert per_engine["mean_auc"].iloc[0] == pytest.approx(per_model["auc_torch"].mean())
    with pytest.raises(ConfigError, match="at least one"):
        compare_engines(ds, [], cfg)


@pytest.mark.parametrize(
    ("kw", "msg"),
    [
        (dict(engine="jax"), "engine must be 'torch' or 'compiled'"),
        (dict(engine="compiled", hidden=(16, 8)), "one hidden layer"),
        (dict(engine="compiled", device="cuda"), "runs on the CPU"),
    ],
)
def test_engine_options_are_checked(kw, msg):
    with pytest.raises(ConfigError, match=msg):
        TrainConfig(**kw)


def test_engine_is_not_part_of_the_hash():
    assert TrainConfig(engine="compiled").hash() == TrainConfig().hash()


def test_plain_adam_fallback_equals_fused(ds, monkeypatch):
    cfg = TrainConfig(hidden=(16,), dropout=0.0, max_epochs=4, batch_size=32, dtype="float64")
    pms = prepare_specs(ds, stl_specs(ds, [40, 60, 80, 100, 30]), cfg)
    fused = train_fleet(ds.X, pms, cfg)
    monkeypatch.setattr(fleet, "_fused_adam_available", lambda dev, dt: False)
    plain = train_fleet(ds.X, pms, cfg)
    for a, b in zip(fused, plain, strict=True):
        np.testing.assert_allclose(a.test_scores, b.test_scores, rtol=1e-9, atol=1e-12)


def test_plan_fleets_respects_memory_and_heads(ds):
    cfg = TrainConfig(hidden=(16,), batch_size=32)
    specs = stl_specs(ds, [40, 60, 80, 100, 30]) + [all_task_spec(ds)]
    pms = prepare_specs(ds, specs, cfg)
    plans = plan_fleets(ds.X, pms, cfg)
    assert sorted(i for p in plans for i in p) == list(range(len(pms)))
    for p in plans:
        assert len({pms[i].n_heads for i in p}) == 1
    one = fleet.fleet_bytes(ds.X.shape[1], 1, cfg)
    tight = plan_fleets(ds.X, pms, cfg, max_bytes=2 * one)
    assert max(len(p) for p in tight) <= 2
    # chunking does not change any model's numbers
    a = train_fleets(ds.X, pms, cfg)
    b = train_fleets(ds.X, pms, cfg, max_bytes=2 * one)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.test_scores, y.test_scores, rtol=1e-5, atol=1e-6)
