"""Execute the book's notebooks with papermill into ``book/executed/``.

Sources live in ``notebooks/NN_name.ipynb`` without outputs; each has a cell tagged
``parameters`` with at least ``profile = "smoke"``. Execution never happens in place (papermill
would leak the injected parameters into the sources): the executed copies go to
``book/executed/`` and the book is built from them, so readers see exactly the outputs that
the tests checked. The working directory of every kernel is the repository top, so relative
paths behave the same under ``make``, in CI and in JupyterLab (where notebooks locate the top
with :func:`mtlc.report.repo_root`).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mtlc.errors import ConfigError, MtlcError
from mtlc.report import repo_root

PROFILES = ("smoke", "full")
# ``python3`` resolves to the interpreter running papermill (jupyter_client swaps a bare
# "python" argv for sys.executable), i.e. the venv's python, also on a fresh CI clone where
# the ``mtlc`` kernel has not been registered.
DEFAULT_KERNEL = "python3"


# Tags that already decide how a cell's code shows in the book; such cells are left alone.
_INPUT_TAGS = {"hide-input", "remove-input", "remove-cell", "hide-cell", "show-input"}


def hide_code(path: str | Path) -> int:
    """Tag every code cell of an executed notebook ``hide-input`` (collapsed in the book).

    The book reads as prose, figures and tables, with each cell's code one click away. Cells
    already tagged ``show-input`` (keep visible) or with another input tag are left as they are.
    Returns the number of cells tagged.
    """
    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    n = 0
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        tags = cell.setdefault("metadata", {}).setdefault("tags", [])
        if not _INPUT_TAGS & set(tags):
            tags.append("hide-input")
            n += 1
    nbformat.write(nb, str(path))
    return n


def declared_parameters(path: str | Path) -> set[str]:
    """Names assigned at the top level of a notebook's cell tagged ``parameters``."""
    import ast

    import nbformat

    nb = nbformat.read(str(path), as_version=4)
    names: set[str] = set()
    for cell in nb.cells:
        if cell.cell_type == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            for node in ast.parse(cell.source).body:
                if isinstance(node, ast.Assign):
                    names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
                elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                    names.add(node.target.id)
    return names


class NotebookExecutionError(MtlcError):
    """A notebook cell raised; the message names the notebook, the cell and the error."""


@dataclass(frozen=True)
class ExecutionResult:
    """One executed notebook: source, executed copy and wall time in seconds."""

    name: str
    source: Path
    output: Path
    seconds: float


def discover(names: Sequence[str] = (), *, notebooks_dir: str | Path | None = None) -> list[Path]:
    """Notebook sources to run, in name order.

    ``names`` selects by stem, prefix or number (``"01_data"``, ``"01"``, ``"01_data.ipynb"``);
    empty means all ``notebooks/*.ipynb``. An unknown name is a :class:`ConfigError` listing
    the available ones.
    """
    folder = Path(notebooks_dir) if notebooks_dir is not None else repo_root() / "notebooks"
    available = sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith("."))
    if not names:
        return available
    chosen: list[Path] = []
    for raw in names:
        key = Path(raw).name.removesuffix(".ipynb")
        hits = [p for p in available if p.stem == key] or [
            p for p in available if p.stem.startswith(key)
        ]
        if len(hits) != 1:
            have = ", ".join(p.stem for p in available) or "none"
            what = "matches several" if hits else "matches no"
            raise ConfigError(f"notebook {raw!r} {what} notebook in {folder} (available: {have})")
        if hits[0] not in chosen:
            chosen.append(hits[0])
    return sorted(chosen)


