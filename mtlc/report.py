"""Record values in executed notebooks, for the book and for tests.

:func:`glue` emits exactly the output bundle of ``myst_nb.glue`` (so ``{glue:text}`` roles and
``{glue:}`` directives in the book render it), without importing myst-nb: that import costs
about 2.5 s per notebook, this module costs nothing beyond IPython, which the kernel already has.
:func:`read_glue` reads the values back from an executed ``.ipynb`` for the tests.

A glued output carries ``metadata.scrapbook = {"name": ..., "mime_prefix": ...}``. With
``display=False`` every mime key is prefixed with ``application/papermill.record/`` so that
front ends do not show it; myst-nb strips the prefix when it reads the notebook.
"""

from __future__ import annotations

import ast
import json
import math
import numbers
from pathlib import Path
from typing import Any

import nbformat

GLUE_PREFIX = "application/papermill.record/"
# JSON copy of JSON-able values lives in the output *metadata*, not in a mime type: nbformat
# only accepts strings under the prefixed (hidden) mime keys, and myst-nb warns (an error under
# ``-W``) about any mime type it cannot render.
_JSON_KEY = "mtlc_json"


def repo_root(start: str | Path | None = None) -> Path:
    """The top of the mtlc repository (the folder holding ``pyproject.toml`` and ``mtlc/``).

    Searched upwards from ``start`` (default: the current directory), then from this file, so a
    notebook finds the repository whether it runs under papermill (cwd = top), in JupyterLab
    (cwd = ``notebooks/``) or from an installed package in a checkout.
    """
    candidates = [Path(start) if start is not None else Path.cwd(), Path(__file__).resolve()]
    for base in candidates:
        for folder in [base, *base.parents]:
            if (folder / "pyproject.toml").is_file() and (folder / "mtlc").is_dir():
                return folder
    from mtlc.errors import ConfigError

    raise ConfigError(
        f"cannot find the mtlc repository above {candidates[0]}: run from inside the checkout "
        "(the folder with pyproject.toml)"
    )


def _plain(value: Any) -> Any:
    """Numpy scalars and 0-d arrays -> Python scalars, so reprs read ``244`` not ``np.int64(244)``."""
    item = getattr(value, "item", None)
    if callable(item) and getattr(value, "shape", None) == ():
        return item()
    if isinstance(value, tuple | list):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    return value


def _jsonable(value: Any) -> bool:
    if isinstance(value, float) and not math.isfinite(value):
        return False  # JSON has no NaN/inf; the repr keeps them
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _bundle(value: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The display bundle IPython would show for ``value`` (repr fallback outside a kernel)."""
    try:
        from IPython.core.formatters import format_display_data
        from IPython.core.getipython import get_ipython

        if get_ipython() is not None:
            data, meta = format_display_data(value)
            return dict(data), dict(meta)
    except ImportError:  # pragma: no cover - IPython is a dependency of ipykernel
        pass
    return {"text/plain": repr(value)}, {}


def glue(name: str, value: Any, display: bool = True) -> None:
    """Record ``value`` under ``name`` in the current notebook cell's outputs.

    Same output bundle as ``myst_nb.glue(name, value, display)``; in addition, JSON-able values
    (numbers, lists, dicts of those) carry a JSON copy in the output metadata (``mtlc_json``) so
    :func:`read_glue` returns them exactly. Numpy scalars are converted to Python scalars first.

    Parameters
    ----------
    name:
        Unique key, referenced in the book as ``{glue:text}`name``` (format specs such as
        ``name:.3f`` work for numbers).
    value:
        Any object; numbers, strings, lists and dicts round-trip exactly, DataFrames and figures
        are stored as their displayed forms (HTML / PNG), as with myst-nb.
    display:
        Also show the value in the notebook (otherwise hidden, prefixed mime types).
    """
    from IPython.display import display as ipy_display

    value = _plain(value)
    data, metadata = _bundle(value)
    prefix = "" if display else GLUE_PREFIX
    metadata["scrapbook"] = {"name": name, "mime_prefix": prefix}
    if _jsonable(value) and not isinstance(value, str):
        metadata[_JSON_KEY] = json.dumps(value, allow_nan=False)
    ipy_display({prefix + k: v for k, v in data.items()}, raw=True, metadata=metadata)


def _decode(data: dict[str, Any], meta: dict[str, Any]) -> Any:
    if isinstance(meta.get(_JSON_KEY), str):
        return json.loads(meta[_JSON_KEY])
    if "text/plain" in data:
        text = data["text/plain"]
        text = "".join(text) if isinstance(text, list) else text
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            pass
        # repr of a str is quoted and handled above; non-literal reprs (nan, inf, objects)
        if text in {"nan", "inf", "-inf"}:
            return float(text)
        return text
    return data


def read_glue(path: str | Path) -> dict[str, Any]:
    """All values glued in an executed notebook, ``{name: value}``, later cells winning.

    Values come from the JSON copy when present, else from the ``text/plain``
    repr via :func:`ast.literal_eval` (the raw text when it is not a literal; the full mime
    dict when there is no text at all, e.g. an image only).
    """
    nb = nbformat.read(str(path), as_version=4)
    out: dict[str, Any] = {}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        for output in cell.get("outputs", []):
            scrap = output.get("metadata", {}).get("scrapbook")
            if not scrap or "name" not in scrap:
                continue
            cut = len(scrap.get("mime_prefix", ""))
            data = {k[cut:]: v for k, v in output.get("data", {}).items()}
            out[scrap["name"]] = _decode(data, output.get("metadata", {}))
    return out


def is_number(value: Any) -> bool:
    """True for real numbers (not bools); used by tests on glued values."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)
