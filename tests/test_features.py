"""ECFP features: bits, largest fragment, exclusions, merges, cache, RDKit noise."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rdkit import Chem
from rdkit.Chem import rdFingerprintGenerator

from mtlc import features
from mtlc.datasets import MultiTaskDataset
from mtlc.errors import InputTableError


@pytest.fixture(autouse=True)
def _cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MTLC_CACHE_DIR", str(tmp_path / "cache"))


def _rdkit_bits(smi: str, n_bits: int = 2048, radius: int = 2) -> set[int]:
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    return set(gen.GetFingerprint(Chem.MolFromSmiles(smi)).GetOnBits())


def _ds(table: pd.DataFrame, smiles: dict, **info) -> MultiTaskDataset:
    return MultiTaskDataset.from_long("toy", table, smiles=smiles, info=info)


def test_ecfp_matches_rdkit_and_is_sparse_float32():
    smi = ["CCO", "c1ccccc1O", "CC(=O)Nc1ccc(O)cc1"]
    X = features.ecfp(smi)
    assert X.shape == (3, 2048) and X.dtype == np.float32
    assert set(np.unique(X.data)) == {1.0}
    for i, s in enumerate(smi):
        assert set(X[i].indices) == _rdkit_bits(s)
    X1024 = features.ecfp(smi, n_bits=1024, radius=1)
    assert X1024.shape == (3, 1024)
    assert set(X1024[2].indices) == _rdkit_bits(smi[2], 1024, 1)


def test_largest_fragment_kept():
    X = features.ecfp(["OC(=O)c1ccccc1.[Na+].[Cl-]", "OC(=O)c1ccccc1", "CCCCCCCC.O"])
    assert (X[0] != X[1]).nnz == 0
    assert set(X[2].indices) == _rdkit_bits("CCCCCCCC")


def test_ecfp_bad_smiles_raises():
    with pytest.raises(InputTableError, match=r"position 1 'C1CC'"):
        features.ecfp(["CCO", "C1CC"])


def test_featurize_excludes_unparsable_and_is_quiet(capfd):
    t = pd.DataFrame(
        {
            "compound_id": ["a", "b", "c", "d", "a", "b"],
            "task_id": ["t1", "t1", "t1", "t1", "t2", "t2"],
            "label": [1, 0, 1, 0, 1, 0],
        }
    )
    ds = _ds(t, {"a": "CCO", "b": "c1ccccc1", "c": "C1CC", "d": "c1cccc1"})
    with pytest.warns(UserWarning, match="2 compound"):
        out = features.featurize(ds)
    f = out.info["featurize"]
    assert f["excluded_compounds"] == 2 and f["excluded_pairs"] == 2
    assert [e["compound_id"] for e in f["excluded"]] == ["c", "d"]
    assert "unclosed ring" in f["excluded"][0]["reason"]
    assert "kekulize" in f["excluded"][1]["reason"]
    assert f["rdkit_errors_captured"] >= 2
    assert out.compounds["compound_id"].tolist() == ["a", "b"]
    assert out.X.shape == (2, 2048)
    err = capfd.readouterr().err
    assert "SMILES Parse Error" not in err and "kekulize" not in err


def test_featurize_merges_duplicate_structures_by_median_value():
    # a, b, c are the same structure (b as a salt, c written differently); d is different
    t = pd.DataFrame(
        {
            "compound_id": ["a", "b", "c", "d", "a", "d"],
            "task_id": ["t1", "t1", "t1", "t1", "t2", "t2"],
            "label": [1, 0, 0, 1, 0, 1],
            "value": [8.0, 5.0, 6.0, 9.0, 5.0, 8.0],
        }
    )
    smiles = {"a": "OCC", "b": "CCO.Cl", "c": "C(O)C", "d": "c1ccccc1"}
    ds = _ds(t, smiles, threshold=6.5, direction="greater")
    out = features.featurize(ds)
    f = out.info["featurize"]
    assert f["merged_compounds"] == 2 and f["merge_groups"] == 1
    assert f["merged"] == {"a": ["b", "c"]}
    assert f["merged_pairs_removed"] == 2 and f["merged_pairs_affected"] == 1
    assert f["merged_pairs_conflicting"] == 1
    lab = out.long().set_index(["compound_id", "task_id"])
    assert lab.loc[("a", "t1"), "value"] == 6.0  # median of 8, 5, 6
    assert lab.loc[("a", "t1"), "label"] == 0  # 6.0 < 6.5
    assert out.compounds["canonical_smiles"].tolist() == ["CCO", "c1ccccc1"]
    assert out.compounds["smiles"].tolist() == ["OCC", "c1ccccc1"]


def test_featurize_merge_majority_without_values():
    t = pd.DataFrame(
        {
            "compound_id": ["a", "b", "c", "d", "d2"],
            "task_id": "t1",
            "label": [1, 0, 0, 1, 0],
        }
    )
    smiles = {"a": "CCO", "b": "OCC", "c": "CCN", "d": "c1ccccc1", "d2": "C1=CC=CC=C1"}
    out = features.featurize(_ds(t, smiles))
    lab = out.long().set_index("compound_id")["label"].to_dict()
    assert lab == {"a": 1, "c": 0, "d": 1}  # ties count as active


def test_featurize_single_class_after_merge_is_reported():
    # a and b are one structure; their t1 values 8 and 2 have median 5 -> active, so t1 is all
    # active after the merge and must be excluded with a reason, not kept silently
    t = pd.DataFrame(
        {
            "compound_id": ["a", "b", "c", "a", "c"],
            "task_id": ["t1", "t1", "t1", "t2", "t2"],
            "label": [1, 0, 1, 1, 0],
            "value": [8.0, 2.0, 9.0, 8.0, 1.0],
        }
    )
    ds = _ds(t, {"a": "CCO", "b": "OCC", "c": "c1ccccc1"}, threshold=5.0, direction="greater")
    out = features.featurize(ds)
    assert out.tasks["task_id"].tolist() == ["t2"]
    (e,) = out.info["excluded_tasks"]
    assert e["task_id"] == "t1" and e["reason"].startswith("single class: all active")
    assert "after merging" in e["reason"]


def test_featurize_without_smiles_is_an_error():
    t = pd.DataFrame({"compound_id": ["a", "b"], "task_id": "t", "label": [0, 1]})
    with pytest.raises(InputTableError, match="no SMILES"):
        features.featurize(MultiTaskDataset.from_long("toy", t))


def test_cache_hit_and_atomic(tmp_path, monkeypatch):
    smi = ["CCO", "c1ccccc1", "CCN"]
    X1 = features.ecfp(smi)
    files = list((tmp_path / "cache" / "features").iterdir())
    assert len(files) == 1 and files[0].suffix == ".npz"

    def boom(*a, **k):
        raise AssertionError("recomputed despite cache")

    monkeypatch.setattr(features, "standardize", boom)
    X2 = features.ecfp(smi)
    assert (X1 != X2).nnz == 0
    with pytest.raises(AssertionError, match="recomputed"):
        features.ecfp(smi, n_bits=1024)  # other parameters, other key
    # a torn cache file is recomputed, not trusted
    files[0].write_bytes(b"garbage")
    monkeypatch.undo()
    monkeypatch.setenv("MTLC_CACHE_DIR", str(tmp_path / "cache"))
    X3 = features.ecfp(smi)
    assert (X1 != X3).nnz == 0
    assert not [p for p in (tmp_path / "cache" / "features").iterdir() if p.suffix == ".tmp"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_binarize_direction_inclusive(dtype):
    v = np.array([2.9, 3.0, 3.1], dtype=dtype)
    assert features.binarize(v, 3.0, "less").tolist() == [1, 1, 0]
    assert features.binarize(v, 3.0, "greater").tolist() == [0, 1, 1]


@settings(max_examples=40, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 4), st.integers(0, 2), st.floats(0, 10, allow_nan=False)),
        min_size=1,
        max_size=40,
    )
)
def test_merge_pairs_properties(rows):
    t = pd.DataFrame(rows, columns=["compound_id", "task_id", "value"])
    t["label"] = (t["value"] >= 5).astype(np.int8)
    out, stats = features.merge_pairs(t, threshold=5.0, direction="greater")
    assert not out.duplicated(["compound_id", "task_id"]).any()
    assert len(out) == t.groupby(["compound_id", "task_id"]).ngroups
    assert stats["duplicate_rows"] == len(t) - len(out)
    med = t.groupby(["compound_id", "task_id"])["value"].median()
    got = out.set_index(["compound_id", "task_id"]).sort_index()
    np.testing.assert_allclose(got["value"].to_numpy(), med.sort_index().to_numpy())
    assert (got["label"].to_numpy() == (med.sort_index().to_numpy() >= 5)).all()


def test_stereoisomers_kept_apart_but_counted():
    t = pd.DataFrame({"compound_id": ["r", "s", "x"], "task_id": "t", "label": [1, 0, 0]})
    ds = _ds(t, {"r": "C[C@H](N)c1ccccc1", "s": "C[C@@H](N)c1ccccc1", "x": "CCO"})
    out = features.featurize(ds)
    assert out.n_compounds == 3 and out.info["featurize"]["merged_compounds"] == 0
    ident = out.info["featurize"]["identical_fingerprints"]
    assert (ident["compounds"], ident["groups"]) == (2, 1)


def test_parallel_standardize_equals_sequential(monkeypatch):
    smi = ["CCO", "C1CC", "c1ccccc1O", None, "CC(=O)Nc1ccc(O)cc1.Cl", "CCN"] * 5
    seq = features.standardize(smi)
    monkeypatch.setenv("MTLC_N_JOBS", "2")
    par = features._standardize_parallel(smi, radius=2, n_bits=2048)
    assert set(par) == set(seq)
    for k in seq:
        assert np.array_equal(np.asarray(par[k]), np.asarray(seq[k])), k
