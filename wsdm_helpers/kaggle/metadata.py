"""Kaggle CLI metadata files: ``dataset-metadata.json`` and ``kernel-metadata.json``, built and checked.

The rules follow the Kaggle CLI documentation (``docs/datasets_metadata.md`` and
``docs/kernels_metadata.md`` of Kaggle/kaggle-api) and the checks ``kaggle kernels push`` makes:

- dataset: ``title`` 6-50 characters; ``id`` ``owner/slug`` with a slug of 3-50 lowercase letters,
  digits and hyphens; ``licenses`` exactly one ``{"name": ...}`` from the documented list.
- kernel: ``id`` ``owner/slug``; ``title`` of at least 5 characters that slugifies to the id's slug
  (otherwise Kaggle creates the kernel at another address); ``code_file`` relative and present;
  ``language`` python, r or rmarkdown; ``kernel_type`` script or notebook; sources as
  ``owner/slug`` (datasets, kernels), ``slug`` (competitions) and
  ``owner/model/framework/variation/version`` (models).
- ``enable_internet`` is always written: recent CLIs default it to *true* when it is absent, and a
  competition scoring notebook must run with the internet off.
"""
from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from ..errors import BundleError

DATASET_METADATA = "dataset-metadata.json"
KERNEL_METADATA = "kernel-metadata.json"
USERNAME_ENV = "KAGGLE_USERNAME"
USERNAME_PLACEHOLDER = "USERNAME"

# https://github.com/Kaggle/kaggle-api/blob/main/docs/datasets_metadata.md#licenses
LICENSES = (
    "CC0-1.0", "CC-BY-SA-3.0", "CC-BY-SA-4.0", "CC-BY-NC-SA-4.0", "GPL-2.0", "ODbL-1.0", "DbCL-1.0",
    "copyright-authors", "other", "unknown", "CC-BY-4.0", "CC-BY-NC-4.0", "PDDL", "CC-BY-3.0",
    "CC-BY-3.0-IGO", "US-Government-Works", "CC-BY-NC-SA-3.0-IGO", "CDLA-Permissive-1.0",
    "CDLA-Sharing-1.0", "CC-BY-ND-4.0", "CC-BY-NC-ND-4.0", "ODC-BY-1.0", "LGPL-3.0", "AGPL-3.0",
    "FDL-1.3", "EU-ODP-Legal-Notice", "apache-2.0", "GPL-3.0",
)
KERNEL_LANGUAGES = ("python", "r", "rmarkdown")
KERNEL_TYPES = ("script", "notebook")
KERNEL_BOOLEANS = ("is_private", "enable_gpu", "enable_tpu", "enable_internet")

SLUG_RE = re.compile(r"^[a-z0-9]+(?:-[a-z0-9]+)*$")
OWNER_RE = re.compile(r"^[a-z0-9][a-z0-9_-]*$")


