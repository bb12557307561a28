"""Readers, validation, tie policies and folds of wsdm_helpers.data, on real and synthetic files."""
from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wsdm_helpers import data
from wsdm_helpers.config import DataConfig
from wsdm_helpers.errors import ConfigError, DataError, WsdmError

# ---- real data in ../shared/data (skipped when absent) -------------------------------------------
# file -> (layout, rows, {label: count}) as stated in the folder's SOURCE.txt / README.md
REAL_FILES = {
    "lmsys-arena-sample/train_sample.csv": ("lmsys", 1000, {0: 344, 1: 348, 2: 308}),
    "hh-rlhf-harmless-test/test.jsonl.gz": ("chosen_rejected", 2312, {0: 1156, 1: 1156}),
    "oasst1-en-validation/en-validation.jsonl": ("oasst", 1026, {0: 513, 1: 513}),
    "kudge-challenge-ko-en/kudge-challenge.csv": ("columns:kudge", 746, {0: 373, 1: 373}),
    "llmbar/LLMBar_Adversarial_GPTInst.json": ("columns:llmbar", 92, {0: 45, 1: 47}),
    "llmbar/LLMBar_Adversarial_GPTOut.json": ("columns:llmbar", 47, {0: 22, 1: 25}),
    "llmbar/LLMBar_Adversarial_Manual.json": ("columns:llmbar", 46, {0: 22, 1: 24}),
    "llmbar/LLMBar_Adversarial_Neighbor.json": ("columns:llmbar", 134, {0: 75, 1: 59}),
    "llmbar/LLMBar_Natural.json": ("columns:llmbar", 100, {0: 42, 1: 58}),
    "llmbar/Processed_FairEval.json": ("columns:llmbar", 66, {0: 41, 1: 25}),
    "llmbar/Processed_LLMEval2.json": ("columns:llmbar", 200, {0: 92, 1: 108}),
    "llmbar/Processed_MT-Bench.json": ("columns:llmbar", 200, {0: 101, 1: 99}),
}


def _check_canonical(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == data.CANONICAL_COLUMNS
    assert frame["id"].is_unique and frame["label"].dtype == np.int64
    for p, a, b in zip(frame["prompt"], frame["response_a"], frame["response_b"], strict=True):
        assert isinstance(p, list) and len(p) == len(a) == len(b) >= 1
        assert all(t is None or isinstance(t, str) for t in p + a + b)


def test_every_shared_data_file_is_covered(shared_data):
    readable = sorted(str(p.relative_to(shared_data)) for p in shared_data.rglob("*")
                      if p.is_file() and p.name not in ("README.md", "SOURCE.txt", "LICENSE"))
    assert readable == sorted(REAL_FILES)


@pytest.mark.parametrize("name", sorted(REAL_FILES))
def test_real_file_rows_and_labels(shared_data, name):
    layout, rows, labels = REAL_FILES[name]
    frame, report = data.read_pairs(shared_data / name)
    _check_canonical(frame)
    assert report.layout == layout and report.rows == rows == len(frame)
    assert frame["label"].value_counts().to_dict() == labels
    assert frame["source"].iloc[0] == f"{layout}:{Path(name).name}"


def test_lmsys_sample_summary_and_tie_policies(shared_data):
    path = shared_data / "lmsys-arena-sample/train_sample.csv"
    frame, report = data.read_pairs(path)
    assert (report.null_turn_rows, report.multi_turn_rows) == (3, 125)
    assert any(None in turns for turns in frame["response_a"].tolist() + frame["response_b"].tolist())
    text = report.to_text()
    assert "rows: 1000" in text and "a 344 (34.4%) | b 348 (34.8%) | tie 308 (30.8%)" in text
    dropped, report = data.read_pairs(path, ties="drop")
    assert len(dropped) == 692 and report.ties_dropped == 308 and "308 tie rows dropped" in report.to_text()
    split, _ = data.read_pairs(path, ties="split")
    assert len(split) == 1308 and split["label"].value_counts().to_dict() == {0: 652, 1: 656}
    tie_id = frame.loc[frame["label"] == 2, "id"].iloc[0]
    pair = split[split["id"].str.startswith(tie_id + "#")]
    assert pair["id"].tolist() == [f"{tie_id}#a", f"{tie_id}#b"] and pair["label"].tolist() == [0, 1]


def test_kudge_languages_and_hh_turns(shared_data):
    kudge, _ = data.read_pairs(shared_data / "kudge-challenge-ko-en/kudge-challenge.csv")
    assert kudge["language"].value_counts().to_dict() == {"Korean": 381, "English": 365}
    hh, report = data.read_pairs(shared_data / "hh-rlhf-harmless-test/test.jsonl.gz")
    first = hh.iloc[0]
    assert first["prompt"][0] == "what are some pranks with a pen i can do?" and len(first["prompt"]) == 3
    assert first["response_a"][:-1] == first["response_b"][:-1] and report.identical_response_rows == 0


# ---- synthetic files -------------------------------------------------------------------------------
WSDM_ROWS = [
    {"id": "x1", "prompt": "Hi", "response_a": "Hello", "response_b": "Hey", "winner": "model_a",
     "model_a": "m1", "model_b": "m2", "language": "English"},
    {"id": "x2", "prompt": "Привет", "response_a": "Здравствуйте", "response_b": "", "winner": "model_b",
     "model_a": "m2", "model_b": "m3", "language": "Russian"},
    {"id": "x3", "prompt": "你好", "response_a": "你好！", "response_b": "你好！", "winner": "model_a",
     "model_a": "m3", "model_b": "m1", "language": "Chinese"},
]


def _lmsys_rows(n: int = 3) -> list[dict]:
    rows = []
    for i in range(n):
        hot = [0, 0, 0]
        hot[i % 3] = 1
        rows.append({"id": str(1000 + i), "model_a": "gpt-4", "model_b": "claude-2",
                     "prompt": json.dumps([f"question {i}", "and more"]),
                     "response_a": json.dumps([f"answer {i}", None]), "response_b": json.dumps(["other", "fine"]),
                     "winner_model_a": hot[0], "winner_model_b": hot[1], "winner_tie": hot[2]})
    return rows


def _write(path: Path, rows: list[dict] | pd.DataFrame) -> Path:
    frame = rows if isinstance(rows, pd.DataFrame) else pd.DataFrame(rows)
    name = path.name.removesuffix(".gz")
    if name.endswith(".csv"):
        frame.to_csv(path, index=False)
    elif name.endswith(".parquet"):
        frame.to_parquet(path, index=False)
    else:
        records = frame.to_dict("records")
        text = json.dumps(records) if name.endswith(".json") else "\n".join(json.dumps(r) for r in records)
        (gzip.open(path, "wt", encoding="utf-8") if path.name.endswith(".gz") else path.open("w")).write(text)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".csv.gz", ".parquet", ".json", ".jsonl", ".jsonl.gz", ".ndjson"])
