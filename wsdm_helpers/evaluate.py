"""``wsdm evaluate``: one report on labelled rows, the model next to two references on the same rows.

Methods, side by side: the model (a predictions file, or a run folder scored here in both
orientations), ``longer-wins`` (the response with more characters wins, P = 0.6: about its accuracy
on Arena votes; a tie in length is 0.5), and the feature baseline (fitted out of fold on the same
rows, prompt-grouped folds, or on ``baseline_train`` files when given). Metrics per method: accuracy,
log loss, accuracy per language, per source and per token-length bucket, position-bias flip rate
(the model only, when its swapped predictions are known) and a calibration curve.

Report folder::

    report.md          the tables
    report.json        the same figures
    calibration.png    observed share of "b wins" per bin of predicted P(b wins), each method
    accuracy_by.png    accuracy per token-length bucket, per language and per source, each method
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .errors import DataError
from .tta import flip_probs

log = logging.getLogger(__name__)

LENGTH_EDGES = (0, 256, 512, 1024, 2048)
LONGER_WINS_P = 0.6
BASELINE_FOLDS = 5


# ---- references -----------------------------------------------------------------------------------
def _chars(turns: Any) -> int:
    return sum(len(t) for t in turns if t)


def longer_wins(frame: pd.DataFrame, num_classes: int = 2) -> np.ndarray:
    """[n, C]: P(b wins) = 0.6 where B has more characters, 0.4 where A has, 0.5 on equal lengths;
    with 3 classes a tie gets 1/3 and a and b share the rest in the same ratio."""
    a = frame["response_a"].map(_chars).to_numpy()
    b = frame["response_b"].map(_chars).to_numpy()
    p_b = np.where(b > a, LONGER_WINS_P, np.where(a > b, 1 - LONGER_WINS_P, 0.5))
    if num_classes == 2:
        return np.stack([1 - p_b, p_b], axis=1)
    return np.stack([(1 - p_b) * 2 / 3, p_b * 2 / 3, np.full(len(p_b), 1 / 3)], axis=1)


def baseline_oof(frame: pd.DataFrame, train: pd.DataFrame | None = None, seed: int = 42) -> np.ndarray:
    """Feature-baseline probabilities for ``frame``: fitted on ``train`` when given, else out of fold
    (prompt-grouped folds of ``frame``, each fold predicted by a baseline fitted on the others)."""
    from .data import assign_folds
    from .features import FeatureBaseline

    if train is not None:
        return FeatureBaseline().fit(train).predict_array(frame)
    folds = assign_folds(frame, BASELINE_FOLDS, seed)
    probs = np.zeros((len(frame), 3 if (frame["label"] == 2).any() else 2))
    for k in range(BASELINE_FOLDS):
        held = folds == k
        if held.any():
            fitted = FeatureBaseline().fit(frame[~held])
            probs[held, : fitted.num_classes] = fitted.predict_array(frame[held])
    return probs


# ---- token lengths --------------------------------------------------------------------------------
def pair_lengths(frame: pd.DataFrame, tokenizer: Any = None) -> tuple[np.ndarray, str]:
    """Untruncated size of prompt + both responses per row: tokens with ``tokenizer``, else words."""
    texts = [" ".join(t for t in (*p, *a, *b) if t)
             for p, a, b in zip(frame["prompt"], frame["response_a"], frame["response_b"], strict=True)]
    if tokenizer is None:
        return np.array([len(t.split()) for t in texts]), "words"
    return np.array([len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]), "tokens"


def length_buckets(lengths: np.ndarray, unit: str) -> np.ndarray:
    edges = list(LENGTH_EDGES)
    names = [f"{lo}-{hi} {unit}" for lo, hi in zip(edges[:-1], edges[1:], strict=True)] + [f">={edges[-1]} {unit}"]
    return np.array(names, dtype=object)[np.clip(np.searchsorted(edges, lengths, side="right") - 1, 0, len(names) - 1)]


# ---- metrics --------------------------------------------------------------------------------------
def _grouped_accuracy(groups: np.ndarray, labels: np.ndarray, probs: dict[str, np.ndarray]) -> list[dict]:
    rows = []
    for group in pd.unique(groups):
        mask = groups == group
        rows.append({"group": str(group), "rows": int(mask.sum()),
                     **{name: float(np.mean(p[mask].argmax(axis=1) == labels[mask])) for name, p in probs.items()}})
    return rows


def calibration(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> list[dict]:
    """Per bin of predicted P(b wins): rows, mean prediction, observed share of b wins (non-tie rows)."""
    p_b = probs[:, 1] / np.clip(probs[:, 0] + probs[:, 1], 1e-12, None)
    which = np.clip((p_b * bins).astype(int), 0, bins - 1)
    keep = labels != 2
    out = []
    for b in range(bins):
        mask = (which == b) & keep
        if mask.any():
            out.append({"bin": b, "rows": int(mask.sum()), "predicted": float(p_b[mask].mean()),
                        "observed": float(np.mean(labels[mask] == 1))})
    return out


def references(frame: pd.DataFrame, num_classes: int, baseline_train: pd.DataFrame | None = None) -> dict:
    """longer-wins and the feature baseline on ``frame``'s rows, as {name: probabilities [n, C]}."""
    baseline = baseline_oof(frame, baseline_train)
    if baseline.shape[1] != num_classes:
        raise DataError(f"the model predicts {num_classes} classes but the feature baseline's training rows give "
                        f"{baseline.shape[1]}; give labels (or --baseline-train files) with ties only for "
                        "3-class models")
    return {"longer-wins": longer_wins(frame, num_classes), "feature baseline": baseline}


