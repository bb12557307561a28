"""Length-sorted token-budget batches and dynamic padding.

Rows are sorted by length so each batch holds rows of similar length (little padding), and each
batch is bounded by a budget of padded tokens (rows x longest row) instead of a fixed row count,
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

    from .config import InferenceConfig


def plan_batches(lengths: Sequence[int], cfg: InferenceConfig) -> list[np.ndarray]:
    """Length-sorted batches (longest first) that minimise padded tokens + a fixed cost per batch.

    Within the token budget (rows x longest <= max_tokens_per_batch, at most max_batch_size rows),
    the cut points are chosen by dynamic programming over the sorted rows, pricing each forward pass
    at ``batch_overhead_tokens``: long rows go in small batches, short rows in big ones, and a batch
    is cut wherever the lengths drop enough that padding would cost more than one more pass.
    """
    if cfg.max_tokens_per_batch is None or cfg.batch_overhead_tokens is None:
        raise ValueError("plan_batches needs resolved batching values: pass cfg.for_device('cuda' or 'cpu')")
    lengths = np.asarray(lengths, dtype=np.int64)
    order = np.lexsort((np.arange(len(lengths)), -lengths))
    ordered = lengths[order]
    best = np.full(len(order) + 1, np.inf)
    best[0], start = 0.0, np.zeros(len(order) + 1, dtype=np.int64)
    for end in range(1, len(order) + 1):
        first = np.arange(max(0, end - cfg.max_batch_size), end)
        rows = end - first
        cost = best[first] + rows * ordered[first] + cfg.batch_overhead_tokens
        cost[(rows * ordered[first] > cfg.max_tokens_per_batch) & (rows > 1)] = np.inf
        pick = int(np.argmin(cost))
        best[end], start[end] = cost[pick], first[pick]
    cuts, end = [], len(order)
    while end > 0:
        cuts.append((int(start[end]), end))
        end = int(start[end])
    return [order[a:b] for a, b in reversed(cuts)]


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
        raise ValueError("collate got an empty batch")  # a caller bug, not a user error
    width = max(len(ids) for ids in input_ids_list)
    ids = np.full((len(input_ids_list), width), pad_id, dtype=np.int64)
    mask = np.zeros((len(input_ids_list), width), dtype=np.int64)
    for i, row in enumerate(input_ids_list):
        span = slice(width - len(row), width) if padding_side == "left" else slice(0, len(row))
        ids[i, span] = row
        mask[i, span] = 1
    return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(mask)}
