"""Exception types. Every message names the bad value, where it is, and how to fix it."""


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
