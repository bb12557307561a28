"""Predict pair probabilities on one or many devices, with swap TTA, a time budget and resumable chunks.

The flow of :func:`run_prediction`:

1. load one model copy per device (data parallel), or one copy spread over all GPUs
   (``model_parallel``: accelerate's device map) for models too big for one card;
2. encode the pairs once with the run's saved FormatConfig (the model's own template);
3. with a time limit (``stop_at`` on the caller's clock, or ``time_budget_minutes`` from the start of
   the call, loading included): time a few batches (the pilot), predict the run time and plan
   ``max_length`` and the number of rows the swap pass can afford (TTA is given up before context);
   before every batch the clock is read again, and a batch that would end past the limit is not
   started: the rows not reached come back as NaN and the report says how many;
4. the AB pass: rows sorted by length (longest first, so an out-of-memory shows up at once), cut into
   chunks of ``chunk_rows``; each chunk's rows are dealt to the devices so that each gets the same
   share of tokens, batched within a token budget with the cut points that minimise padding
   (:func:`plan_batches`), padded per batch, and saved under ``work_dir``;
5. TTA: the BA pass (A and B exchanged) on all rows (``swap``) or on the most uncertain ones
   (``selective``), flipped back and averaged with AB, joined on id (:func:`merge_swapped`);
6. results in the caller's row order, with a report comparing predicted and actual time.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import heapq
import itertools
import json
import logging
import math
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .batching import plan_batches
from .clock import Clock, SystemClock
from .config import InferenceConfig, load_run_config, to_dict
from .errors import ConfigError, DataError
from .io import atomic_write_json, atomic_write_parquet
from .tta import columns_for, merge_swapped, prob_columns, select_uncertain, selection, swap_pairs, swap_rows_wanted

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

    from .modeling import LoadedRun

log = logging.getLogger(__name__)


# ---- pure planning helpers (no torch) -------------------------------------------------------------
def deal_by_tokens(lengths: Sequence[int], n_parts: int) -> list[np.ndarray]:
    """Row indices per device so that every device gets about the same number of tokens.

    Longest row first, each to the device with the fewest tokens so far (LPT scheduling); each
    part is returned in the original row order.
    """
    import numpy as np

    lengths = np.asarray(lengths)
    heap = [(0, d) for d in range(n_parts)]
    parts: list[list[int]] = [[] for _ in range(n_parts)]
    for i in np.lexsort((np.arange(len(lengths)), -lengths)):
        load, d = heapq.heappop(heap)
        parts[d].append(int(i))
        heapq.heappush(heap, (load + int(lengths[i]), d))
    return [np.array(sorted(p), dtype=np.int64) for p in parts]


def computed_tokens(lengths: Sequence[int], cfg: InferenceConfig) -> int:
    """Tokens the model computes (padding included) for the batches :func:`plan_batches` makes."""
    import numpy as np

    lengths = np.asarray(lengths)
    return int(sum(len(b) * lengths[b].max() for b in plan_batches(lengths, cfg) if len(b)))


# ---- resumable chunk store ------------------------------------------------------------------------
def _digest(*parts: Any) -> str:
    sha = hashlib.sha1()
    for part in parts:
        sha.update(part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode())
    return sha.hexdigest()[:16]


class ChunkStore:
    """Per-chunk prediction files under ``folder``, named by a hash of the job and the chunk's inputs.

    A chunk is reused only if the model, the format and the exact token ids of its rows are the same,
    so a stale folder can never leak predictions into another run. ``folder=None`` stores nothing.
    """

    def __init__(self, folder: str | Path | None, job: dict):
        self.folder = Path(folder) if folder else None
        self.job = _digest(job)

    def _path(self, pass_name: str, ids: list[str], input_ids: list[list[int]]) -> Path:
        import numpy as np

        tokens = np.concatenate([np.asarray(x, dtype=np.int64) for x in input_ids] + [np.asarray(
            [len(x) for x in input_ids], dtype=np.int64)]).tobytes()
        return self.folder / f"{pass_name}-{_digest(self.job, pass_name, ids, tokens)}.parquet"

    def load(self, pass_name: str, ids: list[str], input_ids: list[list[int]]) -> pd.DataFrame | None:
        import pandas as pd

        if self.folder is None:
            return None
        path = self._path(pass_name, ids, input_ids)
        return pd.read_parquet(path) if path.is_file() else None

    def save(self, pass_name: str, ids: list[str], input_ids: list[list[int]], preds: pd.DataFrame) -> None:
        if self.folder is not None:
            atomic_write_parquet(preds, self._path(pass_name, ids, input_ids))

    def load_plan(self) -> BudgetPlan | None:
        path = self.folder / f"plan-{self.job}.json" if self.folder else None
        return BudgetPlan(**json.loads(path.read_text())) if path is not None and path.is_file() else None

    def save_plan(self, plan: BudgetPlan) -> None:
        if self.folder is not None:
            atomic_write_json(self.folder / f"plan-{self.job}.json", dataclasses.asdict(plan))


# ---- time budget ----------------------------------------------------------------------------------
@dataclasses.dataclass
class BudgetPlan:
    """What fits the time budget, from the pilot's throughput (all seconds from the start of the run)."""

    budget_seconds: float  # seconds this run had left when it planned
    tokens_per_second: float  # computed (padded) tokens per second, all devices together
    max_length: int  # planned token budget per pair
    swap_rows: int  # rows the swap pass can afford (before knowing which ones)
    predicted_seconds: float  # predicted time from the plan to the end of the run
    fits: bool = True  # False: even the shortest context overruns, the run stops when its time is up


