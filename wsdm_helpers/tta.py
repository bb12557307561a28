"""The pair's A/B symmetry: one home for every rule that exchanges response A and response B.

A pair (prompt, A, B) and its swap (prompt, B, A) describe the same comparison, so a prediction or a
label of one maps onto the other by exchanging the ``a`` and ``b`` classes; a tie stays a tie.
Training (swap augmentation, swapped evaluation), the feature baseline (both orientations) and
inference (swap and selective TTA) all use these functions, and everything joins on ``id``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np

from .errors import SubmissionError

if TYPE_CHECKING:
    import pandas as pd

PROB2 = ["winner_model_a", "winner_model_b"]
PROB3 = ["winner_model_a", "winner_model_b", "winner_tie"]
TTA = Literal["none", "swap", "selective"]


def prob_columns(preds: pd.DataFrame) -> list[str]:
    """The probability columns of a predictions frame (two or three classes)."""
    return PROB3 if "winner_tie" in preds.columns else PROB2


def columns_for(num_classes: int) -> list[str]:
    return PROB3 if num_classes == 3 else PROB2


def flip_probs(probs: np.ndarray) -> np.ndarray:
    """Class probabilities (or soft labels, or logits) [n, 2 or 3] of the swapped pair: a <-> b, tie kept."""
    out = np.array(probs, copy=True)
    out[:, [0, 1]] = out[:, [1, 0]]
    return out


def average_pair(probs_ab: np.ndarray, probs_ba_flipped: np.ndarray, average: str = "probability") -> np.ndarray:
    """The TTA average of the same rows' two orientations (BA already mapped back to AB), in the
    ``inference.tta_average`` space (ensemble.mix: one rule for blends and for TTA)."""
    from .ensemble import mix

    return mix(np.stack([probs_ab, probs_ba_flipped]), np.array([0.5, 0.5]), average)


def flip_labels(labels: np.ndarray) -> np.ndarray:
    """Hard labels of the swapped pair: 0 <-> 1; ties (2) and unknown (-1) kept."""
    labels = np.asarray(labels)
    return np.where(labels == 0, 1, np.where(labels == 1, 0, labels)).astype(labels.dtype)


def swap_pairs(frame: pd.DataFrame) -> pd.DataFrame:
    """The same rows with A and B exchanged: responses, models, labels, soft labels (soft_a <-> soft_b,
    soft_tie kept; see distill.py), same ids."""
    out = frame.copy()
    for left, right in (("response_a", "response_b"), ("model_a", "model_b"), ("soft_a", "soft_b")):
        if left in out.columns and right in out.columns:
            out[left], out[right] = frame[right].to_numpy(), frame[left].to_numpy()
    if "label" in out.columns:
        out["label"] = flip_labels(frame["label"].to_numpy())
    return out


def flip_predictions(pred_ba: pd.DataFrame) -> pd.DataFrame:
    """Predictions made on swapped pairs, mapped back to the original orientation."""
    out = pred_ba.copy()
    out["winner_model_a"], out["winner_model_b"] = pred_ba["winner_model_b"], pred_ba["winner_model_a"]
    return out


def merge_swapped(pred_ab: pd.DataFrame, pred_ba: pd.DataFrame, average: str = "probability") -> pd.DataFrame:
    """Average AB predictions with flipped-back BA predictions (:func:`average_pair`), joined on id.

    ``pred_ba`` may cover a subset of the ids (selective TTA); the other rows keep their AB values.
    The result has ``pred_ab``'s row order.
    """
    ab = pred_ab.astype({"id": str}).set_index("id")
    ba = flip_predictions(pred_ba.astype({"id": str})).set_index("id")
    cols = prob_columns(pred_ab)
    if prob_columns(pred_ba) != cols:
        raise SubmissionError(f"AB predictions have {cols} but BA predictions {prob_columns(pred_ba)}")
    extra = ba.index.difference(ab.index)
    if len(extra):
        raise SubmissionError(f"BA predictions have {len(extra)} id(s) without an AB prediction: "
                              f"{', '.join(extra[:5])}")
    ab.loc[ba.index, cols] = average_pair(ab.loc[ba.index, cols].to_numpy(), ba[cols].to_numpy(), average)
    return ab.reset_index()


def average_orientations(probs_ab: np.ndarray, probs_ba: np.ndarray, average: str = "probability") -> np.ndarray:
    """Row-aligned arrays of the same rows in both orientations -> the swap-TTA average."""
    return average_pair(np.asarray(probs_ab), flip_probs(probs_ba), average)


def margins(p_a: np.ndarray, p_b: np.ndarray) -> np.ndarray:
    """|P(a) - P(b)| per row, rounded off float noise; -1 where it is unknown (NaN: no prediction), so
    that a row nothing predicted counts as the most uncertain of all."""
    margin = np.round(np.abs(np.asarray(p_a, float) - np.asarray(p_b, float)), 9)
    return np.where(np.isnan(margin), -1.0, margin)


def uncertainty_order(p_a: np.ndarray, p_b: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Row positions, most uncertain first (smallest :func:`margins`; rows without a prediction first),
    ties broken by id: the one order of "uncertain rows" for selective TTA and cascade members."""
    return np.lexsort((np.asarray(ids).astype(str), margins(p_a, p_b)))


