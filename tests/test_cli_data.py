"""`wsdm data validate|convert` and `wsdm demo-data`; the CLI stays torch-free."""
from __future__ import annotations

import subprocess
import sys

import pytest

from wsdm_helpers import cli, data


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    assert cli.main(["demo-data", "--out", str(out), "--n-train", "120", "--n-test", "30", "--seed", "1"]) == 0
    return out


def test_demo_data_writes_the_wsdm_files(demo_dir, capsys):
    assert sorted(p.name for p in demo_dir.iterdir()) == ["sample_submission.csv", "test.parquet",
                                                          "test_labels.parquet", "train.parquet"]


def test_validate_prints_the_summary(demo_dir, capsys):
    assert cli.main(["data", "validate", str(demo_dir / "train.parquet")]) == 0
    out = capsys.readouterr().out
    assert "layout wsdm" in out and "rows: 120" in out and "languages (9)" in out


def test_validate_real_lmsys_sample(shared_data, capsys):
    assert cli.main(["data", "validate", str(shared_data / "lmsys-arena-sample/train_sample.csv"), "--ties", "drop"]) == 0
    out = capsys.readouterr().out
    assert "rows: 692" in out and "308 tie rows dropped" in out and "multi-turn rows:" in out


def test_validate_broken_file_exits_2_with_the_message(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,question,answer\n1,hi,there\n")
    assert cli.main(["data", "validate", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "bad.csv: cannot tell the layout" in err and "Fix:" in err


def test_convert_with_a_column_map(tmp_path, capsys):
    src = tmp_path / "judge.jsonl"
    src.write_text('{"q": "2+2?", "x": "4", "y": "5", "v": 1}\n{"q": "3+3?", "x": "7", "y": "6", "v": 2}\n')
    out = tmp_path / "canon.parquet"
    argv = ["data", "convert", str(src), "--out", str(out), "--map", "prompt=q", "--map", "response_a=x",
            "--map", "response_b=y", "--map", "winner=v", "--map", "winner_a=1", "--map", "winner_b=2"]
    assert cli.main(argv) == 0
    assert "wrote 2 rows" in capsys.readouterr().out
    frame = data.read_canonical(out)
    assert frame["label"].tolist() == [0, 1] and frame["prompt"].tolist() == [["2+2?"], ["3+3?"]]
    assert cli.main(["data", "convert", str(src), "--out", str(tmp_path / "other.parquet"), "--map", "prompt"]) == 2
    assert "--map values must look like KEY=COLUMN" in capsys.readouterr().err


def test_cli_and_data_modules_do_not_import_torch():
    code = ("import sys, wsdm_helpers, wsdm_helpers.cli, wsdm_helpers.data, wsdm_helpers.metrics, "
            "wsdm_helpers.demo_data; wsdm_helpers.cli.build_parser().format_help(); "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    help_run = subprocess.run([sys.executable, "-m", "wsdm_helpers", "--help"], capture_output=True, text=True,
                              timeout=120)
    assert help_run.returncode == 0 and "demo-data" in help_run.stdout


def test_convert_never_overwrites_a_file_unless_asked(demo_dir, tmp_path, capsys):
    out = tmp_path / "mine.parquet"
    out.write_bytes(b"a file the user made")
    assert cli.main(["data", "convert", str(demo_dir / "train.parquet"), "--out", str(out)]) == 2
    assert "exists already" in capsys.readouterr().err and out.read_bytes() == b"a file the user made"
    assert cli.main(["data", "convert", str(demo_dir / "train.parquet"), "--out", str(out), "--overwrite"]) == 0
    assert out.read_bytes() != b"a file the user made"
