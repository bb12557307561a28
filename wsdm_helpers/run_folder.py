"""What a run folder must hold to load, checked from its files alone (no torch, no weights read).

One home for the checks that ``modeling.load_run`` (every prediction, cv, evaluate) and
``wsdm bundle adapter`` make before anything is loaded or copied, so a broken folder is named up front
(a missing ``tokenizer/``, an edited ``model.num_labels``, an ``adapter_config.json`` whose rank its
tensors do not have) instead of failing deep inside transformers or peft.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
from pathlib import Path
from typing import Any

from .config import RunConfig, load_run_config
from .errors import ConfigError

log = logging.getLogger(__name__)

RUN_CONFIG = "config.yaml"
IDENTITY = "identity.json"  # the base model's and the adapter's fingerprints, written at the end of training
SAMPLE_BYTES = 4096  # read from the start of every tensor of the base model: its values' fingerprint
WEIGHT_FOLDERS = ("adapter", "model")
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# the classification head's weight [num_labels, hidden], plain or as peft's modules_to_save copy
_HEAD_WEIGHT = re.compile(r"(?:^|\.)(?:score|classifier)(?:\.modules_to_save(?:\.default)?)?\.weight$")
_LORA_A = re.compile(r"\.lora_A(?:\.default)?\.weight$")


def safetensors_header(path: Path) -> dict[str, Any] | None:
    """The tensor table of a .safetensors file (name -> dtype, shape, data_offsets), or None when the file
    is cut short or is not safetensors. Reads the header only."""
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(8)
        n = int.from_bytes(head, "little") if len(head) == 8 else size
        if n > size - 8:
            return None
        try:
            header = json.loads(fh.read(n))
        except (ValueError, UnicodeDecodeError):
            return None
    if not isinstance(header, dict):
        return None
    tensors = {k: v for k, v in header.items() if k != "__metadata__"}
    end = max((t["data_offsets"][1] for t in tensors.values()), default=0)
    return tensors if 8 + n + end <= size else None


def run_folder_problems(run_dir: Path) -> tuple[RunConfig | None, list[str]]:
    """(the run's config, every reason the folder cannot load); the config is None when it cannot be read."""
    problems, cfg = [], None
    if not (run_dir / RUN_CONFIG).is_file():
        problems.append(f"{RUN_CONFIG} (the resolved RunConfig) is missing")
    else:
        try:
            cfg = load_run_config(run_dir / RUN_CONFIG)
        except ConfigError as exc:
            problems.append(f"{RUN_CONFIG} cannot be read: {exc}")
    weights = [name for name in WEIGHT_FOLDERS if (run_dir / name).is_dir()]
    if len(weights) != 1:
        problems.append(f"expected exactly one of adapter/ (LoRA) or model/ (full weights), found {weights or 'none'}")
    if not (run_dir / "tokenizer").is_dir():
        problems.append("tokenizer/ is missing (training writes it beside adapter/; copy it from the run's "
                        "original folder)")
    if cfg is not None and weights == ["adapter"]:
        problems += _adapter_problems(run_dir / "adapter", cfg)
    if cfg is not None and weights == ["model"]:
        problems += _full_model_problems(run_dir / "model", cfg)
    return cfg, problems


def _adapter_problems(adapter: Path, cfg: RunConfig) -> list[str]:
    config_path, weights = adapter / "adapter_config.json", adapter / ADAPTER_WEIGHTS
    if not config_path.is_file():
        return ["adapter/adapter_config.json is missing"]
    if not weights.is_file():
        return []  # a pickle-only adapter: modeling.check_weight_files names it
    tensors = safetensors_header(weights)
    if tensors is None:
        return [f"adapter/{ADAPTER_WEIGHTS} is cut short or not safetensors (copy it again)"]
    try:
        adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        return [f"adapter/adapter_config.json is not valid JSON ({exc})"]
    return _rank_problems(adapter_config, tensors) + _head_problems(tensors, cfg, "the adapter's")


def _rank_problems(adapter_config: dict, tensors: dict) -> list[str]:
    r = adapter_config.get("r")
    if adapter_config.get("rank_pattern") or not isinstance(r, int):
        return []
    ranks = sorted({t["shape"][0] for k, t in tensors.items() if _LORA_A.search(k)})
    if ranks and ranks != [r]:
        return [f"adapter/adapter_config.json says r={r} but its LoRA tensors have rank "
                f"{', '.join(map(str, ranks))}: the file was edited or belongs to another adapter; restore the "
                "adapter/ folder training wrote"]
    return []


def _head_problems(tensors: dict, cfg: RunConfig, whose: str) -> list[str]:
    if cfg.format.head != "classifier":
        return []
    outputs = sorted({t["shape"][0] for k, t in tensors.items() if _HEAD_WEIGHT.search(k)})
    if outputs and outputs != [cfg.model.num_labels]:
        return [f"{RUN_CONFIG} has model.num_labels={cfg.model.num_labels} but {whose} score layer has "
                f"{', '.join(map(str, outputs))} outputs: set model.num_labels back to the value it was trained with"]
    return []


def _full_model_problems(model: Path, cfg: RunConfig) -> list[str]:
    try:
        config = json.loads((model / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return ["model/config.json is missing or not valid JSON"]
    labels = config.get("num_labels", len(config.get("id2label") or {}) or None)
    if cfg.format.head == "classifier" and labels is not None and labels != cfg.model.num_labels:
        return [f"{RUN_CONFIG} has model.num_labels={cfg.model.num_labels} but model/config.json has "
                f"{labels} labels: set model.num_labels back to the value it was trained with"]
    return []


def check_run_folder(run_dir: str | Path) -> None:
    """ConfigError listing every problem of the folder (``run_folder_problems``)."""
    _, problems = run_folder_problems(Path(run_dir))
    if problems:
        raise ConfigError(f"{run_dir}: cannot be loaded:\n" + "\n".join(f"  - {p}" for p in problems))


# ---- identity: which base model and which adapter a run is ---------------------------------------------
def weights_fingerprint(folder: Path) -> dict[str, str]:
    """Cheap fingerprints of a model folder's weights, independent of how they are sharded or where the
    folder lies: ``tensors`` hashes every tensor's name, dtype and shape; ``values`` the first
    SAMPLE_BYTES of every tensor's data (a few MB read for a 9B model). Pickled weights: names, sizes and
    the first bytes of each file."""
    tensors, values = hashlib.sha256(), hashlib.sha256()
    files = sorted(folder.glob("*.safetensors"))
    for path in files:
        header = safetensors_header(path) or {}
        with open(path, "rb") as fh:
            data_start = 8 + int.from_bytes(fh.read(8), "little")
            for name in sorted(header):
                begin, end = header[name]["data_offsets"]
                tensors.update(f"{name}:{header[name]['dtype']}:{header[name]['shape']};".encode())
                fh.seek(data_start + begin)
                values.update(fh.read(min(SAMPLE_BYTES, end - begin)))
    for path in [] if files else sorted(p for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth")):
        tensors.update(f"{path.name}:{path.stat().st_size};".encode())
        with open(path, "rb") as fh:
            values.update(fh.read(SAMPLE_BYTES))
    return {"tensors": tensors.hexdigest()[:16], "values": values.hexdigest()[:16]}


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:16]


def run_identity(run_dir: Path, base_folder: Path) -> dict[str, Any]:
    """What identity.json records: the base model (its folder, for messages, and fingerprints) and the adapter."""
    return {"base_model": {"folder": str(base_folder), **weights_fingerprint(base_folder)},
            "adapter": {ADAPTER_WEIGHTS: file_sha256(run_dir / "adapter" / ADAPTER_WEIGHTS)}}


def check_identity(run_dir: Path, base_folder: Path) -> None:
    """ConfigError when ``base_folder`` is not the base model the run trained on, or adapter/ is not the
    adapter it trained. A LoRA run folder from before identity.json loads with a warning (a full fine-tune has
    no identity.json: its model/ is the whole model)."""
    path = run_dir / IDENTITY
    if not path.is_file():
        if (run_dir / "adapter").is_dir():
            log.warning("%s has no %s (a run from an older version): cannot check that %s is the base model it "
                        "was trained on", run_dir, IDENTITY, base_folder)
        return
    recorded = json.loads(path.read_text(encoding="utf-8"))
    problems = []
    base = recorded["base_model"]
    now = weights_fingerprint(base_folder)
    if any(base[k] != now[k] for k in now):
        what = "tensor shapes" if base["tensors"] != now["tensors"] else "weights"
        problems.append(f"it was trained on the base model {base['folder']} (fingerprint {base['values']}) but "
                        f"model.source gives {base_folder} (fingerprint {now['values']}): their {what} differ. Point "
                        f"model.source in {run_dir / RUN_CONFIG} at the model it was trained on")
    adapter = run_dir / "adapter" / ADAPTER_WEIGHTS
    found, trained = file_sha256(adapter) if adapter.is_file() else None, recorded["adapter"][ADAPTER_WEIGHTS]
    if found not in (None, trained):
        problems.append(f"adapter/{ADAPTER_WEIGHTS} is not the adapter this run trained (sha256 {found}, recorded "
                        f"{trained}): copy the whole run folder of the adapter, not its adapter/ alone")
    if problems:
        raise ConfigError(f"{run_dir}: cannot be loaded:\n" + "\n".join(f"  - {p}" for p in problems))
