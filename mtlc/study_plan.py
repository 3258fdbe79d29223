"""The paper-scale study as data: the stages ``mtlc study`` runs, in order.

Each profile is a list of stages. A stage is a dict with

``name``
    unique, used by ``mtlc study --only NAME``;
``what``
    one line for ``mtlc study --list``;
``command``
    the ``mtlc`` sub-command and its arguments, **without** ``--store`` (``None`` when the
    stage has no command-line entry point yet: it is listed and reported, never silently
    skipped). An argument may hold ``{root}``, replaced by the output root (for paths other than the
    store, e.g. a cache directory).
``store``
    the results-store directory the stage writes, relative to the output root (the repository
    for the full profile);
``measured``
    what one run cost on this machine once known (wall seconds, peak resident memory in GB,
    models, failed jobs, date, how it was run), else ``None``;
``note``
    why a stage has no command, or how it was measured.

Every command is resumable (it skips the jobs already in its store), so ``mtlc study`` reruns
a plan from the top after an interruption and only the unfinished work is done. The smoke
profile is the same plan on tiny inputs (a few tasks, one fold, two sizes, two epochs); its
``synthetic`` stages stand in for kinase200, whose first (cold) load alone takes about 24 s.
"""

from __future__ import annotations

import copy
from typing import Any

__all__ = ["PROFILES", "plan", "stage_names"]

# The exact-curve runs of the kiba study (results/README.md): full size grid, one seed.
_CURVES = ["--folds", "10", "--sizes", "auto", "--seeds", "1"]
_CURVES += ["--min-steps", "100", "--min-val-compounds", "8"]
_KIBA_WHEN = (
    "2026-11-22/23, make study STUDY_ARGS=\"--only 'kiba-<split>-*' --out DIR\" into an empty "
    "store, both splits side by side, one process and one torch thread each; it reproduced "
    "the stored store (results/README.md)"
)


def _curve_stages(dataset: str, store: str, measured: dict[tuple[str, str], Any]) -> list[dict]:
    out = []
    for split in ("compound", "scaffold"):
        for regime in ("stl", "mtl"):
            out.append(
                {
                    "name": f"{dataset}-{split}-{regime}",
                    "what": f"{dataset} exact learning curves, {split} split, "
                    + ("single-task" if regime == "stl" else "all-task"),
                    "command": [
                        "train",
                        "--dataset",
                        dataset,
                        "--split",
                        split,
                        *_CURVES,
                        "--regime",
                        regime,
                    ],
                    "store": store,
                    "measured": measured.get((split, regime)),
                    "note": "",
                }
            )
    return out


def _m(wall_s: float, rss_gb: float, models: int, failed: int) -> dict[str, Any]:
    return {
        "wall_s": wall_s,
        "peak_rss_gb": rss_gb,
        "models": models,
        "failed": failed,
        "how": _KIBA_WHEN,
    }


_KIBA_MEASURED = {
    ("compound", "stl"): _m(22 * 60 + 44, 1.78, 21285, 91),
    ("compound", "mtl"): _m(1 * 60 + 47, 2.03, 140, 0),
    ("scaffold", "stl"): _m(25 * 60 + 12, 1.82, 21273, 86),
    ("scaffold", "mtl"): _m(1 * 60 + 47, 1.80, 140, 0),
}


_KIBA_REST_WHEN = (
    "2026-11-23, make study STUDY_ARGS=\"--only '<stages>' --out DIR\" into empty stores, the "
    "selection in one process and the other kiba stages in another, side by side, one torch "
    "thread each, on the quiet 2-core machine (results/README.md: what reproduced)"
)

_KINASE200_WHEN = (
    "2026-11-22/23, make study STUDY_ARGS=\"--only 'kinase200-<split>-*' --out DIR\" into an empty "
    "store, one process and one torch thread on the shared machine (86-90 % of a core); it "
    "reproduced the stored store (results/README.md)"
)


def _k200(wall_s: float, rss_gb: float, models: int, failed: int) -> dict[str, Any]:
    return {**_m(wall_s, rss_gb, models, failed), "how": _KINASE200_WHEN}


