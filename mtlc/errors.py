"""Errors that are the user's to fix.

Every exception raised for bad input is an :class:`MtlcError` (or a subclass) whose message names
the input at fault and says how to fix it. The CLI prints these without a traceback.
"""

from __future__ import annotations


class MtlcError(Exception):
    """Bad input or a missing resource; the message names the input and the fix."""


class DataFileError(MtlcError):
    """A data file is missing or its checksum does not match."""


class InputTableError(MtlcError, ValueError):
    """A user-supplied table lacks columns or holds unusable values."""


class ConfigError(MtlcError, ValueError):
    """An unknown name (dataset, recipe, regime) or an impossible option."""
