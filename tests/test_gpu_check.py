"""benchmarks/gpu_check.py --dry-run: every section of the GPU check runs small on the CPU, so the script
that a GPU session runs cannot rot between GPU sessions."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

pytest.importorskip("torch")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


def test_gpu_check_dry_run_passes_every_section(tmp_path, capsys, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    gpu_check = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "gpu_check", gpu_check)  # its dataclass looks its module up
    spec.loader.exec_module(gpu_check)
    rc = gpu_check.main(["--dry-run", "--work", str(tmp_path), "--stage", str(tmp_path / "no-stage")])
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-1])
    assert rc == 0 and report["failed"] == 0, out[-3000:]
    assert report["dry_run"] and report["device"] == "cpu"
    sections = {r["section"] for r in report["checks"]}
    assert sections == set(gpu_check.SECTIONS)
    skipped = [r for r in report["checks"] if r["status"] == "SKIP"]
    assert not skipped, skipped  # the dry run reaches every check it has
    lines = [x for x in out.splitlines() if x.startswith("[")]
    assert any(x.startswith("[MEMORY] 42 layers") for x in lines)
    assert any(x.startswith("[CURVES] 16-bit LoRA vs fp32") for x in lines)
