"""The feature baseline: features, symmetry under A/B swap, fit/predict in the predictions layout."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wsdm_helpers.data import frame_from_records
from wsdm_helpers.demo_data import make_demo_frame
from wsdm_helpers.errors import DataError
from wsdm_helpers.features import FeatureBaseline, pair_features, response_features
from wsdm_helpers.tta import swap_pairs


def test_response_features_count_structure():
    text = "# Title\n\n- one\n- two\n1. three\n\n**bold** and `code`\n```py\nx = 1\n```\nSee https://x.org?"
    row = response_features(text, prompt_words={"title", "three", "missing"})
    assert row["headers"] == 1 and row["list_items"] == 3 and row["code_fences"] == 1
    assert row["bold"] == 1 and row["inline_code"] == 1 and row["links"] == 1 and row["questions"] == 1
    assert row["paragraphs"] == 2 and row["prompt_coverage"] == pytest.approx(2 / 3)
    assert response_features("", set())["empty"] == 1


def test_pair_features_handle_null_turns_and_differences():
    frame = frame_from_records([{"id": "1", "prompt": ["hi", "more"], "response_a": ["hello there", None],
                                 "response_b": ["yo", "ok"], "label": 0}])
    features = pair_features(frame)
    assert features.loc[0, "turns"] == 2 and features.loc[0, "a_null_turns"] == 1
    assert features.loc[0, "diff_words"] == 2 - 2
    assert features.loc[0, "logratio_chars"] == pytest.approx(np.log1p(11) - np.log1p(5))


@pytest.fixture(scope="module")
def demo() -> pd.DataFrame:
    return make_demo_frame(300, seed=5)


@pytest.mark.parametrize("model", ["logreg", "hgb"])
def test_baseline_learns_and_has_no_position_bias(demo, model):
    train, test = demo.iloc[:200], demo.iloc[200:]
    baseline = FeatureBaseline(model=model, **({"max_iter": 30} if model == "hgb" else {})).fit(train)
    preds = baseline.predict(test)
    assert preds.columns.tolist() == ["id", "winner_model_a", "winner_model_b"]
    assert preds["id"].tolist() == test["id"].astype(str).tolist()
    accuracy = (preds[["winner_model_a", "winner_model_b"]].to_numpy().argmax(1) == test["label"].to_numpy()).mean()
    assert accuracy > 0.6
    swapped = baseline.predict(swap_pairs(test))  # A and B exchanged: the probabilities exchange too
    np.testing.assert_allclose(swapped["winner_model_a"], preds["winner_model_b"], atol=1e-9)


def test_ties_give_three_classes(demo):
    labels = demo["label"].to_numpy().copy()
    labels[::4] = 2
    preds = FeatureBaseline().fit(demo.assign(label=labels)).predict(demo.iloc[:5])
    assert preds.columns.tolist()[-1] == "winner_tie"
    np.testing.assert_allclose(preds.iloc[:, 1:].sum(axis=1), 1)


def test_fit_needs_labels(demo):
    with pytest.raises(DataError, match="labelled rows"):
        FeatureBaseline().fit(demo.assign(label=-1))
    with pytest.raises(DataError, match="fit\\(\\) before"):
        FeatureBaseline().predict(demo)


def test_wsdm_baseline_command(tmp_path, demo):
    from wsdm_helpers.cli import main
    from wsdm_helpers.data import write_canonical

    train = write_canonical(demo.iloc[:200], tmp_path / "train.parquet")
    test = write_canonical(demo.iloc[200:].assign(label=-1), tmp_path / "test.parquet")
    out = tmp_path / "preds.parquet"
    assert main(["baseline", "--train", str(train), "--test", str(test), "--out", str(out)]) == 0
    assert len(pd.read_parquet(out)) == 100


def test_baseline_file_of_other_model_inputs_is_refused(tmp_path, demo):
    """A baseline.json fitted before the asinh input (no "transform") would load and predict wrong numbers."""
    import json

    from wsdm_helpers.features import BASELINE_FILE, load_baseline, save_baseline

    path = save_baseline(FeatureBaseline().fit(demo.iloc[:200]), tmp_path, train_rows=200)
    assert load_baseline(tmp_path).predict(demo.iloc[200:210])["winner_model_a"].between(0, 1).all()
    data = json.loads(path.read_text())
    del data["transform"]
    (tmp_path / BASELINE_FILE).write_text(json.dumps(data))
    with pytest.raises(DataError, match="asinh transform.*wsdm baseline --train"):
        load_baseline(tmp_path)
