"""Training through the HF Trainer: data, arguments, pair metrics, resume, OOM back-off, run folder.

``train(cfg)`` reads the training file, holds out one prompt-grouped fold, adds A/B-swapped copies of
the training rows, encodes everything with the family's template, and fits the model with the HF
Trainer (AdamW, cosine schedule with warmup, gradient accumulation, length-grouped batches). The
loss is a cross-entropy over the class logits only (classifier logits, or the answer-token logits at
the last position for the mcq head), optionally label-smoothed; with ``train.distill`` it is the
distillation loss of :mod:`distill` on soft labels joined on id (swapped rows carry flipped soft
labels). Evaluation runs on the validation rows in both orientations, so
accuracy, log loss and the flip rate (position bias) come from one pass. Multi-process runs go
through ``accelerate launch --config_file configs/accelerate/NAME.yaml -m wsdm_helpers train ...``
(ddp-2gpu, ddp-cpu-2proc, fsdp-full-finetune); the Trainer does the distributed work.

Run folder::

    config.yaml       resolved RunConfig (reproduces the run; model.source is pypi:NAME or an absolute path)
    adapter/          peft adapter (safetensors; classifier head included) -- or model/ for full fine-tunes
    identity.json     the base model's and the adapter's fingerprints (run_folder.py): a load on another base,
                      or with another run's adapter, is refused
    tokenizer/        tokenizer with its pad token
    metrics.json      final validation metrics, per-language accuracy, curve, OOM retries
    log_history.json  the Trainer's log (loss, learning rate, evaluations)
    oof.parquet       validation predictions under the inference section's TTA (tta.apply_policy): id,
                      winner_model_a, winner_model_b(, winner_tie), label, language
    checkpoints/      Trainer checkpoints (resume) and settings.json, the training settings they were made
                      with; removed at the end unless train.keep_checkpoints. Each is written in
                      checkpoints/.saving/ and renamed to checkpoint-N when complete
    .wsdm-writer.lock the writer lock while a run trains (io.writer_lock)

Resume (``train.resume``, on by default) continues the last checkpoint only when the settings that
change training (:func:`training_settings`) are those the checkpoints were made with; otherwise the
run stops before training and lists each changed key with its old and new value.

Across Kaggle sessions (``/kaggle/working`` starts empty in each): ``train.resume_from`` names the
earlier session's output, attached read-only; its latest complete checkpoint (and the best one it
names) is copied into ``output_dir/checkpoints`` and resumed as above. The adapter is written as soon
as training ends, before the final evaluation on the whole held-out fold, which ``train.final_eval``
turns off and ``train.max_hours`` skips when it would not end in time (metrics.json says so).
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import math
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from .config import (
    BITSANDBYTES_OPTIMIZERS,
    HIGHER_IS_BETTER,
    InferenceConfig,
    RunConfig,
    device_problems,
    save_yaml,
    to_dict,
)
from .errors import ConfigError, NumericalError
from .io import atomic_dir, atomic_write_json, atomic_write_parquet, check_output_dir, writer_lock

log = logging.getLogger(__name__)



@dataclasses.dataclass
class TrainResult:
    run_dir: Path
    metrics: dict[str, Any]


# ---- data -----------------------------------------------------------------------------------------
class PairDataset:
    """Map-style dataset of encoded pairs; ``row_index`` ties each prediction back to its row.

    ``soft``: teacher probabilities [rows, C] aligned with ``encoded`` (NaN rows = none), for distillation.
    """

    def __init__(self, encoded, rows: np.ndarray | None = None, soft: np.ndarray | None = None):
        self.encoded, self.soft = encoded, soft
        self.rows = np.arange(len(encoded)) if rows is None else rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, Any]:
        row = int(self.rows[i])
        item = {"input_ids": self.encoded.input_ids[row], "labels": int(self.encoded.labels[row]), "row_index": row}
        if self.soft is not None:
            item["soft"] = self.soft[row]
        return item


@dataclasses.dataclass
class PairCollator:
    """Dynamic padding with the family's padding side (batching.collate), plus labels and row indices."""

    pad_id: int
    padding_side: str

    def __call__(self, features: list[dict[str, Any]]) -> dict[str, Any]:
        import torch

        from .batching import collate

        batch = collate([f["input_ids"] for f in features], self.pad_id, self.padding_side)
        batch["labels"] = torch.tensor([f["labels"] for f in features], dtype=torch.long)
        batch["row_index"] = torch.tensor([f["row_index"] for f in features], dtype=torch.long)
        if "soft" in features[0]:
            batch["soft"] = torch.tensor(np.stack([f["soft"] for f in features]), dtype=torch.float32)
        return batch


