"""Run the project notebooks headless through papermill, with checked parameters.

``run_notebook("train_gemma", {"max_steps": 20})`` executes ``notebooks/train_gemma.ipynb`` in a real
Jupyter kernel into a fresh timestamped folder holding the executed notebook, ``params.yaml`` (the
resolved parameters) and every artifact the notebook wrote (its ``output_dir`` parameter points there).

papermill only warns about a parameter the notebook does not declare; here it is an error with a
close-match suggestion, and values are checked against the type hints of the ``parameters`` cell.

The helpers below the runner are what the notebooks call in their first cells (progress bars, config
assembly), so the notebooks stay free of ``def`` and logic.
"""
from __future__ import annotations

import difflib
import logging
import os
import re
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from . import runtime
from .errors import ConfigError, DataError, MissingResourceError, WsdmError

PACKAGE_ROOT = Path(__file__).resolve().parent
LOG = logging.getLogger("papermill")
WINNER_LABELS = {"model_a": 0, "model_b": 1, "tie": 2}


class NotebookFailed(WsdmError):
    """A notebook cell raised; the message names the cell, the error and the saved partial notebook."""


@dataclass
class NotebookRun:
    """Where one executed notebook and its artifacts are."""

    out_dir: Path
    notebook: Path
    parameters: dict[str, Any]
    seconds: float


# ---- locating notebooks and their parameters -----------------------------------------------------
def notebooks_dir() -> Path:
    """The checkout's ``notebooks/`` folder (next to the package in a clone or an editable install)."""
    for candidate in (PACKAGE_ROOT.parent / "notebooks", Path.cwd() / "notebooks"):
        if candidate.is_dir():
            return candidate
    raise MissingResourceError(
        f"no notebooks/ folder beside the package ({PACKAGE_ROOT.parent}) or in {Path.cwd()}; "
        "run from a clone of the repository or give the notebook's path")


def find_notebook(name: str | Path) -> Path:
    """``train_gemma``, ``train_gemma.ipynb`` or a path -> the notebook file; unknown names list the choices."""
    path = Path(name)
    if path.suffix == ".ipynb" and path.is_file():
        return path
    folder = notebooks_dir()
    candidate = folder / f"{path.stem}.ipynb"
    if candidate.is_file():
        return candidate
    known = sorted(p.stem for p in folder.glob("*.ipynb"))
    close = difflib.get_close_matches(path.stem, known, n=1)
    hint = f" Did you mean '{close[0]}'?" if close else ""
    raise ConfigError(f"no notebook '{name}' in {folder}.{hint} Available: {', '.join(known)}")


def notebook_parameters(path: str | Path) -> dict[str, dict[str, Any]]:
    """The parameters cell as papermill reads it: name -> {inferred_type_name, default, help}."""
    import papermill

    params = papermill.inspect_notebook(str(path))
    if not params:
        raise ConfigError(f"{path} has no cell tagged 'parameters'; tag the cell of literals with it")
    return params


# ---- parameter parsing and checks -------------------------------------------------------------------
def parse_cli_parameters(pairs: list[list[str]] | None, params_file: str | Path | None = None) -> dict[str, Any]:
    """``-p key value`` pairs (values parsed as YAML literals) on top of an optional YAML mapping file."""
    values: dict[str, Any] = {}
    if params_file:
        path = Path(params_file)
        if not path.is_file():
            raise ConfigError(f"parameters file {path} does not exist")
        loaded = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path} must hold a mapping of parameter: value, got {type(loaded).__name__}")
        values.update(loaded)
    for key, raw in pairs or []:
        values[key] = RawValue(raw)
    return values


class RawValue(str):
    """A value typed on the command line: parsed as YAML unless the parameter is a string."""


