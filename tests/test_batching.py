"""Token-budget batches (plan_batches), padding efficiency and collate."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wsdm_helpers.batching import collate, padding_efficiency, plan_batches
from wsdm_helpers.config import InferenceConfig
from wsdm_helpers.errors import ConfigError


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 3000), min_size=1, max_size=300), st.integers(1, 20000), st.integers(1, 64),
       st.integers(0, 2000))
def test_batches_cover_every_row_once_within_the_budget(lengths, max_tokens, max_batch, overhead):
    lengths = np.array(lengths)
    cfg = InferenceConfig(max_tokens_per_batch=max_tokens, max_batch_size=max_batch, batch_overhead_tokens=overhead)
    batches = plan_batches(lengths, cfg)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(lengths)))
    for b in batches:
        assert 1 <= len(b) <= max_batch
        assert len(b) == 1 or len(b) * lengths[b].max() <= max_tokens
    firsts = [lengths[b].max() for b in batches]  # longest first: an out-of-memory shows up at once
    assert firsts[0] == lengths.max() and firsts == sorted(firsts, reverse=True)


def test_sorted_batches_waste_little_padding():
    rng = np.random.default_rng(0)
    lengths = rng.integers(20, 2000, size=2000)
    fixed = [np.arange(i, min(i + 8, len(lengths))) for i in range(0, len(lengths), 8)]
    for device in ("cuda", "cpu"):
        batches = plan_batches(lengths, InferenceConfig().for_device(device))
        assert padding_efficiency(lengths, batches) > 0.97 > padding_efficiency(lengths, fixed)


def test_collate_pads_left_for_decoders_and_right_for_encoders():
    rows = [[5, 6, 7], [8]]
    left = collate(rows, pad_id=0, padding_side="left")
    assert left["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert left["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    right = collate(rows, pad_id=0, padding_side="right")
    assert right["input_ids"].tolist() == [[5, 6, 7], [8, 0, 0]]
    assert right["attention_mask"].dtype == torch.long
    with pytest.raises(ConfigError, match="padding_side"):
        collate(rows, pad_id=0, padding_side="middle")
    with pytest.raises(ConfigError, match="ensure_pad_token"):
        collate(rows, pad_id=None, padding_side="left")
