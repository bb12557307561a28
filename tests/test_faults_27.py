"""Issue 27's faults (rows 1, 2, 4, 5, 6, 7, 8, 13): each test fails on the code before its fix."""
from __future__ import annotations

import gzip
import json
import math

import pandas as pd
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from wsdm_helpers.cli import main
from wsdm_helpers.config import FormatConfig
from wsdm_helpers.data import read_pairs, read_table
from wsdm_helpers.errors import DataError
from wsdm_helpers.tiny import train_tokenizer
from wsdm_helpers.tokenization import encode_pairs

LONE = "abc \ud800"  # a lone UTF-16 surrogate, as json.loads makes it from the escape "\\ud800"


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["hello world abc", "Prompt: Response A: Response B: Which is better? A B"] * 20,
                           vocab_size=300)


# ---- row 1: lone surrogates, NULs and invalid escapes in text cells -------------------------------
def _lmsys_test_csv(path, prompt_cell):
    pd.DataFrame({"id": ["1", "2"], "prompt": [prompt_cell, '["fine"]'], "response_a": '["a"]',
                  "response_b": '["b"]'}).to_csv(path, index=False)
    return path


def test_lone_surrogate_in_an_lmsys_cell_is_replaced_and_reported(tmp_path, tok, capsys):
    path = _lmsys_test_csv(tmp_path / "t.csv", json.dumps(["abc \ud800"]))
    frame, report = read_pairs(path)
    assert frame["prompt"][0] == ["abc \ufffd"] and report.replaced_text_rows == 1
    encode_pairs(frame, tok, FormatConfig(max_length=64), template="plain")
    assert main(["data", "validate", str(path)]) == 0
    assert "replaced characters: 1 rows" in capsys.readouterr().out


def test_escaped_surrogate_pair_stays_one_character(tmp_path):
    path = _lmsys_test_csv(tmp_path / "t.csv", '["smile \\ud83d\\ude00"]')
    frame, report = read_pairs(path)
    assert frame["prompt"][0] == ["smile \U0001F600"] and report.replaced_text_rows == 0


def test_encoder_replaces_a_lone_surrogate_the_readers_way(tok):
    frame = pd.DataFrame({"id": ["1"], "prompt": [[LONE]], "response_a": ["a"], "response_b": ["b"]})
    clean = frame.assign(prompt=[["abc \ufffd"]])
    fmt = FormatConfig(max_length=64)
    assert encode_pairs(frame, tok, fmt, "plain").input_ids == encode_pairs(clean, tok, fmt, "plain").input_ids


def test_a_lone_surrogate_in_an_id_is_refused_by_row(tmp_path):
    path = tmp_path / "t.jsonl"
    path.write_text('{"id": "x\\ud800", "prompt": "p", "response_a": "a", "response_b": "b"}\n')
    with pytest.raises(DataError, match=r"t.jsonl, column 'id'.*surrogate.*row 0"):
        read_pairs(path)


bad_text = st.lists(st.sampled_from(["a", " ", "\x00", "\ud800", "\udfff", "\ud83d\ude00", "\ud83d", "\\", "é", "\n"]),
                    max_size=6).map("".join)
FUZZ = settings(max_examples=25, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
FUZZ_LAYOUTS = {
    "wsdm.parquet": ["id", "prompt", "response_a", "response_b", "winner", "language"],
    "wsdm.jsonl": ["id", "prompt", "response_a", "response_b", "winner", "language", "model_a"],
    "lmsys.csv": ["id", "prompt", "response_a", "response_b", "winner_model_a", "winner_model_b", "winner_tie"],
    "chosen_rejected.jsonl": ["id", "prompt", "chosen", "rejected"],
    "hh.jsonl.gz": ["chosen", "rejected"],
    "wsdm_records.json": ["id", "prompt", "response_a", "response_b"],
    "llmbar.json": ["input", "output_1", "output_2", "label"],
    "oasst.jsonl": ["message_id", "parent_id", "role", "text", "rank"],
}


def _fuzz_cell(column: str, text: str, layout: str, row: int):
    if layout.startswith("oasst") and column != "text":  # row 0 the prompt, the others ranked replies to it
        return {"message_id": f"m{row}", "parent_id": None if row == 0 else "m0",
                "role": "prompter" if row == 0 else "assistant", "rank": None if row == 0 else row}[column]
    if column == "label":
        return 1 + row % 2
    if column == "id":
        return f"r{row}"
    if column == "winner":
        return "model_a" if row % 2 else "model_b"
    if column.startswith("winner_"):
        return int(column == "winner_tie")
    if layout.startswith("lmsys"):  # JSON cells: escapes (\\ud800), and some invalid escapes (\\x)
        return json.dumps([text, None]) if row % 3 else '["' + text.replace('"', "") + '"]'
    if layout.startswith("hh"):
        return f"\n\nHuman: {text}\n\nAssistant: {text}{row}"
    return text


def _write_fuzz(columns: dict[str, list], path) -> None:
    """Write the columns as the file kind the name says. Surrogates go out as JSON escapes in json/jsonl, and
    as invalid UTF-8 (their surrogatepass bytes) in csv and in parquet string columns."""
    name = path.name
    if name.endswith(".parquet"):
        import pyarrow as pa
        import pyarrow.parquet as pq

        def column(values):
            if isinstance(values[0], int):
                return pa.array(values)
            raw = pa.array([v.encode("utf-8", "surrogatepass") for v in values], pa.binary())
            return raw.view(pa.string())  # no UTF-8 check: the bytes land in the file as they are

        pq.write_table(pa.table({k: column(v) for k, v in columns.items()}), path)
    elif name.endswith(".csv"):
        lines = [",".join(columns)] + [",".join(_csv_quote(columns[k][i]) for k in columns)
                                       for i in range(len(next(iter(columns.values()))))]
        path.write_bytes("\n".join(lines).encode("utf-8", "surrogatepass"))
    else:
        records = [dict(zip(columns, row, strict=True)) for row in zip(*columns.values(), strict=True)]
        text = json.dumps(records) if name.endswith(".json") else "\n".join(json.dumps(r) for r in records)
        path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())


