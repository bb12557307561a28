"""CLI faults: logging switches, a closed stdout pipe, known third-party noise, bad ensemble input."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from wsdm_helpers.cli import main
from wsdm_helpers.logs import setup_logging

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def wsdm_test(tmp_path) -> Path:
    path = tmp_path / "test.parquet"
    pd.DataFrame({"id": [str(i) for i in range(3)], "prompt": "p", "response_a": "a", "response_b": "b"}
                 ).to_parquet(path)
    return path


@pytest.mark.parametrize("argv, level", [([], logging.INFO), (["-q"], logging.WARNING), (["-v"], logging.DEBUG)])
def test_verbosity_switches_before_and_after_the_command(wsdm_test, argv, level):
    for args in ([*argv, "data", "validate", str(wsdm_test)], ["data", "validate", str(wsdm_test), *argv]):
        assert main(args) == 0
        assert logging.getLogger("wsdm_helpers").level == level
    setup_logging(0)


def test_package_info_reaches_stderr(capsys):
    setup_logging(0)
    logging.getLogger("wsdm_helpers.inference").info("time budget plan: hello")
    logging.getLogger("some.library").info("chatty")
    err = capsys.readouterr().err
    assert "INFO wsdm_helpers.inference: time budget plan: hello" in err and "chatty" not in err


def test_bitsandbytes_cpu_kernel_warning_is_silenced(capsys):
    import wsdm_helpers  # noqa: F401 (the filter is installed on import)

    setup_logging(0)
    noisy = logging.getLogger("bitsandbytes.backends.cpu.ops")
    noisy.warning("Failed to load CPU gemm_4bit_forward from kernels-community: %s. Please ...", "offline")
    noisy.warning("a different warning")
    err = capsys.readouterr().err
    assert "gemm_4bit_forward" not in err and "a different warning" in err


def test_closed_stdout_pipe_exits_quietly(wsdm_test):
    """`wsdm data validate FILE | head -0`: the reader is gone before the first line is printed."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "wsdm_helpers", "data", "validate", str(wsdm_test)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    proc.stdout.close()  # before the child has imported pandas, let alone printed
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141
    assert "Traceback" not in err and "BrokenPipe" not in err


# ---- wsdm ensemble / predict arguments -------------------------------------------------------------
def _preds(path: Path, a) -> Path:
    pd.DataFrame({"id": ["1", "2"], "winner_model_a": a, "winner_model_b": [0.5, 0.5]}).to_csv(path, index=False)
    return path


def test_ensemble_refuses_string_probabilities(tmp_path, capsys):
    bad = _preds(tmp_path / "bad.csv", ["abc", 0.5])
    good = _preds(tmp_path / "good.csv", [0.5, 0.5])
    assert main(["ensemble", str(bad), str(good), "--out", str(tmp_path / "o.parquet")]) == 2
    err = capsys.readouterr().err
    assert "column winner_model_a holds text, not numbers, for 1 id(s): 1 (e.g. 'abc')" in err
    assert not (tmp_path / "o.parquet").exists()


@pytest.mark.parametrize("content", [b"", b"id,winner_model_a\n", b"\x00\xff garbage"])
def test_ensemble_refuses_empty_or_broken_files(tmp_path, capsys, content):
    (tmp_path / "empty.csv").write_bytes(content)
    good = _preds(tmp_path / "good.csv", [0.5, 0.5])
    assert main(["ensemble", str(tmp_path / "empty.csv"), str(good), "--out", str(tmp_path / "o.parquet")]) == 2
    assert "empty.csv" in capsys.readouterr().err


def test_weights_must_match_the_runs(tmp_path, wsdm_test, capsys):
    """Refused before any run folder is opened."""
    assert main(["predict", "--run", str(tmp_path / "no-such-run"), "--weights", "1", "2", "--test", str(wsdm_test),
                 "--out", str(tmp_path / "sub.csv")]) == 2
    assert "--weights got 2 value(s) [1.0, 2.0] for 1 model(s)" in capsys.readouterr().err
    good = _preds(tmp_path / "good.csv", [0.5, 0.5])
    assert main(["ensemble", str(good), "--weights", "1", "2", "--out", str(tmp_path / "o.parquet")]) == 2


def test_predict_refuses_an_unwritable_output_before_loading(tmp_path, wsdm_test, capsys):
    assert main(["predict", "--run", str(tmp_path / "no-such-run"), "--test", str(wsdm_test),
                 "--out", "/proc/wsdm/sub.csv"]) == 2
    err = capsys.readouterr().err
    assert "folder of /proc/wsdm/sub.csv" in err and "not writable" in err
