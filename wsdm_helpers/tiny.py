"""Tiny tokenizers and random models for hermetic tests and smoke runs (no network, no downloads).

The tokenizer is trained on the fly from the texts at hand (the nanochat way), then wrapped as a
``PreTrainedTokenizerFast`` and saved, so everything downstream goes through ``from_pretrained``
exactly as with a real checkpoint.
"""
from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

SPECIAL_TOKENS = ["<pad>", "<unk>", "<bos>", "<eos>", "[CLS]", "[SEP]", "[MASK]"]


def pair_texts(frame) -> list[str]:
    """Every non-empty turn of a canonical frame's prompt, response_a and response_b (tokenizer training text)."""
    return [t for col in ("prompt", "response_a", "response_b") for turns in frame[col] for t in turns if t]


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1000, out_dir: str | Path | None = None):
    """Train a byte-level BPE tokenizer on ``texts`` and return it as a ``PreTrainedTokenizerFast``.

    Byte-level BPE covers every script (CJK, Arabic, emoji) without unknown tokens. Single letters
    such as "A" and "B" are in the initial alphabet, so MCQ answer tokens always exist.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    core = Tokenizer(models.BPE(unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator((t for t in texts if t), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        pad_token="<pad>", unk_token="<unk>", bos_token="<bos>", eos_token="<eos>",
        cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
    )
    if out_dir is not None:
        tokenizer.save_pretrained(str(out_dir))
    return tokenizer


# Small but structurally faithful configs: 2 layers, hidden 32, explicit head_dim, grouped KV heads.
_DECODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, head_dim=8, max_position_embeddings=512)
_ENCODER = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                max_position_embeddings=512)
TINY_CONFIGS: dict[str, tuple[str, dict]] = {
    "gemma2": ("gemma2", dict(_DECODER, sliding_window=64, query_pre_attn_scalar=8)),
    "gemma3": ("gemma3_text", dict(_DECODER, sliding_window=64, query_pre_attn_scalar=8,
                                   layer_types=["sliding_attention", "full_attention"])),
    "qwen2": ("qwen2", dict(_DECODER, layer_types=["full_attention"] * 2)),
    "llama": ("llama", _DECODER),
    "mistral": ("mistral", dict(_DECODER, sliding_window=None)),
    "phi3": ("phi3", {k: v for k, v in _DECODER.items() if k != "head_dim"}),
    "deberta-v2": ("deberta-v2", dict(_ENCODER, relative_attention=True, position_buckets=32,
                                      pos_att_type=["p2c", "c2p"], position_biased_input=False,
                                      pooler_hidden_size=32, type_vocab_size=0)),
    "bert": ("bert", _ENCODER),
}


def build_tiny_model(family: str, tokenizer, out_dir: str | Path, num_labels: int = 2,
                     head: str = "classifier", seed: int = 0, **sizes: int) -> Path:
    """Save a randomly initialised tiny model of ``family`` with ``tokenizer`` to ``out_dir``.

    ``head="mcq"`` saves a causal LM (what a pretrained decoder checkpoint is); ``"classifier"`` a
    sequence-classification model with ``num_labels`` outputs. Loading goes through ``from_pretrained``.
    ``sizes`` replace config values (vLLM's CPU attention needs ``head_dim`` of 32 or more).
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSequenceClassification

    if family not in TINY_CONFIGS:
        raise ValueError(f"no tiny config for family {family!r}; known: {', '.join(TINY_CONFIGS)}")
    model_type, defaults = TINY_CONFIGS[family]
    sizes = {**defaults, **sizes}
    special = {name: getattr(tokenizer, f"{name}_id") for name in ("pad_token", "bos_token", "eos_token")}
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), num_labels=num_labels,
                                  **{f"{k}_id": v for k, v in special.items()}, **sizes)
    torch.manual_seed(seed)
    model_class = AutoModelForSequenceClassification if head == "classifier" else AutoModelForCausalLM
    model = model_class.from_config(config)
    out_dir = Path(out_dir)
    model.save_pretrained(str(out_dir))
    tokenizer.save_pretrained(str(out_dir))
    return out_dir


def build_tiny_model_from_file(train_path: str | Path, out_dir: str | Path, family: str = "llama",
                               head: str = "classifier", vocab_size: int = 1000) -> Path:
    """A tiny random model of ``family`` whose tokenizer is trained on the texts of ``train_path``
    (any supported layout): what ``configs/tiny-test.yaml`` trains in a smoke run (``wsdm tiny-model``)."""
    from .data import read_pairs

    frame, _ = read_pairs(train_path)
    tokenizer = train_tokenizer(pair_texts(frame), vocab_size=vocab_size)
    return build_tiny_model(family, tokenizer, out_dir, head=head)
