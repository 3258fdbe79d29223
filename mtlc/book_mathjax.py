"""Sphinx extension: serve MathJax with the book instead of loading it from a CDN.

The built HTML must typeset its equations offline. MathJax 2.7 ships inside the PyPI package
``jupyter-server-mathjax`` (pinned in the ``dev`` extra); at the end of an HTML build this
extension copies it into the build's ``_static/mathjax/``. ``_config.yml`` lists the extension
(``sphinx: extra_extensions``) and points Sphinx's ``mathjax_path`` at
``mathjax/MathJax.js?config=TeX-AMS-MML_HTMLorMML-full`` (relative to ``_static``), so no page
loads anything from the network.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

#: The configuration file MathJax loads (part of the package's MathJax copy).
MATHJAX_CONFIG = "TeX-AMS-MML_HTMLorMML-full"
#: Where the copy goes, relative to the HTML output folder.
TARGET = Path("_static") / "mathjax"


def mathjax_source() -> Path:
    """Folder holding ``MathJax.js`` in the installed ``jupyter-server-mathjax`` package."""
    try:
        import jupyter_server_mathjax
    except ImportError:
        from mtlc.errors import ConfigError

        raise ConfigError(
            "the book serves MathJax from the package jupyter-server-mathjax, which is not "
            'installed: run `make venv` (pip install -e ".[dev]")'
        ) from None
    src = Path(jupyter_server_mathjax.__file__).parent / "static"
    if not (src / "MathJax.js").exists():
        from mtlc.errors import ConfigError

        raise ConfigError(f"{src} has no MathJax.js: reinstall jupyter-server-mathjax")
    return src


def copy_mathjax(outdir: str | Path) -> Path:
    """Copy MathJax into ``outdir/_static/mathjax`` (skipped when already there); return it."""
    src = mathjax_source()
    dst = Path(outdir) / TARGET
    stamp = dst / ".copied-from"
    if stamp.exists() and stamp.read_text() == str(src) and (dst / "MathJax.js").exists():
        return dst
    shutil.copytree(src, dst, dirs_exist_ok=True)
    stamp.write_text(str(src))
    return dst


def _build_finished(app: Any, exception: Exception | None) -> None:
    if exception is None and app.builder.format == "html":
        copy_mathjax(app.outdir)


def setup(app: Any) -> dict[str, Any]:
    """Register the copy step (Sphinx entry point)."""
    mathjax_source()  # fail at the start of the build, not after it
    app.connect("build-finished", _build_finished)
    return {"version": "1", "parallel_read_safe": True, "parallel_write_safe": True}