def build_report(frame: pd.DataFrame, methods: dict[str, np.ndarray], swapped: dict[str, np.ndarray] | None = None,
                 tokenizer: Any = None) -> dict[str, Any]:
    """All figures for ``frame`` (labelled canonical rows) and each method's probabilities in its row
    order; ``swapped``: a method's predictions on the swapped rows, mapped back (for its flip rate)."""
    from . import metrics

    labels = frame["label"].to_numpy()
    swapped = swapped or {}
    lengths, unit = pair_lengths(frame, tokenizer)
    return {
        "rows": int(len(frame)), "length_unit": unit,
        "overall": [{"method": name, "accuracy": metrics.accuracy(labels, p), "log_loss": metrics.log_loss(labels, p),
                     "predicted_a_share": float(np.mean(p.argmax(axis=1) == 0)),
                     "flip_rate": metrics.flip_rate(p, swapped[name]) if name in swapped else None}
                    for name, p in methods.items()],
        "per_language": _grouped_accuracy(frame["language"].astype(str).to_numpy(), labels, methods),
        "per_source": _grouped_accuracy(frame["source"].astype(str).to_numpy(), labels, methods),
        "per_length": sorted(_grouped_accuracy(length_buckets(lengths, unit), labels, methods),
                             key=lambda r: int(r["group"].lstrip(">=").split("-")[0].split()[0])),
        "calibration": {name: calibration(labels, p) for name, p in methods.items()},
    }


# ---- output ---------------------------------------------------------------------------------------
def _table(rows: list[dict], columns: Sequence[str]) -> str:
    def cell(v: Any) -> str:
        return "n/a" if v is None else f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(cell(r.get(c)) for c in columns) + " |" for r in rows])


def to_markdown(report: dict[str, Any], title: str) -> str:
    methods = [r["method"] for r in report["overall"]]
    by = ["group", "rows", *methods]
    parts = [f"# {title}", "", f"{report['rows']} labelled rows. longer-wins: P = {LONGER_WINS_P} for the "
             "response with more characters. Feature baseline: fitted out of fold on these rows (prompt-grouped "
             f"folds) unless training files were given (benchmarks/quality.py: see its notes). Flip rate: share of rows whose verdict changes when A "
             "and B are swapped (the model only; n/a without swapped predictions).", "",
             "## Overall", _table(report["overall"], ["method", "accuracy", "log_loss", "predicted_a_share", "flip_rate"]),
             "", f"## Accuracy by length ({report['length_unit']}: prompt + both responses, untruncated)",
             _table(report["per_length"], by), "", "## Accuracy per language", _table(report["per_language"], by),
             "", "## Accuracy per source", _table(report["per_source"], by), "",
             "![calibration](calibration.png)", "", "![accuracy by group](accuracy_by.png)", ""]
    return "\n".join(parts)


def write_report(report: dict[str, Any], out_dir: str | Path, title: str = "Evaluation") -> Path:
    from .io import atomic_write_json, atomic_write_text
    from .plots import evaluation_plots

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    evaluation_plots(report, out_dir)
    atomic_write_json(out_dir / "report.json", report)
    atomic_write_text(out_dir / "report.md", to_markdown(report, title))
    return out_dir / "report.md"


