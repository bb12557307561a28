"""A declared notebook image (:mod:`.images`) built as a real virtual environment, cached by its fingerprint.

The venv gets the image's interpreter (pyenv's build of the same minor version, or ``python3.X`` on
PATH) and exactly the declared versions, torch included, installed by pip from the package index, plus
a Jupyter kernel named ``python3`` so papermill runs notebooks on it. A venv holds absolute paths, so it
is built in place; ``.complete`` marks a finished build and a folder without it is rebuilt.
"""
from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
from pathlib import Path

from packaging.utils import canonicalize_name

from ..errors import MissingResourceError
from .images import NotebookImage

COMPLETE = ".complete"


def cache_root() -> Path:
    return Path(os.environ.get("WSDM_IMAGE_CACHE", Path.home() / ".cache" / "wsdm-helpers" / "images"))


def find_interpreter(minor: str) -> Path:
    """pyenv's newest CPython ``minor`` (e.g. 3.10), else ``python3.10`` on PATH."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = sorted(glob.glob(str(pyenv / f"{minor}.*" / "bin" / f"python{minor}")),
                   key=lambda p: int(Path(p).parts[-3].split(".")[2].split("-")[0] or 0))
    if found:
        return Path(found[-1])
    on_path = shutil.which(f"python{minor}")
    if on_path:
        return Path(on_path)
    raise MissingResourceError(f"no Python {minor} interpreter here: install it (pyenv install {minor}) or put "
                               f"python{minor} on PATH (pip needs one to resolve and build for that version)")


def image_venv(image: NotebookImage, root: Path | None = None, log=print) -> Path:
    """The image's venv under ``root`` (default :func:`cache_root`), built on first use."""
    venv = (root or cache_root()) / f"{image.name}-{image.fingerprint()}"
    if (venv / COMPLETE).is_file():
        return venv
    if venv.exists():
        shutil.rmtree(venv)
    venv.parent.mkdir(parents=True, exist_ok=True)
    interpreter = find_interpreter(image.python)
    log(f"[{image.name}] building the image venv with {interpreter} at {venv}")
    subprocess.run([str(interpreter), "-m", "venv", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    pins = [f"{name}=={version}" for name, version in image.packages.items()]
    subprocess.run([python, "-m", "pip", "install", "-q", "--upgrade", "pip"], check=True)
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-compile", *pins], check=True)
    subprocess.run([python, "-m", "ipykernel", "install", "--sys-prefix", "--name", "python3"], check=True,
                   stdout=subprocess.DEVNULL)
    (venv / COMPLETE).write_text("\n".join(pins) + "\n")
    log(f"[{image.name}] image venv ready")
    return venv


def installed_versions(venv: Path, names: list[str]) -> dict[str, str]:
    """``name -> version`` in the venv (``-`` where absent), as the venv's own pip lists them."""
    listed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"], check=True,
                            capture_output=True, text=True).stdout
    versions = {canonicalize_name(item["name"]): item["version"] for item in json.loads(listed)}
    return {name: versions.get(canonicalize_name(name), "-") for name in names}
