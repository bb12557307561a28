"""The wheelhouse dataset: everything a Kaggle notebook with the internet off needs to install wsdm_helpers.

Scoring notebooks run with the internet off, so the whole dependency closure of
``wsdm_helpers[training,quantization,notebooks]`` must arrive as wheels in an attached dataset. The
closure is resolved by pip's own resolver for the target image's Python version and platform, with
the image's torch held fixed (:mod:`.images` declares the images), then downloaded pinned and
``--no-deps``. torch and its CUDA libraries are not carried: reinstalling them would cost minutes
and can break the image; only an image whose torch is below the package's floor (the WSDM Cup 2025
image's 2.5.1: transformers 5 refuses ``torch.load`` of a checkpoint below 2.6) gets the floor's torch
release from the wheelhouse, with a warning. For a declared image the closure keeps the image's own versions wherever
they fit (numpy, pandas, the Jupyter stack, ...), so the install changes only what it must.
``requirements.txt`` pins every package of the closure: pip then has one candidate per package and
never backtracks between the image's versions and the wheelhouse's. ``install.py`` (a copy of :mod:`.install_wheelhouse`) is what a notebook runs: it checks the
interpreter against the wheelhouse's target before pip runs and prints the versions it ends with.

``vllm=True`` (``wsdm bundle wheels --vllm``) adds the ``vllm`` extra: vLLM pins an exact torch, so that
torch and every CUDA wheel of the closure are carried and the install replaces the image's torch (GBs).
:func:`resolve_wheelhouse` (``--resolve-only``) stops after the resolution: the closure, what each
version does to the image and each wheel's size, with no wheel downloaded.
"""
from __future__ import annotations

import importlib.metadata
import json
import logging
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from .. import __version__
from ..errors import BundleError
from ..io import atomic_write_text
from . import install_wheelhouse
from .checks import MANIFEST, BundleReport, check_bundle, write_manifest
from .common import dataset_from_template, project_root, staged_folder, write_dataset_metadata
from .image_venv import find_interpreter
from .images import get_image

log = logging.getLogger(__name__)

DATASET = "wsdm-helpers-wheels"
REQUIREMENTS = "requirements.txt"
INSTALLER = "install.py"
EXTRAS = "training,quantization,notebooks"

# Pinned on top of the closure, and why: older peft versions reject adapter_config keys that newer ones
# write, so the version that trained the adapters travels along (pinned to the one installed here).
DEFAULT_PACKAGES = ("peft",)
# The image's own GPU stack: not carried while the image's torch stays (see WheelhousePlan.carries_runtime).
IMAGE_RUNTIME = re.compile(r"^(torch|triton|nvidia-.*|cuda-.*)$")
DEFAULT_IMAGE = "kaggle-2026-05"

DEFAULT_GLIBC = "2.35"  # Kaggle's and Colab's images run Ubuntu 22.04 (backend-info os-info*.txt)
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


def _run_pip(args: Sequence[str], what: str, python: str | Path = sys.executable) -> None:
    command = [str(python), "-m", "pip", *args]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        tail = "\n".join((done.stdout + done.stderr).strip().splitlines()[-PIP_OUTPUT_TAIL:])
        error = BundleError(f"{what} failed (pip exit {done.returncode}):\n  $ {shlex.join(command)}\n{tail}")
        error.pip_output = done.stdout + done.stderr
        raise error


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


def _target_args(python_version: str, platforms: Sequence[str]) -> list[str]:
    return ["--python-version", python_version, "--implementation", "cp", "--only-binary=:all:",
            *[arg for tag in platforms for arg in ("--platform", tag)]]


