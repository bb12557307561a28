"""The demo set: exact WSDM layout, nine languages and scripts, a learnable signal that length does not reveal."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from wsdm_helpers import data, demo_data

SCRIPTS = {"Chinese": "[\u4e00-\u9fff]", "Japanese": "[\u3040-\u30ff]", "Russian": "[\u0400-\u04ff]",
           "Arabic": "[\u0600-\u06ff]", "Hindi": "[\u0900-\u097f]", "Korean": "[\uac00-\ud7af]"}


@pytest.fixture(scope="module")
def demo() -> pd.DataFrame:
    return demo_data.make_demo_frame(2000, seed=0)


def _first(frame: pd.DataFrame, column: str) -> list[str]:
    return [turns[0] for turns in frame[column]]


def test_deterministic_for_a_seed(demo):
    again = demo_data.make_demo_frame(2000, seed=0)
    pd.testing.assert_frame_equal(again, demo)
    assert not demo_data.make_demo_frame(50, seed=1)["id"].isin(demo["id"]).any()


def test_languages_and_scripts(demo):
    counts = demo["language"].value_counts()
    assert len(counts) >= 9 and counts.min() > 150
    for language, script in SCRIPTS.items():
        prompts = [p[0] for p in demo.loc[demo["language"] == language, "prompt"]]
        assert all(re.search(script, p) or re.search(r"\d", p) for p in prompts), language
        assert any(re.search(script, p) for p in prompts), language


def test_length_does_not_reveal_the_winner_and_positions_are_balanced(demo):
    len_a = np.array([len(t) for t in _first(demo, "response_a")])
    len_b = np.array([len(t) for t in _first(demo, "response_b")])
    labels = demo["label"].to_numpy()
    longer_wins = np.mean(np.where(len_a >= len_b, 0, 1) == labels)
    assert 0.45 <= longer_wins <= 0.55
    assert labels.mean() == 0.5
    assert abs(np.mean(np.abs(len_a - len_b)) / np.mean(len_a + len_b)) < 0.15  # similar lengths


def test_the_correct_answer_identifies_the_winner(demo):
    """An oracle that knows the right answer for every prompt is always right: the signal is real."""
    answers = {}
    for _lang, t in demo_data.LANGUAGES.items():
        for city in t["cities"]:
            answers[t["ask_city"].format(x=city)] = t["city"].format(x=city)
        for a in range(2, 10):
            for b in range(2, 10):
                answers[t["ask_sum"].format(a=a, b=b)] = t["sum"].format(a=a, b=b, c=a + b)
    right = [answers[p[0]] for p in demo["prompt"]]
    oracle = [0 if a.startswith(r) else 1 for r, a in zip(right, _first(demo, "response_a"), strict=True)]
    assert (np.array(oracle) == demo["label"].to_numpy()).all()


def test_write_demo_dataset_exact_wsdm_layout(tmp_path):
    paths = demo_data.write_demo_dataset(tmp_path, n_train=300, n_test=60, seed=0)
    assert [p.name for p in paths] == ["train.parquet", "test.parquet", "sample_submission.csv",
                                       "test_labels.parquet"]
    train, test = pd.read_parquet(paths[0]), pd.read_parquet(paths[1])
    submission, labels = pd.read_csv(paths[2], dtype=str), pd.read_parquet(paths[3])
    assert list(train.columns) == ["id", "prompt", "response_a", "response_b", "winner", "model_a", "model_b",
                                   "language"]
    assert all(isinstance(v, str) for v in train.iloc[0].tolist())
    assert set(train["winner"]) == {"model_a", "model_b"} and len(train) == 300
    assert list(test.columns) == ["id", "prompt", "response_a", "response_b", "scored"] and len(test) == 60
    assert list(submission.columns) == ["id", "winner"] and submission["id"].tolist() == test["id"].tolist()
    assert labels["id"].tolist() == test["id"].tolist() and set(labels["winner"]) <= {"model_a", "model_b"}
    assert data.read_sample_submission(paths[2])["id"].tolist() == test["id"].tolist()
    assert not set(train["id"]) & set(test["id"])
    assert (train["model_a"] != train["model_b"]).all() and train["model_a"].nunique() > 5
    frame, report = data.read_pairs(paths[0])
    assert report.layout == "wsdm" and report.rows == 300 and len(report.languages) == 9
    test_frame, report = data.read_pairs(paths[1])
    assert (test_frame["label"] == data.UNLABELED).all()


def test_hidden_test_has_the_wsdm_test_layout_with_integer_ids(tmp_path):
    test_path, sample_path = demo_data.write_hidden_test(tmp_path, n_rows=500, seed=3)
    test, sample = pd.read_parquet(test_path), pd.read_csv(sample_path)
    assert list(test.columns) == ["id", "prompt", "response_a", "response_b", "scored"] and len(test) == 500
    assert test["id"].dtype == np.int64 and test["id"].is_unique and not test["id"].is_monotonic_increasing
    assert test["scored"].dtype == bool and 0 < (~test["scored"]).sum() < 100
    assert list(sample.columns) == ["id", "winner"] and sample["id"].tolist() == test["id"].tolist()
    frame, report = data.read_pairs(test_path)
    assert report.layout == "wsdm" and frame["id"].tolist() == [str(i) for i in test["id"]]
    with pytest.raises(demo_data.ConfigError, match="n_rows=0"):
        demo_data.write_hidden_test(tmp_path, n_rows=0)


def test_the_lmsys_demo_set_reads_as_lmsys_with_ties_as_a_third_class(tmp_path):
    demo_data.write_lmsys_dataset(tmp_path, n_train=200, n_test=30, seed=2, tie_share=0.25)
    train = data.read_pairs(tmp_path / "train.csv", ties="keep")[0]
    test = data.read_pairs(tmp_path / "test.csv")[0]
    sample = data.read_sample_submission(tmp_path / "sample_submission.csv")

    assert set(train["source"]) == {"lmsys:train.csv"} and len(train) == 200
    assert set(train["label"]) == {0, 1, 2} and 0.15 < (train["label"] == 2).mean() < 0.35
    ties = train[train["label"] == 2]
    assert all(a == b for a, b in zip(ties["response_a"], ties["response_b"], strict=True))  # equally good
    assert (train.loc[train["label"] != 2, "response_a"] != train.loc[train["label"] != 2, "response_b"]).all()
    assert list(pd.read_csv(tmp_path / "test.csv").columns) == ["id", "prompt", "response_a", "response_b"]
    assert list(sample.columns) == ["id", "winner_model_a", "winner_model_b", "winner_tie"]
    assert list(sample["id"]) == list(test["id"]) and not set(test["id"]) & set(train["id"])
