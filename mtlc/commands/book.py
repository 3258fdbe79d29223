"""``mtlc book ...``: execute the notebooks and build the book.

``mtlc book execute [--profile smoke|full] [NAMES...]`` runs ``notebooks/*.ipynb`` with
papermill into ``book/executed/``; ``mtlc book build`` runs ``jupyter-book build -W`` on the
executed copies (execution off). ``make book`` does both, with ``--profile full`` (the
stored results) unless ``PROFILE=smoke`` is given.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from mtlc.errors import MtlcError


def _execute(args: argparse.Namespace) -> int:
    from mtlc.notebooks import execute

    results = execute(args.names, profile=args.profile, output_dir=args.output_dir)
    total = sum(r.seconds for r in results)
    print(f"{len(results)} notebook(s) executed in {total:.1f} s")
    return 0


def _build(args: argparse.Namespace) -> int:
    from mtlc.report import repo_root

    root = repo_root()
    exe = Path(sys.executable).with_name("jupyter-book")
    cmd = [str(exe) if exe.exists() else (shutil.which("jupyter-book") or "jupyter-book")]
    cmd += [
        "build",
        "-W",
        "--keep-going",
        "--path-output",
        str(args.path_output or root),
        str(root),
    ]
    try:
        return subprocess.call(cmd, cwd=root)
    except FileNotFoundError:
        raise MtlcError(
            "jupyter-book is not installed: run `make venv` (installs the [dev] extras)"
        ) from None


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``mtlc book execute`` and ``mtlc book build``."""
    book = subparsers.add_parser("book", help="execute the notebooks and build the book")
    sub = book.add_subparsers(dest="book_command", metavar="ACTION")
    sub.required = True

    ex = sub.add_parser(
        "execute",
        help="run notebooks/*.ipynb with papermill into book/executed/",
        description="Execute the notebooks in name order (never in place) and report times.",
    )
    ex.add_argument("names", nargs="*", help="notebook names or number prefixes (default: all)")
    ex.add_argument(
        "--profile",
        choices=("smoke", "full"),
        default="smoke",
        help="smoke: small studies trained live (default here); full: the stored paper-scale "
        "results in results/ (what `make book` runs)",
    )
    ex.add_argument(
        "--output-dir", default=None, help="where executed copies go (default book/executed)"
    )
    ex.set_defaults(func=_execute)

    bu = sub.add_parser(
        "build",
        help="jupyter-book build -W from the executed copies (no execution)",
    )
    bu.add_argument("--path-output", default=None, help="parent of _build (default: repo top)")
    bu.set_defaults(func=_build)