def _csv_quote(value) -> str:
    return '"' + str(value).replace('"', '""') + '"'


@FUZZ
@given(layout=st.sampled_from(sorted(FUZZ_LAYOUTS)), ties=st.sampled_from(["keep", "drop", "split"]),
       texts=st.lists(bad_text, min_size=1, max_size=4))
@example(layout="oasst.jsonl", ties="keep", texts=["a\ud800", "\x00", "c", "\ud83d\ude00"])
@example(layout="lmsys.csv", ties="split", texts=["ok", "\ud800", "\\x"])
def test_fuzz_bad_text_cells_every_reader_and_the_encoder(tmp_path, tok, layout, ties, texts):
    """Surrogates (escaped pairs, lone halves), NULs, invalid escapes and invalid UTF-8 (csv bytes
    written with surrogatepass): read or DataError naming the file, and every row accounted for; the
    rows read always encode."""
    columns = {c: [_fuzz_cell(c, t + c[:1], layout, i) for i, t in enumerate(texts)] for c in FUZZ_LAYOUTS[layout]}
    path = tmp_path / layout
    _write_fuzz(columns, path)
    try:
        frame, report = read_pairs(path, ties=ties)
    except DataError as exc:
        assert path.name in str(exc) and "Fix:" in str(exc)
        return
    # oasst: every two ranked replies to the prompt make a pair
    rows_in = math.comb(len(texts) - 1, 2) if layout.startswith("oasst") else len(read_table(path))
    assert len(frame) == rows_in - report.ties_dropped + report.ties_split
    assert not any(_has_surrogate(t) for c in ("prompt", "response_a", "response_b") for row in frame[c]
                   for t in row if t)
    enc = encode_pairs(frame, tok, FormatConfig(max_length=96), template="plain")
    assert enc.ids == frame["id"].tolist()


def _has_surrogate(text: str) -> bool:
    return any("\ud800" <= ch <= "\udfff" for ch in text)


@FUZZ
@given(cells=st.lists(st.tuples(bad_text, bad_text, bad_text), min_size=1, max_size=4))
def test_fuzz_encoder_takes_any_text(tok, cells):
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(len(cells))], "prompt": [[c[0]] for c in cells],
                          "response_a": [[c[1], None] for c in cells], "response_b": [[c[2], c[0]] for c in cells]})
    enc = encode_pairs(frame, tok, FormatConfig(max_length=96), template="plain")
    assert enc.ids == frame["id"].tolist() and all(len(x) <= 96 for x in enc.input_ids)


# ---- row 4: layout detection decides on the whole file ---------------------------------------------
def _lmsys_test(path, n=30, plain_rows=()):
    prompts = ["Hi there" if i in plain_rows else json.dumps([f"question {i}"]) for i in range(n)]
    pd.DataFrame({"id": [f"q{i}" for i in range(n)], "prompt": prompts, "response_a": '["a"]',
                  "response_b": '["b"]'}).to_csv(path, index=False)
    return path


@pytest.mark.parametrize("row", [0, 25])
def test_one_plain_prompt_in_an_lmsys_test_is_named_wherever_it_is(tmp_path, row, capsys):
    path = _lmsys_test(tmp_path / "test.csv", plain_rows=(row,))
    with pytest.raises(DataError, match=rf"test.csv, column 'prompt'.*JSON lists of turns in 29 rows.*plain text in "
                                        rf"1 row.*ids: q{row};"):
        read_pairs(path)
    assert main(["data", "validate", str(path)]) == 2
    assert f"ids: q{row}" in capsys.readouterr().err


