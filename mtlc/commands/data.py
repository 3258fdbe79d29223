"""``mtlc data ...``: inspect data sets and write fold assignments."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from mtlc.errors import ConfigError

_DATASETS = ("kiba", "kinase200", "davis", "synthetic")


def _add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", required=True, help=f"one of: {', '.join(_DATASETS)}")
    p.add_argument("--recipe", default=None, help="KIBA task recipe (kiba244 or all)")
    p.add_argument(
        "--smiles", default=None, help="KIBA: CSV chembl_id,smiles with extra structures"
    )
    p.add_argument(
        "--threshold", type=float, default=None, help="activity threshold (dataset units)"
    )
    p.add_argument("--table", default=None, help="with --dataset table: your CSV/Parquet file")


def _load(args: argparse.Namespace, *, features: bool) -> Any:
    from mtlc import datasets

    kw: dict[str, Any] = {}
    if args.dataset == "table":
        if not args.table:
            raise ConfigError("--dataset table needs --table FILE (CSV or Parquet)")
        return datasets.from_table(args.table, features=features)
    if args.recipe is not None:
        if args.dataset != "kiba":
            raise ConfigError(f"--recipe applies to kiba only, not {args.dataset!r}")
        kw["recipe"] = args.recipe
    if args.smiles is not None:
        if args.dataset != "kiba":
            raise ConfigError(f"--smiles applies to kiba only, not {args.dataset!r}")
        if not Path(args.smiles).is_file():
            raise ConfigError(f"--smiles file {args.smiles} does not exist")
        kw["smiles"] = args.smiles
    if args.threshold is not None:
        kw["threshold"] = args.threshold
    if args.dataset != "synthetic":
        kw["features"] = features
    return datasets.load(args.dataset, **kw)


def _summary(args: argparse.Namespace) -> int:
    from mtlc.datasets import summary

    ds = _load(args, features=not args.no_features)
    s = summary(ds)
    if args.json:
        print(json.dumps(s, indent=1))
        return 0
    print(f"{ds!r}")
    print(
        f"per task measured: {s['per_task_measured']}; actives: {s['per_task_active']}",
    )
    counts = s.get("counts", {})
    if "full_matrix" in counts:
        c = counts["full_matrix"]
        print(
            f"full matrix (recipe {s.get('recipe')}): {c['tasks']} tasks, {c['pairs']:,} pairs, "
            f"{c['compounds']:,} compounds"
        )
    if "structure_available" in counts:
        c = counts["structure_available"]
        print(
            f"with offline structures, before merging duplicates: {c['tasks']} tasks, "
            f"{c['pairs']:,} pairs, {c['compounds']:,} compounds"
        )
    f = s.get("featurize")
    if f:
        print(
            f"featurize: {f['excluded_compounds']} compounds excluded ({f['excluded_pairs']} pairs); "
            f"merging duplicate structures removed {f['merged_compounds']} compounds and "
            f"{f['merged_pairs_removed']} pairs ({f['merged_pairs_conflicting']} with conflicting "
            "labels)"
        )
    ex = s.get("excluded_tasks", {})
    if ex.get("count"):
        print(f"excluded tasks (single class): {ex['count']}: {', '.join(ex['task_ids'][:10])}")
    return 0


def _folds(args: argparse.Namespace) -> int:
    import pandas as pd

    from mtlc.splits import kfold

    ds = _load(args, features=args.dataset != "synthetic")
    folds = kfold(ds, n_folds=args.folds, split=args.split, seed=args.seed)
    out = pd.DataFrame(
        {
            "compound_id": ds.compounds["compound_id"].to_numpy(),
            "smiles": ds.compounds["smiles"].to_numpy(),
            "fold": folds,
        }
    )
    if args.out in (None, "-"):
        out.to_csv(sys.stdout, index=False)
    else:
        path = Path(args.out)
        path.parent.mkdir(parents=True, exist_ok=True)
        out.to_csv(path, index=False)
        sizes = out["fold"].value_counts().sort_index().tolist()
        print(f"wrote {len(out)} compounds in {args.folds} folds to {path} (sizes {sizes})")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("data", help="inspect data sets, write folds")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    sub.required = True

    s = sub.add_parser("summary", help="counts, exclusions and merges of a data set")
    _add_dataset_args(s)
    s.add_argument("--json", action="store_true", help="print JSON")
    s.add_argument(
        "--no-features", action="store_true", help="skip featurization (no merge counts)"
    )
    s.set_defaults(func=_summary)

    f = sub.add_parser("folds", help="write compound_id, smiles, fold as CSV")
    _add_dataset_args(f)
    f.add_argument("--split", choices=("compound", "scaffold"), default="compound")
    f.add_argument("--folds", type=int, default=10)
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--out", default=None, help="output CSV (default: stdout)")
    f.set_defaults(func=_folds)