def slugify(title: str) -> str:
    """The URL slug Kaggle derives from a title: lowercase, runs of other characters become one hyphen."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def resolve_username(username: str | None = None) -> str:
    """The Kaggle owner of the ids: the parameter, else ``$KAGGLE_USERNAME``; lowercased and checked."""
    name = (username or os.environ.get(USERNAME_ENV, "")).strip().lower()
    if not name:
        raise BundleError(f"no Kaggle username: pass --username NAME or set {USERNAME_ENV} "
                          "(ids are NAME/slug, as on kaggle.com/NAME)")
    if not OWNER_RE.match(name):
        raise BundleError(f"Kaggle username {name!r} has characters a Kaggle URL cannot hold; "
                          "use the name shown in your profile URL kaggle.com/NAME")
    return name


def _ref_problems(ref: Any, field: str, parts: int, slug_lengths: tuple[int, int] = (1, 200)) -> list[str]:
    """Problems of a reference such as ``owner/slug`` (``parts`` components, the last a slug)."""
    shape = {1: "slug", 2: "owner/slug", 5: "owner/model/framework/variation/version"}[parts]
    if not isinstance(ref, str) or ref.count("/") != parts - 1:
        return [f"{field}: {ref!r} is not of the form {shape}"]
    pieces = ref.split("/")
    problems = []
    if parts > 1 and not OWNER_RE.match(pieces[0]):
        problems.append(f"{field}: owner {pieces[0]!r} of {ref!r} must be lowercase letters, digits, '-' or '_'")
    slug = pieces[-1] if parts < 5 else pieces[1]
    low, high = slug_lengths
    if not SLUG_RE.match(slug) or not low <= len(slug) <= high:
        problems.append(f"{field}: slug {slug!r} of {ref!r} must be {low}-{high} lowercase letters, digits "
                        "and single hyphens (no leading or trailing hyphen)")
    if parts == 5 and not pieces[4].isdigit():
        problems.append(f"{field}: the last part of {ref!r} must be a version number")
    return problems


def check_dataset_metadata(meta: Any) -> list[str]:
    """Problems of a ``dataset-metadata.json`` dict (empty when Kaggle's CLI would accept it)."""
    if not isinstance(meta, dict):
        return [f"{DATASET_METADATA} must hold a JSON object, not {type(meta).__name__}"]
    problems = [f"required key {key!r} is missing" for key in ("title", "id", "licenses") if key not in meta]
    title = meta.get("title")
    if "title" in meta and not (isinstance(title, str) and 6 <= len(title) <= 50):
        problems.append(f"title {title!r} must be 6-50 characters")
    subtitle = meta.get("subtitle")
    if subtitle is not None and not (isinstance(subtitle, str) and 20 <= len(subtitle) <= 80):
        problems.append(f"subtitle {subtitle!r} must be 20-80 characters")
    if isinstance(meta.get("id"), str) and meta["id"].startswith(f"{USERNAME_PLACEHOLDER}/"):
        problems.append(f"id {meta['id']!r} still holds the {USERNAME_PLACEHOLDER} placeholder: "
                        f"pass --username or set {USERNAME_ENV}")
    elif "id" in meta:
        problems += _ref_problems(meta["id"], "id", 2, (3, 50))
    licenses = meta.get("licenses")
    if "licenses" in meta:
        if not (isinstance(licenses, list) and len(licenses) == 1 and isinstance(licenses[0], dict)):
            problems.append(f"licenses must be a list of exactly one {{'name': ...}} object, not {licenses!r}")
        elif licenses[0].get("name") not in LICENSES:
            problems.append(f"license name {licenses[0].get('name')!r} is not one Kaggle knows; "
                            f"choose one of {', '.join(LICENSES)}")
    keywords = meta.get("keywords", [])
    if not (isinstance(keywords, list) and all(isinstance(k, str) for k in keywords)):
        problems.append(f"keywords must be a list of strings, not {keywords!r}")
    return problems


def kernel_metadata(username: str, title: str, code_file: str, *, competitions: Iterable[str] = (),
                    datasets: Iterable[str] = (), models: Iterable[str] = (), kernels: Iterable[str] = (),
                    enable_gpu: bool = True, is_private: bool = True) -> dict[str, Any]:
    """A ``kernel-metadata.json`` dict for an offline notebook (internet off, TPU off).

    The id's slug is derived from ``title`` exactly as Kaggle derives it. Dataset and kernel
    references given without an owner (``wsdm-adapter``) get ``username`` as their owner.
    """
    def owned(refs: Iterable[str]) -> list[str]:
        return [ref if "/" in ref else f"{username}/{ref}" for ref in refs]

    meta = {
        "id": f"{username}/{slugify(title)}",
        "title": title,
        "code_file": code_file,
        "language": "python",
        "kernel_type": "notebook" if code_file.endswith(".ipynb") else "script",
        "is_private": is_private,
        "enable_gpu": enable_gpu,
        "enable_tpu": False,
        "enable_internet": False,
        "dataset_sources": owned(datasets),
        "competition_sources": list(competitions),
        "kernel_sources": owned(kernels),
        "model_sources": list(models),
    }
    _raise_if(check_kernel_metadata(meta), KERNEL_METADATA)
    return meta


def check_kernel_metadata(meta: Any, folder: str | Path | None = None) -> list[str]:
    """Problems of a ``kernel-metadata.json`` dict; with ``folder``, also that ``code_file`` exists there."""
    if not isinstance(meta, dict):
        return [f"{KERNEL_METADATA} must hold a JSON object, not {type(meta).__name__}"]
    problems = [f"required key {key!r} is missing"
                for key in ("id", "title", "code_file", "language", "kernel_type") if key not in meta]
    if "id" in meta:
        problems += _ref_problems(meta["id"], "id", 2)
    title = meta.get("title")
    if "title" in meta:
        if not (isinstance(title, str) and len(title) >= 5):
            problems.append(f"title {title!r} must be at least 5 characters")
        elif isinstance(meta.get("id"), str) and slugify(title) != meta["id"].split("/")[-1]:
            problems.append(f"title {title!r} slugifies to {slugify(title)!r}, not to the id's slug "
                            f"{meta['id'].split('/')[-1]!r}: Kaggle would create the kernel at another address")
    if "language" in meta and meta["language"] not in KERNEL_LANGUAGES:
        problems.append(f"language {meta['language']!r} must be one of {KERNEL_LANGUAGES}")
    if "kernel_type" in meta and meta["kernel_type"] not in KERNEL_TYPES:
        problems.append(f"kernel_type {meta['kernel_type']!r} must be one of {KERNEL_TYPES}")
    problems += [f"{key} must be true or false, not {meta[key]!r}"
                 for key in KERNEL_BOOLEANS if key in meta and not isinstance(meta[key], bool)]
    if meta.get("enable_internet") is not False:
        problems.append("enable_internet must be written as false: competition notebooks are scored "
                        "offline, and the Kaggle CLI turns the internet on when the key is absent")
    problems += _code_file_problems(meta.get("code_file"), folder)
    for field, parts in (("dataset_sources", 2), ("kernel_sources", 2), ("competition_sources", 1),
                         ("model_sources", 5)):
        refs = meta.get(field, [])
        if not isinstance(refs, list):
            problems.append(f"{field} must be a list, not {refs!r}")
            continue
        for ref in refs:
            problems += _ref_problems(ref, field, parts)
    return problems


def _code_file_problems(code_file: Any, folder: str | Path | None) -> list[str]:
    if code_file is None:
        return []
    if not isinstance(code_file, str) or not code_file or Path(code_file).is_absolute() or ".." in Path(code_file).parts:
        return [f"code_file {code_file!r} must be a file name relative to the kernel folder"]
    if folder is not None and not (Path(folder) / code_file).is_file():
        return [f"code_file {code_file!r} is not in {folder}"]
    return []


def _raise_if(problems: list[str], what: str) -> None:
    if problems:
        raise BundleError(f"{what} would be refused by the Kaggle CLI:\n" + "\n".join(f"  - {p}" for p in problems))


def read_metadata(path: str | Path) -> Any:
    """Read a metadata JSON file; a syntax error becomes a ``BundleError`` naming the file and line."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BundleError(f"{path} is not valid JSON (line {exc.lineno}: {exc.msg})") from exc
