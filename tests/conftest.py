"""Shared fixtures. Tests are hermetic: no network (hub downloads fail at once), no GPU."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from wsdm_helpers.runtime import sleeping_threads

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sleeping_threads()  # busy-waiting OpenMP threads slow steps several-fold on a shared 2-core machine

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real preference data beside the checkout; skip when a fresh clone does not have it."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (it is not part of the project)")
    return SHARED_DATA