def test_layout_is_decided_on_every_row(tmp_path):
    assert read_pairs(_lmsys_test(tmp_path / "lmsys.csv"))[1].layout == "lmsys"
    plain = tmp_path / "wsdm.csv"
    pd.DataFrame({"id": ["1", "2", "3"], "prompt": ["Hi", '["looks", "like json"]', "Bye"], "response_a": "a",
                  "response_b": "b"}).to_csv(plain, index=False)
    with pytest.raises(DataError, match=r"ids: 2;.*or pass --layout"):
        read_pairs(plain)
    assert read_pairs(plain, layout="wsdm")[0]["prompt"].tolist() == [["Hi"], ['["looks", "like json"]'], ["Bye"]]


# ---- rows 7 and 13: cv folders know the config they were made with ---------------------------------
@pytest.fixture(scope="module")
def cv_data(tmp_path_factory):
    from wsdm_helpers.data import write_canonical
    from wsdm_helpers.demo_data import make_demo_frame

    path = tmp_path_factory.mktemp("cvdata") / "train.parquet"
    write_canonical(make_demo_frame(80, seed=2), path)
    return path


def test_a_fold_copied_from_a_cv_with_other_settings_is_refused(cv_data, tmp_path):
    import shutil

    from wsdm_helpers.config import DataConfig
    from wsdm_helpers.cv import run_baseline_cv
    from wsdm_helpers.errors import ConfigError

    data = DataConfig(train_path=str(cv_data), n_folds=2)
    run_baseline_cv(data, tmp_path / "cvA", "logreg", folds=[0])
    run_baseline_cv(data, tmp_path / "cvB", "hgb")
    shutil.copytree(tmp_path / "cvB" / "fold-1", tmp_path / "cvA" / "fold-1")  # "copy the fold-K folders together"
    with pytest.raises(ConfigError, match=r"cvA/fold-1 was made by a cv with other settings \(baseline: 'hgb' -> "
                                          r"'logreg'\).*delete .*fold-1.* --folds 1"):
        run_baseline_cv(data, tmp_path / "cvA", "logreg")
    assert not (tmp_path / "cvA" / "oof.parquet").exists()


def test_a_copied_or_moved_cv_folder_is_the_same_cv(cv_data, tmp_path):
    import shutil

    from wsdm_helpers.config import DataConfig
    from wsdm_helpers.cv import run_baseline_cv

    data = DataConfig(train_path=str(cv_data), n_folds=2)
    first = run_baseline_cv(data, tmp_path / "cvA", "logreg", folds=[0])
    assert first.missing == [1]
    shutil.copytree(tmp_path / "cvA", tmp_path / "copy")
    shutil.move(tmp_path / "cvA", tmp_path / "moved")
    for folder in ("copy", "moved"):
        result = run_baseline_cv(data, tmp_path / folder, "logreg")
        assert result.done == [0, 1] and result.report is not None


def test_a_cv_with_other_settings_names_the_values_and_the_fix(cv_data, tmp_path):
    from wsdm_helpers.config import DataConfig
    from wsdm_helpers.cv import run_baseline_cv
    from wsdm_helpers.errors import ConfigError

    run_baseline_cv(DataConfig(train_path=str(cv_data), n_folds=2), tmp_path / "cv", "logreg", folds=[0])
    with pytest.raises(ConfigError, match=r"data.seed: 42 -> 3.*same settings.*or use a new output folder"):
        run_baseline_cv(DataConfig(train_path=str(cv_data), n_folds=2, seed=3), tmp_path / "cv", "logreg")


def test_an_llm_cv_config_moved_with_its_folder_is_the_same(tmp_path):
    from wsdm_helpers.cv import check_config

    def resolved(out):
        return {"data": {"folds_file": str(out / "folds.parquet"), "seed": 0}, "train": {"output_dir": str(out)}}

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    check_config(tmp_path / "a", resolved(tmp_path / "a"))
    (tmp_path / "b" / "cv_config.yaml").write_bytes((tmp_path / "a" / "cv_config.yaml").read_bytes())
    check_config(tmp_path / "b", resolved(tmp_path / "b"))


def test_invalid_utf8_in_a_csv_names_the_line(tmp_path):
    path = tmp_path / "t.csv"
    path.write_bytes(b'id,prompt,response_a,response_b\n1,p,a,b\n2,"x \xed\xa0\x80",a,b\n')  # an encoded surrogate
    with pytest.raises(DataError, match=r"is not UTF-8 text \(line 3: found byte b'\\xed'"):
        read_pairs(path)