def _resolve(requirements: Sequence[str], python_version: str, platforms: Sequence[str],
             constraints: Sequence[str], index_args: list[str], fast_deps: bool = False) -> list[dict]:
    """pip's own resolver on an empty target (``--dry-run --ignore-installed --report``): the install items.

    It runs on an interpreter of the target version: pip evaluates environment markers on the running
    interpreter, whatever ``--python-version`` says (``exceptiongroup; python_version < "3.11"`` would
    be missed for 3.10 from 3.11). ``fast_deps`` (pip's experimental ``fast-deps``) reads a wheel's metadata
    with HTTP range requests where the index serves no PEP 658 ``.metadata`` file; otherwise pip downloads
    every wheel to read it (GBs of CUDA wheels with ``vllm``), which the download step then finds in pip's
    cache. A pip older than 25.3 downloads them anyway in a dry run (pypa/pip#13482).
    """
    python = sys.executable if python_version == f"{sys.version_info.major}.{sys.version_info.minor}" else \
        find_interpreter(python_version)
    if fast_deps:
        _require_metadata_only_pip(python)
    with tempfile.TemporaryDirectory(prefix="wsdm-resolve-") as tmp:
        constraints_file = Path(tmp) / "constraints.txt"
        constraints_file.write_text("\n".join(constraints) + "\n")
        report = Path(tmp) / "report.json"
        _run_pip(["install", "--dry-run", "--ignore-installed", *(["--use-feature=fast-deps"] if fast_deps else []),
                  "--report", str(report),
                  "--target", str(Path(tmp) / "target"), *_target_args(python_version, platforms), *index_args,
                  "-c", str(constraints_file), *requirements],
                 f"resolving {' '.join(requirements)} for CPython {python_version}", python)
        return json.loads(report.read_text())["install"]


FAST_DEPS_PIP = "25.3"  # from this pip on, a dry run with fast-deps reads metadata without downloading wheels


def _require_metadata_only_pip(python: str | Path) -> None:
    """Refuse a pip that would download every wheel of a fast-deps resolution (GBs with vLLM), naming the fix."""
    done = subprocess.run([str(python), "-m", "pip", "--version"], capture_output=True, text=True)
    found = re.match(r"pip (\S+)", done.stdout)
    if found is None or Version(found.group(1)) < Version(FAST_DEPS_PIP):
        raise BundleError(f"{python} has pip {found.group(1) if found else '(none)'}: below pip {FAST_DEPS_PIP} a "
                          "resolution downloads every wheel to read its metadata (GBs with --vllm); upgrade it "
                          f"first: {python} -m pip install -U 'pip>={FAST_DEPS_PIP}'")


