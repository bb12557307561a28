"""``inference.backend=vllm``: the run's adapter merged into its base once, served by a vLLM engine.

What changes against the hf backend is only who runs the forward passes: the rows are encoded by the
same FormatConfig and tokenizer, sent as token ids (no second tokenization), and the pipeline around
them stays the one of :mod:`inference` (pilot, time plan, chunks, stop rule, TTA, resume, report).

- classifier runs: the adapter is merged into the base with the trained score head kept and written
  as a safetensors model folder (:func:`merged_folder`: ``<run>/merged`` when ``wsdm bundle adapter
  --merged`` shipped one made from the same weights, else once under the cache), loaded with
  ``runner="pooling"``, the family's architecture override (``ModelFamily.vllm_classifier``) and the
  run's pooling as vLLM's pooler (last -> LAST, mean -> MEAN: the score layer has no bias, so the
  score of the mean state is the mean of the per-token scores the hf backend averages);
- mcq runs: one generated token restricted to the answer tokens, whose processed logits (the others
  masked) are the class logits;
- the engines: each over ``tensor_parallel_size`` GPUs (default: every GPU among the devices), one per
  such group (tensor_parallel_size=1 on 2x T4: one engine per GPU, the rows dealt by tokens), ``max_model_len``
  from the run's ``max_length``, the family's dtype rules (fp16 on a T4, fp32 for Gemma 3 there),
  prefix caching with swap TTA (both orientations share the prompt; not with mean pooling, whose mean
  would miss the cached tokens), eager mode on a CPU (compiling costs minutes there).

Requests go to the engine in groups of ``inference.request_rows`` rows; the stop rule is checked
between groups. The engine starts its core in a child process: a script that predicts with it must
run under ``if __name__ == "__main__":``.
"""
from __future__ import annotations

import contextlib
import dataclasses
import gc
import hashlib
import importlib.util
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import InferenceConfig, RunConfig, load_run_config
from .errors import ConfigError
from .inference import Worker
from .modeling import (
    FAMILIES,
    MERGED_MARKER,
    ModelFamily,
    answer_ids_for,
    cache_root,
    family_of_folder,
    load_run,
    load_tokenizer,
    resolve_dtype,
    resolve_source,
    save_merged,
)
from .runtime import environ

if TYPE_CHECKING:
    import numpy as np
    import torch

log = logging.getLogger(__name__)

POOLERS = {"last": "LAST", "mean": "MEAN"}  # format.pooling -> vLLM's sequence pooling type
CPU_KV_CACHE_GIB = 1.0
BUNDLED = "merged"  # a run folder's merged model, written by `wsdm bundle adapter --merged`
MERGE_DTYPES = ("float32", "bfloat16")
_KEPT: dict[str, Any] | None = None  # engines kept open by keep_engines(), by their arguments


