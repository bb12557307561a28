"""wsdm run-notebook: parameter parsing and checks (quick), and one real kernel run of a small notebook (slow)."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import nbformat
import pytest
import yaml

from wsdm_helpers import cli
from wsdm_helpers.errors import ConfigError
from wsdm_helpers.notebook_runner import (
    NotebookFailed,
    RawValue,
    check_parameters,
    coerce_value,
    find_notebook,
    parse_cli_parameters,
    run_notebook,
)

PARAMS = '''
steps: int = 3  # how many steps
rate: float = 0.1  # a rate
name: str = "x"  # a name
flag: bool = False  # a flag
paths: list[str] = []  # some paths
budget: "Optional[float]" = None  # optional budget
fail: bool = False  # raise in the last cell
output_dir: "Optional[str]" = None  # artifacts'''

BODY = '''
import os, sys
from pathlib import Path
Path(output_dir, "artifact.txt").write_text(f"{steps} {rate} {name} {flag} {paths} {budget}")
print("EXECUTABLE", sys.executable)
print("PROGRESS", os.environ.get("WSDM_PROGRESS"), os.environ.get("OMP_WAIT_POLICY"))'''


def _notebook(folder: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    params = nbformat.v4.new_code_cell(PARAMS.strip())
    params.metadata["tags"] = ["parameters"]
    nb.cells = [params, nbformat.v4.new_code_cell(BODY.strip()),
                nbformat.v4.new_code_cell("if fail:\n    raise RuntimeError('planted failure')")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / "small.ipynb"
    nbformat.write(nb, str(path))
    return path


def test_values_are_yaml_literals_checked_against_declared_types(tmp_path):
    path = _notebook(tmp_path)
    raw = parse_cli_parameters([["steps", "20"], ["rate", "1e-4"], ["name", "2024"], ["flag", "true"],
                                ["paths", "[a, b]"], ["budget", "null"]])
    assert check_parameters(path, raw) == {"steps": 20, "rate": 1e-4, "name": "2024", "flag": True,
                                           "paths": ["a", "b"], "budget": None}
    assert check_parameters(path, {"rate": 3, "budget": 5}) == {"rate": 3.0, "budget": 5.0}


@pytest.mark.parametrize("value, type_name", [
    (RawValue("abc"), "int"), (True, "int"), (RawValue("[1]"), "float"), (1, "bool"), ("a", "list[str]"),
    (None, "int"), (RawValue("x"), "Optional[float]"),
])
def test_wrong_types_are_rejected(value, type_name):
    with pytest.raises(ValueError, match="expected"):
        coerce_value(value, type_name)


def test_untyped_parameters_accept_any_value():
    assert coerce_value(RawValue("{a: 1}"), "None") == {"a": 1}


def test_misspelled_parameter_is_an_error_with_a_suggestion(tmp_path):
    path = _notebook(tmp_path)
    with pytest.raises(ConfigError, match="unknown parameter 'stesp'. Did you mean 'steps'") as info:
        check_parameters(path, {"stesp": 3, "rate": "fast"})
    assert "parameter 'rate': expected float" in str(info.value)  # every problem at once


def test_params_file_is_merged_under_command_line_values(tmp_path):
    file = tmp_path / "p.yaml"
    file.write_text("steps: 5\nname: from-file\n")
    values = parse_cli_parameters([["steps", "7"]], file)
    assert values["name"] == "from-file" and values["steps"] == "7"
    with pytest.raises(ConfigError, match="does not exist"):
        parse_cli_parameters([], tmp_path / "missing.yaml")


def test_unknown_notebook_name_lists_the_choices():
    assert find_notebook("train_gemma").name == "train_gemma.ipynb"
    with pytest.raises(ConfigError, match="Did you mean 'train_gemma'"):
        find_notebook("train_gema")


def test_cli_rejects_a_misspelled_parameter_before_starting_a_kernel(capsys):
    assert cli.main(["run-notebook", "train_gemma", "-p", "max_stpes", "3"]) == 2
    assert "Did you mean 'max_steps'" in capsys.readouterr().err


@pytest.mark.slow
def test_run_notebook_executes_in_a_kernel_of_this_interpreter(tmp_path):
    path = _notebook(tmp_path)
    run = run_notebook(path, parse_cli_parameters([["steps", "9"], ["paths", "[p]"]]), out_root=tmp_path / "runs")
    assert run.out_dir.parent == tmp_path / "runs" and run.out_dir.name.startswith("small-")
    assert (run.out_dir / "artifact.txt").read_text() == "9 0.1 x False ['p'] None"
    saved = yaml.safe_load((run.out_dir / "params.yaml").read_text())
    assert saved == {"steps": 9, "paths": ["p"], "output_dir": str(run.out_dir)}
    executed = nbformat.read(str(run.notebook), as_version=4)
    text = "".join(o.get("text", "") for cell in executed.cells for o in cell.get("outputs", []))
    assert f"EXECUTABLE {Path(sys.executable)}" in text or f"EXECUTABLE {Path(sys.executable).resolve()}" in text
    omp = os.environ.get("OMP_WAIT_POLICY", "PASSIVE")  # sleeping OpenMP threads unless the caller chose
    assert f"PROGRESS plain {omp}" in text

    with pytest.raises(NotebookFailed, match="RuntimeError: planted failure") as info:
        run_notebook(path, {"fail": True}, out_root=tmp_path / "runs")
    assert str(tmp_path / "runs") in str(info.value)  # names the saved partial notebook


def test_training_config_applies_notebook_shortcuts_over_the_preset(tmp_path, monkeypatch):
    from wsdm_helpers.notebook import training_config

    shortcuts = {"data.train_path": "runs #3/d.parquet", "model.source": "m", "train.max_steps": None}
    cfg = training_config("tiny-test", {"train.learning_rate": 0.5}, str(tmp_path), shortcuts=shortcuts)
    # values travel as values: ' #' is not cut off as a YAML comment
    assert (cfg.data.train_path, cfg.model.source, cfg.train.learning_rate) == ("runs #3/d.parquet", "m", 0.5)
    assert cfg.train.max_steps == 6 and cfg.train.output_dir == str(tmp_path / "run")  # None keeps the preset
    monkeypatch.setenv("WSDM_WORKING_DIR", str(tmp_path / "work"))
    assert training_config("tiny-test", {}, None).train.output_dir == str(tmp_path / "work" / "runs" / "tiny-test")
    with pytest.raises(ConfigError, match="not found"):
        training_config("no-such-preset", {}, None)