_KINASE200_MEASURED = {
    ("compound", "stl"): _k200(27 * 60 + 25, 2.09, 22891, 194),
    ("compound", "mtl"): _k200(23 * 60 + 38, 2.51, 190, 0),
    ("scaffold", "stl"): _k200(30 * 60 + 18, 2.19, 22883, 204),
    ("scaffold", "mtl"): _k200(21 * 60 + 39, 2.49, 187, 0),
}


def _pending(name: str, what: str, note: str) -> dict[str, Any]:
    return {
        "name": name,
        "what": what,
        "command": None,
        "store": None,
        "measured": None,
        "note": note,
    }


# TAG (mtlc tag): the study's network (TrainConfig defaults: one hidden layer of 128, dropout
# 0.2, Adam lr 1e-3, batch 256), 20 epochs (about the length of the all-task curve runs), one
# seed, whole-run means only, float32 mantissas rounded to 10 bits (results/README.md: the
# storage budget). kiba's folds have only ~14 steps per epoch, so it probes every 2 steps
# (140 probes per run); kinase200 (~290 steps per epoch) keeps TAG's every 10. kinase200: 3 of
# its 10 folds, which is what the 4 MB storage budget of the TAG stores allows.
_TAG = ["--seeds", "1", "--epochs", "20", "--epoch-rows", "none", "--mantissa-bits", "10"]
_TAG_KIBA = ["--recipe", "kiba244", "--folds", "10", "--every", "2", *_TAG]
_TAG_KINASE200 = ["--folds", "10", "--fold-subset", "0,1,2", "--every", "10", *_TAG]
_TAG_WHEN = (
    "2026-11-23, make study STUDY_ARGS=\"--only '<dataset>-tag-*' --out DIR\" into empty stores, "
    "kiba and kinase200 side by side, one torch thread each, on the quiet 2-core machine; "
    "bitwise equal to the stored stores; cpu_s = user + sys of the command (both splits)"
)


def _tag_m(wall_s: float, cpu_s: float, rss_gb: float, jobs: int) -> dict[str, Any]:
    return {
        "wall_s": wall_s,
        "cpu_s": cpu_s,
        "peak_rss_gb": rss_gb,
        "models": jobs,  # TAG runs (one network each)
        "failed": 0,
        "how": _TAG_WHEN,
    }


_TAG_MEASURED: dict[tuple[str, str], Any] = {
    ("kiba", "compound"): _tag_m(2 * 60 + 12, 253.2, 0.69, 10),
    ("kiba", "scaffold"): _tag_m(2 * 60 + 4, 253.2, 0.72, 10),
    ("kinase200", "compound"): _tag_m(2 * 60 + 42, 298.8, 1.09, 3),
    ("kinase200", "scaffold"): _tag_m(2 * 60 + 17, 298.8, 1.13, 3),
}


def _tag_stages(dataset: str, args: list[str], measured: dict) -> list[dict]:
    out = []
    for split in ("compound", "scaffold"):
        folds = "test folds 0-2 of 10" if "--fold-subset" in args else "10 folds"
        out.append(
            {
                "name": f"{dataset}-tag-{split}",
                "what": f"TAG inter-task affinities (Z and gradient cosine), {dataset}, {split} "
                f"split, {folds}, one run per test fold on its training compounds",
                "command": ["tag", "--dataset", dataset, "--split", split, *args],
                "store": f"results/tag/{dataset}_{split}",
                "measured": measured.get((dataset, split)),
                "note": "task groups: mtlc.grouping on tag_matrix(load_tag(store)) (chapter 04)",
            }
        )
    return out


# The exact top-partner pairs (results/random_design/kiba_scaffold_top_partners.csv).
_TOP_PAIRS = (
    "P00533:Q9UBE8,P00533:P49674,P00533:Q15303,P00533:P54760,P00533:Q8TDC3,P04626:P23"
    "458,P04626:P49759,P04626:Q15303,P04626:P00533,P04626:Q05397,P06239:P49759,P06239"
    ":P80192,P06239:P07948,P06239:P51451,P06239:P51617,P06241:P42684,P06241:P49759,P0"
    "6241:P17948,P06241:P00519,P06241:P21802,P17252:Q9UBE8,P17252:P23458,P17252:P0577"
    "1,P17252:Q02156,P17252:P24941,P17948:P49674,P17948:P41240,P17948:P06241,P17948:P"
    "00519,P17948:O15264,P28482:P49674,P28482:Q02779,P28482:P53778,P28482:Q96SB4,P284"
    "82:O75116,P35968:Q9UBE8,P35968:Q15418,P35968:P35916,P35968:P07949,P35968:O14757"
)