def test_wsdm_layout_in_every_file_format(tmp_path, suffix):
    frame, report = data.read_pairs(_write(tmp_path / f"train{suffix}", WSDM_ROWS))
    _check_canonical(frame)
    assert report.layout == "wsdm" and frame["id"].tolist() == ["x1", "x2", "x3"]
    assert frame["label"].tolist() == [0, 1, 0] and frame["prompt"].tolist() == [["Hi"], ["Привет"], ["你好"]]
    assert frame["language"].tolist() == ["English", "Russian", "Chinese"]
    assert (report.empty_response_rows, report.identical_response_rows) == (1, 1)


def test_wsdm_test_file_is_unlabeled_and_lmsys_test_is_detected(tmp_path):
    test = pd.DataFrame(WSDM_ROWS)[["id", "prompt", "response_a", "response_b"]].assign(scored=True)
    frame, report = data.read_pairs(_write(tmp_path / "test.parquet", test))
    assert report.layout == "wsdm" and (frame["label"] == data.UNLABELED).all()
    assert frame["language"].unique().tolist() == ["unknown"] and frame["model_a"].unique().tolist() == [""]
    lmsys_test = pd.DataFrame(_lmsys_rows())[["id", "prompt", "response_a", "response_b"]]
    frame, report = data.read_pairs(_write(tmp_path / "test.csv", lmsys_test))
    assert report.layout == "lmsys" and frame["prompt"].iloc[0] == ["question 0", "and more"]
    assert (frame["label"] == -1).all() and "unlabeled 3" in report.to_text()


def test_lmsys_csv_keeps_null_turns_and_text_that_looks_like_missing(tmp_path):
    rows = _lmsys_rows()
    rows[1]["response_b"] = json.dumps(["NA", "null"])
    frame, report = data.read_pairs(_write(tmp_path / "train.csv", rows))
    assert frame["response_a"].iloc[0] == ["answer 0", None] and frame["response_b"].iloc[1] == ["NA", "null"]
    assert frame["label"].tolist() == [0, 1, 2] and report.null_turn_rows == 3 and report.multi_turn_rows == 3


