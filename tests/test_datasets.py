"""Loaders: the paper's KIBA counts, kinase200, Davis, user tables, bad inputs, data files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from mtlc import datasets
from mtlc.datasets import _files
from mtlc.errors import ConfigError, DataFileError, InputTableError, MtlcError


@pytest.fixture(scope="module", autouse=True)
def _cache(tmp_path_factory):
    # one cache for the whole session (same folder name in every data test module), never ~/.cache
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MTLC_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "mtlc_cache"))
        yield


@pytest.fixture(scope="module")
def kiba_raw():
    return datasets.kiba(features=False)


@pytest.fixture(scope="module")
def kiba_feat():
    return datasets.kiba()


# --------------------------------------------------------------------------- KIBA
def test_kiba_full_matrix_counts(kiba_raw):
    full = kiba_raw.info["counts"]["full_matrix"]
    assert (full["tasks"], full["pairs"], full["compounds"]) == (244, 228_399, 51_097)
    assert kiba_raw.info["measured_matrix"] == {"compounds": 51_961, "tasks": 467, "pairs": 243_251}


def test_kiba_offline_structure_counts(kiba_raw):
    s = kiba_raw.info["counts"]["structure_available"]
    assert (s["tasks"], s["pairs"], s["compounds"]) == (201, 144_733, 3_816)
    assert (kiba_raw.n_tasks, kiba_raw.n_pairs, kiba_raw.n_compounds) == (201, 144_733, 3_816)
    src = kiba_raw.info["smiles_sources"]
    assert src["union"] == 3_816 and src["in_both"] == 2_102 and src["from_deepdta_only"] == 9
    assert kiba_raw.compounds["smiles"].notna().all()
    t = kiba_raw.tasks
    assert (t["n_measured"] >= 100).all() and (t["n_active"] >= 10).all()
    assert (t["n_inactive"] >= 10).all()


def test_kiba_labels_follow_threshold(kiba_raw):
    # lower = more potent, 3.0 inclusive
    assert np.array_equal(kiba_raw.y, (kiba_raw.value <= 3.0).astype(np.int8))


def test_kiba_prefers_padme_smiles(kiba_raw):
    pad = pd.read_csv(datasets.data_path("kiba/drug_info.csv")).set_index("CHEMBL_ID")["smiles"]
    c = kiba_raw.compounds.set_index("compound_id")["smiles"]
    shared = c.index.intersection(pad.index)
    assert len(shared) == 3_807
    assert (c[shared] == pad[shared]).all()


def test_kiba_features_merge_reported(kiba_feat):
    ds = kiba_feat
    f = ds.info["featurize"]
    assert f["compounds_in"] == 3_816 and f["pairs_in"] == 144_733
    assert f["excluded_compounds"] == 0
    assert f["merged_compounds"] > 0
    assert ds.n_compounds == 3_816 - f["merged_compounds"]
    assert ds.n_pairs == 144_733 - f["merged_pairs_removed"]
    assert sum(len(v) for v in f["merged"].values()) == f["merged_compounds"]
    assert ds.X.shape == (ds.n_compounds, 2048) and ds.X.dtype == np.float32
    assert set(np.unique(ds.X.data)) == {1.0}
    assert 30 < ds.X.getnnz(axis=1).mean() < 70
    # the full-matrix and structure counts travel with the featurized set
    assert ds.info["counts"]["full_matrix"]["tasks"] == 244


def test_kiba_summary_is_json_and_has_both_count_sets(kiba_feat):
    s = datasets.summary(kiba_feat)
    text = json.dumps(s)
    back = json.loads(text)
    assert back["counts"]["full_matrix"]["pairs"] == 228_399
    assert back["counts"]["structure_available"]["pairs"] == 144_733
    assert back["pairs"] == kiba_feat.n_pairs
    assert back["featurize"]["merged_compounds"] == kiba_feat.info["featurize"]["merged_compounds"]
    assert back["per_task_measured"]["min"] >= 100


def test_kiba_user_smiles_table_rebuilds_full_set(kiba_raw, tmp_path):
    # a table covering every compound (dummy structures; features off) gives the full 244 tasks
    full = pd.read_csv(datasets.data_path("kiba/kiba_full_long.csv.gz"), usecols=["chembl_id"])
    ids = full["chembl_id"].unique()
    path = tmp_path / "smiles.csv"
    pd.DataFrame({"chembl_id": ids, "smiles": "C"}).to_csv(path, index=False)
    ds = datasets.kiba(smiles=path, features=False)
    s = ds.info["counts"]["structure_available"]
    assert (s["tasks"], s["pairs"], s["compounds"]) == (244, 228_399, 51_097)
    assert ds.info["smiles_sources"]["user"] == len(ids)
    # the user table wins over the offline SMILES
    assert (ds.compounds["smiles"] == "C").all()


def test_kiba_user_smiles_dict_adds_compounds(kiba_raw):
    full = pd.read_csv(datasets.data_path("kiba/kiba_full_long.csv.gz"), usecols=["chembl_id"])
    extra = sorted(set(full["chembl_id"]) - set(kiba_raw.compounds["compound_id"]))[:50]
    ds = datasets.kiba(smiles={c: "CCO" for c in extra}, features=False, recipe="all")
    assert ds.info["smiles_sources"]["union_in_matrix"] == 3_816 + 50


def test_kiba_bad_smiles_table(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("id,structure\nCHEMBL10,CCO\n")
    with pytest.raises(InputTableError, match="chembl_id"):
        datasets.kiba(smiles=p, features=False)
    with pytest.raises(InputTableError, match="does not exist"):
        datasets.kiba(smiles=tmp_path / "nope.csv", features=False)


def test_kiba_recipe_all_reports_single_class_tasks():
    ds = datasets.kiba(recipe="all", features=False)
    excl = ds.info["excluded_tasks"]
    assert excl, "recipe 'all' keeps small targets, some of which have one class"
    assert all(e["reason"].startswith("single class") for e in excl)
    # nothing silent: kept + excluded = all targets measured on structure-available compounds
    assert ds.n_tasks + len(excl) == ds.info["counts"]["structure_available"]["tasks"]


def test_kiba_unknown_recipe_and_structures():
    with pytest.raises(ConfigError, match="kiba244"):
        datasets.kiba(recipe="kiba999")
    with pytest.raises(ConfigError, match="offline"):
        datasets.kiba(structures="chembl")
    with pytest.raises(ConfigError, match="features=False"):
        datasets.kiba(structures="none")


def test_kiba_structures_none_is_the_full_matrix():
    ds = datasets.kiba(structures="none", features=False)
    assert (ds.n_tasks, ds.n_pairs, ds.n_compounds) == (244, 228_399, 51_097)
    assert ds.compounds["smiles"].isna().all()


# --------------------------------------------------------------------------- kinase200, Davis
def test_kinase200_counts():
    ds = datasets.kinase200(features=False)
    assert ds.n_tasks == 198 and ds.n_pairs == 216_858
    assert ds.n_compounds == 82_982  # one InChIKey appears on two rows
    assert ds.info["duplicates"]["rows_sharing_inchikey"] == 1
    assert not ds.tasks["task_id"].str.endswith("_WT").any()
    assert abs(ds.y.mean() - 0.394) < 0.005
    assert np.array_equal(ds.y, (ds.value >= 6.5).astype(np.int8))


def test_davis_counts_and_exclusions():
    ds = datasets.davis(features=False)
    assert ds.n_compounds == 68
    excl = ds.info["excluded_tasks"]
    assert ds.n_tasks == 410 and len(excl) == 32
    assert all(e["reason"] == "single class: all inactive" for e in excl)
    assert ds.n_pairs + sum(e["n_measured"] for e in excl) == 68 * 442
    assert int(ds.y.sum()) == 2_502
    np.testing.assert_allclose(ds.value[ds.y == 1].min(), 7.0, atol=0.5)


def test_davis_features():
    ds = datasets.davis()
    assert ds.X.shape == (68, 2048)
    assert ds.info["featurize"]["excluded_compounds"] == 0


def test_threshold_leaving_one_class_everywhere_is_an_error():
    with pytest.raises(InputTableError, match="single class"):
        datasets.davis(threshold=20.0, features=False)


# --------------------------------------------------------------------------- load / summary
def test_load_dispatch_and_unknown_names():
    ds = datasets.load("davis", features=False)
    assert ds.name == "davis"
    with pytest.raises(ConfigError, match="kiba, kinase200, davis, synthetic"):
        datasets.load("tox21")
    with pytest.raises(ConfigError, match="davis"):
        datasets.load("davis", bogus=1)


def test_load_synthetic():
    ds = datasets.load("synthetic", n_compounds=300, n_tasks=4, n_groups=1, group_size=2, seed=1)
    assert ds.n_tasks == 4 and ds.X is not None
    assert ds.truth is not None
    json.dumps(datasets.summary(ds))


# --------------------------------------------------------------------------- from_table
def _table(**cols):
    return pd.DataFrame(cols)


SMI = ["CCO", "c1ccccc1", "CCN", "CC(=O)O", "c1ccncc1", "CCCl"]


def test_from_table_labels():
    df = _table(smiles=SMI * 2, task=["a"] * 6 + ["b"] * 6, label=[0, 1] * 6)
    ds = datasets.from_table(df)
    assert (ds.n_compounds, ds.n_tasks, ds.n_pairs) == (6, 2, 12)
    assert ds.X.shape == (6, 2048)


def test_from_table_values_threshold_direction(tmp_path):
    df = _table(cid=[f"c{i}" for i in range(6)], smi=SMI, target="t", ic50=[1, 5, 10, 50, 100, 500])
    p = tmp_path / "t.parquet"
    df.to_parquet(p)
    kw = dict(smiles_col="smi", task_col="target", value_col="ic50", compound_col="cid")
    less = datasets.from_table(p, threshold=10, direction="less", **kw)
    assert less.y.tolist() == [1, 1, 1, 0, 0, 0]
    greater = datasets.from_table(p, threshold=50, direction="greater", **kw)
    assert greater.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert greater.info["label_rule"] == "active if ic50 >= 50"


def test_from_table_duplicates_aggregated_and_counted():
    df = _table(
        smiles=["CCO", "CCO", "CCO", "CCN", "CCN", "c1ccccc1"],
        task=["a"] * 6,
        value=[4.0, 8.0, 9.0, 6.0, 7.5, 8.0],
    )
    ds = datasets.from_table(df, value_col="value", threshold=7.0, features=False)
    lab = dict(zip(ds.compounds["compound_id"].to_numpy()[ds.rows], ds.y, strict=True))
    val = dict(zip(ds.compounds["compound_id"].to_numpy()[ds.rows], ds.value, strict=True))
    assert val["CCO"] == 8.0 and lab["CCO"] == 1  # median of 4, 8, 9
    assert val["CCN"] == 6.75 and lab["CCN"] == 0
    d = ds.info["duplicates"]
    assert d["duplicate_rows"] == 3 and d["pairs_affected"] == 2 and d["conflicting_pairs"] == 2


def test_from_table_label_ties_are_active():
    df = _table(smiles=["CCO", "CCO", "CCN", "CCC"], task="a", label=[0, 1, 0, 0])
    ds = datasets.from_table(df, features=False)
    lab = dict(zip(ds.compounds["compound_id"].to_numpy()[ds.rows], ds.y, strict=True))
    assert lab == {"CCO": 1, "CCN": 0, "CCC": 0}


@pytest.mark.parametrize(
    ("df", "kw", "match"),
    [
        (_table(smiles=SMI, task="a"), {}, "label"),
        (_table(smi=SMI, task="a", label=1), {}, "smiles"),
        (_table(smiles=SMI, task="a", label=[0, 1, 2, 0, 1, 0]), {}, "0/1"),
        (_table(smiles=SMI, task="a", label=["x", 1, 0, 0, 1, 0]), {}, "0/1"),
        (_table(smiles=SMI, task="a", v=range(6)), {"value_col": "v"}, "threshold"),
        (
            _table(smiles=SMI, task="a", v=["a"] * 6),
            {"value_col": "v", "threshold": 1},
            "non-numeric",
        ),
    ],
)
def test_from_table_bad_inputs(df, kw, match):
    with pytest.raises(InputTableError, match=match):
        datasets.from_table(df, features=False, **kw)


def test_from_table_missing_file_and_direction(tmp_path):
    with pytest.raises(InputTableError, match="does not exist"):
        datasets.from_table(tmp_path / "none.csv")
    with pytest.raises(ConfigError, match="direction"):
        datasets.from_table(_table(smiles=SMI, task="a", label=1), direction="up")


def test_from_table_single_class_task_excluded_and_reported():
    df = _table(smiles=SMI * 2, task=["a"] * 6 + ["b"] * 6, label=[0, 1] * 3 + [0] * 6)
    ds = datasets.from_table(df, features=False)
    assert ds.tasks["task_id"].tolist() == ["a"]
    assert ds.info["excluded_tasks"] == [
        {"task_id": "b", "reason": "single class: all inactive", "n_measured": 6, "n_active": 0}
    ]


def test_from_table_unparsable_smiles_reported():
    df = _table(smiles=SMI + ["C1CC", "not_a_smiles"], task="a", label=[0, 1] * 4)
    with pytest.warns(UserWarning, match="2 compound"):
        ds = datasets.from_table(df)
    f = ds.info["featurize"]
    assert f["excluded_compounds"] == 2 and f["excluded_pairs"] == 2
    assert {e["compound_id"] for e in f["excluded"]} == {"C1CC", "not_a_smiles"}
    assert all("parse" in e["reason"] for e in f["excluded"])
    assert ds.n_compounds == 6


def test_from_table_empty_rows_counted():
    df = _table(smiles=SMI + [None], task="a", label=[0, 1, 0, 1, 0, 1, 1])
    ds = datasets.from_table(df, features=False)
    assert ds.info["dropped_rows"] == 1 and ds.n_pairs == 6


# --------------------------------------------------------------------------- data files
@pytest.fixture
def data_copy(tmp_path, monkeypatch):
    dst = tmp_path / "data"
    shutil.copytree(_files.data_dir(), dst, ignore=shutil.ignore_patterns("kinase200"))
    for p in dst.rglob("*"):
        p.chmod(0o644 if p.is_file() else 0o755)
    monkeypatch.setenv("MTLC_DATA_DIR", str(dst))
    return dst


def test_missing_data_file(data_copy):
    (data_copy / "davis" / "proteins.txt").unlink()
    with pytest.raises(DataFileError, match=r"davis/proteins.txt.*missing.*git checkout"):
        datasets.davis(features=False)


def test_corrupted_data_file(data_copy):
    p = data_copy / "kiba" / "ligands_iso.txt"
    b = bytearray(p.read_bytes())
    b[100] ^= 0x01
    p.write_bytes(bytes(b))
    with pytest.raises(DataFileError, match=r"ligands_iso.txt.*corrupted.*git checkout"):
        datasets.kiba(features=False)
    assert issubclass(DataFileError, MtlcError)


def test_verified_files_are_not_rehashed(data_copy, monkeypatch):
    path = _files.data_path("davis/proteins.txt")
    assert Path(path).parent.parent == data_copy

    def boom(_p):
        raise AssertionError("hashed again")

    monkeypatch.setattr(_files, "sha256_file", boom)
    _files.data_path("davis/proteins.txt")  # memory stamp
    _files._VERIFIED.clear()
    _files.data_path("davis/proteins.txt")  # on-disk stamp
    with pytest.raises(DataFileError, match="unknown data file"):
        _files.data_path("davis/other.txt")
