"""wsdm evaluate: the report's figures against direct computation, the id join, errors, and a run folder."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from wsdm_helpers import metrics
from wsdm_helpers.cli import main
from wsdm_helpers.data import write_canonical
from wsdm_helpers.demo_data import make_demo_frame
from wsdm_helpers.evaluate import longer_wins

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture()
def labelled(tmp_path):
    frame = make_demo_frame(120, seed=3)
    path = write_canonical(frame, tmp_path / "rows.parquet")
    rng = np.random.default_rng(0)
    p_b = np.clip(0.5 + 0.3 * (frame["label"].to_numpy() - 0.5) + rng.normal(0, 0.2, len(frame)), 0.02, 0.98)
    preds = pd.DataFrame({"id": frame["id"], "winner_model_a": 1 - p_b, "winner_model_b": p_b})
    flipped = np.arange(len(frame)) < 30  # the model changes its verdict on these rows when A and B swap
    p_swapped = np.where(flipped, 1 - p_b, p_b)  # swapped rows: P(new b = old a wins)
    swapped = pd.DataFrame({"id": frame["id"], "winner_model_a": p_swapped, "winner_model_b": 1 - p_swapped})
    # stored in another row order: everything joins on id
    preds.sample(frac=1, random_state=1).to_parquet(tmp_path / "preds.parquet")
    swapped.to_parquet(tmp_path / "swapped.parquet")
    return frame, path, preds, flipped


def test_predictions_report_matches_direct_computation(labelled, tmp_path, capsys):
    frame, path, preds, flipped = labelled
    out = tmp_path / "report"
    assert main(["evaluate", "--predictions", str(tmp_path / "preds.parquet"), "--labels", str(path),
                 "--swapped", str(tmp_path / "swapped.parquet"), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    overall = {r["method"]: r for r in report["overall"]}
    labels, probs = frame["label"].to_numpy(), preds[["winner_model_a", "winner_model_b"]].to_numpy()
    assert overall["model"]["accuracy"] == pytest.approx(metrics.accuracy(labels, probs))
    assert overall["model"]["log_loss"] == pytest.approx(metrics.log_loss(labels, probs))
    assert overall["model"]["flip_rate"] == pytest.approx(flipped.mean())
    rule = longer_wins(frame)
    assert overall["longer-wins"]["accuracy"] == pytest.approx(metrics.accuracy(labels, rule))
    assert overall["feature baseline"]["flip_rate"] is None
    assert 0 <= overall["feature baseline"]["accuracy"] <= 1
    for table in ("per_language", "per_length", "per_source"):
        assert sum(r["rows"] for r in report[table]) == len(frame)
    english = next(r for r in report["per_language"] if r["group"] == frame["language"].iloc[0])
    mask = (frame["language"] == english["group"]).to_numpy()
    assert english["model"] == pytest.approx(np.mean(probs[mask].argmax(1) == labels[mask]))
    assert sum(b["rows"] for b in report["calibration"]["model"]) == len(frame)
    assert report["length_unit"] == "words"
    for name in ("calibration.png", "accuracy_by.png"):
        assert (out / name).read_bytes()[:8] == PNG
    text = (out / "report.md").read_text()
    assert "| model |" in text and "![calibration](calibration.png)" in text
    assert "## Accuracy per language" in capsys.readouterr().out


def test_a_missing_prediction_is_an_error_that_names_the_id(labelled, tmp_path, capsys):
    frame, path, preds, _ = labelled
    preds.iloc[1:].to_parquet(tmp_path / "short.parquet")
    assert main(["evaluate", "--predictions", str(tmp_path / "short.parquet"), "--labels", str(path),
                 "--out", str(tmp_path / "r")]) == 2
    assert str(frame["id"].iloc[0]) in capsys.readouterr().err
    assert not (tmp_path / "r" / "report.md").exists()


def test_evaluate_needs_one_complete_pair_of_options(labelled, tmp_path, capsys):
    _, path, _, _ = labelled
    assert main(["evaluate", "--labels", str(path), "--out", str(tmp_path / "r")]) == 2
    assert "--predictions P --labels FILE" in capsys.readouterr().err


def test_run_folder_is_scored_in_both_orientations(labelled, tmp_path):
    pytest.importorskip("torch")
    from wsdm_helpers.config import load_run_config
    from wsdm_helpers.evaluate import evaluate_run
    from wsdm_helpers.tiny import build_tiny_model, pair_texts, train_tokenizer
    from wsdm_helpers.training import train

    frame, path, _, _ = labelled
    tokenizer = train_tokenizer(pair_texts(frame), vocab_size=400)
    source = build_tiny_model("llama", tokenizer, tmp_path / "model")
    cfg = load_run_config("configs/tiny-test.yaml", {"data.train_path": str(path), "model.source": str(source),
                                                     "train.output_dir": str(tmp_path / "run"), "train.max_steps": 2})
    run = train(cfg).run_dir
    report = evaluate_run(run, path, tmp_path / "report")
    model = report["overall"][0]
    assert model["method"] == "run" and 0 <= model["flip_rate"] <= 1
    assert report["rows"] == len(frame) and report["length_unit"] == "tokens"
    assert (tmp_path / "report" / "accuracy_by.png").read_bytes()[:8] == PNG


@pytest.fixture()
def pairs_and_labels_apart(tmp_path):
    """The demo's Kaggle layout: test.parquet has no winners, test_labels.parquet (id, winner, language) has them."""
    from wsdm_helpers.demo_data import write_demo_dataset

    write_demo_dataset(tmp_path / "data", n_train=20, n_test=60, seed=4)
    test = pd.read_parquet(tmp_path / "data" / "test.parquet")
    labels = pd.read_parquet(tmp_path / "data" / "test_labels.parquet")
    p_a = np.random.default_rng(0).uniform(0.05, 0.95, len(test))
    preds = pd.DataFrame({"id": test["id"], "winner_model_a": p_a, "winner_model_b": 1 - p_a})
    preds.to_csv(tmp_path / "preds.csv", index=False)
    return tmp_path / "data", labels, preds


