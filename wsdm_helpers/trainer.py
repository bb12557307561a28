"""The HF Trainer pieces of training: the pair trainer and its callbacks.

A module of its own because it imports transformers and torch at the top; ``training`` imports it
only inside the functions that train, so ``import wsdm_helpers`` stays fast. The classes are defined
once here, not rebuilt on every out-of-memory retry.
"""
from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import torch
from tqdm.std import tqdm as text_bar
from transformers import ProgressCallback, Trainer, TrainerCallback
from transformers.trainer import DEFAULT_PROGRESS_CALLBACK, TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, has_length, rotate_checkpoints

from .distill import pair_loss
from .errors import NumericalError
from .modeling import class_logits
from .runtime import plain_progress

STAGING = ".saving"  # checkpoints/.saving/checkpoint-N: a checkpoint being written, renamed when complete


class StepTimer(TrainerCallback):
    """Sums the wall time of optimizer steps only (evaluations and saves excluded), and notes the wall
    time since the start of training at every evaluation (time to accuracy)."""

    def __init__(self):
        self.seconds, self.begin, self.eval_wall = 0.0, time.perf_counter(), {}

    def on_train_begin(self, args, state, control, **kwargs):
        self.begin = time.perf_counter()

    def on_evaluate(self, args, state, control, **kwargs):
        self.eval_wall[state.global_step] = round(time.perf_counter() - self.begin, 1)

    def on_step_begin(self, args, state, control, **kwargs):
        self._started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()  # kernels run ahead of the host: count them in their step
        self.seconds += time.perf_counter() - self._started


class TextProgress(ProgressCallback):
    """The Trainer's progress callback with text bars (tqdm.std): inside a kernel the default one draws
    HTML or widgets, which papermill's log cannot show (see runtime.py)."""

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.training_bar = text_bar(total=state.max_steps, dynamic_ncols=True)
        self.current_step = 0

    def on_prediction_step(self, args, state, control, eval_dataloader=None, **kwargs):
        if state.is_world_process_zero and self.prediction_bar is None and has_length(eval_dataloader):
            self.prediction_bar = text_bar(total=len(eval_dataloader), leave=self.training_bar is None,
                                           dynamic_ncols=True)
        super().on_prediction_step(args, state, control, eval_dataloader=eval_dataloader, **kwargs)


class MovedCheckpoints(TrainerCallback):
    """A resumed run whose folder moved: the best checkpoint its state recorded is looked up under its name
    in this run's checkpoint folder (else the Trainer would skip loading the best model at the end)."""

    def on_train_begin(self, args, state, control, **kwargs):
        best = state.best_model_checkpoint
        here = Path(args.output_dir) / Path(best).name if best else None
        if best and not Path(best).exists() and here.exists():
            state.best_model_checkpoint = str(here)


class TimeLimit(TrainerCallback):
    """``train.max_hours``: saves a checkpoint and stops training once another step might not end within
    ``seconds`` of the start: elapsed + 2 x the longest step so far (its evaluation and checkpoint
    included) >= ``seconds``. The next session resumes from that checkpoint. In several processes rank
    0's clock decides for all, so they stop at the same step. It also notes the periodic evaluations'
    speed, so the final evaluation can be skipped when it would not end in time. ``clock``: injectable."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic):
        self.seconds, self.clock = seconds, clock
        self.start: float | None = None  # kept over an out-of-memory restart: the session's clock
        self.last, self.longest, self.stopped_at = 0.0, 0.0, None
        self.eval_rows_per_s: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.start = self.clock() if self.start is None else self.start
        self.last = self.clock()

    def on_step_end(self, args, state, control, **kwargs):
        now = self.clock()
        self.longest, self.last = max(self.longest, now - self.last), now
        stop = self.agreed(now - self.start + 2 * self.longest >= self.seconds and state.global_step < state.max_steps,
                           args)
        if stop:
            control.should_save = control.should_training_stop = True
            self.stopped_at = state.global_step
        return control

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.eval_rows_per_s = (metrics or {}).get("eval_samples_per_second") or self.eval_rows_per_s

    def seconds_left(self) -> float:
        return self.seconds - (self.clock() - self.start) if self.start is not None else self.seconds

    def seconds_for(self, rows: int) -> float | None:
        """Seconds an evaluation of ``rows`` rows takes at the periodic evaluations' speed (None: unknown)."""
        return rows / self.eval_rows_per_s if self.eval_rows_per_s else None

    @staticmethod
    def agreed(flag: bool, args) -> bool:
        """``flag`` as rank 0 sees it, in every process."""
        if args.world_size > 1:
            tensor = torch.tensor([float(flag)], device=args.device)
            torch.distributed.broadcast(tensor, src=0)
            flag = bool(tensor.item())
        return flag