def check_parameters(path: str | Path, values: dict[str, Any]) -> dict[str, Any]:
    """Return ``values`` converted to the notebook's declared types; unknown names and bad types raise."""
    declared = notebook_parameters(path)
    problems = []
    checked: dict[str, Any] = {}
    for key, value in values.items():
        if key not in declared:
            close = difflib.get_close_matches(key, list(declared), n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            problems.append(f"unknown parameter '{key}'.{hint} {Path(path).name} declares: {', '.join(declared)}")
            continue
        try:
            checked[key] = coerce_value(value, declared[key]["inferred_type_name"])
        except ValueError as exc:
            problems.append(f"parameter '{key}': {exc}")
    if problems:
        raise ConfigError(f"bad parameters for {path}:\n" + "\n".join(f"  - {p}" for p in problems)
                          + f"\n(see `papermill --help-notebook {path}`)")
    return checked


def coerce_value(value: Any, type_name: str) -> Any:
    """Check ``value`` against a papermill type name (``int``, ``list[str]``, ``float | None``, ...)."""
    type_name = (type_name or "None").replace(" ", "")
    optional = type_name.startswith("Optional[") or "|None" in type_name or "None|" in type_name
    base = re.sub(r"^Optional\[(.*)\]$", r"\1", type_name).replace("|None", "").replace("None|", "")
    base = base.split("[", 1)[0].lower()
    if isinstance(value, RawValue):
        if base == "str":
            return str(value)
        value = _parse_literal(value, base)
    if value is None and (optional or base in ("none", "")):
        return None
    expected = {"int": int, "float": (int, float), "bool": bool, "str": str,
                "list": (list, tuple), "dict": dict}.get(base)
    if expected is None:
        return value
    if isinstance(value, bool) and base != "bool" or not isinstance(value, expected):
        raise ValueError(f"expected {type_name}, got {value!r} ({type(value).__name__})")
    if base == "float":
        return float(value)
    return list(value) if base == "list" else value


def _parse_literal(raw: str, base: str) -> Any:
    """YAML literal, except that numbers YAML 1.1 reads as strings (``1e-4``) become floats."""
    value = yaml.safe_load(raw) if raw.strip() else ""
    if base == "float" and isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


# ---- running -----------------------------------------------------------------------------------------
def run_notebook(name: str | Path, parameters: dict[str, Any] | None = None, out_root: str | Path = "runs/notebooks",
                 kernel_name: str = "python3", log_output: bool = True, out_dir: str | Path | None = None,
                 ) -> NotebookRun:
    """Execute a notebook with checked parameters into ``out_root/<name>-<timestamp>/`` (or ``out_dir``).

    Cell output streams into the log as it happens (``log_output``); progress bars in the kernel are
    plain text so they read well there. A failing cell raises papermill's ``PapermillExecutionError``
    after the partly executed notebook has been saved in the folder.
    """
    import papermill

    source = find_notebook(name)
    checked = check_parameters(source, parameters or {})
    folder = Path(out_dir) if out_dir else _timestamped_folder(Path(out_root), source.stem)
    folder = folder.resolve()
    folder.mkdir(parents=True, exist_ok=True)
    if "output_dir" in notebook_parameters(source) and not checked.get("output_dir"):
        checked["output_dir"] = str(folder)
    from .config import save_yaml

    save_yaml(checked, folder / "params.yaml")
    _ensure_log_handler()
    executed = folder / source.name
    start = time.perf_counter()
    with kernel_env():
        try:
            papermill.execute_notebook(str(source), str(executed), parameters=checked, kernel_name=kernel_name,
                                       log_output=log_output, progress_bar=not log_output,
                                       request_save_on_cell_execute=True)
        except papermill.PapermillExecutionError as exc:
            raise NotebookFailed(f"{source.name}: cell {exc.exec_count} raised {exc.ename}: {exc.evalue}\n"
                                 f"the executed notebook with the traceback is {executed}") from exc
    return NotebookRun(folder, executed, checked, time.perf_counter() - start)


def _timestamped_folder(root: Path, stem: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    folder, n = root / f"{stem}-{stamp}", 1
    while folder.exists():
        n += 1
        folder = root / f"{stem}-{stamp}-{n}"
    return folder


def _ensure_log_handler() -> None:
    """Cell output goes to papermill's logger; show it when nobody configured logging."""
    if not LOG.handlers and not logging.getLogger().handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        LOG.addHandler(handler)
        LOG.setLevel(logging.INFO)


@contextmanager
def kernel_env() -> Iterator[None]:
    """Environment the kernel inherits: text progress bars (every 5 s at most) and sleeping OpenMP threads.

    ``OMP_WAIT_POLICY=PASSIVE`` must be set before torch loads; on a shared CPU, spinning OpenMP
    workers made training steps in the kernel ~3x slower than the same run from ``wsdm train``.
    """
    wanted = runtime.kernel_environment()
    saved = {key: os.environ.get(key) for key in wanted}
    os.environ.update(wanted)
    try:
        yield
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# ---- helpers the notebooks call ---------------------------------------------------------------------
def configure_output() -> None:
    """Progress bars and log lines for a notebook: call it before the other package imports.

    tqdm.auto and the HF Trainer draw widget/HTML bars inside any kernel; under papermill those reach
    the log only as ``HBox(...)`` placeholders, so when :func:`run_notebook` started the kernel the
    text bars are switched on instead. The package's INFO log lines (inference time plans, blend
    weights) are shown either way.
    """
    runtime.sleeping_threads()  # too late once torch is loaded: the runner's kernels have it already
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    package_log = logging.getLogger(__package__)
    package_log.handlers[:] = [handler]
    package_log.setLevel(logging.INFO)
    runtime.plain_library_progress()


def resolve_preset(config: str | Path) -> Path:
    """A preset path as given, else ``configs/<name>.yaml`` beside the package or in the working folder."""
    path = Path(config)
    if path.is_file():
        return path
    name = path.name if path.suffix else f"{path.name}.yaml"
    for folder in (PACKAGE_ROOT.parent / "configs", PACKAGE_ROOT / "configs", Path.cwd() / "configs"):
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"config preset '{config}' not found as a file nor in configs/; "
                      "give a YAML path or one of the names in the repository's configs/ folder")


def training_config(config: str, overrides: dict[str, Any], output_dir: str = "",
                    shortcuts: dict[str, Any] | None = None):
    """Load a preset plus typed overrides into a checked RunConfig for a training notebook.

    ``shortcuts`` are the notebook's named parameters by dotted key (``{"data.train_path": train_path}``);
    ``""`` and ``None`` there keep the preset's value. ``overrides`` (dotted key -> value) are applied
    as given, after the shortcuts. Values travel as values: nothing is written out and parsed back.
    The run folder is ``output_dir/run`` when ``output_dir`` is given, else the working folder
    (``/kaggle/working`` on Kaggle).
    """
    from .config import load_run_config
    from .kaggle import working_dir

    given = {key: value for key, value in (shortcuts or {}).items() if value not in ("", None)}
    cfg = load_run_config(resolve_preset(config), {**given, **overrides})
    if output_dir:
        cfg.train.output_dir = str(Path(output_dir) / "run")
    elif not Path(cfg.train.output_dir).is_absolute():
        cfg.train.output_dir = str(working_dir() / cfg.train.output_dir)
    return cfg


def config_summary(cfg: Any) -> str:
    """The few settings a person checks before a long training run starts."""
    return (f"{cfg.name}: model {cfg.model.source} (family {cfg.model.family}, head {cfg.format.head}, "
            f"{'LoRA r=' + str(cfg.lora.r) if cfg.lora.enabled else 'full fine-tuning'}), "
            f"data {cfg.data.train_path} fold {cfg.data.fold}/{cfg.data.n_folds}, max_length {cfg.format.max_length}, "
            f"max_steps {cfg.train.max_steps}, lr {cfg.train.learning_rate}\n-> {cfg.train.output_dir}")


def output_folder(output_dir: str | None) -> Path:
    """``output_dir`` or the working folder (``/kaggle/working`` on Kaggle), created."""
    from .kaggle import working_dir

    folder = Path(output_dir) if output_dir else working_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _find_in_inputs(name: str, depth: int = 4) -> list[Path]:
    """Files called ``name`` at most ``depth`` folders below the input folder (Kaggle: /kaggle/input)."""
    from .kaggle import input_dir

    return sorted(p for d in range(depth + 1) for p in input_dir().glob("/".join(["*"] * d + [name])))


def find_runs(run_dirs: list[str]) -> list[Path]:
    """The given run folders (checked), or every run folder in the attached Kaggle datasets."""
    from .kaggle import input_dir
    from .pipeline import run_kind

    if run_dirs:
        runs = [Path(r) for r in run_dirs]
        bad = [str(r) for r in runs if run_kind(r) is None]
        if bad:
            raise ConfigError(f"not a run folder (needs config.yaml and adapter/ or model/, or baseline.json): "
                              f"{', '.join(bad)}; give folders written by `wsdm train`, train_*.ipynb or "
                              "`wsdm baseline --run-dir`")
        return runs
    found = _find_in_inputs("config.yaml") + _find_in_inputs("baseline.json")
    runs = sorted({p.parent for p in found if run_kind(p.parent) is not None})
    if not runs:
        raise ConfigError(f"no run folder (config.yaml + adapter/, or baseline.json) under {input_dir()}; attach "
                          "the adapter dataset (`wsdm bundle adapter`) or pass run_dirs")
    return runs


def read_test(test_path: str | None):
    """Read the test file into the canonical frame; ``None`` = the competition's test file in the inputs."""
    from .data import read_pairs
    from .kaggle import input_dir

    if test_path is None:
        found = _find_in_inputs("test.parquet") or _find_in_inputs("test.csv")
        if not found:
            raise DataError(f"no test.parquet or test.csv under {input_dir()}; attach the competition or pass test_path")
        test_path = str(found[0])
    frame, report = read_pairs(test_path)
    print(report.to_text())
    return frame


def given(**values: Any) -> dict[str, Any]:
    """The parameters that were set (not None): typed overrides for the pipeline."""
    return {key: value for key, value in values.items() if value is not None}


def _read_labels(labels_path: str | Path):
    import pandas as pd

    labels = pd.read_parquet(labels_path) if str(labels_path).endswith(".parquet") else pd.read_csv(labels_path)
    if "label" not in labels.columns and "winner" in labels.columns:
        labels["label"] = labels["winner"].map(WINNER_LABELS)
    if "id" not in labels.columns or "label" not in labels.columns or labels["label"].isna().any():
        raise DataError(f"{labels_path}: needs an id column and a label column (0 = a, 1 = b, 2 = tie) or a winner "
                        f"column ({', '.join(WINNER_LABELS)}); got columns {list(labels.columns)}")
    labels["label"] = labels["label"].astype("int64")
    labels["id"] = labels["id"].astype(str)
    return labels[[c for c in ("id", "label", "language") if c in labels.columns]]


def attach_labels(preds: Any, labels_path: str | None):
    """Predictions with ``label`` (and ``language``) joined on id when a labels file is given."""
    if not labels_path:
        return preds
    return preds.merge(_read_labels(labels_path), on="id", how="left").fillna({"label": -1})


def score(preds: Any, labels_path: str | None, out_dir: str | Path) -> dict[str, float] | None:
    """Accuracy and log loss against a labels file, saved as ``scores.json``; None without labels."""
    if not labels_path:
        return None
    from . import metrics
    from .io import atomic_write_json
    from .submission import align_to_ids, prob_columns

    labels = _read_labels(labels_path)
    aligned = align_to_ids(preds, labels["id"], where=f"predictions (ids compared with {labels_path})")
    probs = aligned[prob_columns(aligned)].to_numpy()
    y = labels["label"].to_numpy()
    scores = {"accuracy": metrics.accuracy(y, probs), "log_loss": metrics.log_loss(y, probs), "rows": len(y)}
    atomic_write_json(Path(out_dir) / "scores.json", scores)
    return scores


def read_oofs(run_dirs: list[str]) -> list[Any]:
    """Each run's ``oof.parquet`` (validation predictions with label and language)."""
    import pandas as pd

    if len(run_dirs) < 2:
        raise ConfigError(f"run_dirs={run_dirs}: give at least two run folders to blend")
    missing = [r for r in run_dirs if not (Path(r) / "oof.parquet").is_file()]
    if missing:
        raise ConfigError(f"no oof.parquet in {', '.join(missing)}; train with a held-out fold (data.fold >= 0)")
    return [pd.read_parquet(Path(r) / "oof.parquet") for r in run_dirs]


def compare_scores(oofs: list[Any], blended: Any, run_dirs: list[str], weights: Any, out_dir: str | Path):
    """One row per run and one for the blend (weight, accuracy, log loss); saves scores.csv and weights.json."""
    import pandas as pd

    from . import metrics
    from .io import atomic_write_csv, atomic_write_json
    from .submission import align_to_ids, prob_columns

    labels = oofs[0][["id", "label"]].assign(id=lambda f: f["id"].astype(str))
    rows = []
    for name, frame, weight in [*zip(run_dirs, oofs, weights, strict=True), ("blend", blended, 1.0)]:
        aligned = align_to_ids(frame, labels["id"], where=str(name))
        probs = aligned[prob_columns(aligned)].to_numpy()
        y = labels["label"].to_numpy()
        rows.append({"run": str(name), "weight": float(weight), "accuracy": metrics.accuracy(y, probs),
                     "log_loss": metrics.log_loss(y, probs)})
    table = pd.DataFrame(rows)
    atomic_write_csv(table, Path(out_dir) / "scores.csv")
    atomic_write_json(Path(out_dir) / "weights.json", {"run_dirs": list(map(str, run_dirs)),
                                                       "weights": [float(w) for w in weights]})
    return table
