"""Hostile input to every reader, the pair encoder and `wsdm data`: it works or raises DataError, never worse.

"Works" also means nothing is lost: rows in = rows out + rows the report counts (ties dropped or split).
"""
from __future__ import annotations

import gzip
import json
import math

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from wsdm_helpers.cli import main
from wsdm_helpers.config import FormatConfig
from wsdm_helpers.data import read_pairs, read_table
from wsdm_helpers.errors import ConfigError, DataError
from wsdm_helpers.tiny import train_tokenizer
from wsdm_helpers.tokenization import encode_pairs

DEEP = "[" * 100_000 + "]" * 100_000
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                           HealthCheck.too_slow])
EXTENSIONS = [".csv", ".parquet", ".json", ".jsonl", ".jsonl.gz", ".csv.gz"]

odd_text = st.one_of(st.text(max_size=40), st.sampled_from(["", " ", "NA", "null", "nan", "[]", "[null]", '["x"]',
                                                            "\x00", "\ud800".encode("utf-8", "surrogatepass")
                                                            .decode("utf-8", "replace"), "x" * 200_000]))
odd_value = st.one_of(odd_text, st.none(), st.integers(-10**18, 10**18), st.floats(allow_nan=True, allow_infinity=True),
                      st.booleans(), st.lists(st.one_of(st.none(), st.text(max_size=5)), max_size=3))
LAYOUT_COLUMNS = {
    "wsdm": ["id", "prompt", "response_a", "response_b", "winner", "language"],
    "lmsys": ["id", "prompt", "response_a", "response_b", "winner_model_a", "winner_model_b", "winner_tie"],
    "chosen_rejected": ["id", "prompt", "chosen", "rejected"],
    "hh": ["chosen", "rejected"],
}


def _expect_ok_or_data_error(path, **kwargs):
    """read_pairs either raises DataError or returns every input row (ties split add one row each)."""
    try:
        frame, report = read_pairs(path, **kwargs)
    except DataError as exc:
        assert str(path.name) in str(exc) and "Fix:" in str(exc)
        return None
    n_in = len(read_table(path))
    assert len(frame) == n_in - report.ties_dropped + report.ties_split
    assert frame["id"].is_unique
    return frame


def _write(table: pd.DataFrame, path) -> None:
    name = path.name
    if name.endswith(".parquet"):
        table.to_parquet(path, index=False)
    elif ".csv" in name:
        table.to_csv(path, index=False, compression="gzip" if name.endswith(".gz") else None)
    else:
        text = (table.to_json(orient="records", default_handler=str) if name.endswith(".json")
                else "\n".join(json.dumps(r, default=str) for r in table.to_dict("records")))
        path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())


@SETTINGS
@given(data=st.binary(max_size=2000), ext=st.sampled_from(EXTENSIONS))
def test_random_bytes_give_data_error(tmp_path, data, ext):
    path = tmp_path / f"junk{ext}"
    path.write_bytes(data)
    _expect_ok_or_data_error(path)


@SETTINGS
@given(layout=st.sampled_from(sorted(LAYOUT_COLUMNS)), ext=st.sampled_from(EXTENSIONS),
       ties=st.sampled_from(["keep", "drop", "split"]), data=st.data())
def test_hostile_cells_every_reader(tmp_path, layout, ext, ties, data):
    n = data.draw(st.integers(1, 4))
    table = {}
    for col in LAYOUT_COLUMNS[layout]:
        table[col] = data.draw(st.lists(odd_value, min_size=n, max_size=n))
    frame = pd.DataFrame(table)
    path = tmp_path / f"hostile{ext}"
    try:
        _write(frame, path)
    except (ValueError, TypeError, OverflowError, UnicodeError):
        return  # pandas/pyarrow cannot even write this table
    _expect_ok_or_data_error(path, ties=ties)


