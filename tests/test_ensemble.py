"""Blending prediction files joined on id, and blend weights fitted on out-of-fold predictions."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wsdm_helpers.ensemble import blend, blend_files, fit_weights
from wsdm_helpers.errors import SubmissionError
from wsdm_helpers.submission import write_predictions


def _preds(ids, p_a) -> pd.DataFrame:
    p_a = np.asarray(p_a, dtype=float)
    return pd.DataFrame({"id": [str(i) for i in ids], "winner_model_a": p_a, "winner_model_b": 1 - p_a})


def test_blend_joins_on_id_not_position():
    first = _preds(["a", "b", "c"], [0.9, 0.5, 0.1])
    second = _preds(["c", "a", "b"], [0.3, 0.5, 0.7])  # other order
    out = blend([first, second], weights=[3, 1])
    assert out["id"].tolist() == ["a", "b", "c"]
    np.testing.assert_allclose(out["winner_model_a"], [0.75 * 0.9 + 0.25 * 0.5, 0.55, 0.75 * 0.1 + 0.25 * 0.3])
    np.testing.assert_allclose(out[["winner_model_a", "winner_model_b"]].sum(axis=1), 1)


def test_blend_names_missing_and_extra_ids():
    with pytest.raises(SubmissionError, match=r"second.*1 test id\(s\) have no prediction: c.*not in the test set: z"):
        blend([_preds("abc", [0.5] * 3), _preds("abz", [0.5] * 3)], names=["first", "second"])


def test_blend_rejects_mixed_classes_and_bad_weights():
    three = _preds("ab", [0.4, 0.4]).assign(winner_model_b=0.4, winner_tie=0.2)
    with pytest.raises(SubmissionError, match="same number of classes"):
        blend([_preds("ab", [0.5, 0.5]), three])
    with pytest.raises(SubmissionError, match="non-negative"):
        blend([_preds("ab", [0.5, 0.5])] * 2, weights=[1, -1])


def _oof(seed: int = 0, n: int = 400):
    """A good model, a noisy one and an uninformative one on the same labelled rows."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    truth = np.where(labels == 0, 0.8, 0.2)
    good = np.clip(truth + rng.normal(0, 0.1, n), 0.02, 0.98)
    noisy = np.clip(truth + rng.normal(0, 0.45, n), 0.02, 0.98)
    ids = [f"r{i}" for i in range(n)]
    frames = [_preds(ids, good), _preds(ids, noisy).iloc[::-1], _preds(ids, np.full(n, 0.5))]
    return frames, pd.DataFrame({"id": ids, "label": labels})


@pytest.mark.parametrize("metric", ["log_loss", "accuracy"])
def test_fitted_weights_prefer_the_better_model(metric):
    frames, labels = _oof()
    w = fit_weights(frames, labels, metric=metric)
    assert w.shape == (3,) and w.sum() == pytest.approx(1) and (w >= 0).all()
    assert w[0] > 0.5 and w[0] > w[1] and w[0] > w[2]


def test_fitted_log_loss_weights_beat_equal_weights():
    from wsdm_helpers.metrics import log_loss

    frames, labels = _oof(seed=1)
    fitted = blend(frames, fit_weights(frames, labels))
    equal = blend(frames)
    y = labels["label"].to_numpy()
    assert log_loss(y, fitted.iloc[:, 1:].to_numpy()) < log_loss(y, equal.iloc[:, 1:].to_numpy())


def test_fit_weights_needs_labels_for_every_id():
    frames, labels = _oof()
    with pytest.raises(SubmissionError, match="labels are missing for 1 id"):
        fit_weights(frames, labels.iloc[1:])


def test_blend_files_with_oof_fitted_weights(tmp_path):
    frames, labels = _oof()
    preds = [write_predictions(f, tmp_path / f"p{i}.parquet") for i, f in enumerate(frames[:2])]
    oof = []
    for i, f in enumerate(frames[:2]):
        path = tmp_path / f"oof{i}.parquet"
        f.merge(labels, on="id").to_parquet(path)
        oof.append(str(path))
    out = blend_files([str(p) for p in preds], str(tmp_path / "blend.parquet"), oof_paths=oof)
    assert (tmp_path / "blend.parquet").is_file() and len(out) == len(labels)
    with pytest.raises(SubmissionError, match="not both"):
        blend_files([str(p) for p in preds], str(tmp_path / "x.parquet"), weights=[1, 1], oof_paths=oof)