def select_uncertain(preds: pd.DataFrame, band: float | None = None, max_rows: int | None = None) -> list[str]:
    """Ids of the rows worth another look (a swap pass, a cascade member): |P(a) - P(b)| <= 2 * band (for
    two classes: P(a) within 0.5 +- band), at most ``max_rows`` of them, in :func:`uncertainty_order`."""
    margin = margins(preds["winner_model_a"], preds["winner_model_b"])
    ids = preds["id"].astype(str).to_numpy()
    order = uncertainty_order(preds["winner_model_a"], preds["winner_model_b"], ids)
    if band is not None:
        order = order[(margin[order] >= 0) & (margin[order] <= 2 * band + 1e-12)]  # a band needs a prediction
    if max_rows is not None:
        order = order[:max(0, max_rows)]
    return ids[order].tolist()


def apply_policy(pred_ab: pd.DataFrame, pred_ba: pd.DataFrame, tta: TTA, band: float = 0.15,
                 share: float | None = 0.5, average: str = "probability") -> pd.DataFrame:
    """A TTA policy applied to two full passes over the same rows (``pred_ba`` already mapped back to
    AB), joined on id, in ``pred_ab``'s order: none (AB), swap (mean of both), selective (the mean on
    the rows inference would swap, :func:`selection`). Out-of-fold files use it, so they score what a
    submission with that policy would get."""
    out = pred_ab.astype({"id": str}).set_index("id")
    if tta == "none":
        return out.reset_index()
    chosen = out.index
    if tta == "selective":
        chosen = select_uncertain(out.reset_index(), *selection(tta, len(out), band, share))
    cols = prob_columns(pred_ab)
    other = pred_ba.astype({"id": str}).set_index("id").loc[chosen, cols]
    out.loc[chosen, cols] = average_pair(out.loc[chosen, cols].to_numpy(), other.to_numpy(), average)
    return out.reset_index()


def rows_for_share(n_rows: int, share: float) -> int:
    """How many of ``n_rows`` rows a share covers (selective TTA's tta_share, a cascade member's share)."""
    return round(n_rows * share)


def swap_rows_wanted(tta: TTA, n_rows: int, share: float | None) -> int:
    """How many rows a TTA policy would swap if time allowed."""
    if tta == "none":
        return 0
    if tta == "swap" or share is None:
        return n_rows
    return rows_for_share(n_rows, share)


def selection(tta: TTA, n_rows: int, band: float, share: float | None) -> tuple[float | None, int | None]:
    """(band, cap) for :func:`select_uncertain` under a policy: ``swap`` takes every row."""
    if tta != "selective":
        return None, None
    return band, (rows_for_share(n_rows, share) if share is not None else None)