@SETTINGS
@given(rows=st.lists(st.tuples(st.sampled_from(["model_a", "model_b"]), st.text(min_size=1, max_size=30)),
                     min_size=1, max_size=6), ties=st.sampled_from(["keep", "drop", "split"]))
def test_valid_wsdm_rows_all_come_back(tmp_path, rows, ties):
    path = tmp_path / "train.parquet"
    pd.DataFrame({"id": [f"r{i}" for i in range(len(rows))], "prompt": [t for _, t in rows],
                  "response_a": "a", "response_b": "b", "winner": [w for w, _ in rows]}).to_parquet(path)
    frame = _expect_ok_or_data_error(path, ties=ties)
    assert frame is not None and len(frame) == len(rows)


@SETTINGS
@given(winners=st.lists(st.sampled_from([(1, 0, 0), (0, 1, 0), (0, 0, 1)]), min_size=1, max_size=8),
       ties=st.sampled_from(["keep", "drop", "split"]))
def test_lmsys_rows_in_equal_rows_out_plus_reported(tmp_path, winners, ties):
    path = tmp_path / "train.csv"
    pd.DataFrame({"id": range(len(winners)), "prompt": '["p"]', "response_a": '["a"]', "response_b": '[null]',
                  "winner_model_a": [w[0] for w in winners], "winner_model_b": [w[1] for w in winners],
                  "winner_tie": [w[2] for w in winners]}).to_csv(path, index=False)
    frame = _expect_ok_or_data_error(path, ties=ties)
    assert frame is not None


def test_deep_json_in_an_lmsys_cell_names_the_row(tmp_path):
    path = tmp_path / "train.csv"
    pd.DataFrame({"id": ["ok", "deep"], "prompt": ['["hi"]', DEEP], "response_a": '["a"]', "response_b": '["b"]',
                  "winner_model_a": 1, "winner_model_b": 0, "winner_tie": 0}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"train.csv, column 'prompt'.*nested too deeply.*ids: deep"):
        read_pairs(path)


@pytest.mark.parametrize("ext", [".jsonl", ".json"])
def test_deep_json_record_names_the_line(tmp_path, ext):
    path = tmp_path / f"train{ext}"
    path.write_text(json.dumps({"id": "1", "prompt": "p", "response_a": "a", "response_b": "b"}) + "\n"
                    + '{"id": ' + DEEP + "}\n")
    with pytest.raises(DataError, match=r"nested too deeply.*line 2"):
        read_pairs(path)


def test_deep_json_whole_file(tmp_path):
    path = tmp_path / "train.json"
    path.write_text(DEEP)
    with pytest.raises(DataError, match="nested too deeply"):
        read_pairs(path)


def test_non_object_records_are_named(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"id": 1, "prompt": "p", "response_a": "a", "response_b": "b"}\n5\n"x"\n')
    with pytest.raises(DataError, match=r"records must be JSON objects, found int, str.*line 2, line 3"):
        read_pairs(path)