def _failure_message(source: Path, output: Path, exc: Exception) -> str:
    """Name the failing cell as the author sees it: 1-based position in the source notebook
    (papermill's injected-parameters cell discounted) and its first line."""
    index = getattr(exc, "cell_index", None)
    ename = getattr(exc, "ename", type(exc).__name__)
    evalue = getattr(exc, "evalue", str(exc))
    where = "a cell"
    if index is not None:
        position, first = index + 1, ""
        try:
            import nbformat

            # papermill adds error-marker cells to the written copy after the failure
            cells = [
                c
                for c in nbformat.read(str(output), as_version=4).cells
                if "papermill-error-cell-tag" not in c.get("metadata", {}).get("tags", [])
            ]
            injected = sum(
                "injected-parameters" in c.get("metadata", {}).get("tags", [])
                for c in cells[:index]
            )
            position -= injected
            first = cells[index].source.strip().splitlines()[0][:80] if cells[index].source else ""
        except (OSError, ValueError, IndexError):  # the copy is unreadable: keep papermill's index
            pass
        where = f"cell {position} (counting markdown cells, from 1"
        where += f"; it starts `{first}`)" if first else ")"
        # ipykernel tracebacks name the line inside the cell: "Cell In[6], line 12"
        tb = re.sub(r"\x1b\[[0-9;]*m", "", "\n".join(getattr(exc, "traceback", None) or []))
        lines = re.findall(r"Cell In\[\d+\], line (\d+)", tb)
        if lines:
            where += f", line {lines[0]}"
    return (
        f"notebook {source.name} failed in {where}: {ename}: {evalue}\n"
        f"  the partly executed copy with the full traceback is {output}"
    )


def execute(
    names: Sequence[str] = (),
    *,
    profile: str = "smoke",
    parameters: Mapping[str, Any] | None = None,
    notebooks_dir: str | Path | None = None,
    output_dir: str | Path | None = None,
    cwd: str | Path | None = None,
    kernel_name: str = DEFAULT_KERNEL,
    collapse_code: bool = True,
    log: Callable[[str], None] | None = print,
) -> list[ExecutionResult]:
    """Execute notebooks in name order into ``output_dir`` (default ``book/executed/``).

    Parameters
    ----------
    names:
        Notebooks to run (see :func:`discover`); empty = all.
    profile:
        ``"smoke"`` (minutes, for tests and CI) or ``"full"`` (the paper-scale run).
    parameters:
        Extra papermill parameters, applied to every notebook after ``profile``.
    cwd:
        Kernel working directory; default the repository top.
    collapse_code:
        Tag the executed copies' code cells ``hide-input`` (see :func:`hide_code`).
    log:
        Called with one progress line per notebook (``None`` for silence).

    Returns
    -------
    One :class:`ExecutionResult` per notebook, with its wall time in seconds.

    Raises
    ------
    NotebookExecutionError
        On the first failing cell, naming notebook and cell; the executed copy (with the
        traceback in the failed cell) is still written.
    """
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}: use one of {', '.join(PROFILES)}")
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    root = repo_root()
    sources = discover(names, notebooks_dir=notebooks_dir)
    if not sources:
        raise ConfigError(f"no notebooks found in {notebooks_dir or root / 'notebooks'}")
    out_dir = Path(output_dir) if output_dir is not None else root / "book" / "executed"
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"profile": profile, **dict(parameters or {})}
    results: list[ExecutionResult] = []
    for source in sources:
        output = out_dir / source.name
        if output.resolve() == source.resolve():
            raise ConfigError(f"refusing to execute {source} in place: choose another output_dir")
        start = time.perf_counter()
        # A notebook that reads the other executed chapters (the findings page) declares
        # ``executed_dir`` in its parameters cell; it gets this run's output folder, so a
        # run into another folder (e.g. the smoke copies of the tests) stays self-consistent.
        nb_params = dict(params)
        if "executed_dir" not in nb_params and "executed_dir" in declared_parameters(source):
            nb_params["executed_dir"] = str(out_dir.resolve())
        try:
            pm.execute_notebook(
                str(source),
                str(output),
                parameters=nb_params,
                kernel_name=kernel_name,
                language="python",  # notebooks written by scripts may lack language metadata
                cwd=str(cwd if cwd is not None else root),
                progress_bar=False,
                log_output=False,
            )
        except PapermillExecutionError as exc:
            raise NotebookExecutionError(_failure_message(source, output, exc)) from None
        except Exception as exc:  # dead kernel, timeout, unreadable notebook: still name it
            raise NotebookExecutionError(
                f"notebook {source.name} could not be executed: {type(exc).__name__}: {exc}"
            ) from exc
        if collapse_code:
            hide_code(output)
        seconds = time.perf_counter() - start
        results.append(ExecutionResult(source.stem, source, output, seconds))
        if log is not None:
            log(f"executed {source.name} ({profile}) in {seconds:.1f} s -> {output}")
    return results
