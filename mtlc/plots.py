"""One figure style for the whole book, and the figures of the data chapter.

Every notebook calls :func:`use_style` once; every plotting function takes an optional ``ax``
and returns it, so figures compose. Colours are fixed per meaning (:data:`COLORS`), so the
compound split is the same blue in every chapter.
"""

from __future__ import annotations

from collections.abc import Mapping

import matplotlib as mpl
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.axes import Axes

# Colour-blind-safe (Okabe-Ito) colours, one per meaning, used by every chapter.
COLORS: dict[str, str] = {
    "compound": "#0072B2",
    "scaffold": "#D55E00",
    "active": "#009E73",
    "inactive": "#999999",
    "full_matrix": "#56B4E9",
    "structure_available": "#E69F00",
    "single": "#CC79A7",
    "all": "#0072B2",
    "pairwise": "#009E73",
    "tag": "#F0E442",
    "neutral": "#333333",
}

STYLE: dict[str, object] = {
    "figure.figsize": (6.4, 3.6),
    "figure.dpi": 100,
    "savefig.dpi": 100,
    "savefig.bbox": "tight",
    "figure.constrained_layout.use": True,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.grid": True,
    "grid.alpha": 0.3,
    "grid.linewidth": 0.6,
    "axes.titlesize": 11,
    "axes.titleweight": "bold",
    "axes.labelsize": 10,
    "xtick.labelsize": 9,
    "ytick.labelsize": 9,
    "legend.fontsize": 9,
    "legend.frameon": False,
    "font.family": "DejaVu Sans",  # bundled with matplotlib: no font lookups, same on every machine
    "axes.prop_cycle": mpl.cycler(
        color=["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442"]
    ),
    "image.cmap": "viridis",
}


def use_style() -> None:
    """Apply the book's matplotlib style (idempotent; call once at the top of a notebook)."""
    mpl.rcParams.update(STYLE)


def _ax(ax: Axes | None, figsize: tuple[float, float] | None = None) -> Axes:
    if ax is not None:
        return ax
    _, new = plt.subplots(figsize=figsize)
    return new


def count_comparison(counts: Mapping[str, Mapping[str, int]], *, ax: Axes | None = None) -> Axes:
    """Grouped bars of tasks / pairs / compounds for each count set, on a log axis.

    ``counts`` maps a set name (e.g. ``"full_matrix"``, ``"structure_available"``) to a dict with
    ``tasks``, ``pairs`` and ``compounds``. Bars are labelled with their exact values.
    """
    ax = _ax(ax)
    keys = ["tasks", "compounds", "pairs"]
    names = list(counts)
    width = 0.8 / max(len(names), 1)
    x = np.arange(len(keys))
    for k, name in enumerate(names):
        vals = [counts[name][key] for key in keys]
        bars = ax.bar(
            x + (k - (len(names) - 1) / 2) * width,
            vals,
            width,
            label=name.replace("_", " "),
            color=COLORS.get(name),
        )
        ax.bar_label(bars, labels=[f"{v:,}" for v in vals], fontsize=8, padding=2)
    ax.set_xticks(x, keys)
    ax.set_yscale("log")
    ax.set_ylabel("count (log scale)")
    ax.legend(loc="upper left")
    return ax


