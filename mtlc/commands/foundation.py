"""``mtlc foundation``: pretrain context trunks and learn targets on top (resumable)."""

from __future__ import annotations

import argparse
from typing import Any

from mtlc.errors import ConfigError


def _list(text: str | None) -> list[str]:
    return [x for x in (text or "").replace(" ", "").split(",") if x]


def _run(args: argparse.Namespace) -> int:

    from mtlc import foundation as fd
    from mtlc.splits import kfold
    from mtlc.study import load_dataset, select_tasks
    from mtlc.training import TrainConfig

    ds = load_dataset(args.dataset)
    if args.targets.isdigit():
        idx, _ = select_tasks(ds, int(args.targets))
        targets = [str(ds.tasks["task_id"].iloc[i]) for i in idx]
    else:
        targets = _list(args.targets)
    if args.contexts == "auto":
        contexts: Any = fd.decomposition_contexts(
            fd.label_partners(ds, targets, min_overlap=args.min_overlap)
        )
    else:
        contexts = _list(args.contexts)
    modes = _list(args.modes)
    try:
        sizes: Any = "auto" if args.sizes == "auto" else [int(s) for s in _list(args.sizes)]
        fold_subset = [int(f) for f in _list(args.fold_subset)] or None
    except ValueError:
        raise ConfigError("--sizes and --fold-subset take comma-separated integers") from None
    folds = kfold(ds, n_folds=args.folds, split=args.split, seed=args.seed)
    if args.selection:
        return _selection(args, ds, targets, folds, sizes, fold_subset)
    cfg = TrainConfig(
        hidden=tuple(int(h) for h in _list(args.hidden)),
        max_epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        device=args.device,
    )
    summ = fd.run_foundation(
        ds,
        targets=targets,
        contexts=contexts,
        folds=folds,
        fold_subset=fold_subset,
        sizes=sizes,
        max_size=args.max_size,
        modes=modes,
        config=cfg,
        seed=args.seed,
        store=args.store,
        cache=args.cache or f"{args.store.rstrip('/')}_trunks",
        split=args.split,
        recipe=str(ds.info.get("recipe", "")),
        min_steps=args.min_steps,
        size_ratio=args.size_ratio,
        pretrain_epochs=args.pretrain_epochs,
    )
    print(summ)
    df = fd.read_foundation(args.store)
    scratch = df[df["context"] == "scratch"] if len(df) else df
    if len(scratch):
        # the reference is fine-tuning from scratch; a probe-only run has just the probe on a
        # random trunk, so it is measured against that instead of failing for lack of the other
        ref = (
            "foundation-finetune"
            if (scratch["regime"] == "foundation-finetune").any()
            else "foundation-probe"
        )
        s = fd.summarize_shifts(fd.context_shifts(df, reference_regime=ref))
        cols = ["regime", "context", "gain", "multiplier", "rho"]
        print(f"shifts against the {ref.split('-', 1)[1]} regime's scratch curve (medians):")
        print(s.groupby(["regime", "context"])[cols[2:]].median().round(3).to_string())
    return 0