# ---- checks ---------------------------------------------------------------------------------------
def vllm_problems(run_cfg: RunConfig, cfg: InferenceConfig, run_dir: Path | None = None) -> list[str]:
    """Why vLLM cannot serve this run as configured (empty: it can), each with its fix."""
    problems = []
    if importlib.util.find_spec("vllm") is None:
        problems.append("inference.backend=vllm: vLLM is not installed here; pip install 'wsdm_helpers[vllm]' "
                        "(on a CPU: the venv `make test-vllm` builds), or set inference.backend=hf")
    if cfg.model_parallel:
        problems.append("inference.model_parallel=true places an hf model over the GPUs; vLLM splits its engine "
                        "with inference.tensor_parallel_size: set inference.model_parallel=false")
    try:
        family = _family(run_cfg, run_dir)
    except ConfigError as exc:
        return problems + [str(exc)]
    if not family.vllm:
        served = ", ".join(f.name for f in FAMILIES.values() if f.vllm)
        problems.append(f"inference.backend=vllm: the {family.name} family has no vLLM architecture in "
                        f"modeling.FAMILIES (served: {served}); set inference.backend=hf")
    try:
        engine_dtype(run_cfg, cfg, family, placement(cfg).device)
    except ConfigError as exc:
        problems.append(str(exc))
    return problems


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where the engines run: ``device`` ("cuda" or "cpu"), the GPUs each engine is split over
    (``tensor_parallel_size``), and per engine the environment it starts in: the devices' GPUs divided
    by tensor_parallel_size engines (data parallel: one engine per GPU with tensor_parallel_size=1),
    each seeing only its own GPUs; several ``cpu`` devices get one engine per share of the cores."""

    device: str
    tensor_parallel_size: int
    engine_envs: tuple[dict[str, str], ...]


def placement(cfg: InferenceConfig) -> Placement:
    """The engines for ``inference.devices`` and ``inference.tensor_parallel_size``."""
    from .inference import resolve_devices

    devices = resolve_devices(cfg.devices)
    gpus = [int(d.partition(":")[2] or 0) for d in devices if d.startswith("cuda")]
    if not gpus:
        if (cfg.tensor_parallel_size or 1) > 1:
            raise ConfigError(f"inference.tensor_parallel_size={cfg.tensor_parallel_size} but the devices hold no "
                              "GPU; set it to 1 (or null) on a CPU")
        return Placement("cpu", 1, _cpu_shares(len(devices)))
    tp = cfg.tensor_parallel_size or len(gpus)
    if len(set(gpus)) != len(gpus) or len(gpus) % tp:
        raise ConfigError(f"inference.tensor_parallel_size={tp} with the GPUs {devices}: list each GPU once, in a "
                          f"number tensor_parallel_size divides (engines = GPUs / tensor_parallel_size; "
                          f"null = one engine over all of them, 1 = one engine per GPU)")
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    physical = visible.split(",") if visible else [str(i) for i in range(max(gpus) + 1)]
    groups = [gpus[i:i + tp] for i in range(0, len(gpus), tp)]
    return Placement("cuda", tp, tuple({"CUDA_VISIBLE_DEVICES": ",".join(physical[g] for g in group)}
                                       for group in groups))


def _cpu_shares(n_engines: int) -> tuple[dict[str, str], ...]:
    """One engine: vLLM binds its threads itself; several: each bound to its own share of this process's cores."""
    if n_engines == 1:
        return ({},)
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < n_engines:
        raise ConfigError(f"inference.devices lists {n_engines} cpu engines but this process has {len(cores)} "
                          f"core(s); list cpu at most {len(cores)} times")
    shares = [cores[i * len(cores) // n_engines:(i + 1) * len(cores) // n_engines] for i in range(n_engines)]
    return tuple({"VLLM_CPU_OMP_THREADS_BIND": ",".join(map(str, share))} for share in shares)


def engine_dtype(run_cfg: RunConfig, cfg: InferenceConfig, family: ModelFamily, device: str) -> torch.dtype:
    """The dtype the engine computes in: inference.dtype (run: the run's model.dtype) under the family's
    rules (:func:`modeling.resolve_dtype`, with prediction's fallback)."""
    import torch

    name = run_cfg.model.dtype if cfg.dtype == "run" else cfg.dtype
    return resolve_dtype(name, torch.device(device), family, fallback=True)


def _family(run_cfg: RunConfig, run_dir: Path | None) -> ModelFamily:
    """The family from a bundled merged folder when there is one (Kaggle may not hold the base), else the base."""
    if run_dir is not None and _marker(run_dir / BUNDLED) is not None:
        return family_of_folder(run_dir / BUNDLED, run_cfg.model.family)
    return family_of_folder(resolve_source(run_cfg.model.source), run_cfg.model.family)


# ---- the merged model folder ----------------------------------------------------------------------
def merge_dtype(dtype: torch.dtype) -> str:
    """float32 stays float32; 16-bit engines get a bfloat16 merge (the CPU merges in it; the engine casts)."""
    import torch

    return "float32" if dtype == torch.float32 else "bfloat16"


def merge_key(run_dir: Path, dtype: str) -> str:
    """A digest of what the merged weights depend on: the safetensors files' contents, the model and head
    settings and the dtype; paths are left out (the base's location, adapter_config.json's rewritten
    base path), so a bundle copied to Kaggle keeps its key."""
    cfg = load_run_config(run_dir / "config.yaml")
    sha = hashlib.sha1(repr((dtype, cfg.format.head, cfg.model.num_labels, cfg.model.num_layers,
                             cfg.model.family)).encode())
    weights = run_dir / ("model" if (run_dir / "model").is_dir() else "adapter")
    for path in sorted(weights.rglob("*.safetensors")):
        sha.update(path.relative_to(weights).as_posix().encode())
        with path.open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                sha.update(block)
    return sha.hexdigest()[:16]


def _marker(folder: Path) -> str | None:
    path = folder / MERGED_MARKER
    return path.read_text().strip() if path.is_file() else None


def merged_folder(run_dir: str | Path, dtype: str, out: Path | None = None) -> Path:
    """The run's merged model folder in ``dtype`` (float32 or bfloat16): ``out`` when given, else the
    bundled ``<run>/merged`` made from the same weights (in either dtype: the engine casts, so Kaggle needs
    no base), else ``$WSDM_CACHE/merged/<key>``, written there once (the base loaded unquantized on the
    CPU: a QLoRA run merges into 16-bit weights)."""
    run_dir = Path(run_dir)
    key = merge_key(run_dir, dtype)
    bundled = _marker(run_dir / BUNDLED)
    if out is None and bundled is not None and bundled in {merge_key(run_dir, d) for d in MERGE_DTYPES}:
        return run_dir / BUNDLED
    target = out or cache_root() / "merged" / key
    if _marker(target) != key:
        log.info("merging the adapter of %s into its base (%s) at %s (once)", run_dir, dtype, target)
        run = load_run(run_dir, "cpu", dtype=dtype, quantization="none")
        save_merged(run, target, key)
        del run
        gc.collect()
    return target


# ---- the engine -----------------------------------------------------------------------------------
@dataclasses.dataclass
class VllmRun:
    """What the rows are encoded with (the fields of modeling.LoadedRun that encoding reads)."""

    config: RunConfig
    tokenizer: Any
    family: ModelFamily


def engine_arguments(run_cfg: RunConfig, cfg: InferenceConfig, family: ModelFamily, folder: Path,
                     dtype: torch.dtype, device: str, tp: int) -> dict[str, Any]:
    """Keyword arguments of ``vllm.LLM`` for this run (the pooler config as a plain mapping)."""
    classifier = run_cfg.format.head == "classifier"
    kwargs: dict[str, Any] = {
        "model": str(folder), "runner": "pooling" if classifier else "generate",
        "dtype": str(dtype).removeprefix("torch."), "skip_tokenizer_init": True, "seed": 0,
        # a generated answer token needs one position past the longest pair
        "max_model_len": run_cfg.format.max_length + (0 if classifier else 1),
        "tensor_parallel_size": tp, "gpu_memory_utilization": cfg.gpu_memory_utilization,
        # a mean over a cached prefix would miss its tokens: vLLM serves MEAN pooling without prefix caching
        "enable_prefix_caching": cfg.tta != "none" and not (classifier and run_cfg.format.pooling == "mean"),
        "enforce_eager": device == "cpu"}
    gib = cfg.kv_cache_gib or (CPU_KV_CACHE_GIB if device == "cpu" else None)
    if gib:
        kwargs["kv_cache_memory_bytes"] = int(gib * 2**30)
    if classifier:
        kwargs["pooler_config"] = {"seq_pooling_type": POOLERS[run_cfg.format.pooling]}
        if family.vllm_classifier:
            kwargs["hf_overrides"] = {"architectures": [family.vllm_classifier]}
    else:
        kwargs["logprobs_mode"] = "processed_logits"  # after allowed_token_ids masked the other tokens
    return kwargs


def _start(kwargs: dict[str, Any], env: dict[str, str]) -> Any:
    """An engine started with ``env`` set (its core process inherits it: the GPUs or cores it may use)."""
    import json

    from vllm import LLM
    from vllm.config import PoolerConfig

    key = json.dumps([kwargs, env], sort_keys=True)
    if _KEPT is not None and key in _KEPT:
        return _KEPT[key]
    args = dict(kwargs)
    if "pooler_config" in args:
        args["pooler_config"] = PoolerConfig(**args["pooler_config"])
    with environ(env):
        llm = LLM(**args)
    if _KEPT is not None:
        _KEPT[key] = llm
    return llm


def _shutdown(llm: Any) -> None:
    """Stop the engine's core process now (its GPU memory is free for the next run)."""
    llm.llm_engine.engine_core.shutdown()
    gc.collect()


@contextlib.contextmanager
def keep_engines():
    """Engines started inside stay open for later calls with the same arguments, and close on exit
    (a benchmark or a test suite pays the start-up once)."""
    global _KEPT
    outer, _KEPT = _KEPT, ({} if _KEPT is None else _KEPT)
    try:
        yield
    finally:
        if outer is None:
            for llm in _KEPT.values():
                _shutdown(llm)
            _KEPT = None


@contextlib.contextmanager
def open_vllm(run_dir: Path, cfg: InferenceConfig):
    """(VllmRun, one VllmWorker per engine, weights key) for inference.run_prediction; the engines are
    shut down on exit unless inside :func:`keep_engines`."""
    import torch

    run_cfg = load_run_config(run_dir / "config.yaml")
    family = _family(run_cfg, run_dir)
    where = placement(cfg)
    dtype = engine_dtype(run_cfg, cfg, family, where.device)
    folder = merged_folder(run_dir, merge_dtype(dtype))
    tokenizer = load_tokenizer(run_dir / "tokenizer", family)
    kwargs = engine_arguments(run_cfg, cfg, family, folder, dtype, where.device, where.tensor_parallel_size)
    log.info("vLLM: %d engine(s) %s: %s", len(where.engine_envs), list(where.engine_envs), kwargs)
    engines: list[Any] = []
    try:
        for env in where.engine_envs:
            engines.append(_start(kwargs, env))
        workers = [VllmWorker(None, torch.device(where.device), tokenizer.pad_token_id, family.padding_side, dtype,
                              run_cfg.model.num_labels, llm=llm, request_rows=cfg.request_rows,
                              answer_ids=answer_ids_for(tokenizer, run_cfg.format, run_cfg.model.num_labels))
                   for llm in engines]
        yield VllmRun(run_cfg, tokenizer, family), workers, {"merged": _marker(folder), "engine": kwargs["dtype"]}
    finally:
        if _KEPT is None:
            for llm in engines:
                _shutdown(llm)


@dataclasses.dataclass
class VllmWorker(Worker):
    """A Worker whose forward passes are vLLM requests: groups of ``request_rows`` rows in their given
    order, no padding (computed tokens are real tokens); rows with NaN/inf probabilities stay NaN for
    the submission's fallback (no float32 redo: the engine's weights are fixed)."""

    llm: Any = None
    request_rows: int = 256
    answer_ids: list[int] = dataclasses.field(default_factory=list)

    def groups(self, lengths: Sequence[int], cfg: InferenceConfig) -> list[np.ndarray]:
        import numpy as np

        return [np.arange(i, min(i + self.request_rows, len(lengths))) for i in range(0, len(lengths), self.request_rows)]

    def planned_tokens(self, lengths: Sequence[int], cfg: InferenceConfig) -> int:
        return int(sum(lengths))

    def batch_tokens(self, lengths: Sequence[int]) -> int:
        return int(sum(lengths))

    def score_batch(self, rows: list[list[int]]) -> np.ndarray:
        import numpy as np
        from vllm.inputs import TokensPrompt

        prompts = [TokensPrompt(prompt_token_ids=list(map(int, r))) for r in rows]
        probs = self._answer_probs(prompts) if self.answer_ids else np.array(
            [o.outputs.probs for o in self.llm.classify(prompts, use_tqdm=False)], dtype=float)
        tokens = sum(len(r) for r in rows)
        self.real_tokens += tokens
        self.computed_tokens += tokens
        return probs

    def _answer_probs(self, prompts: list) -> np.ndarray:
        """Softmax over the answer tokens' logits of the one generated position."""
        import numpy as np
        from vllm import SamplingParams

        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=len(self.answer_ids),
                                allowed_token_ids=self.answer_ids, detokenize=False)
        outputs = self.llm.generate(prompts, params, use_tqdm=False)
        logits = np.array([[o.outputs[0].logprobs[0][t].logprob for t in self.answer_ids] for o in outputs])
        logits = logits - logits.max(axis=1, keepdims=True)
        return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)

    def redo_in_float32(self, rows: list[list[int]], n_classes: int) -> np.ndarray:
        import numpy as np

        self.nonfinite_rows += len(rows)
        log.warning("vllm: %d row(s) had NaN/inf probabilities in %s; left NaN for the fallback", len(rows),
                    str(self.compute_dtype).removeprefix("torch."))
        return np.full((len(rows), n_classes), np.nan)