class EvalSet:
    """Validation rows in both orientations: rows [0, n) as given, rows [n, 2n) with A and B swapped.

    ``compute_metrics`` maps predictions back to rows through ``row_index`` (any sampler order, any
    number of processes) and keeps the last probabilities for the out-of-fold file.
    """

    def __init__(self, frame, tokenizer, cfg: RunConfig, template: str, swap: bool):
        import pandas as pd

        from .tokenization import encode_pairs
        from .tta import swap_pairs

        self.frame = frame.reset_index(drop=True)
        self.n = len(self.frame)
        both = pd.concat([self.frame, swap_pairs(self.frame)], ignore_index=True) if swap else self.frame
        self.encoded = encode_pairs(both, tokenizer, cfg.format, template)
        self.dataset = PairDataset(self.encoded)
        self.probs_ab: np.ndarray | None = None
        self.probs_ba: np.ndarray | None = None  # the swapped pass, mapped back to AB
        self.tta_average = cfg.inference.tta_average

    def compute_metrics(self, prediction) -> dict[str, float]:
        from . import metrics
        from .tta import average_orientations, flip_probs

        logits = np.asarray(prediction.predictions, dtype=np.float64)
        if not np.isfinite(logits).all():
            raise NumericalError(f"{int((~np.isfinite(logits)).any(axis=1).sum())} of {len(logits)} validation rows "
                              "have NaN/inf logits: the model overflowed its dtype or diverged. Use "
                              "model.dtype=bfloat16 or float32 (float16 overflows on some families), or lower "
                              "train.learning_rate")
        rows = np.asarray(prediction.label_ids[1])
        probs = np.empty_like(logits)
        probs[rows] = _softmax(logits)
        labels = self.frame["label"].to_numpy()
        self.probs_ab = probs[: self.n]
        result = {"accuracy": metrics.accuracy(labels, self.probs_ab), "log_loss": metrics.log_loss(labels, self.probs_ab)}
        if len(probs) == 2 * self.n:
            self.probs_ba = flip_probs(probs[self.n:])  # back to the AB orientation
            swapped = average_orientations(self.probs_ab, probs[self.n:], self.tta_average)
            result["flip_rate"] = metrics.flip_rate(self.probs_ab, self.probs_ba)
            result["accuracy_swap_tta"] = metrics.accuracy(labels, swapped)
            result["log_loss_swap_tta"] = metrics.log_loss(labels, swapped)
        return {k: float(v) for k, v in result.items()}

    def oof_frame(self, icfg: InferenceConfig):
        """The held-out rows' predictions under the inference section's TTA (what a submission of this run
        would give them; without the swapped pass, the rows as given), with label and language."""
        from .tta import apply_policy

        ab, ba = (self._predictions(p) for p in (self.probs_ab, self.probs_ba))
        out = ab if ba is None else apply_policy(ab, ba, icfg.tta, icfg.tta_band, icfg.tta_share, icfg.tta_average)
        return out.assign(label=self.frame["label"].to_numpy(), language=self.frame["language"].to_numpy())

    def _predictions(self, probs: np.ndarray | None):
        import pandas as pd

        from .tta import columns_for

        if probs is None:
            return None
        columns = columns_for(probs.shape[1])
        return pd.DataFrame({"id": self.frame["id"].astype(str), **{c: probs[:, j] for j, c in enumerate(columns)}})


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def split_data(cfg: RunConfig):
    """(train_frame, valid_frame or None) with the label set checked against model.num_labels."""
    from .data import load_training_frame, split_fold

    frame = load_training_frame(cfg.data)
    top = int(frame["label"].max()) if len(frame) else -1
    soft = cfg.train.distill.soft_labels
    if top >= cfg.model.num_labels or (int(frame["label"].min()) < 0 and not soft):
        raise ConfigError(f"{cfg.data.train_path}: labels range over {sorted(frame['label'].unique())} but "
                          f"model.num_labels={cfg.model.num_labels}; set data.ties=drop (or split) for 2 classes, "
                          "or model.num_labels=3 with data.ties=keep; unlabeled rows (-1) train only on soft "
                          "labels (train.distill.soft_labels)")
    if soft:
        from .distill import attach_soft_labels

        frame = attach_soft_labels(frame, soft, cfg.model.num_labels)
    if cfg.data.fold < 0:
        return frame, None
    folds = None
    if cfg.data.folds_file:
        from .data import folds_from_table, read_table

        folds = folds_from_table(frame, read_table(cfg.data.folds_file), cfg.data.n_folds, cfg.data.folds_file)
    if cfg.data.valid_from == "train_path" and cfg.data.extra_train_paths:
        train_frame, valid_frame = _split_main_file(frame, cfg, folds)
    else:
        train_frame, valid_frame = split_fold(frame, cfg.data.fold, cfg.data.n_folds, cfg.data.seed, folds)
    if valid_frame.empty or train_frame.empty:
        empty = "validation" if valid_frame.empty else "training"
        raise ConfigError(f"{cfg.data.train_path}: data.fold={cfg.data.fold} of data.n_folds={cfg.data.n_folds} "
                          f"leaves the {empty} rows empty ({len(frame)} rows; folds are grouped by prompt); lower "
                          "data.n_folds, raise data.max_rows, or set data.fold=-1 to train on every row without "
                          "validation")
    return train_frame, valid_frame


