"""The trained-model dataset: a training run folder packed so the scoring notebook can load it offline.

The bundle keeps the run folder's layout (``config.yaml``, ``adapter/`` or ``model/``,
``tokenizer/``, ``metrics.json``), so ``/kaggle/input/<slug>`` is itself a run folder that
``modeling.load_run`` reads. Checkpoints, logs, out-of-fold predictions and peft's stub model
card (``adapter/README.md``) stay behind.

Paths of the build machine would break on Kaggle, so the copy is made portable:
``model.source`` in ``config.yaml`` (and ``base_model_name_or_path`` in ``adapter_config.json``)
becomes ``base_model`` when given (where the backbone lies on Kaggle, e.g.
``/kaggle/input/gemma-2/transformers/gemma-2-9b-it/2``); any other absolute build-machine path in
the config or the JSON files (training data, output folder, ``_name_or_path``) is reduced to its
file name, since inference never reads it. A local backbone path left without ``base_model`` is
reported by the checks.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from ..errors import BundleError
from ..io import MIN_FREE_BYTES, atomic_write_json, atomic_write_text, check_output_dir
from ..run_folder import RUN_CONFIG, WEIGHT_FOLDERS, run_folder_problems
from .checks import BUILD_PATH_RE, BundleReport, check_bundle, write_manifest
from .common import dataset_from_template, staged_folder, write_dataset_metadata

DATASET = "wsdm-adapter"
COPIED = ("config.yaml", "metrics.json", "identity.json", "adapter", "model", "tokenizer")
# peft's stub model card: "[More Information Needed]" and the build machine's base-model path.
LEFT_BEHIND = ("README.md",)


def _portable(value: Any, base_model: str | None, key: str = "") -> Any:
    """``value`` with build-machine paths replaced (recursively through dicts and lists)."""
    if isinstance(value, dict):
        return {k: _portable(v, base_model, k) for k, v in value.items()}
    if isinstance(value, list):
        return [_portable(v, base_model, key) for v in value]
    if isinstance(value, str) and BUILD_PATH_RE.fullmatch(value):
        if key == "base_model_name_or_path" and base_model:
            return base_model
        return Path(value).name
    return value


def _portable_config(path: Path, base_model: str | None) -> str | None:
    """Rewrite the run's config.yaml in place; return its (possibly replaced) model.source."""
    config = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    if not isinstance(config, dict):
        raise BundleError(f"{path} does not hold a run configuration (a YAML mapping)")
    # The backbone path is kept as is without base_model, so that the checks point at it.
    source = base_model or (config.get("model") or {}).get("source")
    config = _portable(config, base_model)
    if source is not None:
        config.setdefault("model", {})["source"] = source
    atomic_write_text(path, yaml.safe_dump(config, sort_keys=False, allow_unicode=True))
    return source


def _portable_json(path: Path, base_model: str | None) -> None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        return  # the checks report what remains
    portable = _portable(data, base_model)
    if portable != data:
        atomic_write_json(path, portable)


def _link_problems(run_dir: Path) -> list[str]:
    """Symlinks among the files to copy: a linked folder would be copied (and rewritten) outside the bundle."""
    found = []
    for name in COPIED:
        top = run_dir / name
        found += [top] if top.is_symlink() else []
        if top.is_dir() and not top.is_symlink():
            for folder, dirs, files in os.walk(top):
                found += [Path(folder) / n for n in dirs + files if (Path(folder) / n).is_symlink()]
    return [f"{p.relative_to(run_dir).as_posix()} is a symlink to {os.readlink(p)}: copy the real file or folder "
            "into the run folder (cp -rL) instead" for p in found]


def _check_run_dir(run_dir: Path) -> str:
    """The weights folder of a run (adapter or model); raise naming what is missing (the checks every load
    makes, ``run_folder.run_folder_problems``, plus symlinks)."""
    _, problems = run_folder_problems(run_dir)
    problems += _link_problems(run_dir)
    if problems:
        raise BundleError(f"{run_dir} is not a finished training run folder:\n"
                          + "\n".join(f"  - {p}" for p in problems) + "\n  (train one with `wsdm train`)")
    return next(name for name in WEIGHT_FOLDERS if (run_dir / name).is_dir())


def bundle_adapter(run_dir: str | Path, out: str | Path, *, base_model: str | None = None,
                   username: str | None = None, slug: str | None = None, title: str | None = None,
                   replace: bool = False, merged: str | None = None) -> BundleReport:
    """Pack the run folder ``run_dir`` as the ``wsdm-adapter`` dataset at ``out`` and check it.

    ``merged`` (float32 or bfloat16): also the adapter merged into the base in that dtype, as ``merged/``,
    which ``inference.backend=vllm`` loads directly (vllm_backend.merged_folder; no merge on Kaggle).

    ``slug`` and ``title`` name the dataset (one per model of an ensemble). A run folder holding
    symlinks is refused before anything is copied; ``replace`` allows rebuilding over an earlier bundle.
    """
    run_dir = Path(run_dir)
    weights = _check_run_dir(run_dir)
    meta = dataset_from_template(DATASET, username, slug=slug, title=title)
    size = sum(p.stat().st_size for name in COPIED for p in [run_dir / name, *(run_dir / name).rglob("*")]
               if p.is_file())
    check_output_dir(Path(out).parent, need_bytes=2 * size + MIN_FREE_BYTES, what="the bundle's parent")
    with staged_folder(out, replace) as stage:
        for name in COPIED:
            source = run_dir / name
            if source.is_dir() and not source.is_symlink():
                shutil.copytree(source, stage / name, symlinks=True, ignore=shutil.ignore_patterns(*LEFT_BEHIND))
            elif source.exists() or source.is_symlink():
                shutil.copy2(source, stage / name, follow_symlinks=False)
        source = _portable_config(stage / RUN_CONFIG, base_model)
        for path in sorted(stage.rglob("*.json")):
            if not path.is_symlink():
                _portable_json(path, base_model)
        if merged:
            from ..vllm_backend import BUNDLED, merged_folder

            merged_folder(run_dir, merged, out=stage / BUNDLED)
        write_dataset_metadata(stage, meta)
        write_manifest(stage, "adapter", weights=weights, base_model=source)
    return check_bundle(out)