def task_sizes(tasks: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Histogram (log-spaced bins) of labelled compounds per task: measured and active.

    ``tasks`` is ``ds.tasks`` (columns ``n_measured``, ``n_active``).
    """
    ax = _ax(ax)
    hi = max(int(tasks["n_measured"].max()), 2)
    lo = max(min(int(tasks["n_active"].min()), int(tasks["n_measured"].min())), 1)
    bins = np.geomspace(lo, hi * 1.01, 30)
    ax.hist(tasks["n_measured"], bins=bins, color=COLORS["neutral"], alpha=0.6, label="measured")
    ax.hist(tasks["n_active"], bins=bins, color=COLORS["active"], alpha=0.7, label="active")
    ax.axvline(float(np.median(tasks["n_measured"])), color=COLORS["neutral"], ls="--", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel("labelled compounds per task (log scale)")
    ax.set_ylabel("tasks")
    ax.legend()
    return ax


def class_balance(tasks: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Histogram of the active fraction per task, with the pooled fraction marked."""
    ax = _ax(ax)
    frac = tasks["n_active"] / tasks["n_measured"]
    ax.hist(frac, bins=np.linspace(0, 1, 41), color=COLORS["active"], alpha=0.8)
    pooled = tasks["n_active"].sum() / tasks["n_measured"].sum()
    ax.axvline(pooled, color=COLORS["neutral"], ls="--", lw=1, label=f"pooled {pooled:.1%}")
    ax.set_xlabel("fraction of labelled compounds that are active")
    ax.set_ylabel("tasks")
    ax.legend()
    return ax


def fold_summary(
    rows: np.ndarray, y: np.ndarray, folds: np.ndarray, *, n_folds: int | None = None
) -> pd.DataFrame:
    """Per-fold counts: compounds, labelled pairs, active pairs and the active fraction.

    Parameters
    ----------
    rows, y:
        ``ds.rows`` (compound index per pair) and ``ds.y`` (0/1 per pair), shape ``(n_pairs,)``.
    folds:
        Fold id per compound, shape ``(n_compounds,)``, values ``0..n_folds-1``.

    Returns
    -------
    DataFrame indexed by fold with ``compounds``, ``pairs``, ``actives``, ``active_fraction``.
    """
    folds = np.asarray(folds)
    k = int(n_folds if n_folds is not None else folds.max() + 1)
    pair_fold = folds[np.asarray(rows)]
    out = pd.DataFrame(
        {
            "compounds": np.bincount(folds, minlength=k),
            "pairs": np.bincount(pair_fold, minlength=k),
            "actives": np.bincount(pair_fold, weights=np.asarray(y, float), minlength=k).astype(
                int
            ),
        }
    )
    out["active_fraction"] = out["actives"] / out["pairs"].where(out["pairs"] > 0)
    out.index.name = "fold"
    return out


def fold_balance(
    tables: Mapping[str, pd.DataFrame], *, axes: np.ndarray | None = None
) -> np.ndarray:
    """Per-fold compounds, labelled pairs and active fraction, one bar group per split.

    ``tables`` maps a split name (``"compound"``, ``"scaffold"``) to :func:`fold_summary` output.
    Returns the three axes.
    """
    if axes is None:
        _, axes = plt.subplots(1, 3, figsize=(11, 3.2))
    names = list(tables)
    width = 0.8 / max(len(names), 1)
    for ax, col, label in zip(
        axes,
        ["compounds", "pairs", "active_fraction"],
        ["compounds per fold", "labelled pairs per fold", "active fraction per fold"],
        strict=True,
    ):
        for k, name in enumerate(names):
            t = tables[name]
            ax.bar(
                t.index + (k - (len(names) - 1) / 2) * width,
                t[col],
                width,
                label=name,
                color=COLORS.get(name),
            )
        ax.set_title(label)
        ax.set_xlabel("fold")
        ax.set_xticks(tables[names[0]].index)
    # one legend above the panels: inside any panel it would cover the bars
    handles, labels = axes[0].get_legend_handles_labels()
    axes[0].figure.legend(
        handles, [f"{n} split" for n in labels], loc="outside upper center", ncols=len(names)
    )
    return axes


def group_sizes(sizes: np.ndarray, *, ax: Axes | None = None, what: str = "scaffold") -> Axes:
    """Log-log distribution of group sizes (compounds per scaffold): how many groups of each size."""
    ax = _ax(ax)
    sizes = np.asarray(sizes)
    values, counts = np.unique(sizes, return_counts=True)
    ax.scatter(values, counts, s=14, color=COLORS["scaffold"])
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(f"compounds per {what} (log scale)")
    ax.set_ylabel(f"number of {what}s (log scale)")
    return ax