def augmented_frame(frame, cfg: RunConfig):
    """The training rows, followed by their A/B-swapped copies when ``train.swap_augment`` is on."""
    import pandas as pd

    from .tta import swap_pairs

    return pd.concat([frame, swap_pairs(frame)], ignore_index=True) if cfg.train.swap_augment else frame


def _split_main_file(frame, cfg: RunConfig, folds=None):
    """data.valid_from=train_path: the fold is held out of train_path's rows; extra files always train.
    ``folds``: the fold of every row of ``frame`` (a saved fold table), else computed on train_path's rows."""
    import pandas as pd

    from .data import split_fold

    d = cfg.data
    main = main_file_rows(frame, d)
    train_rows, valid = split_fold(frame[main], d.fold, d.n_folds, d.seed, None if folds is None else folds[main])
    return pd.concat([train_rows, frame[~main]], ignore_index=True), valid


def main_file_rows(frame, data) -> np.ndarray:
    """Rows of ``frame`` that come from ``data.train_path`` (not from extra_train_paths)."""
    from .data import read_pairs

    ids = read_pairs(data.train_path, data.layout, data.ties, data.column_map or None, data.seed)[0]["id"]
    return frame["id"].isin(ids).to_numpy()


def _train_dataset(frame, tokenizer, cfg: RunConfig, template: str) -> PairDataset:
    from .distill import soft_columns
    from .tokenization import encode_pairs

    frame = augmented_frame(frame, cfg)  # swapped copies carry flipped soft labels (tta.swap_pairs)
    soft = frame[soft_columns(cfg.model.num_labels)].to_numpy(np.float32) if cfg.train.distill.soft_labels else None
    return PairDataset(encode_pairs(frame, tokenizer, cfg.format, template), soft=soft)


def _limit_rows(frame, n: int | None, seed: int):
    return frame if n is None or len(frame) <= n else frame.sample(n=n, random_state=seed)


# ---- Trainer --------------------------------------------------------------------------------------
def resolve_optimizer(name: str, device_type: str) -> str:
    """auto: paged 8-bit AdamW on CUDA when bitsandbytes is installed, else torch AdamW."""
    if name != "auto":
        return name
    import importlib.util

    if device_type == "cuda" and importlib.util.find_spec("bitsandbytes") is not None:
        return "paged_adamw_8bit"
    return "adamw_torch"


def training_arguments(cfg: RunConfig, checkpoint_dir: Path, batch_size: int, accumulation: int,
                       has_eval: bool, dtype_name: str = "float32"):
    """TrainingArguments for this run (precision from the resolved model dtype)."""
    import torch
    from transformers import TrainingArguments

    t = cfg.train
    cuda = torch.cuda.is_available()
    eval_every = has_eval and t.eval_steps > 0
    return TrainingArguments(
        output_dir=str(checkpoint_dir),
        learning_rate=t.learning_rate, num_train_epochs=t.num_epochs, max_steps=t.max_steps,
        per_device_train_batch_size=batch_size, per_device_eval_batch_size=2 * batch_size,
        gradient_accumulation_steps=accumulation, warmup_steps=t.warmup_ratio, weight_decay=t.weight_decay,
        lr_scheduler_type=t.scheduler, optim=resolve_optimizer(t.optimizer, "cuda" if cuda else "cpu"),
        train_sampling_strategy="group_by_length" if t.group_by_length else "random",
        eval_strategy="steps" if eval_every else "no", eval_steps=t.eval_steps if eval_every else None,
        save_strategy="steps", save_steps=t.save_steps,
        save_total_limit=t.save_total_limit, load_best_model_at_end=eval_every,
        metric_for_best_model=t.best_metric if eval_every else None,
        greater_is_better=t.best_metric in HIGHER_IS_BETTER if eval_every else None,
        max_grad_norm=t.max_grad_norm,
        logging_steps=t.logging_steps, logging_first_step=True, seed=t.seed, data_seed=t.seed,
        logging_nan_inf_filter=False,  # a NaN loss stops training (trainer.check_step_numerics), not averaged away
        fp16=cuda and dtype_name == "float16", bf16=dtype_name == "bfloat16",
        use_cpu=not cuda, report_to="none", remove_unused_columns=False,
        label_names=["labels", "row_index"], ddp_find_unused_parameters=False,
        dataloader_num_workers=0, save_only_model=False,
    )


def halve_batch(batch_size: int, accumulation: int) -> tuple[int, int]:
    """Half the per-device batch, more accumulation steps: the effective batch stays (at least) the same."""
    if batch_size <= 1:
        raise ValueError("per-device batch size is already 1; nothing left to halve")
    new_batch = batch_size // 2
    return new_batch, math.ceil(batch_size * accumulation / new_batch)