def test_wsdm_ensemble_command(tmp_path):
    from wsdm_helpers.cli import main

    frames, _ = _oof()
    paths = [str(write_predictions(f, tmp_path / f"p{i}.parquet")) for i, f in enumerate(frames[:2])]
    out = tmp_path / "blend.parquet"
    assert main(["ensemble", *paths, "--weights", "1", "3", "--out", str(out)]) == 0
    expected = blend(frames[:2], [1, 3])
    pd.testing.assert_frame_equal(pd.read_parquet(out), expected)
    assert main(["ensemble", *paths, "--weights", "1", "--out", str(out)]) == 2  # one weight per file


def test_log_odds_blend_is_the_normalised_weighted_product_and_keeps_the_scale():
    first, second = _preds("ab", [0.8, 0.3]), _preds("ab", [0.6, 0.5])
    out = blend([first, second], weights=[1, 1], space="log_odds")
    product = np.array([0.8 * 0.6, 0.3 * 0.5]) / np.array([0.8 * 0.6 + 0.2 * 0.4, 0.3 * 0.5 + 0.7 * 0.5])
    np.testing.assert_allclose(out["winner_model_a"], product)
    sharpened = blend([first, second], weights=[2, 0], space="log_odds")  # the scale is a temperature
    np.testing.assert_allclose(sharpened["winner_model_a"], [0.64 / (0.64 + 0.04), 0.09 / (0.09 + 0.49)])
    three = pd.DataFrame({"id": ["a"], "winner_model_a": [0.5], "winner_model_b": [0.3], "winner_tie": [0.2]})
    np.testing.assert_allclose(blend([three, three], [0.5, 0.5], space="log_odds").iloc[0, 1:].to_numpy(float),
                               [0.5, 0.3, 0.2])
    with pytest.raises(SubmissionError, match="blend space 'logit' must be one of"):
        blend([first, second], space="logit")


def test_log_odds_weights_undo_an_under_confident_member_and_never_invert_one():
    """Labels drawn from sigmoid(z); one member says sigmoid(z / 2), one is noise, one says sigmoid(-z)."""
    from wsdm_helpers.metrics import log_loss

    rng = np.random.default_rng(3)
    z = rng.normal(0, 2, 6000)
    labels = (rng.random(len(z)) > 1 / (1 + np.exp(-z))).astype(int)  # label 0 = a wins with P sigmoid(z)
    ids = [f"r{i}" for i in range(len(z))]
    shy, noise = _preds(ids, 1 / (1 + np.exp(-z / 2))), _preds(ids, 1 / (1 + np.exp(-rng.normal(0, 2, len(z)))))
    frame = pd.DataFrame({"id": ids, "label": labels})
    w = fit_weights([shy, noise], frame, space="log_odds")
    assert w[0] == pytest.approx(2.0, abs=0.15) and 0 <= w[1] < 0.05
    scores = {space: log_loss(labels, blend([shy, noise], fit_weights([shy, noise], frame, space=space),
                                            space=space).iloc[:, 1:].to_numpy()) for space in ("probability", "log_odds")}
    assert scores["log_odds"] < scores["probability"] - 0.02  # a probability mean cannot sharpen
    assert fit_weights([_preds(ids, 1 / (1 + np.exp(z)))], frame, space="log_odds").tolist() == [0.0]
    accuracy_w = fit_weights([shy, noise], frame, metric="accuracy", space="log_odds")
    assert accuracy_w.sum() == pytest.approx(1) and accuracy_w[0] > accuracy_w[1]


def test_blend_available_in_log_odds_space_leaves_a_missing_member_out():
    from wsdm_helpers.ensemble import blend_available

    first, second = _preds("abc", [0.8, 0.3, 0.6]), _preds("ab", [0.6, 0.5])
    out, usable = blend_available([first, second.assign(winner_model_a=[0.6, np.nan])], list("abc"), [2, 1],
                                  space="log_odds")
    assert usable.tolist() == [[True, True, True], [True, False, False]]
    expected = blend([first.iloc[:1], second.iloc[:1]], [2, 1], space="log_odds")["winner_model_a"].iloc[0]
    np.testing.assert_allclose(out["winner_model_a"], [expected, 0.09 / 0.58, 0.36 / 0.52])
