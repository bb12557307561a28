"""Scores for pairwise predictions: accuracy, log loss, per-language accuracy, position bias.

``probs`` is an array [n, C]: C=2 holds P(a wins), P(b wins); C=3 adds P(tie). A 1-D array is read
as P(b wins). ``labels`` are ints (0 = a, 1 = b, 2 = tie), as in the canonical frame. Pure numpy/pandas.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

EPS = 1e-15


def as_probs(probs: Any) -> np.ndarray:
    """[n, C] float array whose rows sum to 1 (a 1-D input is P(b))."""
    probs = np.asarray(probs, dtype=np.float64)
    if probs.ndim == 1:
        probs = np.stack([1.0 - probs, probs], axis=1)
    if probs.ndim != 2 or probs.shape[1] not in (2, 3):
        raise ValueError(f"probs must have shape [n, 2] or [n, 3], got {probs.shape}")
    if np.isnan(probs).any() or (probs < 0).any():
        raise ValueError("probs contain NaN or negative values")
    return probs / np.clip(probs.sum(axis=1, keepdims=True), EPS, None)


def _check(labels: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels, dtype=np.int64)
    probs = as_probs(probs)
    if len(labels) != len(probs):
        raise ValueError(f"{len(labels)} labels but {len(probs)} rows of probabilities")
    bad = (labels < 0) | (labels >= probs.shape[1])
    if bad.any():
        raise ValueError(f"labels must be in 0..{probs.shape[1] - 1} for {probs.shape[1]}-class probabilities; "
                         f"found {sorted(set(labels[bad].tolist()))} (drop unlabeled rows or keep ties as class 2)")
    return labels, probs


def accuracy(labels: Any, probs: Any) -> float:
    """Share of rows whose most probable class is the label (NaN for no rows)."""
    labels, probs = _check(labels, probs)
    return float(np.mean(probs.argmax(axis=1) == labels)) if len(labels) else float("nan")


def row_log_loss(labels: Any, probs: Any, eps: float = EPS) -> np.ndarray:
    """Negative log probability of each row's label; probabilities are clipped to [eps, 1 - eps]."""
    labels, probs = _check(labels, probs)
    return -np.log(np.clip(probs[np.arange(len(labels)), labels], eps, 1 - eps))


def log_loss(labels: Any, probs: Any, eps: float = EPS) -> float:
    """Mean of row_log_loss (nan for no rows)."""
    losses = row_log_loss(labels, probs, eps)
    return float(losses.mean()) if len(losses) else float("nan")


def per_language_accuracy(languages: Any, labels: Any, probs: Any) -> pd.DataFrame:
    """Table with columns language, rows, accuracy; most frequent language first."""
    labels, probs = _check(labels, probs)
    frame = pd.DataFrame({"language": np.asarray(languages, dtype=object).astype(str),
                          "correct": probs.argmax(axis=1) == labels})
    table = frame.groupby("language", sort=False)["correct"].agg(rows="size", accuracy="mean").reset_index()
    return table.sort_values(["rows", "language"], ascending=[False, True], ignore_index=True)


def flip_rate(probs_ab: Any, probs_ba: Any) -> float:
    """Share of rows whose verdict changes when A and B are swapped.

    ``probs_ba`` are the predictions on the swapped pairs, already mapped back to the AB
    orientation (column 0 = P(original a wins)). An unbiased model has a flip rate near 0.
    """
    ab, ba = as_probs(probs_ab), as_probs(probs_ba)
    if ab.shape != ba.shape:
        raise ValueError(f"probs_ab {ab.shape} and probs_ba {ba.shape} differ in shape")
    return float(np.mean(ab.argmax(axis=1) != ba.argmax(axis=1))) if len(ab) else float("nan")