FULL: list[dict[str, Any]] = [
    *_curve_stages("kiba", "results/learning_curves", _KIBA_MEASURED),
    *_curve_stages("kinase200", "results/learning_curves_kinase200", _KINASE200_MEASURED),
    {
        "name": "foundation-kiba-scaffold",
        "what": "foundation-model context effects, kiba, 20 largest targets, scaffold folds 0-4",
        # The arguments of the stored run (results/README.md); it ran one process per fold.
        "command": [
            "foundation",
            *["--dataset", "kiba", "--split", "scaffold", "--folds", "10"],
            *["--fold-subset", "0,1,2,3,4", "--targets", "20", "--contexts", "auto"],
            *["--hidden", "128", "--epochs", "15", "--patience", "4", "--batch-size", "256"],
            *["--pretrain-epochs", "60", "--min-steps", "100", "--size-ratio", "2"],
            *["--cache", "{root}/results/foundation_trunks"],
        ],
        "store": "results/foundation/kiba_scaffold",
        "measured": {
            "wall_s": 32 * 60 + 20,
            "peak_rss_gb": 1.65,
            "models": 9600,
            "failed": 0,
            "how": _KIBA_REST_WHEN,
        },
        "note": "",
    },
    {
        "name": "kiba-selection",
        "what": "task selection: top-5 partners by TAG / gradient cosine / pairwise MTLC "
        "coefficients vs random vs all, kiba, scaffold folds 0-4",
        "command": [
            "foundation",
            "--selection",
            *["--dataset", "kiba", "--split", "scaffold", "--folds", "10"],
            *["--fold-subset", "0,1,2,3,4", "--targets", "20", "--k", "5", "--n-random", "2"],
            *["--tag-epochs", "10", "--hidden", "128", "--epochs", "15", "--patience", "4"],
            *["--batch-size", "256", "--min-steps", "100", "--min-val-compounds", "8"],
            *["--size-ratio", "2", "--estimators", "tag,cosine,mtlc", "--mtlc-runs", "160"],
            *["--mtlc-inner-folds", "5", "--mtlc-candidates", "20"],
        ],
        "store": "results/foundation/selection_kiba_scaffold",
        "measured": {
            "wall_s": 50 * 60 + 33,
            "peak_rss_gb": 4.92,
            "models": 5600,
            "failed": 0,
            "how": _KIBA_REST_WHEN,
        },
        "note": "",
    },
    {
        "name": "kiba-random-design",
        "what": "random-design all-task networks (every task at a random grid size), kiba "
        "scaffold, test folds 0-2, 100 networks each",
        "command": [
            "train",
            *["--dataset", "kiba", "--split", "scaffold", "--folds", "10"],
            *["--fold-subset", "0,1,2", "--regime", "random", "--n-runs", "100"],
            *["--sizes", "auto", "--seeds", "1", "--min-steps", "100", "--min-val-compounds", "8"],
        ],
        "store": "results/random_design/kiba_scaffold",
        "measured": {
            "wall_s": 3 * 60 + 52,
            "peak_rss_gb": 2.59,
            "models": 300,
            "failed": 0,
            "how": _KIBA_REST_WHEN,
        },
        "note": "",
    },
    {
        "name": "kiba-random-design-fit",
        "what": "a_ij of every directed kiba pair from the random design (one partner at a time, "
        "c = 1, 200 bootstrap replicates) into <store>_pairwise.parquet",
        # --store is the runs store; the table goes to results/random_design/
        # kiba_scaffold_pairwise.parquet
        "command": [
            "pairwise",
            "fit",
            *["--model", "marginal", "--c-fixed", "1", "--ridge", "0", "--n-boot", "200"],
            "--compact",
        ],
        "store": "results/random_design/kiba_scaffold",
        "measured": {
            "wall_s": 9.5,
            "peak_rss_gb": 2.66,
            "models": 0,
            "failed": 0,
            "how": _KIBA_REST_WHEN,
        },
        "note": "",
    },
    {
        "name": "kiba-top-partners",
        "what": "8 kiba targets x (top-2 partners by a_ij, top-2 by TAG, 1 random), exact pair "
        "curves, scaffold test fold 0",
        # The pairs are results/random_design/kiba_scaffold_top_partners.csv, made by
        # results/random_design/top_partner_pairs.py (its rule is in that script).
        "command": [
            "train",
            *["--dataset", "kiba", "--split", "scaffold", "--folds", "10", "--fold-subset", "0"],
            *["--regime", "pair", "--pairs", _TOP_PAIRS, "--partner-sizes", "full"],
            *["--sizes", "auto", "--seeds", "1", "--min-steps", "100", "--min-val-compounds", "8"],
        ],
        "store": "results/random_design/kiba_scaffold_top_partners",
        "measured": {
            "wall_s": 60 + 10,
            "peak_rss_gb": 2.01,
            "models": 550,
            "failed": 0,
            "how": _KIBA_REST_WHEN,
        },
        "note": "",
    },
    *_tag_stages("kiba", _TAG_KIBA, _TAG_MEASURED),
    *_tag_stages("kinase200", _TAG_KINASE200, _TAG_MEASURED),
]

