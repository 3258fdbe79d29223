"""Pairs of the exact top-partner check (results/README.md, random_design/): for the 8 kiba
targets with the most labels, the 2 top partners by a_ij (one-partner fits on the random-design
networks of scaffold test folds 1 and 2, so test fold 0 does not choose its own partners), the
2 top partners by TAG's Z (one run on the compounds outside test fold 0: 20 epochs, probe every
2 steps, seed 0) and 1 random partner (seed 0).

Writes ``kiba_scaffold_top_partners.csv`` (target, partner, chosen_by) next to this file and
prints the ``--pairs`` argument of ``mtlc train --regime pair``. Run from the repository top:
``OMP_NUM_THREADS=1 python results/random_design/top_partner_pairs.py``.
"""

import numpy as np
import pandas as pd
import torch

from mtlc import approx
from mtlc.affinity import tag_train
from mtlc.datasets import kiba
from mtlc.splits import kfold
from mtlc.store import ResultsStore
from mtlc.study import select_tasks
from mtlc.training import TrainConfig

ds = kiba()
idx, _ = select_tasks(ds, 8)
targets = [str(ds.tasks["task_id"].iloc[i]) for i in idx]
df = ResultsStore("results/random_design/kiba_scaffold").read()
run = approx.random_design_from_store(df)
ids = list(run.sizes.columns)
m = run.table["fold"].isin([1, 2]).to_numpy()  # not the evaluation fold 0
sub = approx.CurveRun(
    run.table[m].reset_index(drop=True), run.cost, sizes=run.sizes[m].reset_index(drop=True)
)
A = approx.pair_matrix(
    approx.random_design_fit_fixed_c(sub, model="marginal", ridge=0.0, n_boot=0), ids
)
torch.set_num_threads(1)
folds = kfold(ds, n_folds=10, split="scaffold", seed=0)
r = tag_train(ds, np.flatnonzero(folds != 0), config=TrainConfig(), epochs=20, every=2, seed=0)
pos = [list(r.task_ids).index(t) for t in ids]
Z = r.affinity[np.ix_(pos, pos)]
rng = np.random.default_rng(0)
pairs, rows = [], []
for t in targets:
    i = ids.index(t)
    a = pd.Series(A[:, i], index=ids).drop(t).sort_values(ascending=False, kind="stable")
    z = pd.Series(Z[:, i], index=ids).drop(t).sort_values(ascending=False, kind="stable")
    chosen = {}
    for p in a.index[:2]:
        chosen.setdefault(p, []).append("a_ij")
    for p in z.index[:2]:
        chosen.setdefault(p, []).append("tag")
    others = [p for p in ids if p != t and p not in chosen]
    chosen.setdefault(others[rng.integers(len(others))], []).append("random")
    for p, how in chosen.items():
        pairs.append(f"{t}:{p}")
        rows.append({"target": t, "partner": p, "chosen_by": "+".join(how)})
print(",".join(pairs))
pd.DataFrame(rows).to_csv("results/random_design/kiba_scaffold_top_partners.csv", index=False)