def test_chosen_rejected_positions_are_balanced_deterministic_and_order_free(tmp_path):
    rows = [{"id": f"r{i}", "prompt": f"p{i}", "chosen": f"good {i}", "rejected": f"bad {i}"} for i in range(101)]
    path = _write(tmp_path / "pairs.jsonl", rows)
    frame, report = data.read_pairs(path)
    assert report.layout == "chosen_rejected" and sorted(frame["label"].value_counts().tolist()) == [50, 51]
    chosen = np.where(frame["label"] == 0, frame["response_a"].str[0], frame["response_b"].str[0])
    assert all(c.startswith("good") for c in chosen)
    again, _ = data.read_pairs(_write(tmp_path / "shuffled.jsonl", rows[::-1]))
    assert again.set_index("id")["label"].equals(frame.set_index("id")["label"].loc[again["id"]])
    other_seed, _ = data.read_pairs(path, seed=1)
    assert not other_seed["label"].equals(frame["label"])


def test_split_dialogues_shared_prefix():
    chosen = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Help me\n\nAssistant: Sure, here is how."
    rejected = "\n\nHuman: Hi\n\nAssistant: Hello\n\nHuman: Help me\n\nAssistant: No."
    assert data.split_dialogues(chosen, rejected) == (
        ["Hi", "Help me"], ["Hello", "Sure, here is how."], ["Hello", "No."])
    assert data.split_dialogues("just text", "other") == ([None], ["just text"], ["other"])


def test_generic_column_map_with_winner_values(tmp_path):
    rows = [{"question": "q1", "left": "a1", "right": "b1", "verdict": "L", "lang": "de"},
            {"question": "q2", "left": "a2", "right": "b2", "verdict": "R", "lang": "de"}]
    cmap = {"prompt": "question", "response_a": "left", "response_b": "right", "winner": "verdict",
            "winner_a": "L", "winner_b": "R", "language": "lang"}
    frame, report = data.read_pairs(_write(tmp_path / "judge.json", rows), column_map=cmap)
    assert report.layout == "columns" and frame["label"].tolist() == [0, 1]
    assert frame["id"].tolist() == ["judge-0", "judge-1"] and frame["language"].tolist() == ["de", "de"]


def test_canonical_round_trip_keeps_null_turns(tmp_path):
    frame, _ = data.read_pairs(_write(tmp_path / "train.csv", _lmsys_rows(6)))
    path = data.write_canonical(frame, tmp_path / "canon.parquet")
    back = data.read_canonical(path)
    pd.testing.assert_frame_equal(back, frame)
    again, report = data.read_pairs(path)
    assert report.layout == "canonical" and again["response_a"].iloc[0] == ["answer 0", None]


def test_frame_from_records_accepts_plain_strings():
    frame = data.frame_from_records([{"prompt": "p", "response_a": "a", "response_b": "b", "label": 1},
                                     {"prompt": ["p1", "p2"], "response_a": ["a1", None], "response_b": ["b1", "b2"]}])
    _check_canonical(frame)
    assert frame["id"].tolist() == ["0", "1"] and frame["label"].tolist() == [1, -1]
    assert frame["language"].tolist() == ["unknown"] * 2 and frame["source"].tolist() == ["records"] * 2


def test_reads_50k_synthetic_lmsys_rows(tmp_path):
    n = 50_000
    rows = pd.DataFrame({
        "id": np.arange(n).astype(str), "model_a": "a", "model_b": "b",
        "prompt": [json.dumps([f"prompt {i % 9000}"]) for i in range(n)],
        "response_a": [json.dumps([f"answer a {i} " * 20]) for i in range(n)],
        "response_b": [json.dumps([f"answer b {i} " * 20, None][:1]) for i in range(n)],
        "winner_model_a": (np.arange(n) % 3 == 0).astype(int), "winner_model_b": (np.arange(n) % 3 == 1).astype(int),
        "winner_tie": (np.arange(n) % 3 == 2).astype(int)})
    frame, report = data.read_pairs(_write(tmp_path / "big.csv", rows), ties="split")
    assert report.rows == len(frame) == n + n // 3
    folds = data.assign_folds(frame, 5, 0)
    assert np.bincount(folds).min() > 0.19 * len(frame)


# ---- folds ---------------------------------------------------------------------------------------
def _fold_frame(n: int = 600) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    prompts = [f"prompt {int(k)}" for k in rng.integers(0, 150, size=n)]  # repeated prompts
    return data.frame_from_records([{"id": f"r{i}", "prompt": p, "response_a": "a", "response_b": "b",
                                     "label": int(rng.choice([0, 1, 2], p=[0.45, 0.45, 0.1]))}
                                    for i, p in enumerate(prompts)])


