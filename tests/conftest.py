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


@pytest.fixture(scope="session")
def demo(tmp_path_factory):
    """80 demo pairs as a canonical parquet file and a tokenizer trained on their text."""
    from wsdm_helpers.data import write_canonical
    from wsdm_helpers.demo_data import make_demo_frame
    from wsdm_helpers.tiny import pair_texts, train_tokenizer

    root = tmp_path_factory.mktemp("demo")
    frame = make_demo_frame(80, seed=1)
    write_canonical(frame, root / "train.parquet")
    texts = pair_texts(frame)
    tokenizer = train_tokenizer(texts + ["Answer: A", "Answer: B"] * 50, vocab_size=500)
    return root / "train.parquet", tokenizer


@pytest.fixture(scope="session")
def tiny_model(demo, tmp_path_factory):
    """A builder of tiny random models (family, head) on the demo tokenizer, each built once a session."""
    from wsdm_helpers.tiny import build_tiny_model

    def build(family: str, head: str = "classifier") -> Path:
        out = tmp_path_factory.getbasetemp() / f"model-{family}-{head}"
        return out if out.exists() else build_tiny_model(family, demo[1], out, head=head)
    return build
