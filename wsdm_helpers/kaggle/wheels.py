"""The wheelhouse dataset: wsdm_helpers plus the wheels a Kaggle scoring notebook cannot download.

Scoring notebooks run with the internet off, so everything the Kaggle image lacks must arrive as
wheels in an attached dataset and be installed with ``pip install --no-index --find-links``. The
image already ships torch (with its CUDA build), transformers, accelerate, tokenizers, safetensors,
numpy, pandas, pyarrow, pyyaml and tqdm; reinstalling torch would cost minutes and can break CUDA,
so those are left out. Downloads use ``--no-deps``: every extra package must be listed.
"""
from __future__ import annotations

import importlib.metadata
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

from ..errors import BundleError
from ..io import atomic_write_text
from .checks import BundleReport, check_bundle, write_manifest
from .common import dataset_from_template, project_root, staged_folder, write_dataset_metadata

DATASET = "wsdm-helpers-wheels"
REQUIREMENTS = "requirements.txt"

# Packages the wheelhouse carries by default, and why the Kaggle image is not enough for each.
DEFAULT_PACKAGES = {
    "peft": "LoRA adapters are read back by peft; older peft versions reject adapter_config keys that newer "
            "ones write, so the version that trained the adapter travels along (pinned to the one installed here)",
    "bitsandbytes": "4-bit (QLoRA NF4) loading of 7-9B backbones on a 16 GB T4; not in the Kaggle image",
}
# Kaggle's GPU image: CPython 3.11 on glibc 2.31 or newer (Ubuntu based), x86_64.
DEFAULT_PYTHON = "3.11"
DEFAULT_GLIBC = "2.31"
DEFAULT_ARCH = "x86_64"
PIP_OUTPUT_TAIL = 25


def default_packages() -> list[str]:
    """DEFAULT_PACKAGES as requirements, pinned to the installed version where there is one."""
    specs = []
    for name in DEFAULT_PACKAGES:
        try:
            specs.append(f"{name}=={importlib.metadata.version(name)}")
        except importlib.metadata.PackageNotFoundError:
            specs.append(name)
    return specs


