"""Real-pipeline recovery: do fitted pairwise coefficients a_ij find the planted relatedness?

Trains networks (``mtlc.study.run_study``) on the synthetic data set with planted groups of
related tasks (``mtlc.datasets.synthetic``, 12 tasks: 3 groups of 3 related tasks and 3
unrelated ones), single-task and pairwise regimes (partner at all its training data), then fits
the pairwise model per fold (``mtlc.curves.fit_pairwise`` on single-task + pair points) and
compares the fold-mean a_ij with ``truth["relatedness"][i, j]`` by Spearman rank correlation.

Run: ``.venv/bin/python benchmarks/recovery_pipeline.py [--store DIR]`` (resumable; about
300 small networks, 3-15 min on 2 shared cores). Prints the table and the correlation.
"""

from __future__ import annotations

import argparse
import time

from scipy import stats as sps

from mtlc import curves, datasets
from mtlc import stats as mstats

# target -> partners: two related (same group) and two unrelated where the target has a group
PAIRS = {
    "t00": ["t01", "t02", "t04", "t09"],
    "t03": ["t04", "t05", "t00", "t10"],
    "t06": ["t07", "t08", "t01", "t11"],
    "t09": ["t10", "t00"],
}


def main(argv: list[str] | None = None) -> dict:
    from mtlc.study import run_study
    from mtlc.training import TrainConfig

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", default="/tmp/mtlc_recovery_store")
    ap.add_argument("--folds", type=int, default=3, help="folds used (of 5)")
    ap.add_argument("--max-epochs", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--contextual", action="store_true", help="also EXP3.2 on all-task curves")
    args = ap.parse_args(argv)
    ds = datasets.synthetic(seed=args.seed)
    ids = list(ds.tasks["task_id"])
    cfg = TrainConfig(max_epochs=args.max_epochs, patience=3)
    sizes = [16, 32, 64, 128, 256]
    common = dict(
        store=args.store,
        config=cfg,
        split="compound",
        n_folds=5,
        fold_subset=range(args.folds),
        sizes=sizes,
        progress=False,
    )
    t0 = time.perf_counter()
    run_study(ds, regime="stl", targets=list(PAIRS), **common)
    pairs = [(i, j) for i, js in PAIRS.items() for j in js]
    run_study(ds, regime="pair", pairs=pairs, partner_sizes="full", **common)
    train_s = time.perf_counter() - t0
    from mtlc.store import ResultsStore

    res = ResultsStore(args.store).read()
    ok = res[(res["status"] == "ok") & (res["metric"] == "roc_auc") & res["value"].notna()]
    ok = ok[ok["task"].isin(PAIRS)]
    ok = ok[(ok["regime"] == "stl") | ok["target"].isin(PAIRS)]
    pts = ok.groupby(
        ["regime", "task", "partner", "fold", "n_task"], dropna=False, as_index=False
    ).agg(value=("value", "mean"), n_context=("n_context", "mean"))
    surf = curves.with_single_task_points(pts)
    fits = curves.fit_pairwise(surf, by=["task", "partner"])
    summ = mstats.fold_summary(fits, ["a_ij", "rho_ij"], by=["task", "partner"], n_boot=500)
    rel = ds.truth["relatedness"]
    result = {}
    for prm in ("a_ij", "rho_ij"):
        a = summ[summ["param"] == prm].copy()
        a["relatedness"] = [
            rel[ids.index(t), ids.index(p)] for t, p in zip(a["task"], a["partner"], strict=True)
        ]
        print(f"--- {prm} (fold mean over {args.folds} folds)")
        cols = ["task", "partner", "relatedness", "estimate", "ci_lo", "ci_hi", "q", "flag"]
        print(a[cols].round(3).to_string())
        result[prm] = (sps.spearmanr(a["estimate"], a["relatedness"]).statistic, a)
    # a_ij carries each target's own scale (targets learn at different rates a_i), so across
    # targets the scale-free rho_ij = a_ij / a_i is the comparable quantity
    rho_s, a = result["a_ij"]
    print(
        f"flagged fold fits: {(fits['flag'] != '').sum()} of {len(fits)}; training {train_s:.0f} s"
    )
    for prm, (r, _) in result.items():
        print(f"Spearman({prm}, planted relatedness) = {r:.3f} over {len(a)} pairs")
    related = a["relatedness"] > 0.5
    sig = (a.q < 0.05) & (a.estimate > 0)
    print(
        f"related pairs significant positive (q<0.05): {sig[related].sum()}/{related.sum()}; "
        f"unrelated significant: {(a.q < 0.05)[~related].sum()}/{(~related).sum()}"
    )
    out = {"spearman": rho_s, "spearman_rho": result["rho_ij"][0], "table": a, "fits": fits}
    if args.contextual:
        out.update(contextual(ds, res_store=args.store, common=common, run_study=run_study))
    return out


def contextual(ds, *, res_store, common, run_study) -> dict:
    """EXP3.2 on single-task + all-task curves: is a_S larger for tasks with related tasks?"""
    from mtlc.store import ResultsStore

    targets = ["t00", "t03", "t06", "t09", "t10", "t11"]  # 3 in groups, 3 unrelated
    run_study(ds, regime="stl", targets=targets, **common)
    run_study(ds, regime="mtl", **common)
    res = ResultsStore(res_store).read()
    ok = res[(res["status"] == "ok") & (res["metric"] == "roc_auc") & res["value"].notna()]
    ok = ok[ok["regime"].isin(["stl", "mtl"]) & ok["task"].isin(targets)]
    pts = ok.groupby(["regime", "task", "fold", "n_level", "n_task"], as_index=False).agg(
        value=("value", "mean"), n_context=("n_context", "mean")
    )
    fits = curves.fit_exp32(pts, by=["task"])
    summ = mstats.fold_summary(fits, ["a_S", "rho_S"], by=["task"], n_boot=500)
    a = summ[summ["param"] == "a_S"].copy()
    groups = dict(zip(ds.tasks["task_id"], ds.tasks["group"], strict=True))
    a["in_group"] = [groups[t] >= 0 for t in a["task"]]
    rho_s = sps.spearmanr(a["estimate"], a["in_group"]).statistic
    print(a[["task", "in_group", "estimate", "ci_lo", "ci_hi", "q", "flag"]].round(4).to_string())
    print(f"Spearman(a_S, task has related tasks) = {rho_s:.3f} over {len(a)} tasks")
    return {"spearman_contextual": rho_s, "table_contextual": a}


if __name__ == "__main__":
    main()
