"""Process-wide settings in one place: how progress bars draw and how CPU threads wait.

* Progress: inside a Jupyter kernel ``tqdm.auto`` and the HF Trainer draw widget / HTML bars. Under
  papermill those reach the log only as ``HBox(...)`` placeholders, so the notebook runner starts its
  kernels with ``WSDM_PROGRESS=plain`` and the package then draws text bars (``tqdm.std``) itself, gives
  the Trainer a text progress callback and switches off transformers' own loading bars through its
  documented ``disable_progress_bar()``. No other library's module attributes are patched.
* Threads: sleeping (not spinning) OpenMP workers. On a shared CPU spinning workers made training steps
  several times slower; the variable only takes effect when set before torch loads.
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

PROGRESS_ENV = "WSDM_PROGRESS"


def plain_progress() -> bool:
    """True when progress must be plain text (a kernel started by the notebook runner)."""
    return os.environ.get(PROGRESS_ENV) == "plain"


def progress_bar(**kwargs: Any):
    """A tqdm bar: text under the notebook runner, else ``tqdm.auto`` (a widget in Jupyter, text elsewhere)."""
    if plain_progress():
        from tqdm.std import tqdm
    else:
        from tqdm.auto import tqdm
    return tqdm(**kwargs)


def sleeping_threads() -> None:
    """Ask OpenMP for sleeping workers unless the caller chose otherwise (before torch loads)."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def kernel_environment() -> dict[str, str]:
    """What a kernel started by the notebook runner inherits: text progress (a line every 5 s at most)
    and sleeping OpenMP threads."""
    return {PROGRESS_ENV: "plain", "TQDM_MININTERVAL": os.environ.get("TQDM_MININTERVAL", "5"),
            "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}


def plain_library_progress() -> None:
    """Under plain progress, switch off transformers' loading bars (they would be widgets)."""
    if plain_progress():
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


@contextlib.contextmanager
def environ(env: dict[str, str]) -> Iterator[None]:
    """``env`` set in os.environ for the block (what a child process started inside inherits), then restored."""
    before = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        yield
    finally:
        for name, value in before.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