# The same plan on tiny inputs, for tests and a quick check that every stage still runs.
_TINY = ["--folds", "3", "--fold-subset", "0", "--sizes", "16,32", "--seeds", "1"]
_TINY += ["--max-epochs", "2", "--hidden", "16", "--min-steps", "4", "--min-val-compounds", "8"]
_TINY += ["--no-progress"]
_SYN = ["--dataset-arg", "n_compounds=240", "--dataset-arg", "n_tasks=4"]


def _tiny(dataset: str, store: str, extra: list[str], splits: tuple[str, ...]) -> list[dict]:
    out = []
    for split in splits:
        for regime in ("stl", "mtl"):
            out.append(
                {
                    "name": f"{dataset}-{split}-{regime}",
                    "what": f"tiny {dataset} curves, {split} split, {regime}",
                    "command": [
                        "train",
                        "--dataset",
                        dataset,
                        *extra,
                        "--split",
                        split,
                        *_TINY,
                        "--regime",
                        regime,
                    ],
                    "store": store,
                    "measured": None,
                    "note": "",
                }
            )
    return out


SMOKE: list[dict[str, Any]] = [
    *_tiny("kiba", "learning_curves", ["--tasks", "3"], ("compound", "scaffold")),
    # synthetic stands in for kinase200 (no SMILES, so no scaffold split).
    *_tiny("synthetic", "learning_curves_synthetic", _SYN, ("compound",)),
    {
        "name": "foundation-kiba-scaffold",
        "what": "tiny foundation run: 1 target, scratch and all contexts, probe and fine-tune",
        "command": [
            "foundation",
            "--dataset",
            "kiba",
            "--split",
            "scaffold",
            "--targets",
            "1",
            "--contexts",
            "scratch,all",
            "--modes",
            "probe,finetune",
            "--folds",
            "3",
            "--fold-subset",
            "0",
            "--sizes",
            "16,32",
            "--hidden",
            "16",
            "--epochs",
            "2",
        ],
        "store": "foundation",
        "measured": None,
        "note": "",
    },
    *[
        {
            "name": "kiba-tag" if split == "compound" else f"kiba-tag-{split}",
            "what": f"tiny TAG run: 3 kiba tasks, {split} split, one fold, 2 epochs",
            "command": [
                "tag",
                *["--dataset", "kiba", "--tasks", "3", "--split", split, "--folds", "3"],
                *["--fold-subset", "0", "--epochs", "2", "--every", "2", "--hidden", "16"],
                "--no-progress",
            ],
            "store": f"tag/kiba_{split}",
            "measured": None,
            "note": "",
        }
        for split in ("compound", "scaffold")
    ],
]

PROFILES: dict[str, list[dict[str, Any]]] = {"full": FULL, "smoke": SMOKE}


def plan(profile: str = "full") -> list[dict[str, Any]]:
    """A copy of the stages of ``profile`` (``"full"`` or ``"smoke"``), in run order."""
    from mtlc.errors import ConfigError

    if profile not in PROFILES:
        raise ConfigError(f"unknown study profile {profile!r}; known: {', '.join(PROFILES)}")
    return copy.deepcopy(PROFILES[profile])


def stage_names(profile: str = "full") -> list[str]:
    """Stage names of ``profile``, in run order."""
    return [s["name"] for s in plan(profile)]
