"""benchmarks/quality.py's pieces on synthetic rows: bootstrap interval, nested blend, the data-mix table."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

from wsdm_helpers.data import assign_folds, write_canonical
from wsdm_helpers.demo_data import make_demo_frame

SPEC = importlib.util.spec_from_file_location("quality", Path(__file__).resolve().parents[1] / "benchmarks" / "quality.py")
quality = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(quality)


def test_bootstrap_interval_brackets_the_mean():
    assert quality.bootstrap_interval(np.ones(50)) == (1.0, 1.0)
    correct = (np.arange(1000) % 5 < 3).astype(float)  # mean 0.6
    low, high = quality.bootstrap_interval(correct)
    assert low < 0.6 < high and 0.04 < high - low < 0.08


def test_nested_blend_weights_favour_the_informative_method():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    good = np.where(labels[:, None] == 1, [0.2, 0.8], [0.8, 0.2])
    noise = rng.uniform(0.3, 0.7, 400)
    folds = np.arange(400) % 4
    blended, weights = quality.nested_blend({"good": good, "noise": np.stack([noise, 1 - noise], 1)}, labels, folds)
    assert len(weights) == 4 and all(w["good"] > 0.9 for w in weights)
    assert np.allclose(blended.sum(axis=1), 1) and np.mean(blended.argmax(1) == labels) == 1.0


def test_log_odds_nested_blend_sharpens_an_under_confident_method():
    from wsdm_helpers.metrics import log_loss

    rng = np.random.default_rng(1)
    z = rng.normal(0, 2, 2000)
    labels = (rng.random(len(z)) > 1 / (1 + np.exp(-z))).astype(int)
    shy = 1 / (1 + np.exp(-z / 3))
    members = {"shy": np.stack([shy, 1 - shy], 1), "constant": np.full((len(z), 2), 0.5)}
    folds = np.arange(len(z)) % 2
    blended, weights = quality.nested_blend(members, labels, folds, space="log_odds")
    assert all(w["shy"] == pytest.approx(3, abs=0.4) for w in weights)
    assert log_loss(labels, blended) < log_loss(labels, quality.nested_blend(members, labels, folds)[0]) - 0.03


def test_mix_table_trains_with_each_extra_set(tmp_path):
    pytest.importorskip("sklearn")
    frame = make_demo_frame(60, seed=2)
    extra = make_demo_frame(30, seed=3)
    extra["id"] = "x" + extra["id"].astype(str)
    path = write_canonical(extra, tmp_path / "extra.parquet")
    rows = quality.mix_table(frame, assign_folds(frame, 2, 0), {"extra": str(path)})
    assert [(r["extra set"], r["rows"]) for r in rows] == [("(none)", 0), ("extra", 30)]
    assert all(0 <= r["accuracy"] <= 1 for r in rows)


def test_table_gives_paired_differences_to_the_baseline_in_accuracy_and_log_loss():
    labels = np.arange(400) % 2
    sure = np.where(labels[:, None] == 0, [0.9, 0.1], [0.1, 0.9])
    hesitant = np.where(labels[:, None] == 0, [0.6, 0.4], [0.4, 0.6])  # as accurate, worse log loss
    rows = {r["method"]: r for r in quality.table({"feature baseline": hesitant, "sure": sure}, labels)}
    assert rows["feature baseline"]["log_loss_vs_baseline"] == 0 and rows["sure"]["vs_baseline"] == 0
    gain = np.log(0.6) - np.log(0.9)  # every row's log loss falls by this
    assert rows["sure"]["log_loss_vs_baseline"] == pytest.approx(gain)
    assert rows["sure"]["log_loss_vs_baseline_ci"] == pytest.approx([gain, gain])
    assert "-0.4055" in quality.to_text(list(rows.values()), 400, 2)
