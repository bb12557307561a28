"""Process settings (wsdm_helpers.runtime): text progress under the notebook runner, no patched libraries."""
from __future__ import annotations

import tqdm.auto
import tqdm.std
import transformers.utils
from transformers.utils import logging as hf_logging

from wsdm_helpers import notebook, runtime


def test_configure_output_under_plain_progress_patches_no_library(monkeypatch):
    before = (tqdm.auto.tqdm, tqdm.auto.trange, transformers.utils.is_in_notebook)
    monkeypatch.setenv(runtime.PROGRESS_ENV, "plain")
    try:
        notebook.configure_output()
        assert (tqdm.auto.tqdm, tqdm.auto.trange, transformers.utils.is_in_notebook) == before
        assert not hf_logging.is_progress_bar_enabled()  # transformers' own, documented switch
        bar = runtime.progress_bar(total=1, disable=True)
        assert type(bar) is tqdm.std.tqdm
    finally:
        hf_logging.enable_progress_bar()


def test_kernel_environment_asks_for_text_bars_and_sleeping_threads(monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    assert runtime.kernel_environment() == {"WSDM_PROGRESS": "plain", "TQDM_MININTERVAL": "5",
                                            "OMP_WAIT_POLICY": "PASSIVE"}
    runtime.sleeping_threads()
    import os

    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