def last_checkpoint(checkpoint_dir: Path) -> str | None:
    """The newest complete checkpoint; newer incomplete ones (a kill mid-save by an older version, a
    truncated file) are removed with a warning naming the one resumed instead."""
    found = _checkpoint_folders(checkpoint_dir)
    for i, folder in enumerate(found):
        problem = checkpoint_problem(folder)
        if problem is None:
            return str(folder)
        older = next((str(p) for p in found[i + 1:] if checkpoint_problem(p) is None), None)
        log.warning("%s is incomplete (%s): removed; resuming from %s instead", folder, problem,
                    older or "the start (no complete checkpoint)")
        shutil.rmtree(folder)
    return None


def checkpoint_problem(folder: Path) -> str | None:
    """Why a Trainer checkpoint folder cannot be resumed (a missing or cut-short file), or None. Cheap:
    it reads the safetensors headers and the zip directories of torch's files, not the tensors."""
    names = {p.name for p in folder.iterdir()}
    missing = [n for n in (STATE_FILE, "optimizer.pt") if n not in names]
    if not names & {"adapter_model.safetensors", "model.safetensors", "model.safetensors.index.json"}:
        missing.append("adapter_model.safetensors")
    if missing:
        return f"{', '.join(missing)} missing"
    for path in sorted(folder.iterdir()):
        problem = _file_problem(path)
        if problem:
            return f"{path.name} {problem}"
    return None