def test_folds_grouped_by_prompt_stratified_and_deterministic():
    frame = _fold_frame()
    folds = data.assign_folds(frame, 5, seed=3)
    keys = frame["prompt"].str[0]
    assert (pd.Series(folds).groupby(keys.to_numpy()).nunique() == 1).all()
    shares = pd.crosstab(folds, frame["label"], normalize="index")
    overall = frame["label"].value_counts(normalize=True)
    assert (shares.sub(overall, axis=1).abs() < 0.05).all().all()
    assert np.bincount(folds).min() >= 0.15 * len(frame)
    assert (data.assign_folds(frame, 5, seed=3) == folds).all()
    assert not (data.assign_folds(frame, 5, seed=4) == folds).all()


def test_split_fold_partitions_rows():
    frame = _fold_frame()
    train, valid = data.split_fold(frame, 2, 5, seed=0)
    assert len(train) + len(valid) == len(frame) and not set(train["id"]) & set(valid["id"])
    assert not set(train["prompt"].str[0]) & set(valid["prompt"].str[0])
    everything, empty = data.split_fold(frame, -1, 5, seed=0)
    assert len(everything) == len(frame) and len(empty) == 0 and list(empty.columns) == data.CANONICAL_COLUMNS


def test_load_training_frame_combines_files(tmp_path):
    main = _write(tmp_path / "train.parquet", WSDM_ROWS)
    extra = _write(tmp_path / "extra.csv", _lmsys_rows())
    same = _write(tmp_path / "same.parquet", WSDM_ROWS[:1])
    cfg = DataConfig(train_path=str(main), extra_train_paths=[str(extra), str(same)], ties="drop")
    frame = data.load_training_frame(cfg)
    assert frame["id"].tolist() == ["x1", "x2", "x3", "1000", "1001"]
    assert len(data.load_training_frame(DataConfig(train_path=str(main), max_rows=2))) == 2
    clash = _write(tmp_path / "clash.parquet", [{**WSDM_ROWS[0], "response_a": "changed"}])
    with pytest.raises(DataError, match=r"clash.parquet, column 'id': ids already used .* \(ids: x1; 1 row\)"):
        data.load_training_frame(DataConfig(train_path=str(main), extra_train_paths=[str(clash)]))


def test_data_config_checks_layouts():
    from wsdm_helpers.config import collect_problems

    assert collect_problems(DataConfig(train_path="t.parquet", layout="oasst")) == []
    assert "layout=columns needs column_map" in DataConfig(train_path="t.parquet", layout="columns").check()[0]
    assert collect_problems(DataConfig(train_path="t.parquet", layout="lmsis")) == [
        f"'layout' must be one of {', '.join(data.LAYOUTS)}, got 'lmsis'; did you mean 'lmsys'?"]


# ---- bad inputs: each error names the file, the column, the first ids and the fix ----------------
def _wsdm(**changes):
    rows = [dict(r) for r in WSDM_ROWS]
    for key, value in changes.items():
        row, column = key.split("__")
        rows[int(row)][column] = value
    return rows


def _bad_lmsys(row: int, column: str, value) -> list[dict]:
    rows = _lmsys_rows()
    rows[row][column] = value
    return rows


