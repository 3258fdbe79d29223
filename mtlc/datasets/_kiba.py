"""KIBA (Tang et al. 2014): the full 52,498 x 467 matrix of raw KIBA scores, binarised.

Raw score: lower = more potent; active if raw <= ``threshold`` (3.0, inclusive). The matrix has
ChEMBL IDs only. Offline structures exist for 3,816 of its compounds: PADME's ChEMBL SMILES
(3,807) and DeepDTA's isomeric SMILES (2,111; 2,102 shared). Where both have one, PADME's is used:
it is ChEMBL's own record for that ID, the same source a user's ChEMBL ID -> SMILES table comes
from, so the offline set and a full rebuild agree; DeepDTA's SMILES (PubChem-derived, other
tautomers for about 200 of the shared compounds) fill in the 9 compounds PADME lacks.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from mtlc.datasets._common import as_str_ids, finish, obj_series
from mtlc.datasets._core import MultiTaskDataset
from mtlc.datasets._files import data_path
from mtlc.errors import ConfigError, InputTableError

# recipe -> (min measured compounds, min actives, min inactives) per task, applied in one pass
RECIPES: dict[str, tuple[int, int, int] | None] = {
    "kiba244": (100, 10, 10),
    "all": None,
}
STRUCTURES = ("offline", "none")


def _read_matrix() -> pd.DataFrame:
    t = pd.read_csv(
        data_path("kiba/kiba_full_long.csv.gz"),
        dtype={"chembl_id": str, "uniprot": str, "kiba_score": np.float64},
        engine="pyarrow",
    )
    t = t.rename(columns={"chembl_id": "compound_id", "uniprot": "task_id", "kiba_score": "value"})
    for c in ("compound_id", "task_id"):
        t[c] = as_str_ids(t[c])
    return t


def offline_smiles() -> tuple[pd.Series, dict[str, int]]:
    """ChEMBL ID -> SMILES from the offline sources (PADME first, then DeepDTA isomeric)."""
    with open(data_path("kiba/ligands_iso.txt")) as fh:
        d = json.load(fh)
    iso = obj_series(list(d.values()), list(d))
    pad = pd.read_csv(data_path("kiba/drug_info.csv"), dtype=str)
    pad = pd.Series(
        pad["smiles"].to_numpy(dtype=object), index=pad["CHEMBL_ID"].to_numpy(dtype=object)
    )
    both = pad.index.intersection(iso.index)
    merged = pd.concat([pad, iso[~iso.index.isin(pad.index)]])
    stats = {
        "padme": len(pad),
        "deepdta_isomeric": len(iso),
        "in_both": len(both),
        "union": len(merged),
        "from_padme": len(pad),
        "from_deepdta_only": len(merged) - len(pad),
    }
    return merged, stats


def read_smiles_table(smiles: str | os.PathLike | dict | pd.Series) -> pd.Series:
    """A user's ChEMBL ID -> SMILES mapping: CSV path (columns chembl_id, smiles), dict or Series."""
    if isinstance(smiles, pd.Series):
        s = smiles
    elif isinstance(smiles, dict):
        s = pd.Series(smiles, dtype=object)
    else:
        path = Path(smiles)
        if not path.is_file():
            raise InputTableError(
                f"SMILES table {path} does not exist; give a CSV with columns chembl_id,smiles"
            )
        try:
            t = pd.read_csv(path, dtype=str)
        except (ValueError, pd.errors.ParserError) as exc:
            raise InputTableError(f"SMILES table {path} is not a readable CSV ({exc})") from exc
        cols = {c.lower().strip(): c for c in t.columns}
        missing = [c for c in ("chembl_id", "smiles") if c not in cols]
        if missing:
            raise InputTableError(
                f"SMILES table {path} lacks column(s) {missing} (has {list(t.columns)}); "
                "give a CSV with a header line 'chembl_id,smiles'"
            )
        t = t.dropna(subset=[cols["chembl_id"], cols["smiles"]])
        if t[cols["chembl_id"]].duplicated().any():
            dup = t.loc[t[cols["chembl_id"]].duplicated(), cols["chembl_id"]].iloc[0]
            raise InputTableError(
                f"SMILES table {path} lists {dup!r} more than once; keep one SMILES per ID"
            )
        s = pd.Series(
            t[cols["smiles"]].to_numpy(dtype=object),
            index=t[cols["chembl_id"]].to_numpy(dtype=object),
        )
    s = s.dropna()
    return obj_series(s.to_numpy(dtype=object), s.index)


def _apply_recipe(t: pd.DataFrame, recipe: str) -> tuple[pd.DataFrame, list[str]]:
    rule = RECIPES[recipe]
    if rule is None:
        return t, []
    g = t.groupby("task_id")["label"].agg(["size", "sum"])
    n_min, a_min, i_min = rule
    keep = (g["size"] >= n_min) & (g["sum"] >= a_min) & (g["size"] - g["sum"] >= i_min)
    dropped = sorted(g.index[~keep].astype(str))
    return t[t["task_id"].isin(g.index[keep])], dropped


