"""Submission building and validation: every bad submission is an error naming the ids and the fix."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from wsdm_helpers.errors import SubmissionError
from wsdm_helpers.submission import (
    build_submission,
    check_against_sample,
    read_predictions,
    write_predictions,
    write_submission,
)

IDS = ["10", "11", "12"]


def _preds(ids=IDS, p_a=(0.7, 0.2, 0.5), tie=None) -> pd.DataFrame:
    p_a = np.asarray(p_a, dtype=float)
    frame = pd.DataFrame({"id": list(ids), "winner_model_a": p_a, "winner_model_b": 1 - p_a})
    if tie is not None:
        frame["winner_model_a"] = p_a * (1 - tie)
        frame["winner_model_b"] = (1 - p_a) * (1 - tie)
        frame["winner_tie"] = tie
    return frame


def test_wsdm_submission_in_test_order(tmp_path):
    preds = _preds().iloc[::-1]  # any order: joined on id
    path = write_submission(preds, pd.DataFrame({"id": IDS}), tmp_path / "submission.csv")
    written = pd.read_csv(path, dtype={"id": str})
    assert written.to_dict("list") == {"id": IDS, "winner": ["model_a", "model_b", "model_a"]}


def test_lmsys_submission_has_three_probabilities():
    sub = build_submission(_preds(tie=0.2), [10, 11, 12], task="lmsys")
    assert sub.columns.tolist() == ["id", "winner_model_a", "winner_model_b", "winner_tie"]
    np.testing.assert_allclose(sub.iloc[:, 1:].sum(axis=1), 1)


def _bad(kind: str) -> pd.DataFrame:
    preds = _preds()
    if kind == "duplicated":
        return pd.concat([preds, preds.iloc[[1]]])
    if kind == "missing":
        return preds.iloc[:2]
    if kind == "extra":
        return pd.concat([preds, _preds(["99"], [0.5])])
    if kind == "nan":
        return preds.assign(winner_model_a=[0.7, np.nan, 0.5])
    if kind == "range":
        return preds.assign(winner_model_a=[1.7, 0.2, 0.5], winner_model_b=[-0.7, 0.8, 0.5])
    if kind == "sum":
        return preds.assign(winner_model_b=[0.3, 0.3, 0.5])
    return preds.drop(columns="winner_model_b")


@pytest.mark.parametrize("kind, message", [
    ("duplicated", r"1 duplicated id\(s\): 11"),
    ("missing", r"1 test id\(s\) have no prediction: 12"),
    ("extra", r"1 id\(s\) are not in the test set: 99"),
    ("nan", r"NaN probabilities for 1 id\(s\): 11"),
    ("range", r"outside \[0, 1\] for 1 id\(s\): 10"),
    ("sum", r"do not sum to 1 for 1 id\(s\): 11"),
    ("columns", r"missing column\(s\) \['winner_model_b'\]"),
])
def test_bad_submissions_are_rejected_naming_ids(kind, message, tmp_path):
    path = tmp_path / "submission.csv"
    with pytest.raises(SubmissionError, match=message):
        write_submission(_bad(kind), IDS, path)
    assert not path.exists()  # nothing half-written


def test_lmsys_needs_tie_probabilities():
    with pytest.raises(SubmissionError, match="winner_tie is missing"):
        build_submission(_preds(), IDS, task="lmsys")


def test_duplicated_test_ids_and_unknown_task():
    with pytest.raises(SubmissionError, match="test ids are duplicated: 10"):
        build_submission(_preds(), ["10", "10", "11", "12"])
    with pytest.raises(SubmissionError, match="task='kaggle'"):
        build_submission(_preds(), IDS, task="kaggle")


def test_many_offending_ids_are_summarised():
    ids = [f"t{i}" for i in range(20)]
    with pytest.raises(SubmissionError, match=r"20 test id\(s\) have no prediction: t0, t1, t2, t3, t4 \(and 15 more\)"):
        build_submission(_preds(), IDS + ids)


@pytest.mark.parametrize("suffix", [".parquet", ".csv"])
def test_predictions_round_trip(tmp_path, suffix):
    preds = _preds(tie=0.1)
    back = read_predictions(write_predictions(preds, tmp_path / f"p{suffix}"))
    pd.testing.assert_frame_equal(back, preds)


def test_read_predictions_missing_file(tmp_path):
    with pytest.raises(SubmissionError, match="does not exist"):
        read_predictions(tmp_path / "nope.parquet")


def test_check_against_sample_names_every_problem(tmp_path):
    sample = tmp_path / "sample_submission.csv"
    pd.DataFrame({"id": [11, 12, 13], "winner": "model_a"}).to_csv(sample, index=False)
    pd.DataFrame({"id": [11, 11, 14], "winner": ["model_a", "tie", "model_b"]}).to_csv(tmp_path / "s.csv", index=False)
    with pytest.raises(SubmissionError) as err:
        check_against_sample(tmp_path / "s.csv", sample)
    for part in ("1 duplicated id(s): 11", "2 ids of the sample missing: 12, 13", "1 ids not in the sample: 14",
                 "winner is not model_a or model_b for 1 id(s): 11"):
        assert part in str(err.value)
    pd.DataFrame({"id": [13, 12, 11], "winner": "model_b"}).to_csv(tmp_path / "ok.csv", index=False)
    assert check_against_sample(tmp_path / "ok.csv", sample)["id"].tolist() == ["13", "12", "11"]
    lmsys = tmp_path / "lmsys_sample.csv"
    pd.DataFrame({"id": [1, 2], "winner_model_a": 1 / 3, "winner_model_b": 1 / 3, "winner_tie": 1 / 3}).to_csv(
        lmsys, index=False)
    pd.DataFrame({"id": [1, 2], "winner_model_a": [0.5, 0.9], "winner_model_b": 0.3, "winner_tie": 0.2}).to_csv(
        tmp_path / "l.csv", index=False)
    with pytest.raises(SubmissionError, match="rows do not sum to 1 for 1 id"):
        check_against_sample(tmp_path / "l.csv", lmsys)
