"""Foundation-model context effects (mtlc.foundation): contexts, cache, shifts, decomposition.

The planted test pretrains small trunks on synthetic data with known groups and checks that the
decomposition attributes the transfer to the planted partners and the planted shared context.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mtlc import foundation as fd
from mtlc.datasets import synthetic
from mtlc.errors import ConfigError
from mtlc.splits import kfold
from mtlc.training import TrainConfig


@pytest.fixture(scope="module")
def planted():
    # groups: t00-t02 (0), t03-t05 (1), t06 and t07 unrelated
    return synthetic(
        n_compounds=1200,
        n_tasks=8,
        n_groups=2,
        group_size=3,
        n_features=512,
        bits_per_compound=30,
        density=0.7,
        seed=0,
    )


# ----------------------------------------------------------------------------- contexts
def test_context_tasks(planted):
    ds = planted
    assert fd.context_tasks(ds, "t00", "scratch") == []
    assert fd.context_tasks(ds, "t00", "all") == list(range(1, 8))
    assert fd.context_tasks(ds, "t00", "pair:t03") == [3]
    assert fd.context_tasks(ds, "t00", "loo:t03") == [1, 2, 4, 5, 6, 7]
    r = fd.context_tasks(ds, "t00", "random:k=3:s=1")
    assert len(r) == 3 and 0 not in r and r == sorted(r)
    assert r == fd.context_tasks(ds, 0, "random:k=3:s=1")  # seeded, index or id
    for bad in ("pair:t00", "pair:nope", "random:k=9", "random:k=0", "some", "all:x"):
        with pytest.raises(ConfigError):
            fd.context_tasks(ds, "t00", bad)


# ----------------------------------------------------------------------------- n_equivalent
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_n_equivalent_inverts_exp3(dtype):
    c, b, a, scale = 0.9, -0.5, 4.0, 1000.0
    n = np.array([16, 50, 200, 700], dtype=dtype)
    p = (c - np.exp(b - a * n.astype(np.float64) / scale)).astype(dtype)
    got = fd.n_equivalent(p, c, b, a, scale=scale, cap=1e5)
    tol = 1e-3 if dtype == np.float64 else 0.5
    np.testing.assert_allclose(got, n, atol=tol)
    # at or above the asymptote: capped; a <= 0: undefined
    assert fd.n_equivalent(np.array([0.95]), c, b, a, cap=123.0)[0] == 123.0
    assert np.isnan(fd.n_equivalent(np.array([0.5]), c, b, 0.0)).all()


@settings(max_examples=60, deadline=None)
@given(
    p=st.lists(st.floats(-1, 2) | st.just(float("nan")), min_size=1, max_size=8),
    c=st.floats(0.5, 1.0),
    b=st.floats(-5, 5),
    a=st.floats(-1, 10),
)
def test_n_equivalent_never_raises_and_stays_in_range(p, c, b, a):
    out = fd.n_equivalent(np.array(p), c, b, a, cap=1000.0)
    fin = out[np.isfinite(out)]
    assert out.shape == (len(p),)
    assert ((fin >= 0) & (fin <= 1000.0)).all()


# ----------------------------------------------------------------------------- decomposition
def _shift_rows(values: dict[str, float], n_ctx: dict[str, int]) -> pd.DataFrame:
    rows = []
    for fold in (0, 1):
        for ctx, v in values.items():
            rows.append(
                {
                    "regime": "foundation-probe",
                    "target": "A",
                    "context": ctx,
                    "fold": fold,
                    "delta_n": v,
                    "rho": v / n_ctx[ctx],
                    "n_context": n_ctx[ctx],
                }
            )
    return pd.DataFrame(rows)


def test_decompose_additive_and_redundant():
    # additive: all = B + C and each loo keeps the other partner's effect
    sh = _shift_rows(
        {"all": 30.0, "pair:B": 10.0, "pair:C": 20.0, "loo:B": 20.0, "loo:C": 10.0},
        {"all": 300, "pair:B": 100, "pair:C": 200, "loo:B": 200, "loo:C": 100},
    )
    d = fd.decompose(sh, stat="delta_n")
    tot = d[d["partner"].isna()].iloc[0]
    assert tot["additivity"] == pytest.approx(1.0)
    assert tot["pair_sum"] == pytest.approx(30.0)
    assert tot["rho_all"] == pytest.approx(tot["rho_pair_wmean"])
    per = d[d["partner"].notna()].set_index("partner")
    assert per.loc["B", "drop"] == pytest.approx(10.0)
    assert per.loc["B", "redundancy"] == pytest.approx(0.0)
    # redundant partners: each alone is worth 20, together only 20
    sh = _shift_rows(
        {"all": 20.0, "pair:B": 20.0, "pair:C": 20.0, "loo:B": 20.0, "loo:C": 20.0},
        {"all": 300, "pair:B": 100, "pair:C": 200, "loo:B": 200, "loo:C": 100},
    )
    d = fd.decompose(sh, stat="delta_n")
    assert d[d["partner"].isna()].iloc[0]["additivity"] == pytest.approx(0.5)
    np.testing.assert_allclose(d[d["partner"].notna()]["redundancy"], 20.0)


# ----------------------------------------------------------------------------- planted data
TARGETS = {"t00": "t01", "t01": "t02", "t03": "t04", "t04": "t05"}  # target -> same-group partner
UNRELATED = "t06"


@pytest.fixture(scope="module")
def planted_run(planted, tmp_path_factory):
    ds = planted
    folds = kfold(ds, n_folds=3, seed=0)
    cfg = TrainConfig(hidden=(32,), max_epochs=15, patience=4, batch_size=128, device="cpu")
    ctx = {
        t: ["scratch", "all", f"pair:{p}", f"pair:{UNRELATED}", f"loo:{UNRELATED}", f"loo:{p}"]
        for t, p in TARGETS.items()
    }
    root = tmp_path_factory.mktemp("foundation")
    kw = dict(
        targets=list(TARGETS),
        contexts=ctx,
        folds=folds,
        fold_subset=[0, 1],
        sizes=[16, 32, 64, 128, 256],
        modes=("probe",),
        config=cfg,
        store=root / "store",
        cache=root / "trunks",
    )
    summary = fd.run_foundation(ds, **kw)
    return ds, kw, summary, fd.read_foundation(root / "store")


def test_planted_decomposition(planted_run):
    ds, kw, summary, df = planted_run
    assert summary.failed == 0 and summary.done == summary.jobs
    # a pair:t06 trunk is shared by the 4 targets of a fold: trained once, then cached
    assert summary.trunks_cached >= 2 * 3
    sh = fd.context_shifts(df, reference_regime="foundation-probe")
    g = sh.groupby(["target", "context"])["gain"].mean()
    related = np.array([g[(t, f"pair:{p}")] for t, p in TARGETS.items()])
    unrelated = np.array([g[(t, f"pair:{UNRELATED}")] for t in TARGETS])
    allc = np.array([g[(t, "all")] for t in TARGETS])
    loo_unrel = np.array([g[(t, f"loo:{UNRELATED}")] for t in TARGETS])
    print("related", related, "unrelated", unrelated, "all", allc, "loo_unrel", loo_unrel)
    # Pairwise: a same-group partner transfers more than an unrelated one, in 3 of 4 targets
    # and on average by at least 0.03 AUC.
    assert (related > unrelated).sum() >= 3
    assert (related - unrelated).mean() > 0.03
    # Context: the planted shared + group factors make the all-task trunk clearly useful.
    assert (allc > 0.03).all()
    # Leave-one-out of the unrelated task changes the all-context shift by less than a third
    # of that shift (at most 0.05 AUC) in 3 of 4 targets.
    small = np.abs(allc - loo_unrel) < np.minimum(allc / 3, 0.05)
    assert small.sum() >= 3
    d = fd.decompose(sh, stat="gain")
    assert set(d["target"]) == set(TARGETS)
    assert d[d["partner"].isna()]["n_pairs"].eq(2).all()


def test_rerun_is_resumed_from_store_and_cache(planted_run):
    ds, kw, summary, df = planted_run
    again = fd.run_foundation(ds, **kw)
    assert again.skipped == again.jobs == summary.jobs
    assert sorted(again.job_ids) == sorted(summary.job_ids) == sorted(df["job_id"].unique())
    assert again.done == 0 and again.trunks_trained == 0
    # a fresh store but the same cache: every context trunk comes from disk
    kw2 = {**kw, "store": kw["store"].parent / "store2", "fold_subset": [0]}
    third = fd.run_foundation(ds, **kw2)
    assert third.trunks_trained == 0 and third.trunks_cached > 0
    df2 = fd.read_foundation(kw2["store"])
    a = df[(df["fold"] == 0)].sort_values("job_id")["value"].to_numpy()
    b = df2.sort_values("job_id")["value"].to_numpy()
    np.testing.assert_allclose(a, b)  # same config => same numbers


def test_summaries_have_intervals(planted_run):
    _, _, _, df = planted_run
    sh = fd.context_shifts(df, reference_regime="foundation-probe")
    s = fd.summarize_shifts(sh)
    assert {"gain", "gain_lo", "gain_hi", "multiplier", "rho", "delta_c"} <= set(s.columns)
    ok = s.dropna(subset=["gain_lo"])
    assert len(ok) and (ok["gain_lo"] <= ok["gain"]).all() and (ok["gain"] <= ok["gain_hi"]).all()
    assert (s["n_folds"] == 2).all()


def test_label_partners_finds_planted_group(planted):
    parts = fd.label_partners(planted, ["t00", "t03"], min_overlap=30)
    groups = planted.truth["groups"]
    for t, (rel, unrel) in parts.items():
        i, r = planted.task_index(t), planted.task_index(rel)
        assert groups[r] == groups[i] and rel != t  # the label agreement finds the group
        assert unrel != t
    ctx = fd.decomposition_contexts(parts)
    assert ctx["t00"][:2] == ["scratch", "all"] and len(ctx["t00"]) == 6
    with pytest.raises(ConfigError):
        fd.label_partners(planted, ["t00"], min_overlap=10**6)


def test_cli_foundation(tmp_path, capsys):
    import argparse

    from mtlc.commands import foundation as cmd

    parser = argparse.ArgumentParser()
    cmd.register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "foundation",
            "--dataset", "synthetic", "--split", "compound", "--targets", "t00",
            "--contexts", "scratch,pair:t01", "--modes", "probe,finetune", "--folds", "3",
            "--fold-subset", "0", "--sizes", "16,32", "--hidden", "16", "--epochs", "2",
            "--device", "cpu", "--store", str(tmp_path / "st"),
        ]
    )  # fmt: skip
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "foundation: 8 jobs" in out and "pair:t01" in out
    assert (tmp_path / "st_trunks").is_dir()


def test_cli_foundation_probe_only(tmp_path, capsys):
    """``--modes probe`` alone: the closing summary measures against the probe on a random
    trunk (there is no fine-tuned scratch curve) instead of failing with "no reference"."""
    import argparse

    from mtlc.commands import foundation as cmd

    parser = argparse.ArgumentParser()
    cmd.register(parser.add_subparsers())
    args = parser.parse_args(
        [
            "foundation",
            "--dataset", "synthetic", "--split", "compound", "--targets", "t00",
            "--contexts", "scratch,pair:t01", "--modes", "probe", "--folds", "3",
            "--fold-subset", "0", "--sizes", "16,32", "--hidden", "16", "--epochs", "2",
            "--device", "cpu", "--store", str(tmp_path / "st"),
        ]
    )  # fmt: skip
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "foundation: 4 jobs" in out
    assert "against the probe regime's scratch curve" in out
    summary = out.split("scratch curve (medians):", 1)[1]
    assert "foundation-probe" in summary and "pair:t01" in summary
    assert "foundation-finetune" not in summary


def test_size_ratio_and_pretrain_epochs(planted, tmp_path):
    """The auto grid follows ``size_ratio``; ``pretrain_epochs`` bounds pretraining only and
    enters the job ids only when set (stores made without it keep their ids)."""
    ds = planted
    folds = kfold(ds, n_folds=3, seed=0)
    cfg = TrainConfig(hidden=(16,), max_epochs=15, patience=50, batch_size=128, device="cpu")
    kw = dict(
        targets=["t00"],
        contexts=["scratch", "pair:t01"],
        folds=folds,
        fold_subset=[0],
        sizes="auto",
        max_size=128,
        modes=("probe",),
        config=cfg,
    )
    a = fd.run_foundation(ds, **kw, size_ratio=2.0, pretrain_epochs=3, store=tmp_path / "a")
    df = fd.read_foundation(tmp_path / "a")
    assert sorted(df["n_task"].unique()) == [16, 32, 64, 128]
    trained = [p for p in a.pretrain if p["context"] == "pair:t01"]
    assert trained and trained[0]["epochs"] == 3  # patience 50 would let 15 run
    b = fd.run_foundation(ds, **kw, size_ratio=2.0, store=tmp_path / "a")
    assert b.skipped == 0 and b.done == b.jobs == a.jobs  # other ids: not mistaken for stored
    assert [p["epochs"] for p in b.pretrain if p["context"] == "pair:t01"] == [15]
    fd.run_foundation(ds, **kw, store=tmp_path / "c")  # default sqrt(2) grid
    assert sorted(fd.read_foundation(tmp_path / "c")["n_task"].unique()) == [
        16, 23, 32, 45, 64, 91, 128
    ]  # fmt: skip