# ---- entry points ---------------------------------------------------------------------------------
def labelled_rows(path: str | Path, two_class: bool, labels: str | Path | None = None) -> pd.DataFrame:
    """The labelled pairs of ``path`` (any layout the readers take); ``labels``: a labels file (id + label or
    winner) joined on id, for a pairs file without winners (Kaggle's test.parquet)."""
    from .data import join_labels, read_pairs

    try:
        frame, _ = read_pairs(path, ties="keep")
    except DataError as exc:
        raise _labels_only_error(path) or exc from None
    if labels:
        frame = join_labels(frame, path, labels)
    unlabeled = int((frame["label"] < 0).sum())
    if unlabeled == len(frame):
        raise DataError(f"{path}: no row has a label; evaluate needs winners: a pairs file with them, or the pairs "
                        "with --data FILE and their labels file with --labels LABELS")
    ties = int((frame["label"] == 2).sum()) if two_class else 0
    if unlabeled or ties:
        log.warning("%s: left out %d unlabeled rows and %d ties (2-class predictions cannot score a tie)",
                    path, unlabeled, ties)
    return frame[(frame["label"] >= 0) & ((frame["label"] != 2) | (not two_class))].reset_index(drop=True)


def _labels_only_error(path: str | Path) -> DataError | None:
    """A clearer error than the layout's when ``path`` holds labels but not the pairs' text."""
    from .data import read_table

    try:
        columns = set(read_table(path).columns)
    except DataError:
        return None
    if "id" in columns and columns & {"label", "winner"} and "prompt" not in columns:
        return DataError(f"{path}: holds labels (columns {sorted(columns)}) but not the pairs' text, which the report "
                         "needs (longer-wins, the feature baseline, lengths). Fix: give the pairs with --data FILE "
                         f"(e.g. test.parquet) and keep {Path(path).name} as --labels")
    return None


def _baseline_frame(paths: Sequence[str]) -> pd.DataFrame | None:
    from .data import read_pairs

    if not paths:
        return None
    frames = [read_pairs(p, ties="drop")[0] for p in paths]
    return pd.concat(frames, ignore_index=True)


def evaluate_predictions(predictions: str | Path, labels: str | Path, out_dir: str | Path,
                         swapped: str | Path | None = None, tokenizer_path: str | Path | None = None,
                         baseline_train: Sequence[str] = (), data: str | Path | None = None) -> dict[str, Any]:
    """``wsdm evaluate --predictions P --labels FILE [--data PAIRS]``: P joined on id to the labelled rows of
    FILE, or of PAIRS with FILE's labels."""
    from .io import check_not_a_file
    from .submission import align_to_ids, prob_columns, read_predictions

    check_not_a_file(out_dir, what="the report (--out)")
    preds = read_predictions(predictions)
    two_class = prob_columns(preds) == ["winner_model_a", "winner_model_b"]
    rows = data or labels
    frame = labelled_rows(rows, two_class, labels if data else None)
    where = f"{predictions} (ids compared with the labelled rows of {rows})"
    ab = align_to_ids(preds, frame["id"].astype(str), where=where)
    ba = None
    if swapped:
        swapped_preds = read_predictions(swapped)
        ba = align_to_ids(swapped_preds, frame["id"].astype(str), where=str(swapped))
        ba = flip_probs(ba[prob_columns(ba)].to_numpy())
    tokenizer = None
    if tokenizer_path:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_path))
    probs = ab[prob_columns(ab)].to_numpy()
    methods = {"model": probs, **references(frame, probs.shape[1], _baseline_frame(baseline_train))}
    report = build_report(frame, methods, {"model": ba} if ba is not None else None, tokenizer)
    write_report(report, out_dir, f"Evaluation of {Path(predictions).name} on {Path(rows).name}")
    return report


def evaluate_run(run_dir: str | Path, data: str | Path, out_dir: str | Path,
                 baseline_train: Sequence[str] = (), labels: str | Path | None = None) -> dict[str, Any]:
    """``wsdm evaluate --run RUN --data FILE [--labels LABELS]``: score FILE's labelled rows (or FILE's rows
    with LABELS joined on id) with the run in both orientations (no TTA), then report as for a predictions
    file."""
    import dataclasses

    from .config import load_run_config
    from .inference import predict_proba
    from .io import check_not_a_file
    from .modeling import load_run
    from .submission import prob_columns
    from .tta import swap_pairs

    check_not_a_file(out_dir, what="the report (--out)")
    cfg = load_run_config(Path(run_dir) / "config.yaml")
    frame = labelled_rows(data, cfg.model.num_labels == 2, labels)
    run = load_run(run_dir)
    plain = dataclasses.replace(run.config.inference, tta="none", work_dir="", time_budget_minutes=None)
    ab = predict_proba(run, frame, plain)
    ba = predict_proba(run, swap_pairs(frame), plain)
    cols, name = prob_columns(ab), Path(run_dir).name
    probs = ab[cols].to_numpy()
    methods = {name: probs, **references(frame, probs.shape[1], _baseline_frame(baseline_train))}
    report = build_report(frame, methods, {name: flip_probs(ba[cols].to_numpy())}, run.tokenizer)
    write_report(report, out_dir, f"Evaluation of run {Path(run_dir).name} on {Path(data).name}")
    return report
