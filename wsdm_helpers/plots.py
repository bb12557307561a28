"""Plots a person checks after training or inference, saved as PNG and shown inline in Jupyter.

Each function draws on a plain ``matplotlib.figure.Figure`` (no pyplot state, no GUI backend), writes
the PNG atomically into ``out_dir`` and returns a :class:`Plot`, which Jupyter displays as the image
(``_repr_png_``) when it is the last expression of a cell. So a notebook cell is a single call.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .io import atomic_path

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.figure import Figure

DPI = 100


@dataclass
class Plot:
    """A saved PNG; Jupyter renders it inline."""

    path: Path

    def _repr_png_(self) -> bytes:
        return self.path.read_bytes()

    def __str__(self) -> str:
        return str(self.path)


def _figure(n_axes: int = 1, width: float = 6.0) -> tuple[Figure, list[Any]]:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * n_axes, 4.0), dpi=DPI, layout="constrained")
    return fig, [fig.add_subplot(1, n_axes, i + 1) for i in range(n_axes)]


def _save(fig: Figure, out_dir: str | Path, name: str) -> Plot:
    path = Path(out_dir) / name
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
    return Plot(path)


def _read_frame(preds: pd.DataFrame | str | Path) -> pd.DataFrame | None:
    """A predictions frame, a parquet file, or a run folder's oof.parquet (None: the run had no validation fold)."""
    import pandas as pd

    if isinstance(preds, pd.DataFrame):
        return preds
    path = Path(preds) / "oof.parquet" if Path(preds).is_dir() else Path(preds)
    if Path(preds).is_dir() and not path.is_file():
        print(f"{preds} has no oof.parquet (no validation fold, data.fold=-1; the final evaluation skipped; or "
              "stopped by train.max_hours): nothing to plot")
        return None
    return pd.read_parquet(path)


def _probs(preds: pd.DataFrame):
    from .submission import prob_columns

    return preds[prob_columns(preds)].to_numpy(dtype="float64")


def _labelled(preds: pd.DataFrame) -> pd.DataFrame:
    """Rows with a known label (oof.parquet carries ``label``; test predictions do not)."""
    if "label" not in preds.columns:
        return preds.iloc[:0]
    return preds[preds["label"] >= 0]


# ---- training ---------------------------------------------------------------------------------------
def read_log_history(source: str | Path | Sequence[dict]) -> list[dict]:
    """The HF Trainer's ``log_history``: a list, a ``log_history.json`` file, or a run folder holding one."""
    if not isinstance(source, (str, Path)):
        return list(source)
    path = Path(source)
    if path.is_dir():
        path = path / "log_history.json"
    return json.loads(path.read_text(encoding="utf-8"))


def training_curves(log_history: str | Path | Sequence[dict], out_dir: str | Path) -> Plot:
    """Training and validation loss (left) and validation accuracy (right) against the optimizer step."""
    history = read_log_history(log_history)
    fig, (loss_ax, acc_ax) = _figure(2)
    series = [(loss_ax, "loss", "training loss"), (loss_ax, "eval_loss", "validation loss"),
              (acc_ax, "eval_accuracy", "validation accuracy")]
    for ax, key, label in series:
        points = [(row["step"], row[key]) for row in history if key in row and "step" in row]
        if points:
            steps, values = zip(*points, strict=True)
            ax.plot(steps, values, marker="o" if len(points) < 30 else None, label=label)
    loss_ax.set(xlabel="step", ylabel="log loss", title="loss")
    acc_ax.set(xlabel="step", ylabel="accuracy", title="validation accuracy", ylim=(0, 1))
    for ax in (loss_ax, acc_ax):
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend()
    return _save(fig, out_dir, "training_curves.png")


def language_accuracy(preds: pd.DataFrame | str | Path, out_dir: str | Path, min_rows: int = 1) -> Plot | None:
    """Accuracy per language (bars, row counts on top) of predictions with ``label`` and ``language``."""
    from .metrics import per_language_accuracy

    frame = _read_frame(preds)
    if frame is None:
        return None
    rows = _labelled(frame)
    table = per_language_accuracy(rows["language"].to_numpy(), rows["label"].to_numpy(), _probs(rows))
    table = table[table["rows"] >= min_rows]
    fig, (ax,) = _figure(1, width=max(6.0, 0.5 * len(table)))
    bars = ax.bar(table["language"].astype(str), table["accuracy"], color="tab:blue")
    ax.bar_label(bars, labels=[f"n={n}" for n in table["rows"]], fontsize=8)
    overall = float((_probs(rows).argmax(axis=1) == rows["label"].to_numpy()).mean()) if len(rows) else 0.0
    ax.axhline(overall, color="black", linestyle="--", linewidth=1, label=f"all rows {overall:.3f}")
    ax.set(ylabel="accuracy", ylim=(0, 1.05), title="validation accuracy per language")
    ax.tick_params(axis="x", rotation=45)
    ax.legend(loc="lower right")
    return _save(fig, out_dir, "language_accuracy.png")


# ---- predictions --------------------------------------------------------------------------------------
def prediction_histogram(preds: pd.DataFrame | str | Path, out_dir: str | Path, bins: int = 10) -> Plot | None:
    """Histogram of P(b wins) and, when labels are known, a reliability (calibration) diagram."""
    import numpy as np

    frame = _read_frame(preds)
    if frame is None:
        return None
    rows = _labelled(frame)
    fig, axes = _figure(2 if len(rows) else 1)
    p_b = _probs(frame)[:, 1]
    axes[0].hist(p_b, bins=np.linspace(0, 1, 2 * bins + 1), color="tab:purple")
    axes[0].set(xlabel="P(b wins)", ylabel="rows", title=f"predictions ({len(frame)} rows)")
    if len(rows):
        _reliability(axes[1], _probs(rows), rows["label"].to_numpy(), bins)
    return _save(fig, out_dir, "predictions.png")