class SwapPairSampler(torch.utils.data.Sampler):
    """Order of a swap-augmented training set (rows ``[0, n)`` as given, ``[n, 2n)`` their swaps) in
    which each row is followed by its swap, so a batch of even size holds whole pairs.

    In such a batch the gradient of a logit shift shared by both orientations (a position bias) is
    zero whenever the shift is zero, whatever the labels; in a random batch it follows the batch's label
    mix, and on weak-signal data that noise can swamp the content signal (issue 15: runs on Arena votes
    without it kept flip rates of 0.83-1.0). ``group_by_length``: pairs of similar length are batched
    together (megabatches of 50 batches sorted by length, as transformers' LengthGroupedSampler does).
    Each pass draws a new order from ``seed`` and the pass number, so a resumed run replays the same
    batches.
    """

    MEGABATCH = 50

    def __init__(self, lengths, batch_size: int, seed: int, group_by_length: bool = True):
        if len(lengths) % 2:
            raise ValueError(f"a swap-augmented set has an even number of rows, not {len(lengths)}")
        self.lengths = torch.as_tensor(lengths[: len(lengths) // 2])
        self.pairs_per_batch = max(1, batch_size // 2)
        self.seed, self.group_by_length, self.passes = seed, group_by_length, 0

    def __len__(self) -> int:
        return 2 * len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.passes)
        self.passes += 1
        order = torch.randperm(len(self.lengths), generator=generator)
        if self.group_by_length:
            size = self.MEGABATCH * self.pairs_per_batch
            order = torch.cat([mega[self.lengths[mega].argsort(descending=True, stable=True)]
                               for mega in order.split(size)])
        n = len(self.lengths)
        for i in order.tolist():
            yield i
            yield i + n


class PairTrainer(Trainer):
    """Trainer whose loss is over the class logits only (both heads): cross-entropy, or the
    distillation loss of distill.pair_loss when the batch carries soft labels."""

    loss_is_scaled_for_ga = False  # per-batch mean; the Trainer divides by the accumulation steps (5.19+)

    def __init__(self, *args, head: str, answer_ids: list[int], head_lr: float | None = None,
                 head_modules: tuple[str, ...] = (), loss_options: dict | None = None,
                 swap_in_batch: bool = False, swap_loss: bool = False, pooling: str = "last", **kwargs):
        super().__init__(*args, **kwargs)
        # Before 5.19 the Trainer skips the 1/accumulation division when the model's forward takes **kwargs
        # (every decoder classifier does): this loss never reads num_items_in_batch, so say it takes none.
        self.model_accepts_loss_kwargs = False
        self.loss_finite = None  # device flag: every loss of the current optimizer step was finite
        self.head, self.answer_ids, self.pooling, self.swap_in_batch = head, answer_ids, pooling, swap_in_batch
        self.swap_loss = swap_loss
        self.head_lr, self.head_modules = head_lr, head_modules
        self.loss_options = loss_options or {}  # temperature, mix, label_smoothing
        self.train_tokens = 0  # real (non-pad) tokens of this process's training batches
        self.step_timer = StepTimer()
        self.add_callback(self.step_timer)
        self.add_callback(MovedCheckpoints)
        self._staging: str | None = None
        if plain_progress() and not self.args.disable_tqdm:
            self.pop_callback(DEFAULT_PROGRESS_CALLBACK)
            self.add_callback(TextProgress)

    def _get_output_dir(self, trial) -> str:
        return self._staging or super()._get_output_dir(trial)

    def _save_checkpoint(self, model, trial) -> None:
        """The Trainer's checkpoint, written in ``checkpoints/.saving/`` and renamed to ``checkpoint-N`` once
        complete: a process killed mid-save leaves no ``checkpoint-N`` for resume to pick."""
        root = Path(super()._get_output_dir(trial))
        staged = root / STAGING / f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        if self.args.should_save:
            shutil.rmtree(staged.parent, ignore_errors=True)  # what a killed save left
        self.accelerator.wait_for_everyone()
        self._staging = str(staged.parent)
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging = None
        self.accelerator.wait_for_everyone()  # every process has written its part (rng states)
        if self.args.should_save:
            self._publish(staged, root / staged.name)
        self.accelerator.wait_for_everyone()

    def _publish(self, staged: Path, final: Path) -> None:
        """Rename the complete checkpoint into place, with the paths it recorded pointing there."""
        if self.state.best_model_checkpoint == str(staged):
            self.state.best_model_checkpoint = str(final)
            self.state.save_to_json(str(staged / TRAINER_STATE_NAME))
        if final.exists():  # an incomplete one of an older version: replaced
            shutil.rmtree(final)
        os.replace(staged, final)
        staged.parent.rmdir()
        rotate_checkpoints(output_dir=str(final.parent), save_total_limit=self.args.save_total_limit,
                           best_model_checkpoint=self.state.best_model_checkpoint, use_mtime=True)

    def _get_train_sampler(self, *args, **kwargs):
        """:class:`SwapPairSampler` when ``swap_in_batch``, else the Trainer's own (random or by length)."""
        if not self.swap_in_batch:
            return super()._get_train_sampler(*args, **kwargs)
        return SwapPairSampler(self.train_dataset.encoded.lengths[self.train_dataset.rows],
                               self.args.per_device_train_batch_size, self.args.seed,
                               self.args.train_sampling_strategy == "group_by_length")

    def create_optimizer(self, *args, **kwargs):
        """The Trainer's optimizer, with the head's weights moved to a group of their own at head_lr.
        (Arguments passed through: transformers 5.2 takes none, later versions take the model.)"""
        optimizer = super().create_optimizer(*args, **kwargs)
        if self.head_lr is None:
            return optimizer
        head = {id(p) for n, p in self.model.named_parameters()
                if p.requires_grad and set(n.split(".")) & set(self.head_modules)}
        for group in list(optimizer.param_groups):
            moved = [p for p in group["params"] if id(p) in head]
            if moved:
                group["params"] = [p for p in group["params"] if id(p) not in head]
                optimizer.add_param_group({**{k: v for k, v in group.items() if k != "params"},
                                           "params": moved, "lr": self.head_lr})
        optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
        return optimizer

    def training_step(self, model, inputs, *args, **kwargs):
        loss = super().training_step(model, inputs, *args, **kwargs)
        finite = torch.isfinite(loss)  # stays on the device: checked once per optimizer step
        self.loss_finite = finite if self.loss_finite is None else self.loss_finite & finite
        return loss

    def _maybe_log_save_evaluate(self, tr_loss, grad_norm, *args, **kwargs):
        """After every optimizer step (both the supported transformers 5.x loops call it with the step's
        gradient norm): stop at the first non-finite step, before it is logged, evaluated or saved."""
        loss_finite, self.loss_finite = self.loss_finite, None
        if loss_finite is not None and self.args.world_size > 1:  # every rank stops at the same step
            loss_finite = loss_finite.to(torch.int32)
            torch.distributed.all_reduce(loss_finite, op=torch.distributed.ReduceOp.MIN)
        scaler = getattr(self.accelerator, "scaler", None)
        check_step_numerics(self.state.global_step, loss_finite is None or bool(loss_finite), grad_norm,
                            scaler.get_scale() if scaler is not None and scaler.is_enabled() else None)
        return super()._maybe_log_save_evaluate(tr_loss, grad_norm, *args, **kwargs)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        if model.training:  # a device tensor: counting adds no host sync per step
            self.train_tokens = self.train_tokens + inputs["attention_mask"].sum().detach()
        logits = class_logits(model, self.head, self.answer_ids, inputs["input_ids"], inputs["attention_mask"],
                              self.pooling)
        options = self.loss_options if model.training else {}  # evaluation: the plain cross-entropy
        labels, soft = inputs["labels"], inputs.get("soft") if model.training else None
        if model.training and self.swap_loss:
            pairs = pair_rows(inputs["row_index"], len(self.train_dataset) // 2)
            labels, soft = labels[pairs], None if soft is None else soft[pairs]
            loss = pair_loss(swap_tta_logits(logits, pairs), labels, soft, **options)
        else:
            loss = pair_loss(logits, labels, soft, **options)
        return (loss, {"logits": logits}) if return_outputs else loss


def check_step_numerics(step: int, loss_finite: bool, grad_norm, scale: float | None) -> None:
    """Raise NumericalError naming ``step`` when its loss was NaN/inf, its gradient norm was (without a
    GradScaler; with one an overflowing step is skipped and the scale halved, which is its job), or the
    fp16 loss scale fell below 1 (the scaler has skipped step after step: every backward overflows).

    Without this the Trainer logs a NaN loss as the running mean and GradScaler skips silently, so the
    first sign comes at the first evaluation, hours later on a T4.
    """
    problems = [] if loss_finite else ["the training loss is NaN or inf"]
    norm = None if grad_norm is None else float(grad_norm)
    if scale is None and norm is not None and not math.isfinite(norm):
        problems.append(f"the gradient norm is {norm}")
    if scale is not None and scale < 1:
        problems.append(f"the fp16 loss scale fell to {scale:g} (GradScaler skipped step after step)")
    if problems:
        raise NumericalError(f"training stopped at step {step}: {'; '.join(problems)}. The model overflowed its "
                             "dtype or diverged: use model.dtype=bfloat16 (Ampere or newer) or float32, lower "
                             "train.learning_rate, or keep train.max_grad_norm > 0; the checkpoints before this "
                             "step are kept")


def pair_rows(row_index, n: int):
    """Positions of the rows as given in a :class:`SwapPairSampler` batch (each followed by its swap,
    dataset row ``r + n``); anything else is a bug, not data to train on."""
    given = row_index[0::2]
    if len(row_index) % 2 or not bool((row_index[1::2] == given + n).all()):
        raise RuntimeError("train.swap_loss needs every row followed by its swap in the batch "
                           f"(SwapPairSampler), got dataset rows {row_index.tolist()}")
    return torch.arange(0, len(row_index), 2, device=row_index.device)


def swap_tta_logits(logits, pairs):
    """Per pair, the mean of its class logits as given and of its swap's, mapped back (a <-> b; a tie
    stays): the logits a swap-TTA submission averages, so a position bias cancels out of the loss."""
    classes = list(range(logits.shape[1]))
    classes[:2] = [1, 0]
    return (logits[pairs] + logits[pairs + 1][:, classes]) / 2
