"""Logging for the CLI (INFO to stderr, ``-q`` / ``-v``) and filters for known-harmless third-party noise.

The package logs under ``wsdm_helpers.*``; :func:`setup_logging` shows those records at the chosen
level and everything else at WARNING. :func:`silence_known_noise` runs on ``import wsdm_helpers``, so
notebooks get it too.
"""
from __future__ import annotations

import logging
import sys

# (logger, message start) of warnings that say nothing actionable on the machines this package runs on.
KNOWN_NOISE = (
    # bitsandbytes on CPUs with AVX512-BF16 tries to fetch an optional kernel from the hub on import; 4-bit
    # is only used on CUDA here, so the fallback it reports is never on our path.
    ("bitsandbytes.backends.cpu.ops", "Failed to load CPU gemm_4bit_forward"),
)
LEVELS = {-1: logging.WARNING, 0: logging.INFO, 1: logging.DEBUG}


class _DropPrefix(logging.Filter):
    def __init__(self, prefix: str):
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def silence_known_noise() -> None:
    """Attach a filter to each noisy logger (once; the logger need not exist yet)."""
    for name, prefix in KNOWN_NOISE:
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DropPrefix) and f.prefix == prefix for f in logger.filters):
            logger.addFilter(_DropPrefix(prefix))


def setup_logging(verbosity: int = 0) -> None:
    """stderr handler: wsdm_helpers records at INFO (``verbosity`` -1: WARNING, 1: DEBUG), others at WARNING."""
    level = LEVELS[max(-1, min(1, verbosity))]
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not getattr(h, "_wsdm", False)]
    handler._wsdm = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # records of wsdm_helpers.* still reach the handler: propagation skips levels
    logging.getLogger("wsdm_helpers").setLevel(level)
    silence_known_noise()
