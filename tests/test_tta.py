"""The A/B symmetry rules (wsdm_helpers.tta): flips, merges on id, selection, and swap augmentation."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from wsdm_helpers import tta
from wsdm_helpers.data import frame_from_records
from wsdm_helpers.errors import SubmissionError


def _preds(ids, probs):
    out = pd.DataFrame({"id": [str(i) for i in ids]})
    out[tta.columns_for(probs.shape[1])] = probs
    return out


@given(arrays(np.float64, st.tuples(st.integers(1, 20), st.sampled_from([2, 3])), elements=st.floats(0, 1)))
def test_flip_is_an_involution_that_keeps_ties(probs):
    flipped = tta.flip_probs(probs)
    assert np.array_equal(flipped[:, 0], probs[:, 1]) and np.array_equal(flipped[:, 1], probs[:, 0])
    if probs.shape[1] == 3:
        assert np.array_equal(flipped[:, 2], probs[:, 2])
    assert np.array_equal(tta.flip_probs(flipped), probs)
    assert np.array_equal(tta.flip_predictions(_preds(range(len(probs)), probs))[tta.columns_for(probs.shape[1])]
                          .to_numpy(), flipped)


def test_flip_labels_keeps_ties_and_unknown():
    assert tta.flip_labels(np.array([0, 1, 2, -1])).tolist() == [1, 0, 2, -1]


def test_merge_swapped_joins_on_id_not_position():
    ab = _preds(["x", "y", "z"], np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]]))
    ba = _preds(["y", "x"], np.array([[0.6, 0.4], [0.3, 0.7]]))  # other order, subset, BA orientation
    merged = tta.merge_swapped(ab, ba).set_index("id")
    assert merged.loc["x", "winner_model_a"] == pytest.approx((0.9 + 0.7) / 2)
    assert merged.loc["y", "winner_model_a"] == pytest.approx((0.2 + 0.4) / 2)
    assert merged.loc["z", "winner_model_a"] == 0.5  # not swapped: AB kept
    assert list(merged.index) == ["x", "y", "z"]


def test_merge_swapped_refuses_unknown_ids_and_other_class_counts():
    ab = _preds(["x"], np.array([[0.9, 0.1]]))
    with pytest.raises(SubmissionError, match="without an AB prediction"):
        tta.merge_swapped(ab, _preds(["q"], np.array([[0.5, 0.5]])))
    with pytest.raises(SubmissionError, match="BA predictions"):
        tta.merge_swapped(ab, _preds(["x"], np.array([[0.4, 0.4, 0.2]])))


def test_average_orientations_equals_merge_of_full_swap():
    probs_ab, probs_ba = np.array([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3]]), np.array([[0.3, 0.5, 0.2], [0.5, 0.4, 0.1]])
    merged = tta.merge_swapped(_preds("ab", probs_ab), _preds("ab", probs_ba))
    assert np.allclose(merged[tta.PROB3].to_numpy(), tta.average_orientations(probs_ab, probs_ba))


def test_log_odds_average_is_the_mean_logit_and_every_path_agrees():
    probs_ab, probs_ba = np.array([[0.9, 0.1], [0.3, 0.7]]), np.array([[0.4, 0.6], [0.2, 0.8]])
    logit = lambda p: np.log(p[:, 0] / p[:, 1])  # noqa: E731
    mean_logit = (logit(probs_ab) + logit(tta.flip_probs(probs_ba))) / 2
    averaged = tta.average_orientations(probs_ab, probs_ba, "log_odds")
    np.testing.assert_allclose(averaged[:, 0], 1 / (1 + np.exp(-mean_logit)))
    np.testing.assert_allclose(tta.average_orientations(probs_ab, probs_ba)[:, 0], (probs_ab[:, 0] + probs_ba[:, 1]) / 2)
    ab, ba = _preds("xy", probs_ab), _preds("xy", probs_ba)
    for merged in (tta.merge_swapped(ab, ba, "log_odds"),  # BA as predicted; apply_policy takes it mapped back
                   tta.apply_policy(ab, tta.flip_predictions(ba), "swap", average="log_odds")):
        np.testing.assert_allclose(merged[tta.PROB2].to_numpy(), averaged)


def test_select_uncertain_most_uncertain_first_within_band_and_cap():
    preds = _preds("abcd", np.array([[0.52, 0.48], [0.9, 0.1], [0.5, 0.5], [0.4, 0.6]]))
    assert tta.select_uncertain(preds) == ["c", "a", "d", "b"]
    assert tta.select_uncertain(preds, band=0.1) == ["c", "a", "d"]
    assert tta.select_uncertain(preds, band=0.1, max_rows=2) == ["c", "a"]


@pytest.mark.parametrize(("policy", "share", "wanted", "sel"), [
    ("none", 0.5, 0, (None, None)), ("swap", 0.5, 10, (None, None)),
    ("selective", 0.5, 5, (0.15, 5)), ("selective", None, 10, (0.15, None))])
def test_policies(policy, share, wanted, sel):
    assert tta.swap_rows_wanted(policy, 10, share) == wanted
    assert tta.selection(policy, 10, 0.15, share) == sel


def test_swap_augmentation_doubles_rows_flips_labels_keeps_ties():
    from wsdm_helpers.config import RunConfig
    from wsdm_helpers.training import augmented_frame

    frame = frame_from_records([
        {"id": "1", "prompt": "p", "response_a": "first", "response_b": "second", "label": 0, "model_a": "m1",
         "model_b": "m2"},
        {"id": "2", "prompt": "q", "response_a": "left", "response_b": "right", "label": 2, "model_a": "m3",
         "model_b": "m4"},
    ])
    cfg = RunConfig()
    cfg.train.swap_augment = True
    both = augmented_frame(frame, cfg)
    assert len(both) == 4 and both["id"].tolist() == ["1", "2", "1", "2"]
    assert both["label"].tolist() == [0, 2, 1, 2]
    assert both.loc[2, "response_a"] == ["second"] and both.loc[2, "model_a"] == "m2"
    cfg.train.swap_augment = False
    assert len(augmented_frame(frame, cfg)) == 2


def _two_class(ids, p_a):
    p_a = np.asarray(p_a, dtype=float)
    return pd.DataFrame({"id": ids, "winner_model_a": p_a, "winner_model_b": 1 - p_a})


def test_merge_swapped_joins_on_id_and_keeps_unswapped_rows():
    ab = _two_class(["x", "y", "z"], [0.8, 0.5, 0.3])
    ba = _two_class(["z", "x"], [0.6, 0.4])  # swapped orientation: P(original b) for z is 0.6
    merged = tta.merge_swapped(ab, ba)
    assert merged["id"].tolist() == ["x", "y", "z"]
    np.testing.assert_allclose(merged["winner_model_a"], [(0.8 + 0.6) / 2, 0.5, (0.3 + 0.4) / 2])
    np.testing.assert_allclose(merged[["winner_model_a", "winner_model_b"]].sum(axis=1), 1)


def test_merge_swapped_three_classes_keeps_tie_column_in_place():
    ab = pd.DataFrame({"id": ["x"], "winner_model_a": [0.5], "winner_model_b": [0.2], "winner_tie": [0.3]})
    ba = pd.DataFrame({"id": ["x"], "winner_model_a": [0.3], "winner_model_b": [0.6], "winner_tie": [0.1]})
    merged = tta.merge_swapped(ab, ba)
    np.testing.assert_allclose(merged.iloc[0, 1:].to_numpy(dtype=float), [0.55, 0.25, 0.2])


def test_merge_swapped_rejects_unknown_ids():
    with pytest.raises(SubmissionError, match="without an AB prediction: q"):
        tta.merge_swapped(_two_class(["x"], [0.5]), _two_class(["q"], [0.5]))


def test_select_uncertain_band_and_cap():
    preds = _two_class(["a", "b", "c", "d"], [0.9, 0.55, 0.45, 0.62])
    assert tta.select_uncertain(preds, band=0.1) == ["b", "c"]  # ties in margin broken by id
    assert tta.select_uncertain(preds, band=None, max_rows=3) == ["b", "c", "d"]
    assert tta.select_uncertain(preds, band=0.15, max_rows=1) == ["b"]


def test_apply_policy_scores_what_each_tta_policy_would_submit():
    ab = pd.DataFrame({"id": ["r0", "r1", "r2", "r3"], "winner_model_a": [0.9, 0.55, 0.48, 0.2],
                       "winner_model_b": [0.1, 0.45, 0.52, 0.8]})
    ba = ab.iloc[::-1].assign(winner_model_a=[0.4, 0.3, 0.65, 0.7])  # mapped back to AB, other row order
    ba["winner_model_b"] = 1 - ba["winner_model_a"]
    assert tta.apply_policy(ab, ba, "none").equals(ab)
    swap = tta.apply_policy(ab, ba, "swap")
    assert list(swap["id"]) == list(ab["id"])  # joined on id, AB's order
    assert np.allclose(swap["winner_model_a"], [0.8, 0.6, 0.39, 0.3])
    selective = tta.apply_policy(ab, ba, "selective", band=0.1, share=None)  # only r1 and r2 are uncertain
    assert np.allclose(selective["winner_model_a"], [0.9, 0.6, 0.39, 0.2])
    capped = tta.apply_policy(ab, ba, "selective", band=0.1, share=0.25)  # one row: the most uncertain, r2
    assert np.allclose(capped["winner_model_a"], [0.9, 0.55, 0.39, 0.2])


@pytest.mark.parametrize("by_length", [True, False])
def test_swap_pair_sampler_keeps_each_row_beside_its_swap(by_length):
    from wsdm_helpers.trainer import SwapPairSampler

    lengths = np.tile(np.arange(40) % 7 + 5, 2)  # rows [0, 40) and their swaps [40, 80): the same lengths
    sampler = SwapPairSampler(lengths, batch_size=8, seed=3, group_by_length=by_length)
    first, second = list(sampler), list(sampler)
    assert sorted(first) == list(range(80)) and len(sampler) == 80
    assert all(b == a + 40 for a, b in zip(first[::2], first[1::2], strict=True))  # every batch of 8: 4 whole pairs
    assert first != second  # a new order each pass ...
    assert list(SwapPairSampler(lengths, 8, seed=3, group_by_length=by_length)) == first  # ... replayed from the seed
    if by_length:  # within a megabatch, longest first
        assert [lengths[i] for i in first[::2]] == sorted((lengths[i] for i in first[::2]), reverse=True)
    with pytest.raises(ValueError, match="even number of rows"):
        SwapPairSampler(lengths[:-1], 8, seed=0)
