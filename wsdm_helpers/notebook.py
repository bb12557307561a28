"""The helpers the notebooks call in their cells (output set-up, config assembly, run folders, scores),
so that the notebooks stay free of ``def`` and logic. Running notebooks headless is
:mod:`wsdm_helpers.notebook_runner`.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any

from . import runtime
from .config import resolve_preset
from .data import read_labels
from .errors import ConfigError, DataError

log = logging.getLogger(__name__)


def configure_output() -> None:
    """Progress bars and log lines for a notebook: call it before the other package imports.

    tqdm.auto and the HF Trainer draw widget/HTML bars inside any kernel; under papermill those reach
    the log only as ``HBox(...)`` placeholders, so when :func:`run_notebook` started the kernel the
    text bars are switched on instead. The package's INFO log lines (inference time plans, blend
    weights) are shown either way.
    """
    runtime.sleeping_threads()  # too late once torch is loaded: the runner's kernels have it already
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    package_log = logging.getLogger(__package__)
    package_log.handlers[:] = [handler]
    package_log.setLevel(logging.INFO)
    runtime.plain_library_progress()


def training_config(config: str, overrides: dict[str, Any], output_dir: str = "",
                    shortcuts: dict[str, Any] | None = None):
    """Load a preset plus typed overrides into a checked RunConfig for a training notebook.

    ``shortcuts`` are the notebook's named parameters by dotted key (``{"data.train_path": train_path}``);
    ``""`` and ``None`` there keep the preset's value. ``overrides`` (dotted key -> value) are applied
    as given, after the shortcuts. Values travel as values: nothing is written out and parsed back.
    The run folder is ``output_dir/run`` when ``output_dir`` is given, else the working folder
    (``/kaggle/working`` on Kaggle).
    """
    from .config import load_run_config
    from .kaggle import working_dir

    given = {key: value for key, value in (shortcuts or {}).items() if value not in ("", None)}
    cfg = load_run_config(resolve_preset(config), {**given, **overrides})
    if output_dir:
        cfg.train.output_dir = str(Path(output_dir) / "run")
    elif not Path(cfg.train.output_dir).is_absolute():
        cfg.train.output_dir = str(working_dir() / cfg.train.output_dir)
    return cfg


def training_processes(num_processes: int | None, gpu_count: int | None = None) -> int:
    """The processes to train in: ``num_processes``, else one, said loudly when GPUs would stay idle.

    ``gpu_count``: the machine's CUDA devices (default: torch's count; tests inject it).
    """
    gpu_count = _gpu_count(gpu_count)
    processes = num_processes or 1
    if processes < 1 or (gpu_count and processes > gpu_count):
        raise ConfigError(f"num_processes={num_processes}: this machine has {gpu_count} GPU(s); give 1 to "
                          f"{max(gpu_count, 1)} (one process per GPU), or None")
    if processes == 1 and gpu_count > 1:
        print(f"WARNING: {gpu_count} GPUs are present but training runs in ONE process on one GPU (the others stay "
              f"idle). Set the notebook parameter num_processes={gpu_count} to train on all of them "
              "(accelerate launch, one process per GPU, e.g. the gemma2-9b-2xt4 preset on Kaggle's 2x T4).")
    return processes


def _gpu_count(given: int | None) -> int:
    if given is not None:
        return given
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def train(cfg: Any, num_processes: int | None = None, gpu_count: int | None = None):
    """Train ``cfg`` here (one process) or through ``accelerate launch`` in ``num_processes`` processes
    (the packaged DDP config: ddp-2gpu on GPUs, ddp-cpu-2proc on the CPU); a TrainResult either way."""
    from .training import train as train_here

    processes = training_processes(num_processes, gpu_count)
    return train_here(cfg) if processes == 1 else launch_training(cfg, processes, gpu_count)


def launch_training(cfg: Any, processes: int, gpu_count: int | None = None):
    """``accelerate launch -m wsdm_helpers train`` on ``cfg`` saved as YAML, its output shown in the cell."""
    import json
    import subprocess
    import tempfile

    from .config import accelerate_config, save_yaml
    from .errors import WsdmError
    from .training import TrainResult, last_checkpoint

    config_file = accelerate_config("ddp-2gpu" if _gpu_count(gpu_count) > 1 else "ddp-cpu-2proc")
    run_dir = Path(cfg.train.output_dir)
    with tempfile.TemporaryDirectory(prefix="wsdm-launch-") as tmp:
        command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file),
                   "--num_processes", str(processes), "-m", "wsdm_helpers", "train",
                   "--config", str(save_yaml(cfg, Path(tmp) / "config.yaml"))]
        print("$ " + " ".join(command), flush=True)
        with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
            for line in proc.stdout:  # a kernel shows only what Python prints, not a child's own output
                print(line, end="", flush=True)
    if proc.returncode:
        raise WsdmError(f"accelerate launch ({processes} processes) exited with status {proc.returncode}; its "
                        "output is above")
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        return TrainResult(run_dir, json.loads(metrics.read_text(encoding="utf-8")))
    return TrainResult(run_dir, {"stopped": "max_hours", "checkpoint": last_checkpoint(run_dir / "checkpoints")})


def config_summary(cfg: Any) -> str:
    """The few settings a person checks before a long training run starts."""
    return (f"{cfg.name}: model {cfg.model.source} (family {cfg.model.family}, head {cfg.format.head}, "
            f"{'LoRA r=' + str(cfg.lora.r) if cfg.lora.enabled else 'full fine-tuning'}), "
            f"data {cfg.data.train_path} fold {cfg.data.fold}/{cfg.data.n_folds}, max_length {cfg.format.max_length}, "
            f"max_steps {cfg.train.max_steps}, lr {cfg.train.learning_rate}\n-> {cfg.train.output_dir}")


def output_folder(output_dir: str | None) -> Path:
    """``output_dir`` or the working folder (``/kaggle/working`` on Kaggle), created."""
    from .kaggle import working_dir

    folder = Path(output_dir) if output_dir else working_dir()
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _find_in_inputs(name: str, depth: int = 4) -> list[Path]:
    """Files called ``name`` at most ``depth`` folders below the input folder (Kaggle: /kaggle/input)."""
    from .kaggle import input_dir

    return sorted(p for d in range(depth + 1) for p in input_dir().glob("/".join(["*"] * d + [name])))


def find_runs(run_dirs: list[str]) -> list[Path]:
    """The given run folders (checked), or every run folder in the attached Kaggle datasets."""
    from .kaggle import input_dir
    from .pipeline import run_kind

    if run_dirs:
        runs = [Path(r) for r in run_dirs]
        bad = [str(r) for r in runs if run_kind(r) is None]
        if bad:
            raise ConfigError(f"not a run folder (needs config.yaml and adapter/ or model/, or baseline.json): "
                              f"{', '.join(bad)}; give folders written by `wsdm train`, train_*.ipynb or "
                              "`wsdm baseline --run-dir`")
        return runs
    found = _find_in_inputs("config.yaml") + _find_in_inputs("baseline.json")
    runs = sorted({p.parent for p in found if run_kind(p.parent) is not None})
    if not runs:
        raise ConfigError(f"no run folder (config.yaml + adapter/, or baseline.json) under {input_dir()}; attach "
                          "the adapter dataset (`wsdm bundle adapter`) or pass run_dirs")
    return runs


def read_test(test_path: str | None):
    """Read the test file into the canonical frame; ``None`` = the competition's test file in the inputs."""
    from .data import read_pairs

    frame, report = read_pairs(test_path or competition_test_file())
    print(report.to_text())
    return frame


