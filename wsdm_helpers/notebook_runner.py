"""Run the project notebooks headless through papermill, with checked parameters.

``run_notebook("train_gemma", {"max_steps": 20})`` executes ``notebooks/train_gemma.ipynb`` in a real
Jupyter kernel into a fresh timestamped folder holding the executed notebook, ``params.yaml`` (the
resolved parameters) and every artifact the notebook wrote (its ``output_dir`` parameter points there).

papermill only warns about a parameter the notebook does not declare; here it is an error with a
close-match suggestion, and values are checked against the type hints of the ``parameters`` cell.
The helpers the notebooks call in their cells live in :mod:`wsdm_helpers.notebook`.
"""
from __future__ import annotations

import logging
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
from .errors import ConfigError, MissingResourceError, WsdmError, closest

PACKAGE_ROOT = Path(__file__).resolve().parent
LOG = logging.getLogger("papermill")


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
    close = closest(path.stem, known)
    hint = f" Did you mean '{close}'?" if close else ""
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
            close = closest(key, declared)
            hint = f" Did you mean '{close}'?" if close else ""
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
    with runtime.environ(runtime.kernel_environment()):
        yield