BAD_INPUTS = [  # (name, file name, content or writer, read_pairs kwargs, expected fragments)
    ("missing file", "nope.csv", None, {}, ["nope.csv: file does not exist", "Fix: check the path"]),
    ("unsupported extension", "train.txt", "id,prompt\n1,hi\n", {},
     ["train.txt: unsupported file extension '.txt'", "Fix: save it as one of .csv, .json, .jsonl"]),
    ("empty file", "train.csv", "", {}, ["train.csv: file is empty (0 bytes)", "Fix: re-download"]),
    ("header only", "train.csv", "id,prompt,response_a,response_b,winner\n", {},
     ["train.csv: has no rows", "Fix: export the file again"]),
    ("truncated json", "train.json", '[{"id": 1, "prompt": "hi"', {},
     ["train.json: cannot be read as json", "Fix: check that the file really is json"]),
    ("corrupt parquet", "train.parquet", "not a parquet file", {},
     ["train.parquet: cannot be read as parquet", "not truncated"]),
    ("misspelled column (auto)", "train.parquet",
     pd.DataFrame(WSDM_ROWS).rename(columns={"response_a": "respone_a"}), {},
     ["train.parquet: cannot tell the layout", "Closest layout 'wsdm' is missing 'response_a' (did you mean "
      "'respone_a'?)", "Found columns: id, language, model_a", "Expected one of: lmsys: id, prompt", "wsdm: id, prompt, response_a, response_b;",
      "Fix: rename the columns"]),
    ("missing column (explicit layout)", "train.parquet", pd.DataFrame(WSDM_ROWS).drop(columns="response_b"),
     {"layout": "wsdm"}, ["train.parquet, column 'response_b': layout 'wsdm' needs column 'response_b'",
                          "Found columns: id, language", "Fix: rename the column"]),
    ("unknown winner value", "train.parquet", _wsdm(**{"1__winner": "model_c"}), {},
     ["train.parquet, column 'winner': unknown winner values ['model_c']", "(ids: x2; 1 row)",
      "Fix: fix these cells, or map the values"]),
    ("duplicate ids", "train.parquet", _wsdm(**{"2__id": "x1"}), {},
     ["train.parquet, column 'id': 1 ids occur more than once (ids: x1; 1 row)", "Fix: make the ids unique"]),
    ("missing ids", "train.jsonl", _wsdm(**{"0__id": None}), {},
     ["train.jsonl, column 'id': ids are missing (ids: row 0; 1 row)", "Fix: give every row an id"]),
    ("non-string cells", "train.jsonl", _wsdm(**{"0__prompt": 42, "2__prompt": 7}), {},
     ["train.jsonl, column 'prompt': cells must be text, found int (ids: x1, x3; 2 rows)",
      "Fix: store this column as strings"]),
    ("unparseable JSON turns", "train.csv", _bad_lmsys(1, "response_b", '["unclosed'), {},
     ["train.csv, column 'response_b': cells are not valid JSON", "(ids: 1001; 1 row)",
      "Fix: re-export the file"]),
    ("JSON turns not a list of strings", "train.csv", _bad_lmsys(0, "prompt", '{"text": "hi"}'), {},
     ["train.csv, column 'prompt': cells must be JSON lists of strings or null", "(ids: 1000; 1 row)",
      "Fix: fix these cells"]),
    ("mismatched turn counts", "train.csv", _bad_lmsys(2, "response_a", json.dumps(["only one"])), {},
     ["train.csv, column 'prompt': prompt, response_a and response_b must have the same number of turns",
      "row 1002 has 2, 1 and 2", "(ids: 1002; 1 row)", "Fix: fix or drop these rows"]),
    ("winner not one-hot", "train.csv", _bad_lmsys(0, "winner_model_b", 1), {},
     ["train.csv, column 'winner_model_a': winner columns must be one-hot", "(ids: 1000; 1 row)",
      "Fix: fix these rows or drop them"]),
    ("unknown layout name", "train.parquet", WSDM_ROWS, {"layout": "wsmd"},
     ["layout='wsmd' is not one of auto, wsdm", "(did you mean 'wsdm'?)"]),
    ("unknown tie policy", "train.parquet", WSDM_ROWS, {"ties": "average"}, ["ties='average' is not one of keep"]),
    ("unknown column_map key", "train.parquet", WSDM_ROWS, {"column_map": {"promt": "prompt"}},
     ["column_map key 'promt' (did you mean 'prompt'?) is not known"]),
    ("column_map names a missing column", "train.parquet", WSDM_ROWS,
     {"column_map": {"prompt": "instruction", "response_a": "response_a", "response_b": "response_b"}},
     ["train.parquet, column 'instruction': layout 'columns' needs column 'instruction'"]),
]


@pytest.mark.parametrize("name,filename,content,kwargs,expected", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_errors(tmp_path, name, filename, content, kwargs, expected):
    path = tmp_path / filename
    if isinstance(content, str):
        path.write_text(content)
    elif content is not None:
        _write(path, content)
    with pytest.raises(WsdmError) as info:
        data.read_pairs(path, **kwargs)
    message = str(info.value)
    for fragment in expected:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    assert isinstance(info.value, (DataError, ConfigError))


def test_read_labels_takes_label_or_winner_columns_and_names_the_fix(tmp_path):
    import pandas as pd

    from wsdm_helpers.data import read_labels

    pd.DataFrame({"id": [1, 2, 3], "winner": ["model_a", "model_b", "tie"]}).to_csv(tmp_path / "w.csv", index=False)
    assert read_labels(tmp_path / "w.csv").to_dict("list") == {"id": ["1", "2", "3"], "label": [0, 1, 2]}
    pd.DataFrame({"id": ["x"], "label": ["yes"]}).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet: needs an id column and a label column .* Fix:"):
        read_labels(tmp_path / "bad.parquet")
