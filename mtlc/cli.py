"""The ``mtlc`` command line.

Each area of the library registers its own sub-commands (``mtlc data ...``, ``mtlc train ...``)
through a ``register(subparsers)`` function, so that adding a command never means editing a
central table. Errors that are the user's to fix (:class:`mtlc.errors.MtlcError`) are printed
as one clear message, without a traceback, and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from mtlc import __version__
from mtlc.errors import MtlcError

# Modules that contribute sub-commands; each defines ``register(subparsers)``.
_COMMAND_MODULES = (
    "mtlc.commands.data",
    "mtlc.commands.train",
    "mtlc.commands.book",
    "mtlc.commands.foundation",
    "mtlc.commands.study",
    "mtlc.commands.tag",
    "mtlc.commands.pairwise",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mtlc",
        description="Multi-task learning curves: measure how much one task helps another.",
    )
    parser.add_argument("--version", action="version", version=f"mtlc {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in _COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a command area not built yet
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except MtlcError as exc:
        print(f"mtlc: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("mtlc: interrupted; finished work is kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
