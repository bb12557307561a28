"""Plots are written as PNG files and render inline (``_repr_png_``); quick, matplotlib only."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wsdm_helpers import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _is_png(plot: plots.Plot) -> bool:
    return plot.path.is_file() and plot.path.read_bytes().startswith(PNG_MAGIC) and plot._repr_png_()[:8] == PNG_MAGIC


@pytest.fixture
def oof() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    p_b = rng.uniform(size=60)
    return pd.DataFrame({"id": [f"r{i}" for i in range(60)], "winner_model_a": 1 - p_b, "winner_model_b": p_b,
                         "label": (rng.uniform(size=60) < p_b).astype("int64"),
                         "language": rng.choice(["English", "Russian", "Chinese"], size=60)})


def test_training_curves_from_a_run_folder(tmp_path):
    history = [{"loss": 0.7 - 0.01 * s, "step": s, "epoch": s / 10} for s in range(1, 21)]
    history += [{"eval_loss": 0.6, "eval_accuracy": 0.7, "step": 10}, {"eval_loss": 0.5, "eval_accuracy": 0.8, "step": 20},
                {"train_runtime": 12.0, "step": 20}]
    (tmp_path / "log_history.json").write_text(pd.Series(history).to_json(orient="records"))
    plot = plots.training_curves(tmp_path, tmp_path / "plots")
    assert plot.path == tmp_path / "plots" / "training_curves.png" and _is_png(plot)


def test_language_accuracy_and_calibration_from_oof(tmp_path, oof):
    path = tmp_path / "oof.parquet"
    oof.to_parquet(path)
    assert _is_png(plots.language_accuracy(path, tmp_path))
    assert _is_png(plots.prediction_histogram(path, tmp_path))


def test_prediction_histogram_without_labels(tmp_path, oof):
    plot = plots.prediction_histogram(oof.drop(columns=["label", "language"]), tmp_path)
    assert plot.path.name == "predictions.png" and _is_png(plot)


def test_token_lengths_mark_the_truncation_point(tmp_path):
    lengths = np.array([100, 300, 700, 1500])
    plot = plots.token_lengths(lengths, 512, tmp_path, kept=np.minimum(lengths, 512))
    assert _is_png(plot) and str(plot) == str(tmp_path / "token_lengths.png")


def test_run_without_a_validation_fold_has_nothing_to_plot(tmp_path, capsys):
    assert plots.language_accuracy(tmp_path, tmp_path) is None
    assert plots.prediction_histogram(tmp_path, tmp_path) is None
    assert "no oof.parquet" in capsys.readouterr().out
