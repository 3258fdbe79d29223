"""Fleet memory accounting: the planner's estimate covers every buffer a fleet really holds."""

from __future__ import annotations

import numpy as np
import pytest
from _training_data import all_task_spec, stl_specs, toy

import mtlc.fleet as fleet
from mtlc.fleet import FleetStats, fleet_memory, plan_fleets, train_fleets
from mtlc.training import TrainConfig, prepare_specs

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def ds():
    return toy(n=600, n_bits=256, k=6, nnz=20)


def _trainer(ds, pms, cfg):
    nb = np.array([m.n_batches(cfg.batch_size) for m in pms])
    order = np.argsort(-nb, kind="stable")
    return fleet._Trainer(ds.X, [pms[i] for i in order], cfg)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("kind", ["stl", "all_task"])
def test_estimate_covers_real_buffers(ds, dtype, kind):
    cfg = TrainConfig(hidden=(32, 16), batch_size=64, max_epochs=2, dtype=dtype, device="cpu")
    if kind == "stl":
        specs = stl_specs(ds, [60, 120, 200, 90, 150, 30])
    else:
        specs = [all_task_spec(ds, seed=s) for s in (1, 2, 3)]
    pms = prepare_specs(ds, specs, cfg)
    tr = _trainer(ds, pms, cfg)
    real = tr.buffer_bytes()
    stats = [
        FleetStats.of(ds.X, m, len(fleet._trainable_bits(ds.X, m.train_compounds, False)))
        for m in tr.models
    ]
    est = fleet_memory(stats, cfg)
    for k, v in real.items():
        assert v > 0
        # every persistent buffer is counted, and not wildly over-counted
        assert est[k] >= v, (k, est[k], v)
        assert est[k] <= 3 * v + 4096, (k, est[k], v)
    assert est["total"] == sum(v for k, v in est.items() if k != "total")
    # the accounting stays right after training (stopped models are compacted, not grown)
    tr.run()
    after = tr.buffer_bytes()
    for k in ("labels", "bits", "frozen", "entries"):
        assert after[k] <= est[k]


def test_labels_are_int8_codes_not_float_matrices(ds):
    """All-task label storage: one byte per (compound, head), whatever the dtype."""
    cfg = TrainConfig(hidden=(16,), batch_size=64, max_epochs=1, dtype="float64", device="cpu")
    pms = prepare_specs(ds, [all_task_spec(ds)], cfg)
    pm = pms[0]
    assert pm.train_lab.dtype == np.int8 and pm.test_lab.dtype == np.int8
    assert pm.train_lab.nbytes == len(pm.train_compounds) * pm.n_heads
    # the float views agree with the codes
    np.testing.assert_array_equal(pm.train_mask, (pm.train_lab > 0).astype(np.float32))
    np.testing.assert_array_equal(pm.train_y * pm.train_mask, pm.train_y)
    tr = _trainer(ds, pms, cfg)
    assert tr.tr_lab.dtype.itemsize == 1