def competition_test_file() -> Path:
    """The test file in the attached competition's own folder under the inputs (Kaggle: /kaggle/input).

    Other test files there (a dataset that ships one) are named in a warning; none in a competition's
    folder, or test files of both competitions, is an error: the submission must score the competition's rows.
    """
    from .kaggle import COMPETITIONS, input_dir
    from .kaggle.competitions import competition_folders

    root = input_dir()
    found = _find_in_inputs("test.parquet") + _find_in_inputs("test.csv")
    own = {c.slug: [p for p in found if any(p.is_relative_to(f) for f in competition_folders(root, c))]
           for c in COMPETITIONS.values()}
    own = {slug: files for slug, files in own.items() if files}
    listed = ", ".join(map(str, found)) or "none"
    if len(own) != 1:
        why = "test files of both competitions" if own else "no test file in a competition's own folder"
        raise DataError(f"{why} under {root} ({' or '.join(f'{root}/{c.slug}' for c in COMPETITIONS.values())}); "
                        f"test files found: {listed}. Attach the competition (Add Input -> Competitions) or pass "
                        "test_path")
    chosen = next(iter(own.values()))[0]
    if len(found) > 1:
        log.warning("several test files under %s: %s; using %s, the competition's own (pass test_path to choose)",
                    root, listed, chosen)
    return chosen