def _selection(args: argparse.Namespace, ds: Any, targets, folds, sizes, fold_subset) -> int:
    """``--selection``: top-k partners by TAG / cosine / MTLC vs random vs all vs none, per fold."""
    from mtlc import selection as sel
    from mtlc.store import ResultsStore
    from mtlc.training import TrainConfig

    cfg = TrainConfig(
        hidden=tuple(int(h) for h in _list(args.hidden)),
        max_epochs=args.epochs,
        patience=args.patience,
        batch_size=args.batch_size,
        min_steps=args.min_steps,
        min_val_compounds=args.min_val_compounds,
        device=args.device,
    )
    res = sel.run_selection_folds(
        ds,
        folds,
        targets,
        store=args.store,
        config=cfg,
        k=args.k,
        n_random=args.n_random,
        fold_subset=fold_subset,
        sizes=sizes,
        max_size=args.max_size,
        size_ratio=args.size_ratio,
        tag_epochs=args.tag_epochs,
        estimators=_list(args.estimators),
        mtlc_runs=args.mtlc_runs,
        mtlc_inner_folds=args.mtlc_inner_folds,
        mtlc_candidates=args.mtlc_candidates,
        seed=args.seed,
        split=args.split,
        recipe=str(ds.info.get("recipe", "")),
    )
    for s in res["summaries"]:
        print(s)
    tab = sel.selection_table(ResultsStore(args.store).read(), estimator_cost=res["estimator_cost"])
    cols = [
        "set", "auc_small", "auc_full", "d_small", "d_full", "n_models",
        "estimator_networks", "total_seconds",
    ]  # fmt: skip
    print(tab[[c for c in cols if c in tab.columns]].round(3).to_string(index=False))
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "foundation",
        help="foundation-model context effects: pretrain on a context, probe / fine-tune targets",
        description=(
            "For each target and fold, pretrain the trunk on each context (scratch, all, "
            "pair:TASK, loo:TASK, random:k=K:s=S; 'auto' = scratch, all, and pair/loo of a "
            "related and an unrelated partner chosen from the labels), then learn the target at "
            "graded sizes by linear probe and by fine-tuning. Results go to a resumable store; "
            "trunks to a cache directory. Rerunning skips what is stored."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--dataset", default="kiba", help="kiba, kinase200, davis, synthetic")
    p.add_argument("--split", default="scaffold", choices=["compound", "scaffold"])
    p.add_argument("--targets", default="20", help="N (largest tasks) or comma-separated ids")
    p.add_argument("--contexts", default="auto", help="'auto' or comma-separated context names")
    p.add_argument("--min-overlap", type=int, default=30, help="shared compounds for 'auto'")
    p.add_argument("--modes", default="probe,finetune")
    p.add_argument("--folds", type=int, default=10)
    p.add_argument("--fold-subset", default="", help="comma-separated test folds (default all)")
    p.add_argument("--sizes", default="auto", help="'auto' or comma-separated target sizes")
    p.add_argument("--max-size", type=int, default=None)
    p.add_argument("--hidden", default="256")
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--patience", type=int, default=5, help="early-stopping patience (epochs)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--pretrain-epochs", type=int, default=None, help="default: --epochs")
    p.add_argument("--min-steps", type=int, default=300, help="least fine-tuning steps")
    p.add_argument("--size-ratio", type=float, default=2**0.5, help="ratio of the auto grid")
    p.add_argument(
        "--selection",
        action="store_true",
        help="task selection instead: top-k partners by each of --estimators (TAG affinity, "
        "gradient cosine, pairwise MTLC coefficients; measured on each fold's training "
        "compounds) vs k random vs all vs none, trained jointly",
    )
    p.add_argument("--k", type=int, default=5, help="partners per set (--selection)")
    p.add_argument("--n-random", type=int, default=1, help="random sets (--selection)")
    p.add_argument("--tag-epochs", type=int, default=10, help="TAG run epochs (--selection)")
    p.add_argument(
        "--estimators",
        default="tag,cosine",
        help="rankings (--selection): tag, cosine (one TAG run per fold), mtlc (pairwise MTLC "
        "coefficients from random-design runs on the fold's training compounds)",
    )
    p.add_argument(
        "--mtlc-runs", type=int, default=160, help="random-design networks per inner fold (mtlc)"
    )
    p.add_argument("--mtlc-inner-folds", type=int, default=5, help="inner folds (mtlc)")
    p.add_argument(
        "--mtlc-candidates", type=int, default=20, help="candidate partners per target (mtlc)"
    )
    p.add_argument("--min-val-compounds", type=int, default=0, help="(--selection)")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--store", required=True, help="results store directory")
    p.add_argument("--cache", default=None, help="trunk cache directory (default STORE_trunks)")
    p.set_defaults(func=_run)