def _counts(t: pd.DataFrame) -> dict[str, int]:
    return {
        "tasks": int(t["task_id"].nunique()),
        "pairs": len(t),
        "compounds": int(t["compound_id"].nunique()),
        "actives": int(t["label"].sum()),
    }


def kiba(
    *,
    recipe: str = "kiba244",
    threshold: float = 3.0,
    structures: str = "offline",
    smiles: str | os.PathLike | dict | pd.Series | None = None,
    features: bool = True,
) -> MultiTaskDataset:
    """Load KIBA as a binary multi-task data set.

    Parameters
    ----------
    recipe:
        ``"kiba244"``: targets with >= 100 measured compounds, >= 10 actives and >= 10 inactives
        (one pass, after restricting to compounds with a structure); ``"all"``: no filter.
    threshold:
        Raw KIBA score at or below which a pair is active (lower = more potent).
    structures:
        ``"offline"``: keep compounds with a SMILES from the shipped sources and/or ``smiles``;
        ``"none"``: keep the full matrix without structures (``features`` must be False).
    smiles:
        Extra ChEMBL ID -> SMILES (CSV path with columns chembl_id,smiles, dict or Series); it
        takes precedence over the offline SMILES. With a complete table the recipe gives the
        full 244 tasks.
    features:
        Compute ECFP4 features (:func:`mtlc.features.featurize`: merges duplicate structures).

    ``info["counts"]`` holds both count sets: ``full_matrix`` (the recipe on all 51,961 measured
    compounds: 244 tasks, 228,399 pairs, 51,097 compounds for kiba244) and
    ``structure_available`` (the recipe on compounds with a SMILES, before any merging; offline:
    201 tasks, 144,733 pairs, 3,816 compounds).
    """
    if recipe not in RECIPES:
        raise ConfigError(f"unknown KIBA recipe {recipe!r}; known recipes: {', '.join(RECIPES)}")
    if structures not in STRUCTURES:
        raise ConfigError(
            f"unknown structures={structures!r}; choose one of {', '.join(STRUCTURES)}"
        )
    if structures == "none" and features:
        raise ConfigError("structures='none' has no SMILES to featurize; pass features=False")
    user = read_smiles_table(smiles) if smiles is not None else None  # fail fast on a bad table
    raw = _read_matrix()
    raw["label"] = (raw["value"] <= threshold).astype(np.int8)
    full, dropped_full = _apply_recipe(raw, recipe)
    rule = RECIPES[recipe]
    info: dict[str, Any] = {
        "source": "Tang et al. 2014 KIBA matrix (timma kiba.rda), raw scores",
        "recipe": recipe,
        "recipe_rule": None
        if rule is None
        else "targets with >= {} measured, >= {} actives, >= {} inactives".format(*rule),
        "threshold": float(threshold),
        "direction": "less",
        "label_rule": f"active if raw KIBA score <= {threshold} (lower = more potent)",
        "measured_matrix": {
            "compounds": int(raw["compound_id"].nunique()),
            "tasks": int(raw["task_id"].nunique()),
            "pairs": len(raw),
        },
        "counts": {"full_matrix": _counts(full)},
        "structures": structures,
    }
    if structures == "none":
        info["recipe_dropped_tasks"] = dropped_full
        info["counts"]["full_matrix"]["recipe_dropped_tasks"] = len(dropped_full)
        return finish("kiba", full, smiles=None, info=info, features=False)

    smap, sstats = offline_smiles()
    if user is not None:
        sstats["user"] = len(user)
        sstats["user_not_in_matrix"] = int((~user.index.isin(raw["compound_id"])).sum())
        smap = pd.concat([user, smap[~smap.index.isin(user.index)]])
    in_matrix = smap.index.isin(raw["compound_id"].unique())
    sstats["union_in_matrix"] = int(in_matrix.sum())
    smap = smap[in_matrix]
    info["smiles_sources"] = sstats
    info["smiles_preference"] = (
        "user table, then " if smiles is not None else ""
    ) + "PADME ChEMBL SMILES, then DeepDTA isomeric SMILES"
    with_s = raw[raw["compound_id"].isin(smap.index)]
    t, dropped = _apply_recipe(with_s, recipe)
    info["counts"]["structure_available"] = dict(
        _counts(t), compounds_with_smiles=int(with_s["compound_id"].nunique())
    )
    info["recipe_dropped_tasks"] = dropped
    info["pairs_without_structure"] = int(len(raw) - len(with_s))
    return finish("kiba", t, smiles=smap, info=info, features=features)
