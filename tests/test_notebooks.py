"""Committed notebooks are clean and thin (pure JSON checks, quick)."""
from __future__ import annotations

import ast
import json
from pathlib import Path

import nbformat
import pandas as pd
import papermill
import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
EXPECTED = {"train_gemma", "train_deberta", "inference", "ensemble_oof"}


def notebook_problems(nb: dict, name: str = "notebook") -> list[str]:
    """Why a notebook may not be committed: outputs, no kernelspec, no/extra parameters cell, def/class."""
    problems = []
    if nb.get("metadata", {}).get("kernelspec", {}).get("name") != "python3":
        problems.append(f"{name}: metadata.kernelspec.name must be python3")
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    for i, cell in enumerate(code):
        if cell.get("outputs") or cell.get("execution_count") is not None:
            problems.append(f"{name}: code cell {i} has outputs; strip them before committing")
        tree = ast.parse("".join(cell["source"]))
        defined = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))]
        if defined:
            problems.append(f"{name}: code cell {i} defines {defined[0].name}; move it into the package")
    tagged = [c for c in code if "parameters" in c.get("metadata", {}).get("tags", [])]
    if len(tagged) != 1:
        problems.append(f"{name}: needs exactly one cell tagged 'parameters', found {len(tagged)}")
    else:
        problems += _parameter_problems("".join(tagged[0]["source"]), name)
    return problems


def _parameter_problems(source: str, name: str) -> list[str]:
    """Each statement a type-hinted literal with a comment (so `papermill --help-notebook` documents it)."""
    problems = []
    lines = source.splitlines()
    for stmt in ast.parse(source).body:
        if not isinstance(stmt, ast.AnnAssign) or stmt.value is None:
            problems.append(f"{name}: parameters line {stmt.lineno} is not `name: type = literal  # help`")
            continue
        try:
            ast.literal_eval(stmt.value)
        except ValueError:
            problems.append(f"{name}: parameter {ast.unparse(stmt.target)} is not a literal")
        if "#" not in lines[stmt.lineno - 1]:
            problems.append(f"{name}: parameter {ast.unparse(stmt.target)} has no help comment")
    return problems


@pytest.fixture(params=sorted(EXPECTED))
def notebook_path(request) -> Path:
    return NOTEBOOKS / f"{request.param}.ipynb"


def test_every_expected_notebook_is_committed():
    assert {p.stem for p in NOTEBOOKS.glob("*.ipynb")} >= EXPECTED


def test_notebook_is_clean_and_thin(notebook_path):
    nb = json.loads(notebook_path.read_text(encoding="utf-8"))
    nbformat.validate(nbformat.from_dict(nb))
    assert notebook_problems(nb, notebook_path.name) == []


