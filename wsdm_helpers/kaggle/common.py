"""What every bundle builder shares: the source checkout, staged output folders, dataset templates."""
from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ..errors import BundleError
from ..io import atomic_dir, atomic_write_json
from .checks import MANIFEST, UNLISTED
from .metadata import DATASET_METADATA, USERNAME_PLACEHOLDER, check_dataset_metadata, read_metadata, resolve_username

# Fallbacks for an installed (non-source) wsdm_helpers, which has no kaggle_datasets/ folder beside it.
# tests/test_kaggle.py checks that they agree with the templates in kaggle_datasets/.
DATASETS = {
    "wsdm-helpers-wheels": {"title": "WSDM helpers wheels", "license": "apache-2.0"},
    "wsdm-adapter": {"title": "WSDM adapter", "license": "apache-2.0"},
}


def project_root() -> Path | None:
    """The source checkout holding this package (with setup.py), or None for an installed wheel."""
    root = Path(__file__).resolve().parents[2]
    return root if (root / "setup.py").is_file() else None


def template_dir(name: str) -> Path | None:
    root = project_root()
    folder = root / "kaggle_datasets" / name if root else None
    return folder if folder and (folder / DATASET_METADATA).is_file() else None


def dataset_from_template(name: str, username: str | None = None, slug: str | None = None,
                          title: str | None = None) -> dict[str, Any]:
    """``kaggle_datasets/NAME/dataset-metadata.json`` with the owner filled in (README.md as description).

    ``slug`` and ``title`` override the template, e.g. one dataset per adapter of an ensemble.
    """
    owner = resolve_username(username)
    folder = template_dir(name)
    if folder is not None:
        meta = read_metadata(folder / DATASET_METADATA)
        readme = folder / "README.md"
        if readme.is_file() and "description" not in meta:
            meta["description"] = readme.read_text(encoding="utf-8")
    else:
        default = DATASETS[name]
        meta = {"title": default["title"], "id": f"{USERNAME_PLACEHOLDER}/{name}",
                "licenses": [{"name": default["license"]}]}
    template_slug = str(meta.get("id", "")).split("/")[-1]
    meta["id"] = f"{owner}/{slug or template_slug}"
    if title:
        meta["title"] = title
    problems = check_dataset_metadata(meta)
    if problems:
        raise BundleError(f"dataset metadata for {name} would be refused by the Kaggle CLI:\n"
                          + "\n".join(f"  - {p}" for p in problems))
    return meta


def write_dataset_metadata(folder: Path, meta: dict[str, Any]) -> Path:
    return atomic_write_json(folder / DATASET_METADATA, meta)


def _foreign_files(out: Path) -> list[str] | None:
    """Files in ``out`` that its wsdm_helpers manifest does not list; None when ``out`` has no such manifest."""
    try:
        manifest = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
        listed = {str(entry["path"]) for entry in manifest["files"]}
        ours = str(manifest["created_by"]).startswith("wsdm_helpers")
    except (OSError, ValueError, TypeError, KeyError):
        return None
    if not ours or (out / MANIFEST).is_symlink():
        return None
    on_disk = []
    for folder, dirs, files in os.walk(out):
        base = Path(folder)
        on_disk += [(base / n).relative_to(out).as_posix() for n in files + [d for d in dirs if (base / d).is_symlink()]]
    return sorted(set(on_disk) - listed - set(UNLISTED))


@contextmanager
def staged_folder(out: str | Path, replace: bool = False) -> Iterator[Path]:
    """Build a bundle in a fresh sibling folder and swap it onto ``out`` only when complete.

    Stale files of an earlier build never mix with new ones. A new or empty ``out`` is always fine.
    A non-empty one is replaced only with ``replace=True`` and only when every file in it is listed
    in the ``manifest.json`` of an earlier wsdm_helpers build: a file this package did not write is
    never deleted (a stray ``manifest.json`` in a user's folder is not enough).
    """
    out = Path(out)
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise BundleError(f"--out {out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()):
        foreign = _foreign_files(out)
        if foreign is None:
            raise BundleError(f"--out {out} is a non-empty folder that is not a bundle (no wsdm_helpers {MANIFEST}); "
                              "choose a new or empty folder")
        if foreign:
            shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if len(foreign) > 5 else "")
            raise BundleError(f"--out {out} holds files the earlier bundle did not write ({shown}); they would be "
                              "deleted. Move them away or choose a new folder")
        if not replace:
            raise BundleError(f"--out {out} holds an earlier bundle; pass --replace (replace=True) to rebuild it, "
                              "or choose a new folder")
    with atomic_dir(out, suffix=".partial") as stage:
        yield stage
