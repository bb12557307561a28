"""Declared notebook images: what Kaggle (and Colab) preinstall, with where each version comes from.

A wheelhouse is built for one image (``wsdm bundle wheels --image NAME``): its Python version decides
which compiled wheels fit, and its torch is kept (the wheelhouse never carries torch or its CUDA
libraries). The offline rehearsal (:mod:`wsdm_helpers.kaggle.rehearsal`) builds each image as a real
virtual environment with these versions installed and plays Kaggle sessions on it.

Sources (public, read on 2026-12-03):

- Kaggle's GPU image is built from Colab's runtime image plus ``kaggle_requirements.txt``
  (github.com/Kaggle/docker-python, ``Dockerfile.tmpl`` and ``config.txt``). Colab publishes the
  ``pip freeze`` of each runtime release in github.com/googlecolab/backend-info (``pip-freeze.txt``,
  ``pip-freeze.gpu.txt``, ``os-info*.txt``).
- ``kaggle-2025-01``: the image of the WSDM Cup 2025 final submissions (January 2025): docker-python
  commit 083bc20 (2025-01-03) sets ``BASE_IMAGE_TAG=release-colab_20241217-060132_RC00`` and pins
  ``scikit-learn==1.2.2``; that Colab release is backend-info commit 33b0eb5 (2024-12-16): Python
  3.10.12, torch 2.5.1+cu121, transformers 4.47.0, tokenizers 0.21.0, accelerate 1.2.1, peft 0.14.0,
  no bitsandbytes. papermill is unpinned in kaggle_requirements.txt; 2.6.0 was its release then.
- ``kaggle-2026-05``: docker-python main at 78aaa43 (2026-08-12): ``Dockerfile.tmpl`` starts from
  ``colab-images/public/runtime:release-colab-external-images_20260514-060047_RC00`` and
  kaggle_requirements.txt asks ``transformers>=5.0.0``; the Colab GPU freeze of that release is
  backend-info commit 6f38803 (2026-05-08): Python 3.12.13, torch 2.10.0+cu128, transformers 5.0.0.
- ``colab-2026-08``: backend-info commit a724079 (2026-08-19, "Upgrade to Python 3.13"), the GPU
  freeze: Python 3.13.15, torch 2.11.0+cu128, transformers 5.15.0. Colab runs notebooks in its own
  front end; papermill stands in for it here.

The rehearsal installs PyPI's build of each torch version (a CUDA build, which runs on the CPU), and
the interpreter pyenv has for the declared minor version (its patch level may differ).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field

from ..errors import ConfigError


@dataclass(frozen=True)
class NotebookImage:
    name: str
    place: str  # "kaggle" or "colab"
    python: str  # major.minor of the image's interpreter
    packages: dict[str, str]  # distribution -> version the image preinstalls (torch first)
    source: str  # where the versions come from (the module docstring has the details)
    absent: tuple[str, ...] = field(default=())  # what the image does not preinstall, of what we need

    @property
    def torch(self) -> str:
        return self.packages["torch"]

    def fingerprint(self) -> str:
        """Changes whenever a declared version does (names the rehearsal's cached venv)."""
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()[:12]


IMAGES = {
    "kaggle-2025-01": NotebookImage(
        name="kaggle-2025-01", place="kaggle", python="3.10",
        packages={"torch": "2.5.1", "transformers": "4.47.0", "tokenizers": "0.21.0", "accelerate": "1.2.1",
                  "huggingface-hub": "0.27.0", "safetensors": "0.4.5", "peft": "0.14.0", "numpy": "1.26.4",
                  "pandas": "2.2.2", "pyarrow": "17.0.0", "scikit-learn": "1.2.2", "pyyaml": "6.0.2",
                  "tqdm": "4.67.1", "matplotlib": "3.8.0", "regex": "2024.11.6", "nbformat": "5.10.4",
                  "nbclient": "0.10.1", "ipython": "7.34.0", "ipykernel": "5.5.6", "jupyter-client": "6.1.12",
                  "traitlets": "5.7.1", "tornado": "6.3.3", "pyzmq": "24.0.1", "papermill": "2.6.0"},
        source="Kaggle docker-python 083bc20 (base release-colab_20241217-060132_RC00); "
               "googlecolab/backend-info 33b0eb5 pip-freeze.txt",
        absent=("bitsandbytes",)),
    "kaggle-2026-05": NotebookImage(
        name="kaggle-2026-05", place="kaggle", python="3.12",
        packages={"torch": "2.10.0", "transformers": "5.0.0", "tokenizers": "0.22.2", "accelerate": "1.13.0",
                  "huggingface-hub": "1.11.0", "safetensors": "0.7.0", "peft": "0.19.1", "numpy": "2.0.2",
                  "pandas": "2.2.2", "pyarrow": "18.1.0", "scikit-learn": "1.6.1", "pyyaml": "6.0.3",
                  "tqdm": "4.67.3", "matplotlib": "3.10.0", "regex": "2025.11.3", "nbformat": "5.10.4",
                  "nbclient": "0.10.4", "ipython": "7.34.0", "ipykernel": "6.17.1", "jupyter-client": "7.4.9",
                  "traitlets": "5.7.1", "tornado": "6.5.1", "pyzmq": "26.2.1", "papermill": "2.7.0"},
        source="Kaggle docker-python 78aaa43 Dockerfile.tmpl (base release-colab-external-images_20260514-060047_RC00); "
               "googlecolab/backend-info 6f38803 pip-freeze.gpu.txt",
        absent=("bitsandbytes",)),
    "colab-2026-08": NotebookImage(
        name="colab-2026-08", place="colab", python="3.13",
        packages={"torch": "2.11.0", "transformers": "5.15.0", "tokenizers": "0.22.2", "accelerate": "1.14.0",
                  "huggingface-hub": "1.27.0", "safetensors": "0.8.0", "peft": "0.20.0", "numpy": "2.1.3",
                  "pandas": "2.2.3", "pyarrow": "18.1.0", "scikit-learn": "1.6.1", "pyyaml": "6.0.3",
                  "tqdm": "4.67.3", "matplotlib": "3.10.0", "regex": "2025.11.3", "nbformat": "5.11.1",
                  "nbclient": "0.10.4", "ipython": "7.34.0", "ipykernel": "6.17.1", "jupyter-client": "7.4.9",
                  "traitlets": "5.7.1", "tornado": "6.5.7", "pyzmq": "26.2.1", "ipywidgets": "7.7.1",
                  "papermill": "2.7.0"},
        source="googlecolab/backend-info a724079 pip-freeze.gpu.txt and os-info-gpu.txt (papermill added: "
               "the stand-in for Colab's front end)",
        absent=("bitsandbytes",)),
}


def get_image(name: str) -> NotebookImage:
    try:
        return IMAGES[name]
    except KeyError:
        raise ConfigError(f"unknown notebook image {name!r}: choose one of {', '.join(IMAGES)} "
                          "(declared in wsdm_helpers/kaggle/images.py)") from None
