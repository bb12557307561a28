"""Budget allocation, truncation and swap, on synthetic token ids (no tokenizer needed)."""
from __future__ import annotations

import numpy as np
import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from wsdm_helpers.data import frame_from_records
from wsdm_helpers.formatting import (
    TEMPLATES,
    Budget,
    TemplateIds,
    allocate,
    elide,
    fit_pair,
    latest_first,
    water_fill,
)
from wsdm_helpers.tta import swap_pairs

SETTINGS = settings(max_examples=60, deadline=None)
PARTS = TemplateIds(begin=[1, 2], headers=([3], [4, 4], [5, 5]), turn_sep=[6], end=[7, 8, 9], marker=[0, 0])
lengths3 = st.lists(st.integers(0, 3000), min_size=3, max_size=3)
shares3 = st.lists(st.floats(0, 1), min_size=3, max_size=3).filter(lambda s: sum(s) > 0.01)


@SETTINGS
@given(lengths3, shares3, st.integers(0, 5000))
def test_water_fill_gives_each_field_its_share_and_passes_on_the_rest(lengths, shares, budget):
    alloc = water_fill(lengths, shares, budget)
    assert all(0 <= a <= n for a, n in zip(alloc, lengths, strict=True))
    assert min(budget, sum(lengths)) - 2 <= sum(alloc) <= min(budget, sum(lengths))
    for a, n, s in zip(alloc, lengths, shares, strict=True):
        assert a >= min(n, int(budget * s / sum(shares)))


@SETTINGS
@given(lengths3, shares3, st.integers(0, 5000), st.integers(0, 64))
def test_allocate_keeps_the_floor_of_every_non_empty_field(lengths, shares, content, floor):
    budget = Budget(10_000, tuple(shares), floor)
    alloc = allocate(lengths, budget, content)
    assert min(content, sum(lengths)) - 2 <= sum(alloc) <= min(content, sum(lengths))
    if 3 * floor <= content:
        assert all(a >= min(n, floor) for a, n in zip(alloc, lengths, strict=True))


def test_short_field_budget_flows_to_the_others():
    assert water_fill([10, 1000, 1000], [0.2, 0.4, 0.4], 1000) == [10, 495, 495]
    assert water_fill([10, 20, 1000], [0.2, 0.4, 0.4], 1000) == [10, 20, 970]
    assert water_fill([0, 0, 0], [0.2, 0.4, 0.4], 1000) == [0, 0, 0]
    assert water_fill([1000, 1000, 1000], [0.2, 0.4, 0.4], 1001) == [201, 400, 400]  # A and B stay equal


def test_elide_keeps_head_and_tail_around_the_marker():
    ids = list(range(100, 200))
    assert elide(ids, 200, [0]) == ids
    cut = elide(ids, 11, [0, 0, 0])
    assert cut == [100, 101, 102, 103, 0, 0, 0, 196, 197, 198, 199]
    assert elide(ids, 4, [0, 0, 0]) == [100, 101, 102, 103]  # no room for the marker: head only


def test_latest_turns_are_kept_first():
    assert latest_first([50, 30, 20], 60) == [10, 30, 20]
    assert latest_first([50, 30, 20], 10) == [0, 0, 10]


turn_ids = st.lists(st.integers(10, 99), max_size=400)
turn = st.tuples(turn_ids, turn_ids, turn_ids)


@SETTINGS
@given(st.lists(turn, min_size=1, max_size=6), st.integers(40, 600), st.integers(0, 32))
def test_fit_pair_never_exceeds_max_length_and_keeps_the_layout(turns, max_length, floor):
    budget = Budget(max_length, (0.2, 0.4, 0.4), floor)
    fit = fit_pair(turns, PARTS, budget)
    assert len(fit.input_ids) <= max_length
    assert fit.input_ids[:2] == PARTS.begin and fit.input_ids[-3:] == PARTS.end
    assert 1 <= fit.turns_kept <= fit.turns == len(turns)
    assert fit == fit_pair(turns, PARTS, budget)  # deterministic
    if all(sum(len(t[f]) for t in turns) == len(turns[-1][f]) for f in range(3)) and len(turns) == 1:
        content = max_length - PARTS.overhead(1)
        for f in range(3):
            original = fit.original[f]
            slack = len(PARTS.marker) if fit.kept[f] < original else 0
            assert fit.kept[f] + slack >= min(original, int(content * budget.shares[f]) - 2 * floor)
            if 3 * floor <= content:
                assert fit.kept[f] + slack >= min(original, floor)


def test_fit_pair_drops_whole_early_turns_that_keep_nothing():
    old = ([11] * 300, [12] * 300, [13] * 300)
    new = ([21] * 100, [22] * 200, [23] * 200)
    fit = fit_pair([old, new], PARTS, Budget(200, (0.2, 0.4, 0.4), 16))
    assert fit.turns_kept == 1 and 11 not in fit.input_ids
    assert PARTS.turn_sep[0] not in fit.input_ids
    roomy = fit_pair([old, new], PARTS, Budget(2000, (0.2, 0.4, 0.4), 16))
    assert roomy.turns_kept == 2 and roomy.kept == roomy.original == (400, 500, 500)


def test_templates_cover_the_families():
    assert {"gemma", "chatml", "llama3", "mistral", "phi3", "encoder", "plain"} <= set(TEMPLATES)
    assert not TEMPLATES["encoder"].supports_mcq


def _frame(labels):
    n = len(labels)
    return frame_from_records([{"id": f"r{i}", "prompt": [f"p{i}", None], "response_a": [f"a{i}", "x"],
                                "response_b": [None, f"b{i}"], "label": label, "model_a": f"ma{i}",
                                "model_b": f"mb{i}"} for i, label in zip(range(n), labels, strict=True)])


@SETTINGS
@given(st.lists(st.sampled_from([-1, 0, 1, 2]), min_size=1, max_size=20))
def test_swap_twice_is_identity_and_flips_only_decisive_labels(labels):
    frame = _frame(labels)
    swapped = swap_pairs(frame)
    pd.testing.assert_frame_equal(swap_pairs(swapped), frame)
    assert swapped["id"].tolist() == frame["id"].tolist()
    assert swapped["response_a"].tolist() == frame["response_b"].tolist()
    assert swapped["model_b"].tolist() == frame["model_a"].tolist()
    expected = np.array([{0: 1, 1: 0}.get(x, x) for x in labels])
    assert swapped["label"].tolist() == expected.tolist()
    assert swapped["label"].dtype == frame["label"].dtype