def test_papermill_documents_every_parameter(notebook_path):
    nb = json.loads(notebook_path.read_text(encoding="utf-8"))
    source = next("".join(c["source"]) for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    declared = {ast.unparse(s.target) for s in ast.parse(source).body}
    inferred = papermill.inspect_notebook(str(notebook_path))
    assert set(inferred) == declared  # a line papermill cannot parse (e.g. '=' in a comment) drops out
    assert all(p["help"] and p["inferred_type_name"] != "None" for p in inferred.values())


def test_first_cell_says_what_it_does_and_how_to_run_it(notebook_path):
    nb = json.loads(notebook_path.read_text(encoding="utf-8"))
    first = "".join(nb["cells"][0]["source"])
    assert nb["cells"][0]["cell_type"] == "markdown" and first.startswith("# ")
    assert f"papermill notebooks/{notebook_path.name}" in first and f"wsdm run-notebook {notebook_path.stem}" in first
    # the parameters cell first (literals only), so the install cell can read wsdm_source
    assert "parameters" in nb["cells"][1]["metadata"].get("tags", [])
    install = "".join(nb["cells"][2]["source"])
    assert 'find_spec("wsdm_helpers") is None' in install and '"install.py"' in install and "wsdm_source" in install


@pytest.mark.parametrize("bad, message", [
    ({"outputs": [{"output_type": "stream", "name": "stdout", "text": "x"}]}, "has outputs"),
    ({"source": "def f():\n    return 1"}, "defines f"),
    ({"source": "class C:\n    pass"}, "defines C"),
    ({"metadata": {}}, "exactly one cell tagged"),
])
def test_the_checks_catch_a_bad_notebook(bad, message):
    cell = {"cell_type": "code", "source": "x: int = 1  # help", "outputs": [], "execution_count": None,
            "metadata": {"tags": ["parameters"]}}
    nb = {"cells": [{**cell, **bad}], "metadata": {"kernelspec": {"name": "python3"}}}
    assert any(message in p for p in notebook_problems(nb))


def test_parameters_must_be_hinted_documented_literals():
    source = 'a = 1  # no hint\nb: int = 2\nc: list[str] = sorted(["x"])  # computed'
    problems = " ".join(_parameter_problems(source, "nb"))
    assert "line 1 is not" in problems and "b has no help comment" in problems and "c is not a literal" in problems
    nb = {"cells": [], "metadata": {}}
    assert any("kernelspec" in p for p in notebook_problems(nb))


# ---- every notebook under papermill in a real kernel, with tiny models on tiny demo data (slow) ------------
# One chain shares the trained runs: the demo (train_gemma + inference) -> train_deberta -> ensemble_oof ->
# inference again with both runs blended by the fitted weights.
FAST = {"train.eval_steps": 2, "train.save_steps": 2, "train.logging_steps": 1, "train.max_eval_rows": None}


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    from wsdm_helpers.demo_data import make_demo_frame
    from wsdm_helpers.tiny import build_tiny_model, pair_texts, train_tokenizer

    root = tmp_path_factory.mktemp("tiny_models")
    frame = make_demo_frame(96, seed=0)
    tokenizer = train_tokenizer(pair_texts(frame), vocab_size=600)
    return {family: build_tiny_model(family, tokenizer, root / family) for family in ("gemma3", "bert")}


@pytest.fixture(scope="module")
def demo(tiny_models, tmp_path_factory):
    """`wsdm demo` with the tiny Gemma 3 in place of the real one: 64 train rows, 32 test rows, 4 steps."""
    from wsdm_helpers.demo import run_demo

    out = tmp_path_factory.mktemp("demo")
    summary = run_demo(out, train_parameters={"model_source": str(tiny_models["gemma3"]), "max_steps": 4,
                                              "max_length": 128, "overrides": FAST}, n_train=64, n_test=32)
    return out, summary


@pytest.fixture(scope="module")
def deberta_run(demo, tiny_models, tmp_path_factory) -> Path:
    from wsdm_helpers.notebook_runner import run_notebook

    out, _ = demo
    run = run_notebook("train_deberta", {
        "config": "tiny-test", "train_path": str(out / "data" / "train.parquet"),
        "model_source": str(tiny_models["bert"]), "max_steps": 4,
        "overrides": {"data.n_folds": 5, **FAST},  # the demo preset's folds, so the oof ids match
    }, out_root=tmp_path_factory.mktemp("deberta"))
    return run.out_dir / "run"


def _outputs(notebook: Path) -> list[dict]:
    nb = nbformat.read(str(notebook), as_version=4)
    return [o for cell in nb.cells if cell.cell_type == "code" for o in cell.outputs]


def _check_submission(path: Path, test_path: Path) -> pd.DataFrame:
    sub = pd.read_csv(path, dtype={"id": str})
    test_ids = pd.read_parquet(test_path)["id"].astype(str)
    assert list(sub.columns) == ["id", "winner"] and sub["id"].tolist() == test_ids.tolist()
    assert set(sub["winner"]) <= {"model_a", "model_b"}
    return sub


@pytest.mark.slow
def test_demo_trains_with_lora_and_writes_a_valid_submission(demo):
    out, summary = demo
    run = summary.run_dir
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (run / "adapter").iterdir()}
    assert all((run / name).is_file() for name in ("config.yaml", "metrics.json", "log_history.json", "oof.parquet"))
    assert {p.name for p in (run / "plots").glob("*.png")} == {
        "training_curves.png", "language_accuracy.png", "predictions.png", "token_lengths.png"}
    _check_submission(summary.submission, out / "data" / "test.parquet")
    assert summary.n_test_rows == 32 and summary.test["rows"] == 32 and 0 <= summary.test["accuracy"] <= 1
    assert 0 <= summary.validation["accuracy"] <= 1
    text = summary.to_text()
    assert str(summary.submission) in text and "validation accuracy" in text and "test accuracy" in text
    assert "validation curve:     step 2: " in text  # accuracy and the training time to it, per evaluation
    train_nb, infer_nb = summary.notebooks
    assert train_nb.name == "train_gemma.ipynb" and infer_nb.name == "inference.ipynb"
    assert sum("image/png" in o.get("data", {}) for o in _outputs(train_nb)) == 4  # the plots show inline
    assert any("image/png" in o.get("data", {}) for o in _outputs(infer_nb))


@pytest.mark.slow
def test_encoder_notebook_ensemble_weights_and_blended_submission(demo, deberta_run, tmp_path):
    from wsdm_helpers.notebook_runner import run_notebook

    out, summary = demo
    assert (deberta_run / "adapter" / "adapter_model.safetensors").is_file()
    assert (deberta_run / "plots" / "training_curves.png").is_file()
    runs = [str(summary.run_dir), str(deberta_run)]
    ens = run_notebook("ensemble_oof", {"run_dirs": runs, "metric": "log_loss"}, out_root=tmp_path / "prob")
    weights = json.loads((ens.out_dir / "weights.json").read_text())
    assert len(weights["weights"]) == 2 and abs(sum(weights["weights"]) - 1) < 1e-6
    assert weights["space"] == "probability"
    scores = pd.read_csv(ens.out_dir / "scores.csv")
    assert scores["run"].tolist() == [*runs, "blend"]
    assert (ens.out_dir / "plots" / "predictions.png").is_file()

    ens = run_notebook("ensemble_oof", {"run_dirs": runs, "metric": "log_loss", "space": "log_odds"},
                       out_root=tmp_path / "log_odds")
    weights = json.loads((ens.out_dir / "weights.json").read_text())
    fitted = json.loads((ens.out_dir / "blend_report.json").read_text())
    assert weights["space"] == fitted["space"] == "log_odds" and weights["weights"] == fitted["weights"]
    infer = run_notebook("inference", {"run_dirs": runs, "weights": weights["weights"], "blend_space": "log_odds",
                                       "tta": "none", "test_path": str(out / "data" / "test.parquet")},
                         out_root=tmp_path)
    _check_submission(infer.out_dir / "submission.csv", out / "data" / "test.parquet")
    assert not (infer.out_dir / "scores.json").exists()  # no labels given, nothing scored
