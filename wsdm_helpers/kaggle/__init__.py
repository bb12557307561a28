"""Kaggle and Colab: where a notebook runs, where its inputs are, and the offline submission bundle.

Where am I (used by the notebooks):

- :func:`environment` is ``"kaggle"`` (``KAGGLE_KERNEL_RUN_TYPE`` set or ``/kaggle/input`` present),
  ``"colab"`` (``COLAB_RELEASE_TAG`` set or ``google.colab`` importable) or ``"local"``;
- :func:`input_dir` / :func:`working_dir`: ``/kaggle/input`` and ``/kaggle/working`` on Kaggle,
  ``/content`` on Colab, the current folder locally; ``$WSDM_INPUT_DIR`` / ``$WSDM_WORKING_DIR``
  override them anywhere;
- :func:`competition`: the competition whose data is attached (WSDM or LMSYS, see competitions.py),
  :func:`is_competition_rerun`: inside Kaggle's hidden scoring rerun;

The bundle (``wsdm bundle wheels|adapter|kernel|check``), each folder ready for the Kaggle CLI:

- :func:`build_wheelhouse`: wsdm_helpers' wheel plus the wheels the Kaggle image lacks;
- :func:`bundle_adapter`: a training run folder as a safetensors-only model dataset;
- :func:`bundle_kernel`: the scoring notebook with ``kernel-metadata.json`` (GPU on, internet off);
- :func:`check_bundle`: manifest, symlinks, build-machine paths, pickles, metadata; all problems at once.

The scoring notebook installs offline with (see :func:`offline_install_command`)::

    pip install --no-index --find-links /kaggle/input/wsdm-helpers-wheels \\
        -r /kaggle/input/wsdm-helpers-wheels/requirements.txt
"""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path

from .adapter import bundle_adapter
from .checks import BundleReport, check_bundle
from .competitions import COMPETITIONS, Competition, attached_competitions, is_competition_rerun
from .kernel import bundle_kernel
from .metadata import check_dataset_metadata, check_kernel_metadata
from .wheels import build_wheelhouse, default_packages, offline_install_command

__all__ = [
    "COMPETITIONS", "BundleReport", "Competition", "build_wheelhouse", "bundle_adapter", "bundle_kernel",
    "check_bundle", "check_dataset_metadata", "check_kernel_metadata", "competition", "default_packages",
    "environment", "input_dir", "is_competition_rerun", "offline_install_command", "working_dir",
]

KAGGLE_INPUT = Path("/kaggle/input")
KAGGLE_WORKING = Path("/kaggle/working")
COLAB_CONTENT = Path("/content")


def environment() -> str:
    """``"kaggle"``, ``"colab"`` or ``"local"``."""
    if os.environ.get("KAGGLE_KERNEL_RUN_TYPE") or KAGGLE_INPUT.is_dir():
        return "kaggle"
    if os.environ.get("COLAB_RELEASE_TAG") or _importable("google.colab"):
        return "colab"
    return "local"


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:  # the parent package (google) is absent
        return False


def input_dir() -> Path:
    """Where attached datasets and competition data are read from."""
    if os.environ.get("WSDM_INPUT_DIR"):
        return Path(os.environ["WSDM_INPUT_DIR"])
    return {"kaggle": KAGGLE_INPUT, "colab": COLAB_CONTENT}.get(environment(), Path.cwd())


def working_dir() -> Path:
    """Where outputs go (on Kaggle, /kaggle/working is what a notebook's output keeps)."""
    if os.environ.get("WSDM_WORKING_DIR"):
        return Path(os.environ["WSDM_WORKING_DIR"])
    return {"kaggle": KAGGLE_WORKING, "colab": COLAB_CONTENT}.get(environment(), Path.cwd())




def competition() -> Competition | None:
    """The competition whose data folder is attached under :func:`input_dir`; None for none or both."""
    attached = attached_competitions(input_dir())
    return attached[0] if len(attached) == 1 else None
