"""The Kaggle workflow's own rules: the competition's test file, the kernel bundle's accelerator,
parameters, competition and attached base models. Inputs are a fake /kaggle/input tree in tmp_path
($WSDM_INPUT_DIR), with real parquet files and real notebooks."""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

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


# ---- wsdm bundle kernel: accelerator, parameters, competition, attached base models ----------------
NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "inference.ipynb"
BASE = "/kaggle/input/gemma-2/transformers/gemma-2-9b-it/2"
KERNEL = ["bundle", "kernel", "--notebook", str(NOTEBOOK), "--dataset", "wsdm-helpers-wheels"]


@pytest.fixture
def owner(monkeypatch):
    monkeypatch.setenv("KAGGLE_USERNAME", "tester")


def _meta(folder):
    return json.loads((folder / "kernel-metadata.json").read_text())


def _parameters(folder):
    """The bundled notebook's parameters cell, run: name -> value."""
    cell = next(c for c in json.loads((folder / "inference.ipynb").read_text())["cells"]
                if "parameters" in c["metadata"].get("tags", []))
    values = {}
    exec("".join(cell["source"]), {}, values)  # the cell holds literals only
    return values


def test_bundle_kernel_asks_for_two_t4s_and_fills_the_competitions_slug(tmp_path, owner, capsys):
    from wsdm_helpers.cli import main

    assert main([*KERNEL, "--out", str(tmp_path / "wsdm")]) == 0
    meta = _meta(tmp_path / "wsdm")
    assert meta["machine_shape"] == "NvidiaTeslaT4" and meta["enable_gpu"] is True
    assert meta["competition_sources"] == [WSDM]
    assert "--accelerator NvidiaTeslaT4" in capsys.readouterr().out
    assert main([*KERNEL, "--out", str(tmp_path / "lmsys"), "--competition", "lmsys", "--title", "LMSYS inference"]) == 0
    assert _meta(tmp_path / "lmsys")["competition_sources"] == [LMSYS]
    assert main([*KERNEL, "--out", str(tmp_path / "cpu"), "--cpu"]) == 0
    assert "machine_shape" not in _meta(tmp_path / "cpu")
    with pytest.raises(SystemExit):  # argparse: --competition takes wsdm or lmsys
        main([*KERNEL, "--out", str(tmp_path / "x"), "--competition", "kaggle-x"])


def test_bundle_kernel_writes_checked_parameters_into_the_notebooks_parameters_cell(tmp_path, owner, capsys):
    from wsdm_helpers.cli import main
    from wsdm_helpers.notebook_runner import notebook_parameters

    assert main([*KERNEL, "--out", str(tmp_path / "k"), "-p", "time_budget_minutes", "600",
                 "-p", "weights", "[1, 0]", "-p", "tta", "selective", "-p", "run_dirs", "[/kaggle/input/a, /kaggle/input/b]"]) == 0
    values = _parameters(tmp_path / "k")
    assert values["time_budget_minutes"] == 600.0 and values["weights"] == [1, 0] and values["tta"] == "selective"
    assert values["run_dirs"] == ["/kaggle/input/a", "/kaggle/input/b"] and values["safety_minutes"] == 5.0
    declared = notebook_parameters(tmp_path / "k" / "inference.ipynb")
    assert "submission.csv is written within this" in declared["time_budget_minutes"]["help"]  # comments kept
    assert main([*KERNEL, "--out", str(tmp_path / "bad"), "-p", "time_budget_minute", "600"]) == 2
    assert "Did you mean 'time_budget_minutes'" in capsys.readouterr().err
    assert main([*KERNEL, "--out", str(tmp_path / "bad"), "-p", "weights", "heavy"]) == 2
    assert "parameter 'weights'" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_bundle_kernel_refuses_an_adapter_whose_base_model_is_not_attached(tmp_path, owner, capsys):
    from test_kaggle import _run_dir

    from wsdm_helpers.cli import main

    assert main(["bundle", "adapter", str(_run_dir(tmp_path / "run")), "--out", str(tmp_path / "adapter"),
                 "--base-model", BASE, "--slug", "wsdm-adapter-gemma", "--title", "WSDM adapter gemma"]) == 0
    with_adapter = [*KERNEL, "--adapter-dir", str(tmp_path / "adapter")]
    assert main([*with_adapter, "--out", str(tmp_path / "k")]) == 2
    err = capsys.readouterr().err
    assert f"adapter tester/wsdm-adapter-gemma ({tmp_path / 'adapter'}): its base model {BASE} is not attached" in err
    assert "--model OWNER/gemma-2/" in err and not (tmp_path / "k").exists()
    assert main([*with_adapter, "--out", str(tmp_path / "k"),
                 "--model", "google/gemma-2/transformers/gemma-2-9b-it/2"]) == 0
    meta = _meta(tmp_path / "k")
    assert "tester/wsdm-adapter-gemma" in meta["dataset_sources"]  # the adapter's dataset is attached
    assert main([*with_adapter, "--out", str(tmp_path / "k2"), "--dataset", "someone/gemma-2",
                 "--dataset", "wsdm-adapter-gemma"]) == 0
    assert _meta(tmp_path / "k2")["dataset_sources"].count("tester/wsdm-adapter-gemma") == 1  # attached once
    assert main(["bundle", "adapter", str(_run_dir(tmp_path / "run2")), "--out", str(tmp_path / "local"),
                 "--slug", "wsdm-adapter-local", "--title", "WSDM adapter local"]) == 2  # build path: refused there


# ---- 2x T4 from train_gemma.ipynb: one process per GPU, or a warning -----------------------------------
def test_one_training_process_on_several_gpus_says_so(capsys):
    from wsdm_helpers.errors import ConfigError
    from wsdm_helpers.notebook import training_processes

    assert training_processes(None, gpu_count=2) == 1
    out = capsys.readouterr().out
    assert "2 GPUs are present but training runs in ONE process" in out and "num_processes=2" in out
    assert training_processes(None, gpu_count=1) == 1 and training_processes(2, gpu_count=2) == 2
    assert capsys.readouterr().out == ""
    with pytest.raises(ConfigError, match="num_processes=3: this machine has 2 GPU"):
        training_processes(3, gpu_count=2)


@pytest.mark.slow
def test_the_notebooks_training_launches_one_process_per_device(demo, tmp_path):
    """notebook.train with num_processes=2 runs `accelerate launch` (the packaged ddp-cpu-2proc config here,
    ddp-2gpu on two GPUs) and returns the run the two processes wrote."""
    from wsdm_helpers.config import load_run_config, resolve_preset
    from wsdm_helpers.data import read_pairs
    from wsdm_helpers.notebook import train
    from wsdm_helpers.tiny import build_tiny_model, pair_texts, train_tokenizer

    frame, _ = read_pairs(demo["train"])
    model = build_tiny_model("llama", train_tokenizer(pair_texts(frame), vocab_size=400), tmp_path / "model")
    cfg = load_run_config(resolve_preset("tiny-test"), {"data.train_path": str(demo["train"]), "model.source": str(model),
                                        "train.output_dir": str(tmp_path / "run"), "train.max_steps": 2,
                                        "train.per_device_batch_size": 2})
    result = train(cfg, num_processes=2, gpu_count=0)
    assert result.metrics["world_size"] == 2 and result.metrics["global_step"] == 2
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