def _accepted_image_versions(installs: list[dict], image_packages: dict[str, str], python_version: str) -> list[str]:
    """``name==version`` for each package of the image whose version every requirement in the closure accepts."""
    env = {"python_version": python_version, "python_full_version": f"{python_version}.0", "os_name": "posix",
           "sys_platform": "linux", "platform_system": "Linux", "platform_machine": DEFAULT_ARCH,
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    specifiers: dict[str, list] = {}
    for item in installs:
        extras = ["", *item.get("requested_extras", [])]
        for text in item["metadata"].get("requires_dist", []):
            req = Requirement(text)
            if req.marker is None or any(req.marker.evaluate({**env, "extra": extra}) for extra in extras):
                specifiers.setdefault(canonicalize_name(req.name), []).append(req.specifier)
    return [f"{name}=={version}" for name, version in image_packages.items()
            if name != "torch" and all(spec.contains(version, prereleases=True)
                                       for spec in specifiers.get(canonicalize_name(name), []))]


def torch_floor() -> str:
    """The lowest torch wsdm_helpers accepts (its ``torch>=X.Y`` requirement)."""
    spec = next(Requirement(r).specifier for r in importlib.metadata.requires("wsdm_helpers") or []
                if Requirement(r).name == "torch")
    return next(s.version for s in spec if s.operator == ">=")


def torch_kept(torch: str) -> bool:
    """Whether the target's torch meets the package's floor, so it stays (else the wheelhouse carries one)."""
    return Version(torch) >= Version(torch_floor())


@dataclass(frozen=True)
class Resolved:
    """One distribution of the closure: what pip would install, and the wheel it would take."""

    name: str
    version: str
    url: str = ""
    requires: tuple[str, ...] = ()  # the names its metadata requires (any marker)


def resolve_closure(requirements: Sequence[str], *, python_version: str, platforms: Sequence[str],
                    torch: str, index_args: list[str], image_packages: dict[str, str] | None = None,
                    hold_torch: bool = True, fast_deps: bool = False, attempts: int = 8) -> list[Resolved]:
    """Every distribution pip installs for ``requirements`` on the target, torch held (or, for a torch
    below the package's floor, the floor's minor release: see :func:`torch_kept`). ``hold_torch=False``
    leaves torch to the requirements (vLLM pins its own); ``fast_deps``: see :func:`_resolve`.

    With ``image_packages`` (a declared image), the image's own versions are kept wherever the closure
    accepts them, so the install changes as little of the image as it can: the fresh closure says which
    versions are accepted, and a second resolution with those pinned checks that they fit together
    (a pin pip names in a conflict is dropped and the resolution repeated).
    """
    held = [] if not hold_torch else [f"torch=={torch}" if torch_kept(torch) else f"torch~={torch_floor()}.0"]
    installs = _resolve(requirements, python_version, platforms, held, index_args, fast_deps)
    kept = _accepted_image_versions(installs, image_packages or {}, python_version)
    for _ in range(attempts):
        if not kept:
            break
        try:
            installs = _resolve(requirements, python_version, platforms, held + kept, index_args, fast_deps)
            break
        except BundleError as exc:
            named = {canonicalize_name(m) for m in re.findall(r"\(constraint\) ([A-Za-z0-9_.-]+)==",
                                                              getattr(exc, "pip_output", ""))}
            if not named:
                raise
            kept = [pin for pin in kept if canonicalize_name(pin.split("==")[0]) not in named]
    return [Resolved(item["metadata"]["name"], item["metadata"]["version"], item.get("download_info", {}).get("url", ""),
                     tuple(canonicalize_name(Requirement(r).name) for r in item["metadata"].get("requires_dist", [])))
            for item in installs]


def torch_note(torch: str, installed: str, vllm: str | None = None) -> str:
    """Which torch the notebook ends with (the image's ``torch``, or the wheelhouse's ``installed``) and why."""
    pin = f"vLLM {vllm} pins it" if vllm else None
    if Version(installed) == Version(torch):
        return f"torch {torch} (the image's) stays" + (f": {pin}" if pin else "")
    return (f"torch {torch} (the image's) -> {installed} ({pin or f'wsdm_helpers needs torch>={torch_floor()}'}): "
            "the install replaces the image's torch")


@dataclass(frozen=True)
class WheelhousePlan:
    """A resolved wheelhouse before anything is downloaded: its target, its closure, what it carries."""

    image: str | None
    python_version: str
    torch: str  # the target's own torch
    platforms: list[str]
    project: str  # the wsdm_helpers requirement written first in requirements.txt
    closure: list[Resolved]
    vllm: bool = False
    image_packages: dict[str, str] = field(default_factory=dict)

    def version(self, name: str) -> str | None:
        return next((r.version for r in self.closure if canonicalize_name(r.name) == canonicalize_name(name)), None)

    @property
    def torch_installed(self) -> str:
        return self.version("torch") or self.torch

    @property
    def carries_runtime(self) -> bool:
        """Whether torch and its CUDA wheels are carried: the install replaces the image's torch (a torch
        below the package's floor, or vLLM's pin when it is not the image's torch)."""
        return (Version(self.torch_installed) != Version(self.torch)) if self.vllm else not torch_kept(self.torch)

    def _left_to_image(self, item: Resolved) -> bool:
        """The image's own GPU stack, not carried while its torch stays. With vLLM only torch and the CUDA
        wheels torch itself requires: vLLM's own (cutlass, flashinfer, ...) are not in the image."""
        if self.carries_runtime or not IMAGE_RUNTIME.match(item.name.lower()):
            return False
        torch = next(r for r in self.closure if canonicalize_name(r.name) == "torch")
        return not self.vllm or item is torch or canonicalize_name(item.name) in torch.requires

    @property
    def carried(self) -> list[Resolved]:
        return sorted((r for r in self.closure if canonicalize_name(r.name) != "wsdm-helpers"
                       and not self._left_to_image(r)), key=lambda r: f"{r.name}=={r.version}")

    def torch_note(self) -> str:
        return torch_note(self.torch, self.torch_installed, self.version("vllm") if self.vllm else None)

    def table(self, sizes: dict[str, int | None] | None = None) -> str:
        """One line per distribution: version, what it does to the image, size where known."""
        sizes = sizes or {}
        image = {canonicalize_name(k): v for k, v in self.image_packages.items()}
        image[canonicalize_name("torch")] = self.torch
        carried = {r.name for r in self.carried}
        lines = []
        for r in sorted(self.closure, key=lambda r: r.name.lower()):
            was = image.get(canonicalize_name(r.name))
            effect = ("the project wheel" if canonicalize_name(r.name) == "wsdm-helpers" else
                      "not carried (the image's)" if r.name not in carried else
                      "new" if was is None else "= image" if Version(was) == Version(r.version) else f"replaces {was}")
            size = sizes.get(r.name)
            lines.append(f"  {r.name:36} {r.version:24} {effect:28} {'' if size is None else f'{size:,} B'}")
        return "\n".join(lines)


def plan_wheelhouse(wheel_dir: Path, packages: Sequence[str] | None = None, *, image: str | None = DEFAULT_IMAGE,
                    python_version: str | None = None, torch: str | None = None,
                    platforms: Sequence[str] | None = None, index_args: Sequence[str] = (),
                    no_index: bool = False, vllm: bool = False, fast_deps: bool = False) -> WheelhousePlan:
    """Build the wsdm_helpers wheel into ``wheel_dir`` and resolve the wheelhouse's closure for the target
    (the arguments of :func:`build_wheelhouse`); with ``fast_deps`` nothing else is downloaded (see
    :func:`_resolve`)."""
    declared = get_image(image) if image else None
    python_version = python_version or (declared.python if declared else None)
    torch = torch or (declared.torch if declared else None)
    if not python_version or not torch:
        raise BundleError("a wheelhouse needs its target: --image NAME, or both --python-version and --torch")
    packages = list(default_packages() if packages is None else packages)
    platforms = list(platforms or linux_platforms())
    extras = EXTRAS + (",vllm" if vllm else "")
    wheel = build_project_wheel(wheel_dir, list(index_args), no_index)
    closure = resolve_closure([f"{wheel}[{extras}]", *packages], python_version=python_version,
                              platforms=platforms, torch=torch, index_args=list(index_args),
                              image_packages=declared.packages if declared else None, hold_torch=not vllm,
                              fast_deps=fast_deps)
    return WheelhousePlan(image=image, python_version=python_version, torch=torch, platforms=platforms,
                          project=f"wsdm_helpers[{extras}]=={__version__}", closure=closure, vllm=vllm,
                          image_packages=dict(declared.packages) if declared else {})


def _url_size(url: str) -> int | None:
    """A wheel's size from its URL without downloading it: the file's, or an HTTP HEAD's Content-Length."""
    parsed = urllib.parse.urlparse(url)
    try:
        if parsed.scheme == "file":
            return Path(urllib.request.url2pathname(parsed.path)).stat().st_size
        if parsed.scheme in ("http", "https"):
            with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=60) as answer:
                length = answer.headers.get("Content-Length")
                return int(length) if length else None
    except (OSError, ValueError):
        return None
    return None


