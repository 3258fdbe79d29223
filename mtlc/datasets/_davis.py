"""Davis et al. 2011 (DeepDTA version): 68 compounds x 442 kinase assays, dense Kd in nM.

pKd = 9 - log10(Kd / nM) (higher = more potent); active if pKd >= ``threshold`` (7.0, i.e.
Kd <= 100 nM). Task ids are the assay names (mutant and phospho forms are separate tasks),
compound ids the PubChem CIDs of DeepDTA.
"""

from __future__ import annotations

import json
from collections import OrderedDict

import numpy as np
import pandas as pd

from mtlc.datasets._common import binarize, finish
from mtlc.datasets._core import MultiTaskDataset
from mtlc.datasets._files import data_path

_KD = "davis/drug-target_interaction_affinities_Kd__Davis_et_al.2011v1.txt"


def davis(*, threshold: float = 7.0, features: bool = True) -> MultiTaskDataset:
    """Load Davis as a binary multi-task data set (active if pKd >= ``threshold``).

    Assays with no active (or no inactive) compound are excluded and listed in
    ``info["excluded_tasks"]``.
    """
    with open(data_path("davis/ligands_iso.txt")) as fh:
        lig = json.load(fh, object_pairs_hook=OrderedDict)
    with open(data_path("davis/proteins.txt")) as fh:
        prot = json.load(fh, object_pairs_hook=OrderedDict)
    kd = np.loadtxt(data_path(_KD))
    cids = np.array(list(lig), dtype=object)
    assays = np.array(list(prot), dtype=object)
    if kd.shape != (len(cids), len(assays)):
        raise ValueError(f"Davis Kd matrix {kd.shape} does not match {len(cids)} x {len(assays)}")
    r, c = np.nonzero(~np.isnan(kd))
    pkd = 9.0 - np.log10(kd[r, c])
    long = pd.DataFrame(
        {
            "compound_id": cids[r],
            "task_id": assays[c],
            "label": binarize(pkd, threshold, "greater"),
            "value": pkd,
        }
    )
    info = {
        "source": "Davis et al. 2011 Kd panel, DeepDTA version",
        "threshold": float(threshold),
        "direction": "greater",
        "label_rule": f"active if pKd = 9 - log10(Kd/nM) >= {threshold}",
        "censored_pairs": int((kd[r, c] >= 10000).sum()),
    }
    smiles = pd.Series(list(lig.values()), index=cids, dtype=object)
    return finish("davis", long, smiles=smiles, info=info, features=features)
