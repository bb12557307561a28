"""``wsdm merge-folds CV_DIR --out RUN``: the k fold models of a ``wsdm cv`` as one run folder.

The 1st place on LMSYS and the 4th on WSDM merged their fold adapters before inference, so a submission
paid for one model instead of k. The merge here is exact: fold i's update of a target weight is
``s * B_i @ A_i`` (``s = lora_alpha / r``), and stacking the k factors into one adapter of rank ``k * r``,
``A = [A_1; ...; A_k]`` and ``B = [B_1, ..., B_k] / k`` with ``lora_alpha`` times k (so ``s`` stays),
gives ``s * B @ A = mean_i(s * B_i @ A_i)``: the mean of the folds' updates, without touching the base
weights (the adapter stays small and loads on any copy of the backbone, 4-bit included). The trained-in-
full head (``modules_to_save``: the score layer) is the mean of the folds' heads. The mean of the weights
is not the mean of the k models' predictions; ``benchmarks/merge_folds.py`` measures the difference.

The run folder is an ordinary one (config.yaml, adapter/, tokenizer/, metrics.json), so ``wsdm predict``,
the inference notebook and ``wsdm bundle adapter`` take it as they take a trained run. Folds that differ
in base model, target modules, rank, alpha or head are refused, every difference named.
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path
from typing import Any

from .errors import ConfigError

ADAPTER = "adapter"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
ADAPTER_CONFIG = "adapter_config.json"
A_KEYS = ("lora_A.weight", "lora_embedding_A")  # [r, in]: stacked along the rank (dim 0)
B_KEYS = ("lora_B.weight", "lora_embedding_B")  # [out, r]: stacked along the rank (dim 1), divided by k
# adapter_config.json values every fold must share (the rank and alpha are checked apart, they change).
SHARED_ADAPTER_KEYS = ("peft_type", "base_model_name_or_path", "target_modules", "modules_to_save", "task_type",
                       "use_rslora", "fan_in_fan_out", "layers_to_transform", "layers_pattern")
# Settings a stacked adapter cannot express (each off or empty by default): refused with the setting named.
UNMERGEABLE = ("use_dora", "lora_bias", "rank_pattern", "alpha_pattern", "trainable_token_indices", "layer_replication")


@dataclasses.dataclass
class MergeReport:
    out: Path
    folds: list[str]
    rank: int  # of the merged adapter: k * the folds' rank
    alpha: float
    lora_tensors: int
    head_tensors: int  # averaged (modules_to_save)

    def to_text(self) -> str:
        return (f"merged {len(self.folds)} fold adapters ({', '.join(self.folds)}) into {self.out}: rank {self.rank}, "
                f"lora_alpha {self.alpha:g}, {self.lora_tensors} LoRA factors stacked, {self.head_tensors} head "
                f"tensor(s) averaged; use it as any run folder (wsdm predict --run {self.out})")


def fold_runs(cv_dir: Path) -> list[Path]:
    """The fold run folders of a finished cv, in fold order (every fold trained, each with a LoRA adapter)."""
    from .config import load_yaml
    from .cv import CONFIG_FILE, fold_dir

    if not (cv_dir / CONFIG_FILE).is_file():
        raise ConfigError(f"{cv_dir} is not a wsdm cv output folder (no {CONFIG_FILE}); give the OUTPUT of "
                          "`wsdm cv --config PRESET`")
    n_folds = int(load_yaml(cv_dir / CONFIG_FILE)["data"]["n_folds"])
    folds = [fold_dir(cv_dir, k) for k in range(n_folds)]
    problems = []
    for k, fold in enumerate(folds):
        if (fold / "model").is_dir():
            problems.append(f"{fold} is a full fine-tune (model/): merge-folds stacks LoRA adapters only")
        elif not (fold / ADAPTER / ADAPTER_WEIGHTS).is_file() or not (fold / "config.yaml").is_file():
            problems.append(f"{fold} has no trained adapter ({ADAPTER}/{ADAPTER_WEIGHTS}): finish the cv first "
                            f"(wsdm cv --config PRESET --folds {k})")
    _raise(cv_dir, problems)
    return folds


def _raise(cv_dir: Path, problems: list[str]) -> None:
    if problems:
        raise ConfigError(f"cannot merge the folds of {cv_dir}:\n" + "\n".join(f"  - {p}" for p in problems))


def _adapter_config(fold: Path) -> dict[str, Any]:
    return json.loads((fold / ADAPTER / ADAPTER_CONFIG).read_text(encoding="utf-8"))


def _comparable(value: Any) -> Any:
    return sorted(set(value)) if isinstance(value, list) else value  # peft writes module lists in any order


def mismatches(folds: list[Path], configs: list[dict[str, Any]], tensors: list[dict[str, Any]]) -> list[str]:
    """Every way the folds differ in what the merge needs to be equal, and every setting it cannot merge."""
    from .config import load_run_config

    problems = []
    runs = [load_run_config(f / "config.yaml") for f in folds]
    first = folds[0].name
    for fold, cfg, run, weights in zip(folds, configs, runs, tensors, strict=True):
        for key in UNMERGEABLE:
            if cfg.get(key):
                problems.append(f"{fold.name}: {key}={cfg.get(key)!r} cannot be merged by stacking LoRA factors")
        if fold == folds[0]:
            continue
        checks = {**{f"adapter {k}": (_comparable(configs[0].get(k)), _comparable(cfg.get(k)))
                     for k in (*SHARED_ADAPTER_KEYS, "r", "lora_alpha")},
                  "base model (model.source)": (runs[0].model.source, run.model.source),
                  "head (format.head)": (runs[0].format.head, run.format.head),
                  "classes (model.num_labels)": (runs[0].model.num_labels, run.model.num_labels)}
        for what, (want, got) in checks.items():
            if want != got:
                problems.append(f"{fold.name} differs from {first} in {what}: {got!r} against {want!r}")
        shapes = {k: tuple(v.shape) for k, v in weights.items()}
        first_shapes = {k: tuple(v.shape) for k, v in tensors[0].items()}
        if shapes != first_shapes:
            differ = sorted(set(shapes.items()) ^ set(first_shapes.items()))
            problems.append(f"{fold.name} differs from {first} in its adapter tensors (names or shapes), e.g. "
                            f"{', '.join(str(d[0]) for d in differ[:3])}")
    return problems


def stack_lora(tensors: list[dict[str, Any]]) -> tuple[dict[str, Any], int, int]:
    """The merged adapter's tensors: LoRA factors stacked along the rank (B divided by k), every other
    tensor (the head) averaged; and the counts of each. Refuses tensors of an unknown kind."""
    import torch

    k = len(tensors)
    merged, lora, heads, unknown = {}, 0, 0, []
    for name in tensors[0]:
        parts = [t[name] for t in tensors]
        if name.endswith(A_KEYS):
            merged[name], lora = torch.cat(parts, dim=0).contiguous(), lora + 1
        elif name.endswith(B_KEYS):
            merged[name], lora = (torch.cat(parts, dim=1) / k).contiguous(), lora + 1
        elif "lora_" in name:
            unknown.append(name)
        else:
            merged[name], heads = (torch.stack([p.float() for p in parts]).mean(0)).to(parts[0].dtype), heads + 1
    if unknown:
        raise ConfigError(f"adapter tensors {unknown[:3]} are neither LoRA A/B factors nor a saved module; "
                          "merge-folds cannot merge them")
    return merged, lora, heads


def merge_folds(cv_dir: str | Path, out: str | Path) -> MergeReport:
    """Write ``out``: a run folder whose adapter is the exact mean of the cv's fold adapters' updates."""
    from safetensors.torch import load_file, save_file

    from .config import load_yaml, save_yaml
    from .io import atomic_dir, atomic_write_json

    cv_dir, out = Path(cv_dir), Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"--out {out} exists and is not empty; choose a new folder (nothing is overwritten)")
    folds = fold_runs(cv_dir)
    configs = [_adapter_config(f) for f in folds]
    tensors = [load_file(str(f / ADAPTER / ADAPTER_WEIGHTS)) for f in folds]
    _raise(cv_dir, mismatches(folds, configs, tensors))
    k, rank, alpha = len(folds), int(configs[0]["r"]), configs[0]["lora_alpha"]
    # the scaling alpha / r (rsLoRA: alpha / sqrt(r)) of rank k*r equals the folds' when alpha grows with it
    merged_alpha = alpha * (math.sqrt(k) if configs[0].get("use_rslora") else k)
    merged, lora, heads = stack_lora(tensors)
    config = load_yaml(folds[0] / "config.yaml")
    config.setdefault("train", {})["output_dir"] = str(out)
    config.setdefault("data", {})["fold"] = -1  # together the folds saw every row: none is held out
    config.setdefault("lora", {}).update(r=rank * k, alpha=merged_alpha)
    with atomic_dir(out) as tmp:
        (tmp / ADAPTER).mkdir()
        save_file(merged, str(tmp / ADAPTER / ADAPTER_WEIGHTS), metadata={"format": "pt"})
        atomic_write_json(tmp / ADAPTER / ADAPTER_CONFIG, {**configs[0], "r": rank * k, "lora_alpha": merged_alpha})
        shutil.copytree(folds[0] / "tokenizer", tmp / "tokenizer")
        save_yaml(config, tmp / "config.yaml")
        atomic_write_json(tmp / "metrics.json", {"merged_folds": [str(f) for f in folds], "fold_rank": rank,
                                                 "fold_alpha": alpha, "rank": rank * k, "alpha": merged_alpha,
                                                 "cv_report": _cv_scores(cv_dir)})
    return MergeReport(out, [f.name for f in folds], rank * k, merged_alpha, lora, heads)


def _cv_scores(cv_dir: Path) -> dict[str, Any] | None:
    """The fold models' own out-of-fold scores (not the merged model's: it has seen every row)."""
    from .cv import REPORT_FILE

    path = cv_dir / REPORT_FILE
    if not path.is_file():
        return None
    report = json.loads(path.read_text(encoding="utf-8"))
    return {k: report.get(k) for k in ("rows", "accuracy", "log_loss", "tta")}