def wheel_sizes(items: Sequence[Resolved]) -> dict[str, int | None]:
    """Each distribution's wheel size (None where the index does not say)."""
    with ThreadPoolExecutor(max_workers=8) as pool:
        return dict(zip([r.name for r in items], pool.map(_url_size, [r.url for r in items]), strict=True))


def resolve_wheelhouse(packages: Sequence[str] | None = None, *, find_links: Iterable[str | Path] = (),
                       no_index: bool = False, **target) -> tuple[WheelhousePlan, dict[str, int | None]]:
    """The plan of :func:`build_wheelhouse` (same arguments, less ``out``) and the sizes of the wheels it
    would carry, with nothing downloaded but the metadata pip reads."""
    with tempfile.TemporaryDirectory(prefix="wsdm-plan-") as tmp:
        plan = plan_wheelhouse(Path(tmp), packages, index_args=_index_args(find_links, no_index), no_index=no_index,
                               fast_deps=True, **target)
    return plan, wheel_sizes(plan.carried)


def build_wheelhouse(out: str | Path, packages: Sequence[str] | None = None, *, image: str | None = DEFAULT_IMAGE,
                     python_version: str | None = None, torch: str | None = None,
                     platforms: Sequence[str] | None = None, find_links: Iterable[str | Path] = (),
                     no_index: bool = False, username: str | None = None, replace: bool = False,
                     vllm: bool = False) -> BundleReport:
    """Build the ``wsdm-helpers-wheels`` dataset folder at ``out`` for one notebook image, and check it.

    ``image`` (a name in :mod:`.images`) gives the target Python version and the torch to keep;
    ``python_version`` and ``torch`` override it (``image=None`` with both: a machine not declared
    there). ``packages`` (default :func:`default_packages`) are pinned on top of the closure.
    ``platforms`` defaults to :func:`linux_platforms`; ``find_links`` and ``no_index`` are passed to
    pip, so a local wheel folder can stand in for PyPI. ``replace`` allows rebuilding over an earlier
    bundle (see :func:`common.staged_folder`). ``vllm`` adds the ``vllm`` extra: the wheelhouse then
    carries vLLM's torch pin and its CUDA wheels, which replace the image's torch.
    """
    meta = dataset_from_template(DATASET, username)
    index_args = _index_args(find_links, no_index)
    with staged_folder(out, replace) as stage:
        plan = plan_wheelhouse(stage, packages, image=image, python_version=python_version, torch=torch,
                               platforms=platforms, index_args=index_args, no_index=no_index, vllm=vllm,
                               fast_deps=vllm)  # without vLLM: the metadata downloads fill pip's cache for the download step
        if plan.carries_runtime:
            log.warning("%s; the wheelhouse carries torch %s and its CUDA libraries (GBs)", plan.torch_note(),
                        plan.torch_installed)
        carried = [f"{r.name}=={r.version}" for r in plan.carried]
        _run_pip(["download", "--no-deps", *_target_args(plan.python_version, plan.platforms), *index_args,
                  "-d", str(stage), *carried], f"downloading the {len(carried)} wheels of the closure")
        # Every version pinned: pip has one candidate per package (installed or here), so it never backtracks.
        requirements = [plan.project, *carried]
        atomic_write_text(stage / REQUIREMENTS, "\n".join(requirements) + "\n")
        shutil.copyfile(install_wheelhouse.__file__, stage / INSTALLER)
        if vllm:
            meta["description"] = meta.get("description", "") + (
                f"\n\nThis version carries vLLM {plan.version('vllm')} for inference.backend=vllm: "
                f"{plan.torch_note()}.\n")
        write_dataset_metadata(stage, meta)
        write_manifest(stage, "wheelhouse", describe=_describe_wheel, requirements=requirements,
                       closure=carried,
                       target={"image": plan.image, "python_version": plan.python_version, "torch": plan.torch,
                               "torch_installed": plan.torch_installed,
                               **({"vllm": plan.version("vllm")} if vllm else {}),
                               "implementation": "cp", "platforms": plan.platforms},
                       install=offline_install_args(Path("/kaggle/input") / DATASET))
    return check_bundle(out)


def wheelhouse_summary(root: str | Path) -> str:
    """The torch a wheelhouse ends with and its size, from its manifest (printed by ``wsdm bundle wheels``)."""
    manifest = json.loads((Path(root) / MANIFEST).read_text(encoding="utf-8"))
    target, size = manifest["target"], manifest["total_size"]
    return (f"{torch_note(target['torch'], target['torch_installed'], target.get('vllm'))}; "
            f"{len(manifest['closure'])} wheels carried, {size:,} bytes ({size / 1e9:.2f} GB)")


def _describe_wheel(rel: Path) -> dict[str, str]:
    if rel.suffix != ".whl":
        return {}
    name, version = _wheel_name_version(rel)
    return {"package": name, "version": version}


def offline_install_args(wheelhouse: str | Path) -> list[str]:
    """The command a notebook runs to install from the wheelhouse: its installer, on the notebook's Python."""
    return ["python", str(Path(wheelhouse) / INSTALLER)]


def offline_install_command(wheelhouse: str | Path) -> str:
    """The shell command a Kaggle notebook runs to install wsdm_helpers offline, e.g.::

        python /kaggle/input/wsdm-helpers-wheels/install.py
    """
    return shlex.join(offline_install_args(wheelhouse))
