"""Length-sorted token-budget batches and dynamic padding.

Rows are sorted by length so each batch holds rows of similar length (little padding), and each
batch is filled up to a budget of padded tokens (rows x longest row) instead of a fixed row count,
so short rows go in big batches and long rows in small ones. The longest batch comes first: an
out-of-memory error shows up at once, not after an hour.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .errors import ConfigError

if TYPE_CHECKING:
    import torch


def token_budget_batches(lengths: Sequence[int] | np.ndarray, max_tokens: int, max_batch_size: int,
                         descending: bool = True) -> list[np.ndarray]:
    """Row indices per batch: length-sorted, each batch's ``rows * longest <= max_tokens``.

    A single row longer than ``max_tokens`` gets a batch of its own. ``descending=True`` puts the
    longest rows (the largest padded batch) first. Ties keep the input order (stable sort).
    """
    if max_tokens < 1 or max_batch_size < 1:
        raise ConfigError(f"max_tokens={max_tokens} and max_batch_size={max_batch_size} must be at least 1")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.argsort(-lengths if descending else lengths, kind="stable")
    batches: list[np.ndarray] = []
    start, longest = 0, 0
    for pos, row in enumerate(order):
        new_longest = max(longest, int(lengths[row]))
        rows = pos - start + 1
        if rows > 1 and (rows > max_batch_size or rows * new_longest > max_tokens):
            batches.append(order[start:pos])
            start, new_longest = pos, int(lengths[row])
        longest = new_longest
    if start < len(order):
        batches.append(order[start:])
    return batches


def padding_efficiency(lengths: Sequence[int] | np.ndarray, batches: Sequence[np.ndarray]) -> float:
    """Real tokens / computed tokens (rows x longest row, summed over batches); 1.0 = no padding."""
    lengths = np.asarray(lengths, dtype=np.int64)
    computed = sum(len(b) * int(lengths[b].max()) for b in batches if len(b))
    real = sum(int(lengths[b].sum()) for b in batches)
    return real / computed if computed else 1.0


def collate(input_ids_list: Sequence[Sequence[int]], pad_id: int, padding_side: str = "left") -> dict[str, torch.Tensor]:
    """Pad a batch to its longest row: ``{"input_ids", "attention_mask"}`` as LongTensors.

    Decoders pad on the left (heads read the last position), encoders on the right.
    """
    import torch

    if padding_side not in ("left", "right"):
        raise ConfigError(f"padding_side={padding_side!r} must be 'left' or 'right'")
    if pad_id is None:
        raise ConfigError("pad_id is None; call tokenization.ensure_pad_token(tokenizer) first")
    if not len(input_ids_list):
        raise ConfigError("collate got an empty batch")
    width = max(len(ids) for ids in input_ids_list)
    ids = np.full((len(input_ids_list), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(input_ids_list), width), dtype=np.int64)
    for i, row in enumerate(input_ids_list):
        span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
        ids[i, span] = row
        mask[i, span] = 1
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
