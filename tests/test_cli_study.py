"""``mtlc study``: the plan as data, the smoke profile end to end, resume, --list, --verify."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from mtlc.cli import main
from mtlc.study_plan import plan, stage_names

pytest.importorskip("mtlc.fleet", reason="the training engine (mtlc.fleet) has not landed")


# ------------------------------------------------------------------ the plan, without running
def test_plan_stages_are_complete_and_named_uniquely():
    for profile in ("full", "smoke"):
        stages = plan(profile)
        assert len(stage_names(profile)) == len(set(stage_names(profile)))
        for s in stages:
            assert {"name", "what", "command", "store", "measured", "note"} <= set(s)
            assert "--store" not in (s["command"] or [])
            # A stage either runs a command into a store, or says why it cannot.
            assert (s["command"] and s["store"]) or ("no CLI" in s["note"])
    full = {s["name"]: s for s in plan("full")}
    for ds in ("kiba", "kinase200"):
        for split in ("compound", "scaffold"):
            for regime in ("stl", "mtl"):
                assert f"{ds}-{split}-{regime}" in full
    assert full["kiba-compound-stl"]["measured"]["wall_s"] > 0


def test_dry_run_prints_the_stored_study_commands(capsys):
    assert main(["study", "--dry-run"]) == 0
    out = capsys.readouterr().out.splitlines()
    # The regenerating command of results/README.md, for every split and regime.
    for split in ("compound", "scaffold"):
        for regime in ("stl", "mtl"):
            want = [
                "--dataset kiba",
                f"--split {split}",
                "--folds 10",
                f"--regime {regime}",
                "--sizes auto",
                "--seeds 1",
                "--min-steps 100",
                "--min-val-compounds 8",
                "--store results/learning_curves",
            ]
            assert any(all(w + " " in line + " " for w in want) for line in out), (split, regime)
    assert any("kinase200" in line and "results/learning_curves_kinase200" in line for line in out)
    assert any(line.startswith("mtlc foundation") for line in out)
    # Every stage of the full plan has a command now (TAG and the random design included).
    assert all(s["command"] for s in plan("full"))
    assert any(line.startswith("mtlc tag ") for line in out)
    assert any(line.startswith("mtlc pairwise fit ") for line in out)
    # --scheduler/--workers reach the train stages only.
    args = ["study", "--dry-run", "--only", "kiba-compound-stl,foundation-*"]
    assert main([*args, "--scheduler", "tcp://h:1", "--workers", "3"]) == 0
    train, found = capsys.readouterr().out.splitlines()
    assert "--scheduler tcp://h:1 --workers 3 --store" in train
    assert found.startswith("mtlc foundation") and "--scheduler" not in found


def test_dry_run_lists_stages_without_a_command(capsys, monkeypatch):
    """A stage without a command is listed as such, never dropped."""
    from mtlc import study_plan

    pending = study_plan._pending("x-pending", "a stage to come", "no CLI yet: reason")
    monkeypatch.setitem(study_plan.PROFILES, "full", [*study_plan.FULL[:1], pending])
    assert main(["study", "--dry-run"]) == 0
    assert "# x-pending: no CLI yet" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--only", "nope"], "no such stage"),
        (["--list", "--dry-run"], "exclude each other"),
        (["--profile", "huge", "--list"], "unknown study profile"),
        (["--verify", "0"], "--verify"),
    ],
)
def test_bad_options_are_one_line_errors(capsys, args, message):
    assert main(["study", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


# ------------------------------------------------------------------ the smoke profile, run
@pytest.fixture(scope="module")
def smoke(tmp_path_factory, one_torch_thread):
    """The smoke plan run in two goes: one stage first (an 'interrupted' study), then all."""
    root = tmp_path_factory.mktemp("study")
    first, second = root / "first.json", root / "second.json"
    base = ["study", "--profile", "smoke", "--out", str(root)]
    rc1 = main([*base, "--only", "synthetic-compound-stl", "--summary-json", str(first)])
    rc2 = main([*base, "--summary-json", str(second)])
    return {
        "root": root,
        "rc": (rc1, rc2),
        "first": {r["stage"]: r for r in json.loads(first.read_text())},
        "second": {r["stage"]: r for r in json.loads(second.read_text())},
    }


def test_smoke_study_runs_every_stage(smoke):
    assert smoke["rc"] == (0, 0)
    rows = smoke["second"]
    assert list(rows) == stage_names("smoke")
    for s in plan("smoke"):
        r = rows[s["name"]]
        if not s["command"]:
            assert r["status"].startswith("not run") and "no CLI yet" in r["status"]
            continue
        assert r["status"] == "ok", r
        assert r["wall_s"] > 0 and r["failed"] == 0
        assert r["peak_rss_gb"] is None or 0.05 < r["peak_rss_gb"] < 8
        if r["jobs"] is not None:  # train and tag stages: every job of the design is stored
            assert r["skipped"] + r["trained"] == r["jobs"] > 0
        else:  # foundation: no design count, but jobs were stored
            assert r["trained"] > 0


def test_rerun_resumes_and_skips_finished_stages(smoke, capsys):
    first = smoke["first"]["synthetic-compound-stl"]
    second = smoke["second"]["synthetic-compound-stl"]
    assert first["trained"] == first["jobs"] > 0 and first["skipped"] == 0
    # The second go skipped what the first stored and trained the rest.
    assert second["skipped"] == second["jobs"] and second["trained"] == 0
    assert smoke["second"]["synthetic-compound-mtl"]["trained"] > 0
    out = smoke["root"] / "third.json"
    rc = main(
        ["study", "--profile", "smoke", "--out", str(smoke["root"]), "--only", "synthetic-*"]
        + ["--summary-json", str(out)]
    )
    assert rc == 0
    for r in json.loads(out.read_text()):
        assert r["trained"] == 0 and r["skipped"] == r["jobs"] > 0
    assert "mtlc study summary" in capsys.readouterr().out


def test_list_reports_stored_over_total(smoke, capsys):
    assert main(["study", "--profile", "smoke", "--out", str(smoke["root"]), "--list"]) == 0
    out = capsys.readouterr().out
    for name, r in smoke["second"].items():
        if r.get("jobs"):
            line = next(x for x in out.splitlines() if x.strip().startswith(name))
            assert f"{r['jobs']}/{r['jobs']} jobs stored" in line and "done" in line
    # Stages without a command are listed as not run; mtlc tag stages know their total before
    # running (one job per test fold and seed); foundation stages show what is stored.
    for s in plan("smoke"):
        if not s["command"]:
            assert any(x.strip().startswith(s["name"]) and "NOT RUN" in x for x in out.splitlines())
    tag = smoke["second"]["kiba-tag"]
    assert tag["jobs"] == tag["skipped"] + tag["trained"] > 0
    line = next(x for x in out.splitlines() if x.strip().startswith("kiba-tag "))
    assert f"{tag['jobs']}/{tag['jobs']} jobs stored (0 failed), done" in line
    assert any(
        x.strip().startswith("foundation-kiba-scaffold") and "jobs stored (total not known" in x
        for x in out.splitlines()
    )


def test_rebuilt_designs_equal_the_stored_jobs(smoke):
    """study_design mirrors mtlc train: same job ids as the ones the train stages stored."""
    from mtlc.reproduce import study_design
    from mtlc.store import ResultsStore

    loaded = {}  # one load per data set
    for s in plan("smoke"):
        if not s["command"] or s["command"][0] != "train":
            continue
        ds_name = s["command"][s["command"].index("--dataset") + 1]
        inputs = study_design(s["command"][1:], dataset=loaded.get(ds_name))
        loaded[ds_name] = inputs.loaded
        key = inputs.design.specs[0].key
        df = ResultsStore(smoke["root"] / s["store"]).read()
        df = df[(df["regime"] == key["regime"]) & (df["split"] == key["split"])]
        df = df[df["dataset"] == key["dataset"]]
        assert {sp.key["job_id"] for sp in inputs.design} == set(df["job_id"]), s["name"]
        assert set(df["config_hash"]) == {inputs.config.hash()}


def test_verify_passes_on_the_smoke_store_and_catches_a_changed_one(smoke, tmp_path, capsys):
    from mtlc.store import ResultsStore

    base = ["study", "--profile", "smoke", "--verify", "3"]
    args = [*base, "--only", "synthetic-*"]
    only = "synthetic-*,foundation-*,kiba-tag"
    assert main([*base, "--only", only, "--out", str(smoke["root"])]) == 0
    out = capsys.readouterr().out
    assert "REPRODUCED" in out and "max |stored - retrained| = 0" in out
    # Stages --verify cannot check are named, not passed over in silence.
    assert "foundation-kiba-scaffold: not verified (--verify covers mtlc train and mtlc tag" in out
    # TAG stores: whole TAG runs rerun, every pair's Z, cosine and step count compared.
    tag_store = next(s["store"] for s in plan("smoke") if s["name"] == "kiba-tag")
    lines = [x for x in out.splitlines() if x.startswith(f"{tag_store}:")]
    assert "verified 1 stored TAG jobs" in lines[0] and " 0 of " not in lines[0], lines
    assert lines[1] == f"{tag_store}: REPRODUCED"
    # A store whose numbers differ from what the code gives: every job's values shifted.
    bad = tmp_path / "bad"
    shutil.copytree(smoke["root"] / "learning_curves_synthetic", bad / "learning_curves_synthetic")
    st = ResultsStore(bad / "learning_curves_synthetic")
    df = st.read()
    st.append(df.assign(value=df["value"] * 0.9))  # the newest part wins for every job
    assert main([*args, "--out", str(bad)]) == 1
    out = capsys.readouterr().out
    assert "NOT REPRODUCED" in out and "reproduced exactly" in out


def test_verify_catches_a_changed_tag_store(smoke, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from mtlc.affinity import _tag_parts, write_tag_part
    from mtlc.reproduce import verify_tag_store

    s = next(s for s in plan("smoke") if s["name"] == "kiba-tag")
    bad = tmp_path / "tag"
    shutil.copytree(smoke["root"] / s["store"], bad)
    path, meta = _tag_parts(bad)[-1]
    t = pq.read_table(path)
    z = pa.compute.multiply(t["z"], pa.scalar(1.01, pa.float32()))  # every Z off by 1 %
    write_tag_part(bad, t.set_column(t.schema.get_field_index("z"), "z", z), meta)
    rep = verify_tag_store(bad, s["command"][1:], n=1)
    assert rep.jobs == [meta["job_id"]] and not rep.unmatched
    assert (rep.table["n_steps_stored"] == rep.table["n_steps_new"]).all()
    assert rep.table["cosine_diff"].max() == 0  # untouched: bitwise equal
    finite = np.isfinite(rep.table["z_stored"]) & (rep.table["z_stored"] != 0)
    assert np.allclose(rep.table.loc[finite, "z_diff"], 0.01 / 1.01, rtol=1e-4)  # of the stored
    assert any(p.startswith("z: max relative diff") for p in rep.problems())


# ------------------------------------------------------------------ failures and interrupts
def _tiny_syn(name: str, *extra: str) -> dict:
    cmd = ["train", "--dataset", "synthetic", "--dataset-arg", "n_compounds=200"]
    cmd += ["--dataset-arg", "n_tasks=3", "--folds", "2", "--fold-subset", "0"]
    cmd += ["--sizes", "16", "--max-epochs", "1", "--hidden", "8", "--no-progress", *extra]
    return {"name": name, "what": name, "command": cmd, "store": "s", "measured": None, "note": ""}


def test_a_failing_stage_is_reported_and_the_others_run(monkeypatch, tmp_path, capsys):
    from mtlc import study_plan

    stages = [
        _tiny_syn("bad-option", "--regime", "stl", "--oops"),
        {
            **_tiny_syn("bad-dataset", "--regime", "stl"),
            "command": ["train", "--dataset", "nope", "--regime", "stl"],
        },
        _tiny_syn("good", "--regime", "stl"),
    ]
    monkeypatch.setitem(study_plan.PROFILES, "smoke", stages)
    out = tmp_path / "summary.json"
    rc = main(["study", "--profile", "smoke", "--out", str(tmp_path), "--summary-json", str(out)])
    assert rc == 1
    rows = {r["stage"]: r for r in json.loads(out.read_text())}
    assert rows["bad-option"]["status"].startswith("failed: mtlc could not parse")
    assert "unknown dataset" in rows["bad-dataset"]["status"]
    assert rows["good"]["status"] == "ok" and rows["good"]["trained"] == rows["good"]["jobs"] > 0
    text = capsys.readouterr().out
    assert "FAILED" in text and "unknown dataset" in text


def test_an_interrupt_prints_the_summary_so_far(monkeypatch, tmp_path, capsys):
    from mtlc import study_plan
    from mtlc.commands import study as cmd

    stages = [_tiny_syn("first", "--regime", "stl"), _tiny_syn("second", "--regime", "mtl")]
    monkeypatch.setitem(study_plan.PROFILES, "smoke", stages)
    real = cmd._run_stage

    def run_then_interrupt(stage, *a, **k):
        if stage["name"] == "second":
            raise KeyboardInterrupt
        return real(stage, *a, **k)

    monkeypatch.setattr(cmd, "_run_stage", run_then_interrupt)
    assert main(["study", "--profile", "smoke", "--out", str(tmp_path)]) == 130
    cap = capsys.readouterr()
    assert "mtlc study summary" in cap.out and "first" in cap.out
    assert "rerun to resume" in cap.err


# ------------------------------------------------------------------ the --verify sample
def _jobs_table(with_all_task: bool = True):
    import pandas as pd

    rows = []
    for split in ("compound", "scaffold"):
        for fold in range(5):
            for n in (16, 32, 64, 2048):
                rows.append(("stl", split, fold, n, f"T{fold}"))
            if with_all_task:
                rows += [("mtl", split, fold, n, None) for n in (16, 23, 64)]
    df = pd.DataFrame(rows, columns=["regime", "split", "fold", "n_level", "target"])
    df["job_id"] = [f"j{k:03d}" for k in range(len(df))]
    return df.assign(dataset="kiba", seed=0, config_hash="h", task_set="all", status="ok")


def test_sample_jobs_spreads_over_splits_and_bounds_the_cost():
    from mtlc.reproduce import sample_jobs

    df = _jobs_table()
    s = sample_jobs(df, n_single=6, n_all_task=2, seed=1, max_level=64, all_task_max_level=32)
    single, multi = s[s["regime"] == "stl"], s[s["regime"] == "mtl"]
    assert len(single) == 6 and (single["split"].value_counts() == 3).all()
    assert single["n_level"].max() <= 64 and s["job_id"].is_unique
    assert len(multi) == 2 and multi["n_level"].max() <= 32
    again = sample_jobs(df, n_single=6, n_all_task=2, seed=1, max_level=64, all_task_max_level=32)
    assert again["job_id"].tolist() == s["job_id"].tolist()  # seeded
    # No all-task job stored yet: the sample is made of single-task jobs only, same size.
    s2 = sample_jobs(_jobs_table(with_all_task=False), n_single=3, n_all_task=1, seed=1)
    assert len(s2) == 4 and (s2["regime"] == "stl").all()
