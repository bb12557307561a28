"""benchmarks/probe_layers.py's pieces: the states per depth of a tiny model, the probe per depth, the depth
chosen by inner CV, and the feature cache."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from wsdm_helpers.data import assign_folds
from wsdm_helpers.demo_data import make_demo_frame

SPEC = importlib.util.spec_from_file_location(
    "probe_layers", Path(__file__).resolve().parents[1] / "benchmarks" / "probe_layers.py")
probe_layers = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(probe_layers)


def synthetic_depths(n: int = 400, seed: int = 0):
    """Depth 1 is noise, depth 2 carries the label, depth 3 carries it more weakly."""
    rng = np.random.default_rng(seed)
    a_wins = rng.random(n) < 0.5
    sign = np.where(a_wins, 1.0, -1.0)[:, None]
    noise = rng.normal(size=(3, n, 8))
    signal = np.zeros((3, n, 8))
    signal[1, :, 0], signal[2, :, 0] = 1.5, 0.3
    return noise + signal * sign, a_wins


def test_inner_cv_picks_the_informative_depth_without_seeing_the_held_out_fold():
    diffs, a_wins = synthetic_depths()
    frame = make_demo_frame(len(a_wins), seed=2)
    folds = assign_folds(frame, 4, 0)
    accuracies = [probe_layers.accuracy(probe_layers.probe_logits(d, a_wins, folds, 5.0), a_wins) for d in diffs]
    assert accuracies[0] < 0.6 < accuracies[2] < accuracies[1]
    logits, chosen = probe_layers.chosen_by_inner_cv(diffs, a_wins, frame, folds, 5.0, seed=0)
    assert chosen == [2, 2, 2, 2]
    assert probe_layers.accuracy(logits, a_wins) == pytest.approx(accuracies[1])


def test_depth_differences_of_a_tiny_model_end_with_what_the_probe_reads(tmp_path):
    pytest.importorskip("torch")
    import pandas as pd

    from wsdm_helpers.config import load_run_config
    from wsdm_helpers.modeling import load_model
    from wsdm_helpers.probe import pooled_features
    from wsdm_helpers.tiny import build_tiny_model, pair_texts, train_tokenizer
    from wsdm_helpers.tokenization import encode_pairs
    from wsdm_helpers.tta import swap_pairs

    frame = make_demo_frame(12, seed=5)
    source = build_tiny_model("gemma3", train_tokenizer(pair_texts(frame), vocab_size=300), tmp_path / "model")
    cfg = load_run_config("configs/tiny-test.yaml", {"model.source": str(source), "format.pooling": "mean"})
    diffs, seconds = probe_layers.cached_differences(cfg, frame, tmp_path / "out")
    assert diffs.shape[:2] == (2, len(frame)) and seconds > 0
    model, tokenizer, family = load_model(cfg, "cpu")
    encoded = encode_pairs(pd.concat([frame, swap_pairs(frame)], ignore_index=True), tokenizer, cfg.format,
                           family.template)
    pooled = pooled_features(model, encoded, tokenizer.pad_token_id, family.padding_side, "mean", 4)
    assert np.allclose(diffs[-1], pooled[:12] - pooled[12:], atol=1e-5)  # the whole model: train.probe_head's input
    cached, cached_seconds = probe_layers.cached_differences(cfg, frame, tmp_path / "out")  # read back
    assert np.array_equal(cached, diffs) and cached_seconds == seconds  # the pass that made them, not recomputed
    other, _ = probe_layers.cached_differences(cfg, frame.iloc[:6].reset_index(drop=True), tmp_path / "out")
    assert other.shape[1] == 6  # other rows: a new key, computed again


def test_learning_curve_fits_each_fold_on_the_drawn_number_of_pairs():
    diffs, a_wins = synthetic_depths(n=600, seed=3)
    folds = np.arange(600) % 3
    rows = probe_layers.learning_curve(diffs[2], a_wins, folds, 5.0, sizes=[10, 400], seeds=[0, 1, 2])
    assert [r["depth"] for r in rows] == ["10 pairs", "400 pairs"] and len(rows[0]["per_seed"]) == 3
    assert rows[0]["mean"] < rows[1]["mean"]  # the weak signal needs the pairs
    whole = probe_layers.accuracy(probe_layers.probe_logits(diffs[2], a_wins, folds, 5.0), a_wins)
    assert rows[1]["per_seed"] == [whole] * 3  # 400 = every training pair of a fold: no draw left to vary