def test_latin1_file_says_resave_as_utf8(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes("id,prompt,response_a,response_b\n1,café,a,b\n".encode("latin-1"))
    with pytest.raises(DataError, match="re-save the file as UTF-8"):
        read_pairs(path)


def test_whole_float_ids_keep_their_integer_text(tmp_path):
    path = tmp_path / "test.parquet"
    pd.DataFrame({"id": [1_000_000.0, 2.0], "prompt": "p", "response_a": "a", "response_b": "b"}).to_parquet(path)
    assert read_pairs(path)[0]["id"].tolist() == ["1000000", "2"]


@pytest.mark.parametrize("bad", [1.5, math.inf])
def test_fractional_or_infinite_ids_are_refused(tmp_path, bad):
    path = tmp_path / "test.parquet"
    pd.DataFrame({"id": [1.0, bad], "prompt": "p", "response_a": "a", "response_b": "b"}).to_parquet(path)
    with pytest.raises(DataError, match=r"column 'id'.*whole numbers.*row 1"):
        read_pairs(path)


def test_nan_and_inf_cells_are_not_text(tmp_path):
    path = tmp_path / "train.jsonl"
    path.write_text('{"id": "a", "prompt": "p", "response_a": Infinity, "response_b": NaN}\n'
                    '{"id": "b", "prompt": "q", "response_a": "x", "response_b": "y"}\n')
    with pytest.raises(DataError, match=r"column 'response_a'.*text, found float.*ids: a"):
        read_pairs(path)


def test_ties_split_refuses_an_existing_hash_a_id(tmp_path):
    path = tmp_path / "train.csv"
    pd.DataFrame({"id": ["X", "X#a"], "prompt": '["p"]', "response_a": '["a"]', "response_b": '["b"]',
                  "winner_model_a": [0, 1], "winner_model_b": 0, "winner_tie": [1, 0]}).to_csv(path, index=False)
    with pytest.raises(DataError, match=r"ties='split' would write ids that the file already uses.*X#a"):
        read_pairs(path, ties="split")
    assert len(read_pairs(path, ties="keep")[0]) == 2


# ---- the pair encoder ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tok():
    return train_tokenizer(["hello world", "Prompt: Response A: Response B: Which is better? Answer: A B"] * 20,
                           vocab_size=300)


@SETTINGS
@given(cells=st.lists(st.tuples(odd_value, odd_value, odd_value), min_size=1, max_size=4))
def test_encoder_takes_text_or_raises_data_error(tok, cells):
    frame = pd.DataFrame({"id": [f"r{i}" for i in range(len(cells))], "prompt": [c[0] for c in cells],
                          "response_a": [c[1] for c in cells], "response_b": [c[2] for c in cells]})
    try:
        enc = encode_pairs(frame, tok, FormatConfig(max_length=128), template="plain")
    except DataError as exc:
        assert "ids:" in str(exc) and "Fix:" in str(exc)
        return
    assert enc.ids == frame["id"].tolist() and all(len(x) <= 128 for x in enc.input_ids)


def test_encoder_refuses_a_number_turn_by_id(tok):
    frame = pd.DataFrame({"id": ["ok", "bad"], "prompt": ["p", 5], "response_a": ["a", "a"], "response_b": "b"})
    with pytest.raises(DataError, match=r"column 'prompt' \(ids: bad\)"):
        encode_pairs(frame, tok, FormatConfig(max_length=128), template="plain")


# ---- wsdm data convert / demo-data ----------------------------------------------------------------
@pytest.fixture
def wsdm_file(tmp_path):
    path = tmp_path / "test.parquet"
    pd.DataFrame({"id": ["1", "2"], "prompt": "p", "response_a": "a", "response_b": "b", "scored": True}
                 ).to_parquet(path)
    return path


def test_convert_refuses_a_csv_name(wsdm_file, tmp_path, capsys):
    assert main(["data", "convert", str(wsdm_file), "--out", str(tmp_path / "x.csv")]) == 2
    assert "name the output x.parquet" in capsys.readouterr().err
    assert not (tmp_path / "x.csv").exists()


def test_convert_refuses_its_own_input(wsdm_file, capsys):
    before = wsdm_file.read_bytes()
    assert main(["data", "convert", str(wsdm_file), "--out", str(wsdm_file)]) == 2
    assert "is the input file" in capsys.readouterr().err
    assert wsdm_file.read_bytes() == before


@pytest.mark.parametrize("flag", ["--n-train", "--n-test"])
def test_demo_data_refuses_negative_counts(tmp_path, flag, capsys):
    assert main(["demo-data", "--out", str(tmp_path / "d"), flag, "-5"]) == 2
    assert f"{flag[2:].replace('-', '_')}=-5" in capsys.readouterr().err
    assert not (tmp_path / "d").exists()


def test_config_error_for_unknown_ties(wsdm_file):
    with pytest.raises(ConfigError):
        read_pairs(wsdm_file, ties="half")