def _file_problem(path: Path) -> str | None:
    import zipfile

    from .run_folder import safetensors_header

    if path.suffix == ".safetensors":
        return None if safetensors_header(path) is not None else "is cut short"
    if path.suffix in (".pt", ".pth", ".bin"):
        return None if zipfile.is_zipfile(path) else "is cut short (not a complete torch zip file)"
    if path.suffix == ".json":
        try:
            json.loads(path.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            return "is not complete JSON"
    return None


# ---- resume ---------------------------------------------------------------------------------------
SETTINGS_FILE = "settings.json"  # in checkpoints/: the training settings of those checkpoints
# What changes neither the weights nor the data order: checkpoint and evaluation cadence, bookkeeping.
_NOT_TRAINING = {"train.output_dir", "train.eval_steps", "train.save_steps", "train.logging_steps",
                 "train.save_total_limit", "train.max_eval_rows", "train.resume", "train.eval_swap",
                 "train.best_metric", "train.keep_checkpoints", "model.gradient_checkpointing",
                 "train.resume_from", "train.final_eval", "train.max_hours"}


def training_settings(cfg: RunConfig) -> dict[str, Any]:
    """The settings that change training (data, format, model, LoRA, optimizer, schedule) by dotted key,
    as JSON values."""
    flat = {f"{section}.{key}": value for section in ("data", "format", "model", "lora", "train")
            for key, value in to_dict(getattr(cfg, section)).items()}
    if Path(cfg.data.folds_file).is_file():  # its rows, not where it lies: a cv folder moved mid-fold resumes
        from .run_folder import file_sha256

        flat["data.folds_file"] = f"sha256:{file_sha256(Path(cfg.data.folds_file))}"
    return json.loads(json.dumps({k: v for k, v in flat.items() if k not in _NOT_TRAINING}))


def resume_checkpoint(cfg: RunConfig, checkpoint_dir: Path) -> str | None:
    """The checkpoint to resume from (None: start afresh); refuses checkpoints of other settings."""
    last = last_checkpoint(checkpoint_dir) if cfg.train.resume else None
    if last is None:
        return None
    path = checkpoint_dir / SETTINGS_FILE
    saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    now = training_settings(cfg)
    if saved != now:
        changed = ([f"{k}: {saved.get(k, '(absent)')!r} -> {now.get(k, '(absent)')!r}"
                    for k in sorted(set(saved) | set(now)) if saved.get(k) != now.get(k)]
                   if isinstance(saved, dict) else [f"{path} is missing: the settings of these checkpoints are unknown"])
        raise ConfigError(f"{checkpoint_dir} holds checkpoints made with other training settings; resuming "
                          "would mix the two runs:\n" + "\n".join(f"  - {c}" for c in changed)
                          + "\nStart afresh with a new train.output_dir (keeps the old run), or with "
                          f"train.resume=false (deletes {checkpoint_dir}); or rerun with the old values to resume")
    log.warning("resuming from %s (step %d): its training settings match this config", last, _step_of(last))
    return last


def _step_of(checkpoint: str | Path) -> int:
    return int(Path(checkpoint).name.rsplit("-", 1)[-1])


STATE_FILE = "trainer_state.json"  # the Trainer writes it last: a checkpoint without it is incomplete


def _checkpoint_folders(folder: Path) -> list[Path]:
    """The ``checkpoint-N`` folders in ``folder``, newest first."""
    found = [p for p in folder.glob("checkpoint-*") if p.is_dir() and p.name.rsplit("-", 1)[-1].isdigit()]
    return sorted(found, key=_step_of, reverse=True)


def _complete_checkpoints(folder: Path) -> list[Path]:
    return [p for p in _checkpoint_folders(folder) if checkpoint_problem(p) is None]


def previous_checkpoints(source: str | Path, depth: int = 4) -> Path:
    """The checkpoints folder (settings.json + complete checkpoint-N) in an earlier session's output ``source``
    (itself, or at most ``depth`` folders below it); ConfigError when there is none or several."""
    source = Path(source)
    if not source.is_dir():
        raise ConfigError(f"train.resume_from={source} is not a folder; attach the earlier session's output (on "
                          "Kaggle: Add Input -> Your Work -> that notebook) and give its path under /kaggle/input")
    found = sorted({p.parent for d in range(depth + 1) for p in source.glob("/".join(["*"] * d + [SETTINGS_FILE]))
                    if _complete_checkpoints(p.parent)})
    if len(found) != 1:
        what = (f"several run folders with checkpoints: {', '.join(map(str, found))}; give the one to resume" if found
                else f"no complete checkpoint (checkpoints/{SETTINGS_FILE} beside checkpoint-N/{STATE_FILE}) in it; "
                     "was the earlier session stopped by train.max_hours, with train.keep_checkpoints or before the "
                     "end? Leave train.resume_from empty to start afresh")
        raise ConfigError(f"train.resume_from={source}: {what}")
    return found[0]


def import_previous_checkpoint(source: str | Path, checkpoint_dir: Path) -> int | None:
    """Copy the latest complete checkpoint of ``source`` (and the best one its state names) into
    ``checkpoint_dir`` with its settings, unless ``checkpoint_dir`` already has that step or a later one.

    Files are copied without their read-only modes (the Trainer deletes old checkpoints), and each
    checkpoint lands whole (a sibling copy renamed into place; another process's finished copy is kept).
    Returns the imported step, or None when nothing was copied.
    """
    found = previous_checkpoints(source)
    latest = max(_complete_checkpoints(found), key=_step_of)
    local = last_checkpoint(checkpoint_dir)
    if local is not None and _step_of(local) >= _step_of(latest):
        log.info("train.resume_from: %s already has step %d (>= %s); nothing copied", checkpoint_dir,
                 _step_of(local), latest)
        return None
    state = json.loads((latest / STATE_FILE).read_text(encoding="utf-8"))
    best = Path(state.get("best_model_checkpoint") or latest).name
    for checkpoint in {latest, found / best} if found / best in _complete_checkpoints(found) else {latest}:
        with atomic_dir(checkpoint_dir / checkpoint.name, replace=False) as tmp:
            _copy_tree(checkpoint, tmp)
    if state.get("best_model_checkpoint"):  # the earlier session's path: point it at the copy
        state["best_model_checkpoint"] = str(checkpoint_dir / best)
        atomic_write_json(checkpoint_dir / latest.name / STATE_FILE, state)
    atomic_write_json(checkpoint_dir / SETTINGS_FILE, json.loads((found / SETTINGS_FILE).read_text(encoding="utf-8")))
    log.warning("train.resume_from: copied %s (step %d) into %s", latest, _step_of(latest), checkpoint_dir)
    return _step_of(latest)


def _copy_tree(source: Path, target: Path) -> None:
    """Files and folders of ``source`` into ``target``, contents only (no modes: the source is read-only)."""
    for folder, dirs, files in os.walk(source):
        here = target / Path(folder).relative_to(source)
        for name in dirs:
            (here / name).mkdir()
        for name in files:
            shutil.copyfile(Path(folder) / name, here / name)


def preflight(cfg: RunConfig) -> None:
    """What the config checks cannot see: the files and the machine. All problems are raised at once."""
    import importlib.util

    import torch

    cuda = torch.cuda.is_available()
    problems = [] if cfg.data.train_path else ["data.train_path is empty; give the training file, e.g. "
                                               "--set data.train_path=train.parquet"]
    problems += device_problems(cfg.inference.devices)
    needs_bnb = [f"model.quantization={cfg.model.quantization}"] * (cfg.model.quantization != "none") + [
        f"train.optimizer={cfg.train.optimizer}"] * (cfg.train.optimizer in BITSANDBYTES_OPTIMIZERS)
    if needs_bnb and not (cuda and importlib.util.find_spec("bitsandbytes")):
        problems += [f"{n} needs a CUDA GPU with bitsandbytes installed; this machine has "
                     f"{'no bitsandbytes' if cuda else 'no CUDA GPU'}. Use "
                     f"{'model.quantization=none' if n.startswith('model') else 'train.optimizer=auto'}"
                     for n in needs_bnb]
    if problems:
        raise ConfigError("this configuration cannot run here:\n" + "\n".join(f"  - {p}" for p in problems))


def _reset_peak_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()


def _throughput(trainer) -> dict[str, Any]:
    """Training speed (real tokens per second of optimizer steps, all processes) and peak CUDA memory
    (allocated, and reserved: what the allocator holds, which is what runs out)."""
    import torch

    timer = trainer.step_timer
    tokens = int(trainer.train_tokens) * trainer.args.world_size  # processes see equal shares of the rows
    return {
        "train_runtime_s": next((e["train_runtime"] for e in trainer.state.log_history if "train_runtime" in e), None),
        "train_step_seconds": round(timer.seconds, 2), "train_tokens": tokens,
        "train_tokens_per_s": round(tokens / timer.seconds, 1) if timer.seconds else None,
        "peak_cuda_memory_gib": round(torch.cuda.max_memory_allocated() / 2**30, 3) if torch.cuda.is_available() else None,
        "peak_cuda_reserved_gib": round(torch.cuda.max_memory_reserved() / 2**30, 3) if torch.cuda.is_available() else None,
    }


def _free_accelerator_memory() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---- train ----------------------------------------------------------------------------------------
def train(cfg: RunConfig, callbacks: list | None = None) -> TrainResult:
    """Train ``cfg`` and write the run folder (see the module docstring). Resumes when it can. The first
    process holds ``train.output_dir``'s writer lock (io.writer_lock): a second run into it is refused."""
    cfg.validate()
    preflight(cfg)
    run_dir = check_output_dir(cfg.train.output_dir, what="train.output_dir")
    first_process = int(os.environ.get("RANK", "0")) == 0  # the other processes of a launch write no run files
    with writer_lock(run_dir, "train.output_dir") if first_process else contextlib.nullcontext():
        return _train_into(run_dir, cfg, callbacks)


def _train_into(run_dir: Path, cfg: RunConfig, callbacks: list | None) -> TrainResult:
    import torch
    from transformers import set_seed

    from .modeling import answer_ids_for, recorded_source, resolve_model
    from .trainer import TimeLimit

    checkpoint_dir = run_dir / "checkpoints"
    resolved = resolve_model(cfg, "cuda" if torch.cuda.is_available() else "cpu")  # once, for the whole run
    family, tokenizer = resolved.family, resolved.tokenizer
    template = family.template if cfg.format.template == "auto" else cfg.format.template
    cfg = dataclasses.replace(
        cfg, model=dataclasses.replace(cfg.model, source=recorded_source(cfg.model.source, resolved.folder),
                                       family=family.name),
        format=dataclasses.replace(cfg.format, template=template))
    if cfg.train.resume_from:
        import_previous_checkpoint(cfg.train.resume_from, checkpoint_dir)
    resume_from = resume_checkpoint(cfg, checkpoint_dir)
    answer_ids = answer_ids_for(tokenizer, cfg.format, cfg.model.num_labels)
    set_seed(cfg.train.seed)
    train_frame, valid_frame = split_data(cfg)
    train_set = _train_dataset(train_frame, tokenizer, cfg, template)
    evals = None
    if valid_frame is not None:
        periodic = _limit_rows(valid_frame, cfg.train.max_eval_rows, cfg.train.seed)
        evals = (EvalSet(periodic, tokenizer, cfg, template, cfg.train.eval_swap),
                 EvalSet(valid_frame, tokenizer, cfg, template, cfg.train.eval_swap))
    callbacks = list(callbacks or []) + ([TimeLimit(cfg.train.max_hours * 3600)] if cfg.train.max_hours else [])
    trainer, retries = _fit(cfg, resolved, answer_ids, train_set, evals, checkpoint_dir, callbacks, resume_from)
    stopped = next((c.stopped_at for c in trainer.callback_handler.callbacks if getattr(c, "stopped_at", None)), None)
    if stopped is not None:
        return _stopped_by_time_limit(run_dir, checkpoint_dir, cfg, trainer, tokenizer, stopped)
    if trainer.is_world_process_zero():  # the adapter first: a session that ends during the evaluation keeps it
        _write_weights(run_dir, cfg, trainer, tokenizer, resolved.folder)
    skipped = _final_eval_skipped(cfg, trainer, evals)
    metrics = {"resumed_from_step": _step_of(resume_from) if resume_from else None,
               **_final_metrics(trainer, None if skipped else evals, retries, len(train_set))}
    if skipped:
        metrics["final_eval_skipped"] = skipped
    if trainer.is_world_process_zero():
        oof = evals[1].oof_frame(cfg.inference) if evals and not skipped else None
        if oof is not None:
            metrics.update(_oof_metrics(oof, cfg.inference))
        _write_results(run_dir, cfg, trainer, oof, metrics)
    trainer.accelerator.wait_for_everyone()
    return TrainResult(run_dir, metrics)


def _final_eval_skipped(cfg: RunConfig, trainer, evals) -> str | None:
    """Why the final evaluation is skipped (None: it runs): train.final_eval=false, or under train.max_hours
    the time left is less than the evaluation would take at the periodic evaluations' speed."""
    from .trainer import TimeLimit

    if evals is None:
        return None
    if not cfg.train.final_eval:
        reason = "train.final_eval=false"
    else:
        limit = next((c for c in trainer.callback_handler.callbacks if isinstance(c, TimeLimit)), None)
        need = limit.seconds_for(len(evals[1].dataset)) if limit else None
        short = need is not None and limit.agreed(need > limit.seconds_left(), trainer.args)
        reason = (f"train.max_hours: about {need:.0f}s needed for {len(evals[1].dataset)} evaluation rows, "
                  f"{max(limit.seconds_left(), 0):.0f}s left") if short else None
    if reason:
        log.warning("final evaluation skipped (%s): the adapter is saved; no oof.parquet. Score the run later with "
                    "`wsdm evaluate --run %s --data <held-out rows> --out <folder>`", reason, cfg.train.output_dir)
    return reason


def _stopped_by_time_limit(run_dir: Path, checkpoint_dir: Path, cfg: RunConfig, trainer, tokenizer,
                           step: int) -> TrainResult:
    """A run cut short by train.max_hours: its checkpoint stays for the next session, with config.yaml,
    tokenizer/ and log_history.json (the curve so far); no weights nor metrics.json (it would pass for
    a finished run)."""
    checkpoint = last_checkpoint(checkpoint_dir)
    if trainer.is_world_process_zero():
        _write_settings(run_dir, cfg, tokenizer)
        atomic_write_json(run_dir / "log_history.json", trainer.state.log_history)
    log.warning("train.max_hours reached: stopped at step %d of %d with checkpoint %s. To continue: run the same "
                "command again here, or in a new Kaggle session attach this session's output and set "
                "train.resume_from to its copy of %s", step, trainer.state.max_steps, checkpoint, run_dir)
    return TrainResult(run_dir, {"stopped": "max_hours", "global_step": step, "max_steps": trainer.state.max_steps,
                                 "checkpoint": checkpoint})


def _fit(cfg, resolved, answer_ids, train_set, evals, checkpoint_dir, callbacks, resume_from):
    """Trainer.train with CUDA-OOM back-off: halve the batch, keep the effective batch, resume (one process
    only; with several, an out-of-memory error ends the run with the settings to rerun with)."""
    import torch

    batch, accumulation = cfg.train.per_device_batch_size, cfg.train.gradient_accumulation
    retries: list[dict[str, Any]] = []
    while True:
        trainer = _make_trainer(cfg, resolved, answer_ids, train_set, evals, checkpoint_dir,
                                callbacks, batch, accumulation, clear=resume_from is None)
        try:
            _reset_peak_memory()
            if trainer.probe is not None and evals is not None and cfg.train.eval_steps > 0:
                # the curve's step 0: the probe alone
                scores = trainer.evaluate(eval_dataset=evals[0].dataset)
                trainer.probe["valid"] = {k.removeprefix("eval_"): v for k, v in scores.items()}
            if cfg.train.max_steps != 0:  # 0: the probe alone (config checks allow it only with probe_head)
                trainer.train(resume_from_checkpoint=resume_from)
            return trainer, retries
        except torch.cuda.OutOfMemoryError as exc:
            step = trainer.state.global_step
            if trainer.args.world_size > 1:
                raise _oom_in_several_processes(trainer.args, step, batch, accumulation) from exc
            if batch <= 1:
                raise
            batch, accumulation = halve_batch(batch, accumulation)
            retries.append({"step": step, "per_device_batch_size": batch, "gradient_accumulation": accumulation})
            log.warning("CUDA out of memory at step %d: per-device batch -> %d, accumulation -> %d; resuming "
                        "from the last checkpoint", step, batch, accumulation)
            del trainer
            _free_accelerator_memory()
            resume_from = last_checkpoint(checkpoint_dir)  # this run's own checkpoints from here on


def _oom_in_several_processes(args, step: int, batch: int, accumulation: int) -> ConfigError:
    """No back-off with several processes: the others wait in an all-reduce the rebuilt trainer never joins
    (a hang until the collective's timeout); this process ends instead, and the launcher ends the others."""
    if batch > 1:
        half, more = halve_batch(batch, accumulation)
        fix = (f"rerun with --set train.per_device_batch_size={half} train.gradient_accumulation={more} "
               "(the same effective batch)")
    else:
        fix = "use model.quantization=4bit, a shorter format.max_length, or a larger GPU"
    return ConfigError(f"CUDA out of memory at step {step} in process {args.process_index} of {args.world_size}: "
                       "with several processes the batch is not halved and training resumed here (the other "
                       f"processes wait in their all-reduce and would hang); {fix}. The checkpoints so far are kept")


def _make_trainer(cfg, resolved, answer_ids, train_set, evals, checkpoint_dir, callbacks,
                  batch, accumulation, clear):
    from .modeling import load_model
    from .trainer import PairTrainer

    family, tokenizer = resolved.family, resolved.tokenizer
    args = training_arguments(cfg, checkpoint_dir, batch, accumulation, evals is not None,
                              str(resolved.dtype).replace("torch.", ""))
    with args.main_process_first():
        if args.process_index == 0:
            if clear and checkpoint_dir.exists():
                shutil.rmtree(checkpoint_dir)
            atomic_write_json(checkpoint_dir / SETTINGS_FILE, training_settings(cfg))
    model, _, _ = load_model(cfg, args.device, training=True, resolved=resolved)
    probe = None
    if clear and cfg.train.probe_head:  # a resumed run's head comes from its checkpoint
        from .probe import probe_head

        probe = probe_head(model, family, train_set.encoded, tokenizer.pad_token_id, cfg.format.pooling,
                           cfg.train.probe_l2, 2 * batch)
    trainer = PairTrainer(
        model=model, args=args, train_dataset=train_set,
        eval_dataset=evals[0].dataset if evals else None,
        compute_metrics=evals[0].compute_metrics if evals else None,
        data_collator=PairCollator(tokenizer.pad_token_id, family.padding_side),
        processing_class=tokenizer, callbacks=list(callbacks), head=cfg.format.head, answer_ids=answer_ids,
        head_lr=cfg.train.head_learning_rate if cfg.format.head == "classifier" else None,
        head_modules=family.head_modules, loss_options=loss_options(cfg),
        swap_in_batch=cfg.train.swap_in_batch, swap_loss=cfg.train.swap_loss, pooling=cfg.format.pooling,
    )
    trainer.probe = probe
    return trainer


def loss_options(cfg: RunConfig) -> dict[str, float]:
    """Keyword arguments of distill.pair_loss for training rows."""
    d = cfg.train.distill
    return {"temperature": d.temperature, "mix": d.mix if d.soft_labels else 0.0,
            "label_smoothing": cfg.train.label_smoothing}


def _final_metrics(trainer, evals, retries, n_train_rows: int) -> dict[str, Any]:
    """Evaluate the selected (best) model on the full validation set (``final``: each orientation and
    swap TTA); add the curve and run facts."""
    state = trainer.state
    probe_point = [{**trainer.probe["valid"], "step": 0}] if trainer.probe and "valid" in trainer.probe else []
    result: dict[str, Any] = {
        "global_step": state.global_step, "train_rows": n_train_rows, "world_size": trainer.args.world_size,
        "best_checkpoint": state.best_model_checkpoint, "best_metric": state.best_metric,
        "oom_retries": retries,
        "probe": trainer.probe,
        "curve": probe_point + [{**{k.replace("eval_", ""): v for k, v in entry.items()},
                                 "wall_s": trainer.step_timer.eval_wall.get(entry["step"])}
                                for entry in state.log_history if "eval_accuracy" in entry],
        **_throughput(trainer),
    }
    if evals is None:
        return result
    final = evals[1]
    trainer.compute_metrics = final.compute_metrics
    scores = trainer.evaluate(eval_dataset=final.dataset, metric_key_prefix="final")
    result["final"] = {k.replace("final_", ""): v for k, v in scores.items()}
    result["valid_rows"] = final.n
    return result


def _oof_metrics(oof, icfg: InferenceConfig) -> dict[str, Any]:
    """Scores of oof.parquet, the run's inference TTA: what its submission would get, overall and per language."""
    from . import metrics
    from .tta import prob_columns

    labels, probs = oof["label"].to_numpy(), oof[prob_columns(oof)].to_numpy()
    return {"oof": {"tta": icfg.tta, "tta_average": icfg.tta_average, "accuracy": metrics.accuracy(labels, probs),
                    "log_loss": metrics.log_loss(labels, probs)},
            "per_language": metrics.per_language_accuracy(oof["language"], labels, probs).to_dict(orient="records")}


def _write_weights(run_dir: Path, cfg: RunConfig, trainer, tokenizer, base_folder: Path) -> None:
    """adapter/ (or model/), identity.json, tokenizer/ and config.yaml: all a submission needs from the run."""
    from .run_folder import IDENTITY, run_identity

    weights = "adapter" if cfg.lora.enabled else "model"
    with atomic_dir(run_dir / weights) as tmp:
        trainer.model.save_pretrained(str(tmp))
        if not cfg.lora.enabled:
            tokenizer.save_pretrained(str(tmp))
    if cfg.lora.enabled:
        atomic_write_json(run_dir / IDENTITY, run_identity(run_dir, base_folder))
    _write_settings(run_dir, cfg, tokenizer)


def _write_settings(run_dir: Path, cfg: RunConfig, tokenizer) -> None:
    with atomic_dir(run_dir / "tokenizer") as tmp:
        tokenizer.save_pretrained(str(tmp))
    save_yaml(cfg, run_dir / "config.yaml")


def _write_results(run_dir: Path, cfg: RunConfig, trainer, oof, metrics: dict[str, Any]) -> None:
    atomic_write_json(run_dir / "log_history.json", trainer.state.log_history)
    atomic_write_json(run_dir / "metrics.json", metrics)
    if oof is not None:
        atomic_write_parquet(oof, run_dir / "oof.parquet")
    if not cfg.train.keep_checkpoints:
        shutil.rmtree(run_dir / "checkpoints", ignore_errors=True)