def _reliability(ax: Any, probs: Any, labels: Any, bins: int) -> None:
    """Mean confidence of the predicted class against its observed accuracy, per confidence bin."""
    import numpy as np

    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    low = 1.0 / probs.shape[1]
    edges = np.linspace(low, 1.0, bins + 1)
    which = np.clip(np.digitize(confidence, edges) - 1, 0, bins - 1)
    used = [b for b in range(bins) if (which == b).any()]
    ax.plot([low, 1], [low, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    ax.plot([confidence[which == b].mean() for b in used], [correct[which == b].mean() for b in used],
            marker="o", label="model")
    ax.set(xlabel="confidence of the predicted side", ylabel="observed accuracy", xlim=(low, 1), ylim=(0, 1.02),
           title=f"reliability ({len(labels)} labelled rows)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")


# ---- tokenization ------------------------------------------------------------------------------------
def token_lengths(lengths: Any, max_length: int, out_dir: str | Path, kept: Any = None) -> Plot:
    """Distribution of tokens per pair before truncation, with the truncation point ``max_length``.

    ``lengths``: untruncated token counts per pair; ``kept``: the counts after truncation (optional).
    The title says how many pairs were cut.
    """
    import numpy as np

    lengths = np.asarray(lengths)
    fig, (ax,) = _figure(1, width=7.0)
    top = max(int(lengths.max(initial=1)), max_length) * 1.05
    edges = np.linspace(0, top, 41)
    ax.hist(lengths, bins=edges, alpha=0.6, label="before truncation", color="tab:blue")
    if kept is not None:
        ax.hist(np.asarray(kept), bins=edges, alpha=0.6, label="kept", color="tab:green")
    ax.axvline(max_length, color="tab:red", linestyle="--", label=f"max_length = {max_length}")
    cut = float((lengths > max_length).mean()) if len(lengths) else 0.0
    ax.set(xlabel="tokens per pair", ylabel="pairs", title=f"token lengths: {cut:.1%} of {len(lengths)} pairs truncated")
    ax.legend()
    return _save(fig, out_dir, "token_lengths.png")


def token_lengths_for(run_dir: str | Path, out_dir: str | Path) -> Plot:
    """:func:`token_lengths` of a run's training data, encoded with the run's tokenizer and settings."""
    from .config import load_run_config
    from .data import load_training_frame
    from .formatting import FIELDS
    from .modeling import family_for, load_tokenizer
    from .tokenization import encode_pairs

    run_dir = Path(run_dir)
    cfg = load_run_config(run_dir / "config.yaml")
    tokenizer = load_tokenizer(run_dir / "tokenizer", family_for(cfg.model.family))
    stats = encode_pairs(load_training_frame(cfg.data), tokenizer, cfg.format, cfg.format.template).stats
    original = sum(stats[f"{field}_tokens"] for field in FIELDS)
    kept_text = sum(stats[f"{field}_kept"] for field in FIELDS)
    overhead = stats["length"] - kept_text  # template and special tokens
    return token_lengths(original + overhead, cfg.format.max_length, out_dir, kept=stats["length"])


# ---- evaluation report ------------------------------------------------------------------------------
def evaluation_plots(report: dict, out_dir: str | Path) -> list[Plot]:
    """The two figures of ``wsdm evaluate`` (evaluate.build_report's dict): calibration per method, and
    accuracy per length bucket, language and source, each method side by side."""
    return [_calibration_plot(report, out_dir), _accuracy_by_plot(report, out_dir)]


def _calibration_plot(report: dict, out_dir: str | Path) -> Plot:
    fig, (ax,) = _figure(1, width=6.5)
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfect calibration")
    for name, bins in report["calibration"].items():
        ax.plot([b["predicted"] for b in bins], [b["observed"] for b in bins], marker="o", label=name)
    ax.set(xlabel="predicted P(b wins), binned", ylabel="observed share of b wins", xlim=(0, 1), ylim=(0, 1),
           title=f"calibration ({report['rows']} rows, ties left out)")
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    return _save(fig, out_dir, "calibration.png")


def _accuracy_by_plot(report: dict, out_dir: str | Path, max_groups: int = 8) -> Plot:
    import numpy as np

    methods = [r["method"] for r in report["overall"]]
    panels = [(f"length ({report['length_unit']})", report["per_length"]),
              ("language", sorted(report["per_language"], key=lambda r: -r["rows"])[:max_groups]),
              ("source", sorted(report["per_source"], key=lambda r: -r["rows"])[:max_groups])]
    fig, axes = _figure(3, width=5.0)
    width = 0.8 / len(methods)
    for ax, (title, rows) in zip(axes, panels, strict=True):
        x = np.arange(len(rows))
        for i, method in enumerate(methods):
            ax.bar(x + (i - (len(methods) - 1) / 2) * width, [r[method] for r in rows], width, label=method)
        ax.axhline(0.5, color="grey", linestyle="--", linewidth=1)
        ax.set_xticks(x, [f"{r['group'].replace(' ' + report['length_unit'], '')}\n({r['rows']})" for r in rows],
                      fontsize=7, rotation=30 if title != panels[0][0] else 0)
        ax.set(ylim=(0, 1), ylabel="accuracy", title=f"accuracy by {title}")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="outside upper center", ncol=len(methods), fontsize=9)
    return _save(fig, out_dir, "accuracy_by.png")