def _candidate_lengths(max_length: int) -> list[int]:
    """max_length, then steps of 1/8 down to a quarter of it (never below 128)."""
    floor = max(128, max_length // 4)
    steps = [max_length - k * max(max_length // 8, 1) for k in range(8)]
    return [max_length] + [n for n in steps[1:] if n >= floor]


def plan_budget(lengths: Sequence[int], max_length: int, cfg: InferenceConfig, tokens_per_second: float,
                seconds_left: float, tokenize_seconds_per_row: float, wanted_swaps: int) -> BudgetPlan:
    """Keep max_length if the AB pass fits in ``seconds_left``, else shorten it; the swap pass gets
    what is left.

    Lengths at a shorter max_length are estimated as ``min(length, L)`` (truncation keeps every
    field's head and tail, so the total shrinks to the budget). Context comes before TTA: a swap
    pass is worth less than the text it would cost. When even the shortest candidate overruns, the
    plan says so (``fits=False``) and the run's per-batch stop ends it on time.
    """
    import numpy as np

    lengths = np.asarray(lengths)
    n = max(len(lengths), 1)
    for length in _candidate_lengths(max_length):
        clipped = np.minimum(lengths, length)
        retokenize = tokenize_seconds_per_row * n if length != max_length else 0.0
        ab_seconds = computed_tokens(clipped, cfg) / tokens_per_second + retokenize
        per_swap = ab_seconds / n + tokenize_seconds_per_row
        left = seconds_left - ab_seconds
        if left >= 0 or length == _candidate_lengths(max_length)[-1]:
            swaps = int(min(wanted_swaps, max(left, 0) / per_swap + 1e-9))
            if left < 0:
                log.warning("time budget: even max_length=%d needs %.0fs more than the %.0fs left; the run "
                            "stops when its time is up and the rows it does not reach are filled", length,
                            -left, seconds_left)
            return BudgetPlan(seconds_left, tokens_per_second, int(length), swaps, ab_seconds + swaps * per_swap,
                              fits=left >= 0)
    raise AssertionError("unreachable")


# ---- workers --------------------------------------------------------------------------------------
def _is_oom(exc: BaseException) -> bool:
    import torch

    return isinstance(exc, torch.OutOfMemoryError) or (isinstance(exc, RuntimeError) and "out of memory" in str(exc))


@dataclasses.dataclass
class Worker:
    """One model copy on one device: scores token-budget batches, halving a batch on out-of-memory, and
    scoring again in float32 the rows of a batch whose probabilities came out NaN/inf (16-bit overflow)."""

    scorer: Callable
    device: Any  # torch.device where inputs go
    pad_id: int
    padding_side: str
    compute_dtype: Any = None  # torch dtype the model was loaded in: CUDA autocasts to it when 16-bit
    num_classes: int = 2
    model: Any = None  # the model behind ``scorer``: cast to float32 to redo non-finite rows (None: no redo)
    token_limit: float = math.inf  # lowered after an out-of-memory: larger batches are split first
    real_tokens: int = 0
    computed_tokens: int = 0
    nonfinite_rows: int = 0  # rows whose probabilities were NaN/inf in compute_dtype
    redone_rows: int = 0  # of those, rows that float32 scored finite (the others stay NaN)

    def score(self, input_ids: list[list[int]], cfg: InferenceConfig, on_rows: Callable[[int], None] | None = None,
              stop: StopRule | None = None) -> np.ndarray:
        """Probabilities [n, C] in the order of ``input_ids``; ``on_rows(k)`` after each batch of k rows.

        With ``stop``, a batch that would end past the time limit is not started; its rows (and the
        rest) stay NaN.
        """
        import numpy as np
        import torch

        if self.device.type == "cuda":  # this thread's current device: for kernels that read it, not the tensors'
            torch.cuda.set_device(self.device)
        lengths = [len(x) for x in input_ids]
        out = np.full((len(input_ids), self.num_classes), np.nan)
        batches = plan_batches(lengths, cfg.for_device(self.device.type))
        for k, batch in enumerate(batches):
            if stop is not None and stop.before_batch(len(batch) * max(lengths[i] for i in batch)):
                stop.skipped(sum(len(b) for b in batches[k:]))
                break
            rows = [input_ids[i] for i in batch]
            probs = self.score_batch(rows)
            bad = np.flatnonzero(~np.isfinite(probs).all(axis=1))
            if len(bad):
                probs[bad] = self.redo_in_float32([rows[i] for i in bad], probs.shape[1])
            out[batch] = probs
            if on_rows:
                on_rows(len(batch))
        return out

    def score_batch(self, rows: list[list[int]]) -> np.ndarray:
        padded = len(rows) * max(len(r) for r in rows)
        if len(rows) > 1 and padded > self.token_limit:
            return self._halves(rows)
        try:
            return self._forward(rows)
        except Exception as exc:
            if not _is_oom(exc) or len(rows) == 1:
                raise
        self.token_limit = padded // 2
        log.warning("%s: out of memory on %d rows x %d tokens; halving the batch (limit now %d tokens)",
                    self.device, len(rows), padded // len(rows), self.token_limit)
        self._empty_cache()
        return self._halves(rows)

    def redo_in_float32(self, rows: list[list[int]], n_classes: int) -> np.ndarray:
        """Probabilities of rows whose logits came out NaN/inf, scored again one by one with the model's 16-bit
        weights cast to float32 for the while; rows that stay non-finite (a float32 model, no room for
        the float32 weights, a diverged model) are NaN, for the submission's fallback."""
        import numpy as np
        import torch

        self.nonfinite_rows += len(rows)
        out = np.full((len(rows), n_classes), np.nan)
        if self.model is not None and self.compute_dtype in (torch.float16, torch.bfloat16):
            try:
                with _float32_weights(self.model, self.compute_dtype):
                    out = np.concatenate([self._forward([r], float32=True) for r in rows])
            except Exception as exc:
                if not _is_oom(exc):
                    raise
                self._empty_cache()
                log.warning("%s: no memory for float32 weights to redo %d row(s)", self.device, len(rows))
        finite = np.isfinite(out).all(axis=1)
        out[~finite] = np.nan
        self.redone_rows += int(finite.sum())
        log.warning("%s: %d row(s) had NaN/inf probabilities in %s; %d redone in float32, %d left NaN",
                    self.device, len(rows), str(self.compute_dtype).replace("torch.", ""), int(finite.sum()),
                    int((~finite).sum()))
        return out

    def _halves(self, rows: list[list[int]]) -> np.ndarray:
        import numpy as np

        half = len(rows) // 2
        return np.concatenate([self.score_batch(rows[:half]), self.score_batch(rows[half:])])

    def _empty_cache(self) -> None:
        import torch

        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _forward(self, rows: list[list[int]], float32: bool = False) -> np.ndarray:
        import torch

        from .batching import collate

        batch = collate(rows, self.pad_id, self.padding_side)
        input_ids = batch["input_ids"].to(self.device)
        mask = batch["attention_mask"].to(self.device)
        half = self.compute_dtype in (torch.float16, torch.bfloat16) and not float32
        autocast = (torch.autocast("cuda", dtype=self.compute_dtype) if self.device.type == "cuda" and half
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            if hasattr(self.scorer, "logits"):  # an overflowed logit (+-inf) gives a finite but wrong 0/1
                logits = self.scorer.logits(input_ids, mask).float()
                probs = logits.softmax(-1).masked_fill(~torch.isfinite(logits).all(-1, keepdim=True), float("nan"))
            else:
                probs = self.scorer(input_ids, mask)
        self.real_tokens += int(mask.sum())
        self.computed_tokens += mask.numel()
        return probs.float().cpu().numpy()


@contextlib.contextmanager
def _float32_weights(model: Any, dtype: Any):
    """The model's ``dtype`` weights and buffers in float32 while inside (4-bit layers also compute in
    float32: their packed weights are not floats and stay), then back: fp16/bf16 -> fp32 -> back is exact."""
    import torch

    tensors = [t for t in itertools.chain(model.parameters(), model.buffers()) if t.dtype == dtype]
    layers = [m for m in model.modules() if getattr(m, "compute_dtype", None) == dtype]
    try:
        for t in tensors:
            t.data = t.data.float()
        for m in layers:
            m.compute_dtype = torch.float32
        yield
    finally:
        for t in tensors:
            t.data = t.data.to(dtype)
        for m in layers:
            m.compute_dtype = dtype


class StopRule:
    """Whether the next batch still ends before ``stop_at`` on ``clock``, at the pilot's throughput.

    Shared by the worker threads of a run: once one of them stops, they all do.
    """

    def __init__(self, clock: Clock, stop_at: float, tokens_per_second: float, n_workers: int):
        self.clock, self.stop_at = clock, stop_at
        self.seconds_per_token = n_workers / max(tokens_per_second, 1e-9)
        self.hit = False
        self.unreached = 0  # rows left unscored because of the limit
        self._lock = threading.Lock()

    def skipped(self, rows: int) -> None:
        with self._lock:
            self.unreached += rows

    def before_batch(self, padded_tokens: int) -> bool:
        """True (and from then on always) when a batch of ``padded_tokens`` would end past the limit."""
        if not self.hit and self.clock.now() + padded_tokens * self.seconds_per_token > self.stop_at:
            self.hit = True
            log.warning("time limit: %.0fs left, not enough for the next batch; the run stops here",
                        self.stop_at - self.clock.now())
        return self.hit


def resolve_devices(devices: Sequence[str]) -> list[str]:
    """The configured devices, or every visible GPU, or ["cpu"]."""
    import torch

    if devices:
        from .config import device_problems

        problems = device_problems(list(devices))
        if problems:
            raise ConfigError("\n".join(problems))
        return list(devices)
    if torch.cuda.is_available():
        return [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return ["cpu"]


def _model_device(model: Any) -> Any:
    """Where a model's inputs go: its input embeddings' device (the first layer of a device map)."""
    return model.get_input_embeddings().weight.device


def _copy_run(run: LoadedRun, device: str) -> LoadedRun:
    """Another model copy of a loaded run on ``device`` (a new scorer around the copy)."""
    from .modeling import PairScorer

    model = copy.deepcopy(run.model).to(device)
    scorer = PairScorer(model, run.scorer.head, run.scorer.answer_ids, run.scorer.pooling)
    return dataclasses.replace(run, model=model, scorer=scorer)


# Share of each GPU's free memory a model-parallel placement may fill with weights; the rest is for the
# activations of a 16k-token batch, the CUDA context and allocator slack.
MODEL_PARALLEL_MEMORY_SHARE = 0.85


def model_parallel_placement(devices: Sequence[str]) -> tuple[str, Any, dict | None]:
    """(first device, device_map, max_memory) for one model copy over the GPUs among ``devices``.

    Several GPUs: ``"balanced"`` (layers kept whole, about equal shares) within each GPU's free memory
    times MODEL_PARALLEL_MEMORY_SHARE; one GPU: all of it there; none: the CPU (logged). The weights are
    loaded straight onto the GPUs (4-bit included), never through host memory first.
    """
    import torch

    gpus = sorted({torch.device(d).index or 0 for d in devices if torch.device(d).type == "cuda"})
    if not gpus:
        log.warning("model_parallel with devices %s: no GPU among them, the model is loaded on the CPU", list(devices))
        return "cpu", None, None
    if len(gpus) == 1:
        return f"cuda:{gpus[0]}", {"": gpus[0]}, None
    max_memory = {i: int(torch.cuda.mem_get_info(i)[0] * MODEL_PARALLEL_MEMORY_SHARE) for i in gpus}
    return f"cuda:{gpus[0]}", "balanced", max_memory


def _dispatch(run: LoadedRun, devices: list[str]) -> LoadedRun:
    """Spread an already loaded model over the given GPUs with accelerate's device map (layers kept whole)."""
    import torch
    from accelerate import dispatch_model, infer_auto_device_map

    gpus = [torch.device(d) for d in devices if torch.device(d).type == "cuda"]
    if len(gpus) < 2:
        log.info("model_parallel with %s: nothing to split, the model stays on %s", devices, _model_device(run.model))
        return run
    max_memory = {d.index: int(torch.cuda.mem_get_info(d)[0] * MODEL_PARALLEL_MEMORY_SHARE) for d in gpus}
    base = run.model.get_base_model() if hasattr(run.model, "get_base_model") else run.model
    device_map = infer_auto_device_map(run.model, max_memory=max_memory,
                                       no_split_module_classes=getattr(base, "_no_split_modules", None) or [])
    log.info("model_parallel device map: %s", device_map)
    return dataclasses.replace(run, model=dispatch_model(run.model, device_map=device_map))


def load_runs(model_source: str | Path | LoadedRun, cfg: InferenceConfig | None) -> list[LoadedRun]:
    """One LoadedRun per device (data parallel) or one spread over all devices (model parallel).

    A LoadedRun passed in serves the first device (it is moved there if needed); the other devices
    get deep copies. With no configured devices, a LoadedRun stays on its own device. A run folder is
    loaded in ``cfg.dtype`` (``run``: its model.dtype) on every device, or with ``model_parallel``
    straight onto the GPUs (:func:`model_parallel_placement`).
    """
    from .modeling import LoadedRun, load_run

    if isinstance(model_source, LoadedRun):
        for name in ("dtype", "quantization"):
            if cfg and getattr(cfg, name) != "run":
                raise ConfigError(f"inference.{name}={getattr(cfg, name)} needs a run folder; a LoadedRun keeps the "
                                  f"{name} it was loaded in (modeling.load_run(..., {name}=...))")
        devices = list(cfg.devices) if cfg and cfg.devices else [str(_model_device(model_source.model))]
        first = model_source
        if str(_model_device(first.model)) != devices[0]:
            first.model.to(devices[0])
        if cfg and cfg.model_parallel:
            return [_dispatch(first, devices)]
        return [first] + [_copy_run(first, d) for d in devices[1:]]
    run_dir = Path(model_source)
    if not (run_dir / "config.yaml").is_file():
        raise ConfigError(f"{run_dir} is not a run folder (no config.yaml); give the output_dir of `wsdm train`")
    cfg = cfg or load_run_config(run_dir / "config.yaml").inference
    overrides = {name: None if getattr(cfg, name) == "run" else getattr(cfg, name) for name in ("dtype", "quantization")}
    devices = resolve_devices(cfg.devices)
    with _suggest_placement_on_oom(run_dir, cfg, devices):
        if cfg.model_parallel:
            first, device_map, max_memory = model_parallel_placement(devices)
            run = load_run(run_dir, first, device_map=device_map, max_memory=max_memory, **overrides)
            log.info("model_parallel placement: %s", getattr(run.model, "hf_device_map", first))
            return [run]
        return [load_run(run_dir, d, **overrides) for d in devices]


@contextlib.contextmanager
def _suggest_placement_on_oom(run_dir: Path, cfg: InferenceConfig, devices: list[str]):
    """An out-of-memory error while loading becomes a ConfigError naming the settings that make the run fit."""
    try:
        yield
    except Exception as exc:
        if not _is_oom(exc):
            raise
        gpus = [d for d in devices if d.startswith("cuda")]
        fixes = (["--set inference.model_parallel=true (one copy spread over the GPUs: 2x T4 hold a 16-bit 9B model)"]
                 if len(gpus) > 1 and not cfg.model_parallel else [])
        if cfg.quantization != "4bit":
            fixes.append("--set model.quantization=4bit (NF4 weights, a quarter of 16-bit)")
        placement = "spread over " + ", ".join(gpus) if cfg.model_parallel else "one copy per device"
        raise ConfigError(f"{run_dir}: the model does not fit ({placement}; out of memory while loading: "
                          f"{str(exc).splitlines()[0][:200]}). Fix: wsdm predict "
                          + (" or ".join(fixes) if fixes else "on a GPU with more memory")) from exc


def _worker(run: LoadedRun) -> Worker:
    """A worker for a model copy; inputs go where its first weights (the embeddings) live, and the
    compute dtype is the one the base model was loaded in (its embeddings' dtype; adapters are fp32)."""
    return Worker(run.scorer, _model_device(run.model), run.tokenizer.pad_token_id, run.family.padding_side,
                  run.model.get_input_embeddings().weight.dtype, run.config.model.num_labels, run.model)


@contextlib.contextmanager
def _cpu_threads(workers: list[Worker]):
    """Share the CPU cores between several CPU workers (torch's intra-op threads), then restore."""
    import torch

    n_cpu = sum(1 for w in workers if w.device.type == "cpu")
    before = torch.get_num_threads()
    if n_cpu > 1:
        torch.set_num_threads(max(1, before // n_cpu))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _frame(ids: Sequence[str], probs: np.ndarray) -> pd.DataFrame:
    import pandas as pd

    out = pd.DataFrame({"id": list(ids)})
    out[columns_for(probs.shape[1])] = probs
    return out


def score_rows(input_ids: list[list[int]], ids: list[str], workers: list[Worker], cfg: InferenceConfig,
               on_rows: Callable[[int], None] | None = None, stop: StopRule | None = None) -> pd.DataFrame:
    """Predictions for encoded rows: rows dealt to the workers by tokens, one thread per worker
    (rows a ``stop`` kept from being scored are NaN)."""
    import numpy as np

    shares = deal_by_tokens([len(x) for x in input_ids], len(workers))
    jobs = [(w, s) for w, s in zip(workers, shares, strict=True) if len(s)]
    with _cpu_threads(workers), ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(w.score, [input_ids[i] for i in s], cfg, on_rows, stop) for w, s in jobs]
        results = [f.result() for f in futures]
    probs = np.empty((len(input_ids), results[0].shape[1]))
    for (_, share), result in zip(jobs, results, strict=True):
        probs[share] = result
    return _frame(ids, probs)


# ---- report ---------------------------------------------------------------------------------------
@dataclasses.dataclass
class ChunkEvent:
    """Passed to the ``progress`` callback after every chunk."""

    pass_name: str  # "ab" or "ba"
    index: int
    total: int
    loaded: bool  # True: read back from work_dir, not recomputed


@dataclasses.dataclass
class InferenceReport:
    rows: int = 0
    devices: list[str] = dataclasses.field(default_factory=list)
    max_length: int = 0
    tta: str = "none"
    swapped_rows: int = 0
    real_tokens: int = 0
    computed_tokens: int = 0
    tokenize_seconds: float = 0.0
    chunks_computed: int = 0
    chunks_loaded: int = 0
    nonfinite_rows: int = 0  # rows (of all passes) whose probabilities were NaN/inf in the compute dtype
    redone_rows: int = 0  # of those, rows scored finite in float32; the rest are NaN for the fallback
    plan: BudgetPlan | None = None
    load_seconds: float = 0.0  # loading the model copies (part of actual_seconds)
    actual_seconds: float = 0.0
    planned_seconds: float | None = None  # from the start (loading included) to the planned end
    rows_predicted: int = 0  # rows the AB pass reached; fewer than rows when the time limit stopped the run
    stopped: bool = False  # the time limit ended the AB pass before every row was scored

    @property
    def padding_efficiency(self) -> float:
        return self.real_tokens / self.computed_tokens if self.computed_tokens else 1.0

    def to_text(self) -> str:
        lines = [f"{self.rows} rows on {self.devices}, max_length={self.max_length}, tta={self.tta} "
                 f"({self.swapped_rows} rows swapped)" + (f"; stopped by the time limit after {self.rows_predicted}"
                                                           " rows" if self.stopped else ""),
                 f"chunks: {self.chunks_computed} computed, {self.chunks_loaded} resumed from work_dir",
                 f"padding efficiency {self.padding_efficiency:.3f} ({self.real_tokens} real / "
                 f"{self.computed_tokens} computed tokens); tokenization {self.tokenize_seconds:.1f}s"]
        if self.nonfinite_rows:
            lines.append(f"non-finite probabilities: {self.nonfinite_rows} row(s), {self.redone_rows} redone in "
                         f"float32, {self.nonfinite_rows - self.redone_rows} left NaN")
        if self.plan:
            lines.append(f"time: predicted {self.plan.predicted_seconds:.0f}s after the plan, actual "
                         f"{self.actual_seconds:.0f}s in all (loading {self.load_seconds:.0f}s; "
                         f"{self.plan.budget_seconds:.0f}s were left at the plan)")
        else:
            lines.append(f"time: {self.actual_seconds:.1f}s")
        return "\n".join(lines)


@dataclasses.dataclass
class PredictionResult:
    predictions: pd.DataFrame
    report: InferenceReport


class _RowBar:
    """A progress bar over the rows of one pass (runtime.progress_bar), updated from the worker threads
    after every batch."""

    def __init__(self, total: int, desc: str, enabled: bool):
        from .runtime import progress_bar

        self.bar = progress_bar(total=total, desc=desc, unit="row", disable=not enabled, dynamic_ncols=True)
        self.lock = threading.Lock()

    def update(self, rows: int) -> None:
        with self.lock:
            self.bar.update(rows)

    def __enter__(self) -> _RowBar:
        return self

    def __exit__(self, *exc) -> None:
        self.bar.close()


class _Job:
    """State of one run_prediction call: the model copies, the chunk store, the clock and the report."""

    def __init__(self, runs: list[LoadedRun], cfg: InferenceConfig, store: ChunkStore,
                 progress: Callable[[ChunkEvent], None] | None, clock: Clock, started: float):
        self.run, self.cfg, self.store, self.progress = runs[0], cfg, store, progress
        self.workers = [_worker(r) for r in runs]
        self.planning = cfg.for_device(self.workers[0].device.type)  # pilot and time plan: the first device
        self.clock, self.start = clock, started
        self.stop: StopRule | None = None
        self.report = InferenceReport(devices=[str(w.device) for w in self.workers], tta=cfg.tta)

    def elapsed(self) -> float:
        return self.clock.now() - self.start

    def encode(self, frame: pd.DataFrame, max_length: int):
        from .tokenization import encode_pairs

        fmt = dataclasses.replace(self.run.config.format, max_length=max_length)
        template = fmt.template if fmt.template != "auto" else self.run.family.template
        started = self.clock.now()
        encoded = encode_pairs(frame, self.run.tokenizer, fmt, template)
        self.report.tokenize_seconds += self.clock.now() - started
        return encoded

    def run_pass(self, pass_name: str, encoded) -> pd.DataFrame:
        """Chunks along the length-sorted order (longest first; ties by id, so input order does not matter).

        A chunk the time limit cut short is returned with NaN rows and not saved; later chunks are
        not started (their rows are NaN too).
        """
        import numpy as np
        import pandas as pd

        ids = [str(i) for i in encoded.ids]
        order = np.lexsort((np.array(ids), -np.asarray(encoded.lengths)))
        chunks = [order[i:i + self.cfg.chunk_rows] for i in range(0, len(order), self.cfg.chunk_rows)]
        parts = []
        with _RowBar(len(ids), f"{pass_name} pass", self.cfg.progress_bar) as bar:
            for index, rows in enumerate(chunks):
                chunk_ids, chunk_inputs = [ids[i] for i in rows], [encoded.input_ids[i] for i in rows]
                preds = self.store.load(pass_name, chunk_ids, chunk_inputs)
                loaded = preds is not None
                if loaded:
                    bar.update(len(rows))
                elif self.stop is not None and self.stop.hit:
                    preds = _frame(chunk_ids, np.full((len(rows), self.workers[0].num_classes), np.nan))
                    self.stop.skipped(len(rows))
                else:
                    preds = score_rows(chunk_inputs, chunk_ids, self.workers, self.cfg, bar.update, self.stop)
                    if not (self.stop is not None and self.stop.hit):
                        self.store.save(pass_name, chunk_ids, chunk_inputs, preds)
                parts.append(self._chunk_done(pass_name, index, len(chunks), loaded, preds))
        return pd.concat(parts, ignore_index=True)

    def _chunk_done(self, pass_name: str, index: int, total: int, loaded: bool, preds: pd.DataFrame) -> pd.DataFrame:
        self.report.chunks_loaded += loaded
        self.report.chunks_computed += not loaded
        log.info("%s pass: chunk %d/%d %s (%.0fs elapsed)", pass_name, index + 1, total,
                 "resumed" if loaded else "done", self.elapsed())
        if self.progress:
            self.progress(ChunkEvent(pass_name, index, total, loaded))
        return preds

    def pilot(self, encoded) -> float:
        """Computed tokens per second of all devices, timed on the first worker over a few spread batches."""
        import numpy as np

        worker = self.workers[0]
        batches = plan_batches(encoded.lengths, self.planning)
        picks = sorted({int(i) for i in np.linspace(0, len(batches) - 1, min(self.cfg.pilot_batches, len(batches)))})
        worker.score_batch([encoded.input_ids[i] for i in batches[-1]])  # warm-up, not timed
        before, started = worker.computed_tokens, self.clock.now()
        for k in picks:
            worker.score_batch([encoded.input_ids[i] for i in batches[k]])
        rate = (worker.computed_tokens - before) / max(self.clock.now() - started, 1e-9)
        worker.real_tokens = worker.computed_tokens = 0
        return rate * len(self.workers)

    def plan(self, encoded, max_length: int, n_rows: int, stop_at: float) -> BudgetPlan:
        plan = self.store.load_plan()
        if plan is not None:
            log.info("time budget: reusing the saved plan %s", plan)
            return plan
        rate = self.pilot(encoded)
        wanted = swap_rows_wanted(self.cfg.tta, n_rows, self.cfg.tta_share)
        plan = plan_budget(encoded.lengths, max_length, self.planning, rate, stop_at - self.clock.now(),
                           self.report.tokenize_seconds / max(n_rows, 1), wanted)
        log.info("time budget plan: max_length=%d, up to %d swapped rows, predicted %.0fs of the %.0fs left "
                 "(%.0f tokens/s on %d device(s))", plan.max_length, plan.swap_rows, plan.predicted_seconds,
                 plan.budget_seconds, rate, len(self.workers))
        self.store.save_plan(plan)
        return plan

    def swap_ids(self, preds: pd.DataFrame, ab_seconds: float) -> list[str]:
        """Rows for the BA pass: all (swap) or the uncertain ones (selective), capped by the time left."""
        n = len(preds)
        band, cap = selection(self.cfg.tta, n, self.cfg.tta_band, self.cfg.tta_share)
        if self.stop is not None:
            left = self.stop.stop_at - self.clock.now()
            affordable = int(max(left, 0) // max(ab_seconds / max(n, 1), 1e-9))
            log.info("time budget: %.0fs left after the AB pass, enough for about %d swapped rows", left, affordable)
            cap = affordable if cap is None else min(cap, affordable)
        return select_uncertain(preds, band, cap)

    def sync_tokens(self) -> None:
        self.report.real_tokens = sum(w.real_tokens for w in self.workers)
        self.report.computed_tokens = sum(w.computed_tokens for w in self.workers)
        self.report.nonfinite_rows = sum(w.nonfinite_rows for w in self.workers)
        self.report.redone_rows = sum(w.redone_rows for w in self.workers)


def _check_frame(frame: pd.DataFrame) -> list[str]:
    missing = [c for c in ("id", "prompt", "response_a", "response_b") if c not in frame.columns]
    if missing:
        raise DataError(f"prediction input lacks column(s) {missing}; pass a canonical frame (data.read_pairs)")
    ids = frame["id"].astype(str)
    if ids.duplicated().any():
        raise DataError(f"prediction input has duplicated ids: {', '.join(ids[ids.duplicated()].unique()[:5])}; "
                        "predictions are keyed by id, so ids must be unique")
    if not len(ids):
        raise DataError("prediction input has no rows")
    return ids.tolist()


EXTENSION_MARGIN = 0.05  # slack on a pilot-based prediction before the per-batch stop ends a run

# Settings that do not change what a run predicts, so a saved chunk or plan stays valid across them.
_RESULT_NEUTRAL = ("work_dir", "progress_bar")


def _job_key(run: LoadedRun, cfg: InferenceConfig, frame: pd.DataFrame, extra: dict | None) -> dict:
    """What a saved plan and its chunks depend on besides each chunk's own token ids: the weights
    (fingerprinted by the last tensors: head and top layers, adapters included), the model, format
    and inference settings, the whole test set (ids and text: the plan is made for it), and the
    caller's ``extra`` (the pipeline's deadline and blend)."""
    tail = list(run.model.named_parameters())[-8:]
    weights = [(name, list(p.shape), float(p.detach().float().sum())) for name, p in tail]
    settings = {k: v for k, v in to_dict(cfg).items() if k not in _RESULT_NEUTRAL}
    rows = _digest(frame[["id", "prompt", "response_a", "response_b"]].astype(str).to_numpy().tolist())
    return {"weights": weights, "config": to_dict(run.config.model), "format": to_dict(run.config.format),
            "inference": settings, "rows": rows, "extra": extra or {}}


def run_prediction(model_source: str | Path | LoadedRun, frame: pd.DataFrame, cfg: InferenceConfig | None = None,
                   progress: Callable[[ChunkEvent], None] | None = None, *, clock: Clock | None = None,
                   stop_at: float | None = None, latest: float | None = None,
                   store_key: dict | None = None) -> PredictionResult:
    """Predictions (id + class probabilities, in ``frame``'s row order) and an :class:`InferenceReport`.

    ``model_source``: a run folder (``wsdm train`` output) or a LoadedRun. ``cfg``: defaults to the
    run's saved inference section. ``progress``: called after every chunk. ``stop_at``: the time on
    ``clock`` by which the run must end (default: ``cfg.time_budget_minutes - cfg.safety_minutes``
    from the call, loading included; none without a budget); rows it does not reach are NaN.
    ``latest``: how far past ``stop_at`` the run may go when even its shortest context does not fit
    by ``stop_at`` (the pipeline's whole remaining time: finishing one run beats several runs that all
    miss the same rows); the limit then becomes the plan's predicted end plus ``EXTENSION_MARGIN``.
    ``store_key``: more values the saved chunks and plan must match (the pipeline's deadline).
    """
    clock = clock or SystemClock()
    started = clock.now()
    order = _check_frame(frame)
    runs = load_runs(model_source, cfg)
    cfg = cfg or runs[0].config.inference
    cfg.validate("inference.")  # batching values stay as given: each worker resolves them for its device
    trained = runs[0].config.train
    if (trained.probe_head or trained.swap_loss) and cfg.tta != "swap":
        log.warning("inference.tta=%s on a run trained for swap TTA (train.probe_head / train.swap_loss): one "
                    "orientation alone keeps a position bias, so these predictions lean to one side; use "
                    "inference.tta=swap", cfg.tta)
    if stop_at is None and cfg.time_budget_minutes:
        stop_at = started + (cfg.time_budget_minutes - cfg.safety_minutes) * 60
    store = ChunkStore(cfg.work_dir or None, _job_key(runs[0], cfg, frame, store_key))
    job = _Job(runs, cfg, store, progress, clock, started)
    job.report.load_seconds = job.elapsed()
    max_length = runs[0].config.format.max_length
    encoded = job.encode(frame, max_length)
    if stop_at is not None:
        job.report.plan = job.plan(encoded, max_length, len(frame), stop_at)
        plan = job.report.plan
        if not plan.fits and latest is not None and latest > stop_at:
            stop_at = min(latest, clock.now() + plan.predicted_seconds * (1 + EXTENSION_MARGIN))
            log.info("time budget: the run needs %.0fs at max_length=%d, more than its share; it may go on "
                     "for %.0fs", plan.predicted_seconds, plan.max_length, stop_at - clock.now())
        job.stop = StopRule(clock, stop_at, plan.tokens_per_second, len(job.workers))
        job.report.planned_seconds = job.elapsed() + job.report.plan.predicted_seconds
        if job.report.plan.max_length != max_length:
            max_length = job.report.plan.max_length
            encoded = job.encode(frame, max_length)
    job.report.max_length = max_length
    ab_started = job.elapsed()
    preds = job.run_pass("ab", encoded)
    job.report.rows_predicted = len(frame) - (job.stop.unreached if job.stop else 0)
    if cfg.tta != "none" and not (job.stop and job.stop.hit):
        preds = _swap_pass(job, frame, preds, max_length, job.elapsed() - ab_started + job.report.tokenize_seconds)
    job.report.stopped = job.report.rows_predicted < len(frame)  # a cut BA pass only loses TTA rows
    job.sync_tokens()
    job.report.rows = len(frame)
    job.report.actual_seconds = job.elapsed()
    log.info("inference report:\n%s", job.report.to_text())
    return PredictionResult(preds.set_index("id").loc[order].reset_index(), job.report)


def _finite(preds: pd.DataFrame) -> np.ndarray:
    import numpy as np

    return np.isfinite(preds[prob_columns(preds)].to_numpy(float)).all(axis=1)


def _swap_pass(job: _Job, frame: pd.DataFrame, preds: pd.DataFrame, max_length: int, ab_seconds: float) -> pd.DataFrame:
    """TTA on the rows with a finite AB prediction (NaN rows are left for the caller to fill), joined on id;
    BA rows the time limit cut off keep their AB value."""
    import pandas as pd


    good = _finite(preds)
    swap_ids = job.swap_ids(preds[good], ab_seconds)
    if not swap_ids:
        return preds
    subset = frame[frame["id"].astype(str).isin(set(swap_ids))]
    swapped = job.run_pass("ba", job.encode(swap_pairs(subset), max_length))
    swapped = swapped[_finite(swapped)]
    job.report.swapped_rows = len(swapped)
    if not len(swapped):
        return preds
    return pd.concat([merge_swapped(preds[good], swapped, job.cfg.tta_average), preds[~good]], ignore_index=True)


def predict_proba(model_source: str | Path | LoadedRun, frame: pd.DataFrame, cfg: InferenceConfig | None = None,
                  progress: Callable[[ChunkEvent], None] | None = None) -> pd.DataFrame:
    """Predictions layout (id, winner_model_a, winner_model_b[, winner_tie]) in ``frame``'s row order."""
    return run_prediction(model_source, frame, cfg, progress).predictions