def linux_platforms(glibc: str = DEFAULT_GLIBC, arch: str = DEFAULT_ARCH) -> list[str]:
    """pip platform tags a Linux with this glibc accepts (manylinux_2_X down to manylinux1).

    ``pip download --platform`` does not expand the PEP 600 tags itself, so a single tag would miss
    wheels built for an older glibc (bitsandbytes ships manylinux_2_24 wheels, for instance).
    """
    major, minor = (int(part) for part in glibc.split("."))
    tags = [f"manylinux_{major}_{m}_{arch}" for m in range(minor, 4, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    return tags + [f"{name}_{arch}" for m, name in legacy.items() if m <= minor]


def _run_pip(args: Sequence[str], what: str) -> None:
    command = [sys.executable, "-m", "pip", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-PIP_OUTPUT_TAIL:])
        raise BundleError(f"{what} failed (pip exit {done.returncode}):\n  $ {shlex.join(command)}\n{tail}")


def _index_args(find_links: Iterable[str | Path], no_index: bool) -> list[str]:
    args = ["--no-index"] if no_index else []
    for folder in find_links:
        args += ["--find-links", str(Path(folder).resolve())]
    return args


def build_project_wheel(out: Path, index_args: list[str], no_index: bool) -> Path:
    """``pip wheel --no-deps`` of the source checkout, built from a clean copy of its sources.

    The copy keeps stale ``build/`` leftovers of the checkout out of the wheel. With ``--no-index``
    the build backend cannot be downloaded, so it runs in the current environment (setuptools).
    """
    root = project_root()
    if root is None:
        raise BundleError("wsdm bundle wheels builds wsdm_helpers from its source checkout, but this "
                          "wsdm_helpers is an installed wheel: run it from a clone (pip install -e .)")
    with tempfile.TemporaryDirectory(prefix="wsdm-wheel-src-") as tmp:
        src = Path(tmp) / "src"
        shutil.copytree(root / "wsdm_helpers", src / "wsdm_helpers",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in ("setup.py", "pyproject.toml", "setup.cfg", "MANIFEST.in", "README.md", "LICENSE"):
            if (root / name).is_file():
                shutil.copy2(root / name, src / name)
        isolation = ["--no-build-isolation"] if no_index else []
        _run_pip(["wheel", "--no-deps", *isolation, *index_args, "-w", str(out), str(src)],
                 "building the wsdm_helpers wheel")
    wheels = sorted(out.glob("wsdm_helpers-*.whl"))
    if len(wheels) != 1:
        raise BundleError(f"expected one wsdm_helpers wheel in {out}, found {[w.name for w in wheels]}")
    return wheels[0]


def _wheel_name_version(path: Path) -> tuple[str, str]:
    name, version = path.name.split("-")[:2]
    return name, version


def build_wheelhouse(out: str | Path, packages: Sequence[str] | None = None, *,
                     python_version: str = DEFAULT_PYTHON, platforms: Sequence[str] | None = None,
                     find_links: Iterable[str | Path] = (), no_index: bool = False,
                     username: str | None = None, replace: bool = False) -> BundleReport:
    """Build the ``wsdm-helpers-wheels`` dataset folder at ``out`` and check it.

    ``replace`` allows rebuilding over an earlier bundle (see :func:`common.staged_folder`).

    ``packages`` (default :func:`default_packages`) are downloaded as binary wheels for CPython
    ``python_version`` on ``platforms`` (default :func:`linux_platforms`). ``find_links`` and
    ``no_index`` are passed to pip, so a local wheel cache can stand in for PyPI.
    """
    packages = list(default_packages() if packages is None else packages)
    platforms = list(platforms or linux_platforms())
    meta = dataset_from_template(DATASET, username)
    index_args = _index_args(find_links, no_index)
    with staged_folder(out, replace) as stage:
        build_project_wheel(stage, index_args, no_index)
        if packages:
            target = ["--python-version", python_version, "--implementation", "cp"]
            target += [arg for tag in platforms for arg in ("--platform", tag)]
            _run_pip(["download", "--only-binary=:all:", "--no-deps", *target, *index_args,
                      "-d", str(stage), *packages], f"downloading {' '.join(packages)}")
        wheels = sorted(stage.glob("*.whl"))
        pins = [f"{name}=={version}" for name, version in map(_wheel_name_version, wheels)]
        atomic_write_text(stage / REQUIREMENTS, "\n".join(pins) + "\n")
        write_dataset_metadata(stage, meta)
        write_manifest(stage, "wheelhouse", describe=_describe_wheel, requirements=pins,
                       target={"python_version": python_version, "implementation": "cp", "platforms": platforms},
                       install=offline_install_args(Path("/kaggle/input") / DATASET))
    return check_bundle(out)


def _describe_wheel(rel: Path) -> dict[str, str]:
    if rel.suffix != ".whl":
        return {}
    name, version = _wheel_name_version(rel)
    return {"package": name, "version": version}


def offline_install_args(wheelhouse: str | Path) -> list[str]:
    """``pip install`` arguments that install the wheelhouse's requirements with no network."""
    wheelhouse = Path(wheelhouse)
    return ["pip", "install", "--no-index", "--find-links", str(wheelhouse), "-r", str(wheelhouse / REQUIREMENTS)]


def offline_install_command(wheelhouse: str | Path) -> str:
    """The shell command a Kaggle notebook runs to install wsdm_helpers offline, e.g.::

        pip install --no-index --find-links /kaggle/input/wsdm-helpers-wheels \\
            -r /kaggle/input/wsdm-helpers-wheels/requirements.txt
    """
    return shlex.join(offline_install_args(wheelhouse))
