"""kinase200 (Luukkonen et al. 2023, Papyrus 05.6): 82,983 compounds x 198 kinases, pChEMBL.

pChEMBL: higher = more potent; active if value >= ``threshold`` (6.5, inclusive). Task ids are
UniProt accessions (the file's ``_WT`` suffix stripped), compound ids InChIKeys.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from mtlc.datasets._common import binarize, finish, merge_pairs
from mtlc.datasets._core import MultiTaskDataset
from mtlc.datasets._files import data_path


def kinase200(*, threshold: float = 6.5, features: bool = True) -> MultiTaskDataset:
    """Load kinase200 as a binary multi-task data set (active if pChEMBL >= ``threshold``).

    Rows sharing an InChIKey (one pair of rows in the file) are merged: per task the median
    pChEMBL, thresholded again; the count is in ``info["duplicates"]``.
    """
    path = data_path("kinase200/kinase200_DGBC.csv.gz")
    # pyarrow parses the 83k x 202 mostly-empty table in about a second; only filled cells melt
    df = pd.read_csv(path, engine="pyarrow")
    task_cols = [c for c in df.columns if c.endswith("_WT")]
    vals = df[task_cols].to_numpy(dtype=np.float64)
    r, c = np.nonzero(~np.isnan(vals))
    keys = df["InChIKey"].astype(str).to_numpy(dtype=object)
    tasks = np.array([t[: -len("_WT")] for t in task_cols], dtype=object)
    v = vals[r, c]
    long = pd.DataFrame(
        {
            "compound_id": keys[r],
            "task_id": tasks[c],
            "label": binarize(v, threshold, "greater"),
            "value": v,
        }
    )
    long, dstats = merge_pairs(long, threshold=threshold, direction="greater")
    smiles = pd.Series(df["SMILES"].astype(str).to_numpy(dtype=object), index=keys)
    n_dup_keys = int(smiles.index.duplicated().sum())
    smiles = smiles[~smiles.index.duplicated(keep="first")]
    info = {
        "source": "Luukkonen et al. 2023 kinase200 (Papyrus 05.6), file kinase200_DGBC.csv.gz",
        "threshold": float(threshold),
        "direction": "greater",
        "label_rule": f"active if pChEMBL >= {threshold}",
        "file_counts": {"rows": len(df), "tasks": len(task_cols), "values": len(v)},
        "duplicates": dict(
            dstats,
            rows_sharing_inchikey=n_dup_keys,
            rule="rows with the same InChIKey: first SMILES kept; per task the median pChEMBL, "
            "thresholded again",
        ),
    }
    return finish("kinase200", long, smiles=smiles, info=info, features=features)
