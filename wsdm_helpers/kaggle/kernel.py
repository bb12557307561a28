"""The scoring-notebook folder for ``kaggle kernels push``: the notebook and its ``kernel-metadata.json``.

The metadata attaches the competition, the wheelhouse and adapter datasets (and Kaggle Models),
turns the GPU on and the internet off. ``enable_gpu`` alone gets the default accelerator; push with
``--accelerator NvidiaTeslaT4`` for the two T4s the dual-device inference uses.
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Iterable
from pathlib import Path

from ..errors import BundleError
from ..io import atomic_write_json
from .checks import BundleReport, check_bundle, wheelhouse_problems, write_manifest
from .common import staged_folder
from .metadata import KERNEL_METADATA, kernel_metadata, resolve_username

COMPETITION = "wsdm-cup-multilingual-chatbot-arena"
DEFAULT_TITLE = "WSDM inference"
PUSH_ACCELERATOR = "NvidiaTeslaT4"


def _check_notebook(path: Path) -> None:
    if not path.is_file():
        raise BundleError(f"notebook {path} does not exist")
    try:
        notebook = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not a notebook (invalid JSON, line {exc.lineno}: {exc.msg})") from exc
    if not isinstance(notebook, dict) or not isinstance(notebook.get("cells"), list):
        raise BundleError(f"{path} is not a Jupyter notebook (no 'cells' list)")


def bundle_kernel(notebook: str | Path, out: str | Path, *, competitions: Iterable[str] = (COMPETITION,),
                  datasets: Iterable[str] = (), models: Iterable[str] = (), kernels: Iterable[str] = (),
                  title: str = DEFAULT_TITLE, username: str | None = None, enable_gpu: bool = True,
                  is_private: bool = True, replace: bool = False) -> BundleReport:
    """Write ``out/kernel-metadata.json`` and a copy of ``notebook``; check the folder.

    ``datasets`` and ``kernels`` given without an owner (``wsdm-adapter``) belong to ``username``;
    ``models`` are Kaggle Models references ``owner/model/framework/variation/version``.
    """
    notebook = Path(notebook)
    _check_notebook(notebook)
    meta = kernel_metadata(resolve_username(username), title, notebook.name, competitions=competitions,
                           datasets=datasets, models=models, kernels=kernels, enable_gpu=enable_gpu,
                           is_private=is_private)
    problems = wheelhouse_problems(meta)
    if problems:
        raise BundleError(problems[0])
    with staged_folder(out, replace) as stage:
        shutil.copy2(notebook, stage / notebook.name)
        atomic_write_json(stage / KERNEL_METADATA, meta)
        write_manifest(stage, "kernel", push_accelerator=PUSH_ACCELERATOR)
    return check_bundle(out)
