"""The Kaggle workflow's own rules: the competition's test file, the kernel bundle's accelerator,
parameters, competition and attached base models. Inputs are a fake /kaggle/input tree in tmp_path
($WSDM_INPUT_DIR), with real parquet files and real notebooks."""
from __future__ import annotations

import logging
import shutil

import pytest

from wsdm_helpers.demo_data import write_demo_dataset
from wsdm_helpers.errors import DataError

WSDM = "wsdm-cup-multilingual-chatbot-arena"
LMSYS = "lmsys-chatbot-arena"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    train, test, _, _ = write_demo_dataset(root, n_train=40, n_test=12, seed=2)
    return {"train": train, "test": test}


@pytest.fixture
def kaggle_input(tmp_path, monkeypatch):
    root = tmp_path / "input"
    root.mkdir()
    monkeypatch.setenv("WSDM_INPUT_DIR", str(root))
    return root


def _place(source, target):
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)
    return target


# ---- notebook.read_test: the competition's own folder first ------------------------------------------
def test_read_test_takes_the_competitions_own_test_file_and_names_the_others(demo, kaggle_input, caplog):
    from wsdm_helpers import notebook

    other = _place(demo["test"], kaggle_input / "aaa-someones-dataset" / "test.parquet")  # first alphabetically
    own = _place(demo["test"], kaggle_input / WSDM / "test.parquet")
    with caplog.at_level(logging.WARNING, logger="wsdm_helpers.notebook"):
        assert notebook.competition_test_file() == own
    assert str(other) in caplog.text and f"using {own}" in caplog.text
    assert len(notebook.read_test(None)) == 12


def test_read_test_refuses_test_files_outside_the_competitions_folder(demo, kaggle_input):
    from wsdm_helpers import notebook

    with pytest.raises(DataError, match="test files found: none"):
        notebook.read_test(None)
    stray = _place(demo["test"], kaggle_input / "someones-dataset" / "test.parquet")
    with pytest.raises(DataError, match=f"no test file in a competition's own folder.*{stray}"):
        notebook.read_test(None)
    _place(demo["test"], kaggle_input / WSDM / "test.parquet")
    _place(demo["test"], kaggle_input / "competitions" / LMSYS / "test.parquet")
    with pytest.raises(DataError, match="test files of both competitions"):
        notebook.read_test(None)
