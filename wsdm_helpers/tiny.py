"""Tiny tokenizers and random models for hermetic tests and smoke runs (no network, no downloads).

The tokenizer is trained on the fly from the texts at hand (the nanochat way), then wrapped as a
``PreTrainedTokenizerFast`` and saved, so everything downstream goes through ``from_pretrained``
exactly as with a real checkpoint.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

SPECIAL_TOKENS = ["<pad>", "<unk>", "<bos>", "<eos>", "[CLS]", "[SEP]", "[MASK]"]


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
