"""Metrics on hand-computed examples."""
from __future__ import annotations

import math

import numpy as np
import pytest

from wsdm_helpers import metrics


def test_accuracy_binary_three_class_and_one_dimensional():
    probs = np.array([[0.9, 0.1], [0.4, 0.6], [0.7, 0.3], [0.2, 0.8]])
    assert metrics.accuracy([0, 1, 1, 1], probs) == 0.75
    assert metrics.accuracy([0, 1, 1, 1], probs[:, 1]) == 0.75  # 1-D = P(b)
    three = np.array([[0.5, 0.2, 0.3], [0.1, 0.2, 0.7]])
    assert metrics.accuracy([0, 2], three) == 1.0


def test_log_loss_matches_hand_computation_and_clips():
    probs = np.array([[0.8, 0.2], [0.25, 0.75]])
    assert metrics.log_loss([0, 1], probs) == pytest.approx(-(math.log(0.8) + math.log(0.75)) / 2)
    three = np.array([[2.0, 1.0, 1.0]])  # rows are renormalised
    assert metrics.log_loss([2], three) == pytest.approx(-math.log(0.25))
    assert math.isfinite(metrics.log_loss([1], np.array([[1.0, 0.0]])))
    assert metrics.log_loss([1], np.array([[1.0, 0.0]]), eps=1e-3) == pytest.approx(-math.log(1e-3))


def test_label_and_shape_errors_are_explained():
    with pytest.raises(ValueError, match="labels must be in 0..1 for 2-class probabilities; found \\[2\\]"):
        metrics.accuracy([2], [[0.5, 0.5]])
    with pytest.raises(ValueError, match="2 labels but 1 rows"):
        metrics.log_loss([0, 1], [[0.5, 0.5]])
    with pytest.raises(ValueError, match="shape"):
        metrics.accuracy([0], [[0.2, 0.2, 0.2, 0.4]])


def test_per_language_accuracy_table():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9], [0.6, 0.4]])
    table = metrics.per_language_accuracy(["en", "en", "ru", "en"], [0, 1, 1, 0], probs)
    assert list(table.columns) == ["language", "rows", "accuracy"]
    assert table["language"].tolist() == ["en", "ru"] and table["rows"].tolist() == [3, 1]
    assert table["accuracy"].tolist() == pytest.approx([2 / 3, 1.0])


def test_flip_rate_counts_changed_verdicts():
    ab = np.array([[0.9, 0.1], [0.4, 0.6], [0.55, 0.45], [0.3, 0.7]])
    ba = np.array([[0.8, 0.2], [0.6, 0.4], [0.45, 0.55], [0.3, 0.7]])  # already in AB orientation
    assert metrics.flip_rate(ab, ba) == 0.5
    assert metrics.flip_rate(ab, ab) == 0.0


