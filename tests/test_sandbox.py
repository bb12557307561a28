"""The rehearsal's notebook session: a real process under ``unshare -n -m`` (root only)."""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

from wsdm_helpers.kaggle.sandbox import run_session

pytestmark = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None,
                                reason="a session runs under `unshare -n -m`: it needs root, unshare and ip")

SESSION = """
import socket
from pathlib import Path
Path('wrote.txt').write_text(str(Path.cwd()))
try:
    Path('/kaggle/input/data/new.txt').write_text('x')
    print('input writable')
except OSError:
    print('input read-only')
try:
    socket.create_connection(('1.1.1.1', 443), timeout=2)
    print('network reachable')
except OSError:
    print('network unreachable')
print('reads', Path('/kaggle/input/data/train.csv').read_text())
"""


def test_a_session_given_relative_paths_runs_offline_in_kaggle_working_with_a_read_only_input(tmp_path, monkeypatch):
    venv = tmp_path / "image"  # a stand-in image: its python is this interpreter (pip list still answers)
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    (tmp_path / "tree" / "input" / "data").mkdir(parents=True)
    (tmp_path / "tree" / "input" / "data" / "train.csv").write_text("id\n1\n")
    monkeypatch.chdir(tmp_path)  # the rehearsal's default --out is relative: runs/rehearsal

    result = run_session("s", "test-image", Path("image"), Path("tree"), ["python", "-c", SESSION],
                         env={}, logs=Path("logs"))

    log = result.log.read_text()
    assert result.returncode == 0, log
    assert result.log.is_absolute() and result.output == tmp_path / "logs" / "outputs" / "s"
    assert result.files == ["wrote.txt"] and (result.output / "wrote.txt").read_text() == "/kaggle/working"
    assert "input read-only" in log and "network unreachable" in log and "reads id\n1" in log
    assert "pytest" in result.versions  # pip list of the image ran after the session, from the same namespace
    assert not (tmp_path / "tree" / "input" / "data" / "new.txt").exists()
