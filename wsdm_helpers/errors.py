"""Exception types. Every message names the bad value, where it is, and how to fix it."""
from __future__ import annotations

from collections.abc import Iterable


class WsdmError(Exception):
    """Base class for errors this package raises on purpose (the CLI prints them without a traceback)."""


class ConfigError(WsdmError, ValueError):
    """A configuration value or key is wrong."""


class DataError(WsdmError, ValueError):
    """An input file is malformed: the message names the file, column, first offending ids and the fix."""


class SubmissionError(WsdmError, ValueError):
    """A submission or prediction file does not match the test ids or has invalid values."""


class BundleError(WsdmError, ValueError):
    """A Kaggle bundle fails a pre-upload check."""


class NumericalError(WsdmError, ArithmeticError):
    """A computation produced NaN or inf (overflow in the model's dtype, divergence)."""


class MissingResourceError(WsdmError, FileNotFoundError):
    """Something the run needs is not on this machine: a package, a folder, a file."""


class OutputError(WsdmError, OSError):
    """An output path cannot be written, has too little free space, or holds files this package did not write."""


def closest(value: object, choices: Iterable[object]) -> str | None:
    """The choice most like ``value`` (for a "did you mean" hint), or None when none is close."""
    import difflib

    match = difflib.get_close_matches(str(value), [str(c) for c in choices], n=1)
    return match[0] if match else None