def test_budget_cuts_fleets_without_changing_numbers(ds):
    cfg = TrainConfig(hidden=(16,), batch_size=32, max_epochs=3, dtype="float64", device="cpu")
    pms = prepare_specs(ds, stl_specs(ds, [60, 120, 200, 90, 150, 30]), cfg)
    big = plan_fleets(ds.X, pms, cfg)
    assert len(big) == 1  # the default budget holds the whole toy cell
    bits = [fleet._trainable_bits(ds.X, m.train_compounds, False) for m in pms]
    one = max(
        fleet_memory([FleetStats.of(ds.X, m, len(b))], cfg)["total"]
        for m, b in zip(pms, bits, strict=True)
    )
    for budget in (one, 2 * one + one // 2):
        plans = plan_fleets(ds.X, pms, cfg, max_bytes=budget)
        assert sorted(i for p in plans for i in p) == list(range(len(pms)))
        for p in plans:
            st = [FleetStats.of(ds.X, pms[i], len(bits[i])) for i in p]
            assert len(p) == 1 or fleet_memory(st, cfg)["total"] <= budget
    assert max(len(p) for p in plan_fleets(ds.X, pms, cfg, max_bytes=one)) == 1
    # a budget below one model's need still trains it (alone)
    tiny = plan_fleets(ds.X, pms, cfg, max_bytes=1)
    assert sorted(len(p) for p in tiny) == [1] * len(pms)
    # grouping changes a model's numbers only at float rounding (config budget or explicit bytes)
    a = train_fleets(ds.X, pms, cfg)
    b = train_fleets(ds.X, pms, TrainConfig(**{**cfg.__dict__, "memory_budget_mb": 1}))
    for x, y in zip(a, b, strict=True):
        np.testing.assert_allclose(x.test_scores, y.test_scores, rtol=1e-9, atol=1e-12)
        assert x.epochs == y.epochs


def test_budget_is_not_part_of_the_hash():
    assert TrainConfig(memory_budget_mb=100).hash() == TrainConfig().hash()


def test_runner_chunks_bound_prepared_memory(ds):
    """run_design's chunks: at most chunk_size specs and half the budget of prepared labels."""
    from mtlc.study import _chunks, _spec_bytes

    specs = [all_task_spec(ds, seed=s) for s in range(40)] + stl_specs(ds, 50)
    cfg = TrainConfig()
    assert [len(c) for c in _chunks(specs, 256, cfg)] == [len(specs)]
    assert [len(c) for c in _chunks(specs, 16, cfg)] == [16, 16, 14]
    one = _spec_bytes(specs[0])
    assert one >= ds.n_tasks * 0.5 * ds.n_compounds  # codes of ~all compounds x all heads
    tight = TrainConfig(memory_budget_mb=1)  # half of 1 MiB
    per = 2**19 // one
    chunks = list(_chunks(specs, 256, tight))
    assert [s for c in chunks for s in c] == specs  # every spec once, in order
    assert all(sum(_spec_bytes(s) for s in c) <= 2**19 or len(c) == 1 for c in chunks)
    assert 1 < per < 40 and len(chunks[0]) == per  # the budget, not chunk_size, cut it


def test_torch_threads_pinned_per_fleet_and_restored(ds, monkeypatch):
    import torch

    seen = []
    real = fleet.train_fleet

    def spy(X, models, config, **kw):
        seen.append((models[0].n_heads, torch.get_num_threads()))
        return real(X, models, config, **kw)

    monkeypatch.setattr(fleet, "train_fleet", spy)
    cfg = TrainConfig(hidden=(8,), batch_size=64, max_epochs=1, device="cpu")
    pms = prepare_specs(ds, stl_specs(ds, 40)[:2] + [all_task_spec(ds)], cfg)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        train_fleets(ds.X, pms, cfg)  # auto: single-task fleets on one thread, all-task as set
        assert sorted(seen) == [(1, 1), (ds.n_tasks, 2)]
        assert torch.get_num_threads() == 2
        seen.clear()
        train_fleets(ds.X, pms, TrainConfig(**{**cfg.__dict__, "torch_threads": 1}))
        assert [t for _, t in seen] == [1, 1] and torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    assert TrainConfig(torch_threads=3).hash() == TrainConfig().hash()


def test_narrow_models_get_their_own_fleet_and_runner_orders_by_size():
    from mtlc.study import _fleet_order

    wide = toy(n=500, n_bits=512, k=3, nnz=40, seed=4)
    cfg = TrainConfig(hidden=(8,), batch_size=512, device="cpu")
    # 6-compound models touch ~200 of 512 bits, 150-compound ones nearly all
    specs = stl_specs(wide, [150, 6, 150]) + stl_specs(wide, [6, 150, 6], seed=1)
    pms = prepare_specs(wide, specs, cfg)
    plans = plan_fleets(wide.X, pms, cfg)
    sizes = [
        sorted(len(pms[i].train_compounds) + len(pms[i].val_compounds) for i in p) for p in plans
    ]
    assert sorted(sizes) == [[6, 6, 6], [150, 150, 150]]
    order = _fleet_order(specs)
    assert [len(s.train_rows) for s in order] == [150, 150, 150, 6, 6, 6]
    assert [s.seed for s in order] == [0, 2, 1001, 1, 1000, 1002]  # stable within a size
