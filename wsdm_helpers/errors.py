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