def given(**values: Any) -> dict[str, Any]:
    """The parameters that were set (not None): typed overrides for the pipeline."""
    return {key: value for key, value in values.items() if value is not None}


def attach_labels(preds: Any, labels_path: str | None):
    """Predictions with ``label`` (and ``language``) joined on id when a labels file is given."""
    if not labels_path:
        return preds
    return preds.merge(read_labels(labels_path), on="id", how="left").fillna({"label": -1})


def score(preds: Any, labels_path: str | None, out_dir: str | Path) -> dict[str, float] | None:
    """Accuracy and log loss against a labels file, saved as ``scores.json``; None without labels."""
    if not labels_path:
        return None
    from . import metrics
    from .io import atomic_write_json
    from .submission import align_to_ids, prob_columns

    labels = read_labels(labels_path)
    aligned = align_to_ids(preds, labels["id"], where=f"predictions (ids compared with {labels_path})")
    probs = aligned[prob_columns(aligned)].to_numpy()
    y = labels["label"].to_numpy()
    scores = {"accuracy": metrics.accuracy(y, probs), "log_loss": metrics.log_loss(y, probs), "rows": len(y)}
    atomic_write_json(Path(out_dir) / "scores.json", scores)
    return scores


def read_oofs(run_dirs: list[str]) -> list[Any]:
    """Each run's ``oof.parquet`` (validation predictions with label and language)."""
    import pandas as pd

    if len(run_dirs) < 2:
        raise ConfigError(f"run_dirs={run_dirs}: give at least two run folders to blend")
    missing = [r for r in run_dirs if not (Path(r) / "oof.parquet").is_file()]
    if missing:
        raise ConfigError(f"no oof.parquet in {', '.join(missing)}; train with a held-out fold (data.fold >= 0)")
    return [pd.read_parquet(Path(r) / "oof.parquet") for r in run_dirs]


def compare_scores(oofs: list[Any], blended: Any, run_dirs: list[str], weights: Any, out_dir: str | Path,
                   space: str = "probability"):
    """One row per run and one for the blend (weight, accuracy, log loss); saves scores.csv and weights.json
    (the weights and their blend space, what inference.ipynb takes as ``weights`` and ``blend_space``)."""
    import pandas as pd

    from . import metrics
    from .io import atomic_write_csv, atomic_write_json
    from .submission import align_to_ids, prob_columns

    labels = oofs[0][["id", "label"]].assign(id=lambda f: f["id"].astype(str))
    rows = []
    for name, frame, weight in [*zip(run_dirs, oofs, weights, strict=True), ("blend", blended, 1.0)]:
        aligned = align_to_ids(frame, labels["id"], where=str(name))
        probs = aligned[prob_columns(aligned)].to_numpy()
        y = labels["label"].to_numpy()
        rows.append({"run": str(name), "weight": float(weight), "accuracy": metrics.accuracy(y, probs),
                     "log_loss": metrics.log_loss(y, probs)})
    table = pd.DataFrame(rows)
    atomic_write_csv(table, Path(out_dir) / "scores.csv")
    atomic_write_json(Path(out_dir) / "weights.json", {"run_dirs": list(map(str, run_dirs)),
                                                       "weights": [float(w) for w in weights], "space": space})
    return table
