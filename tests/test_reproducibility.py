"""The stored kiba study (results/learning_curves) is reproduced by retraining a sample of it.

A seeded random sample of stored jobs (12 single-task jobs round-robin over both splits, at
random folds and sizes up to 1024, and one cheap all-task job: 201 heads at a cap of at most 32)
is rebuilt from the ``mtlc train`` arguments of the stages in :mod:`mtlc.study_plan` that wrote
the store, retrained with the library (:func:`mtlc.reproduce.verify_store`) and compared with the
stored rows.

Tolerance, and why (:meth:`mtlc.reproduce.VerifyReport.problems`):

- every sampled job is *rebuilt*: a spec of the stage's design has its ``job_id``, which hashes
  the whole key (data set, recipe, task set, split, fold, seed, regime, target, sizes of every
  task) and the configuration hash, so the configuration rebuilt from the command equals the
  stored one;
- the data-determined counts (test actives and inactives, training and validation pairs) are
  equal: they involve no floating point;
- in each regime at least 90 % of the (job, task, metric) values are equal within 1e-10
  (``EXACT_ATOL``), with the same number of epochs and the same best epoch, and no value
  differs by more than 0.01.
  Same code, same seeds, CPU, one thread: the values should be equal. When this test was
  written all 418 values of the sample were bitwise equal; since mtlc.evaluate computes AUC and
  AP with its own formulas instead of sklearn's (commit 2c10c66, "equal within 1e-15"), about
  30 % of them differ from the stored sklearn values by 1e-16 to 4e-16: float64 rounding of
  the metric itself, hence the 1e-10, which is far below the smallest change one swapped pair
  of test scores makes (1 / (n_pos * n_neg), about 1e-3 in a kiba test fold of about 20
  actives x 40 inactives, >= 6e-8 for any fold up to 4000 x 4000).
  The retrained fleet also has another composition than the study's chunks of 256 models
  (other padding width, other number of stacked models), which may change the float32
  summation order inside BLAS kernels. ROC-AUC and average precision are rank statistics: such
  a change leaves them unchanged unless two test scores of a task swap order; an
  early-stopping decision flipped by rounding moves them by more, but rarely. Any real change
  (another subsample, seed, configuration or algorithm) moves nearly every value, so "90 %
  equal within 1e-10" separates the two, while "|diff| <= 0.01" bounds what the rounding
  exceptions may do.

The sample's cost is about 20 s of one core (13 small networks, one kiba load).
"""

from __future__ import annotations

import pytest

from mtlc.reproduce import verify_store
from mtlc.study_plan import plan

STORE = "results/learning_curves"


@pytest.fixture(scope="module")
def report(repo_root, one_torch_thread):
    from mtlc.store import ResultsStore

    path = repo_root / STORE
    if not ResultsStore(path).parts():
        pytest.fail(f"{STORE} holds no stored results: the repository must ship them")
    stages = [s["command"][1:] for s in plan("full") if s["store"] == STORE]
    assert len(stages) == 4, "the plan should hold the four kiba curve stages of this store"
    return verify_store(path, stages, n_single=12, n_all_task=1, seed=20261122, max_level=1024)


def test_sample_spans_splits_folds_sizes_and_an_all_task_job(report):
    jobs = report.jobs
    single = jobs[jobs["regime"] == "stl"]
    assert len(single) == 12
    assert set(single["split"]) == {"compound", "scaffold"}
    assert single["fold"].nunique() >= 3
    assert single["n_level"].nunique() >= 3
    multi = jobs[jobs["regime"] == "mtl"]
    assert len(multi) == 1 and int(multi["n_level"].iloc[0]) <= 32


def test_every_sampled_job_is_rebuilt_with_the_stored_config(report):
    from mtlc.reproduce import _stage_signature

    assert report.unmatched == []
    hashes = {_stage_signature(s["command"][1:])[2] for s in plan("full") if s["store"] == STORE}
    assert set(report.jobs["config_hash"]) <= hashes
    # Every stored metric row of every sampled job was compared (none only on one side).
    assert report.table["job_id"].nunique() == len(report.jobs)
    assert not report.table["int_mismatch"].str.contains("row only").any()


def test_retrained_metrics_match_the_stored_ones(report):
    t = report.table
    assert len(t) >= 2 * (12 + 150), "too few values compared (an all-task job has ~201 tasks)"
    problems = report.problems()
    worst = t.sort_values("diff", ascending=False).head(5).to_string()
    assert problems == [], f"{report}\nproblems: {problems}\nlargest differences:\n{worst}"