def test_pairs_and_their_labels_apart_are_joined_on_id(pairs_and_labels_apart, tmp_path):
    data, labels, preds = pairs_and_labels_apart
    labels.sample(frac=1, random_state=2).to_parquet(tmp_path / "shuffled_labels.parquet")  # joined on id
    out = tmp_path / "report"
    assert main(["evaluate", "--predictions", str(tmp_path / "preds.csv"), "--data", str(data / "test.parquet"),
                 "--labels", str(tmp_path / "shuffled_labels.parquet"), "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    y = labels["winner"].map({"model_a": 0, "model_b": 1}).to_numpy()
    probs = preds.set_index("id").loc[labels["id"]].to_numpy()
    model = report["overall"][0]
    assert report["rows"] == len(labels)
    assert model["accuracy"] == pytest.approx(metrics.accuracy(y, probs))
    assert model["log_loss"] == pytest.approx(metrics.log_loss(y, probs))
    languages = {r["group"]: r["rows"] for r in report["per_language"]}
    assert languages == labels["language"].value_counts().to_dict()  # from the labels file: the pairs lack them


def test_a_labels_only_file_without_its_pairs_says_to_pass_them(pairs_and_labels_apart, tmp_path, capsys):
    data, _, _ = pairs_and_labels_apart
    assert main(["evaluate", "--predictions", str(tmp_path / "preds.csv"), "--labels",
                 str(data / "test_labels.parquet"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "test_labels.parquet" in err and "--data FILE" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("fault", ["stray id", "duplicate id", "contradiction"])
def test_labels_that_do_not_fit_the_pairs_name_the_id(pairs_and_labels_apart, tmp_path, capsys, fault):
    data, labels, _ = pairs_and_labels_apart
    pairs = data / "test.parquet"
    bad = labels.copy()
    if fault == "stray id":
        bad.loc[0, "id"], culprit = "not-a-row", "not-a-row"
    elif fault == "duplicate id":
        bad, culprit = pd.concat([bad, bad.iloc[[3]]], ignore_index=True), str(labels["id"].iloc[3])
    else:  # the pairs file carries its own winners, and one of them disagrees with the labels file
        labelled = pd.read_parquet(pairs).merge(labels[["id", "winner"]], on="id")
        labelled.to_parquet(pairs := tmp_path / "labelled.parquet")
        bad.loc[5, "winner"] = "model_b" if bad.loc[5, "winner"] == "model_a" else "model_a"
        culprit = str(labels["id"].iloc[5])
    bad.to_parquet(tmp_path / "bad.parquet")
    assert main(["evaluate", "--predictions", str(tmp_path / "preds.csv"), "--data", str(pairs),
                 "--labels", str(tmp_path / "bad.parquet"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "bad.parquet" in err and culprit in err and "Fix:" in err
    assert not (tmp_path / "r").exists()
