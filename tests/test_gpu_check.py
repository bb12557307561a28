"""benchmarks/gpu_check.py --dry-run: every section of the GPU check runs small on the CPU, so the script
that a GPU session runs cannot rot between GPU sessions; and each check that judges something fails on a
deliberately broken input (a broken package, a skipping test, a NaN row), so an OK means what it says."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("torch")

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def gpu_check():
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclass looks its module up
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("gpu_check", None)


@pytest.fixture(scope="module")
def check(gpu_check, tmp_path_factory):
    """A dry-run Check whose stage holds a kit with a site/ folder (one importable module)."""
    stage = tmp_path_factory.mktemp("stage")
    (stage / "site").mkdir()
    (stage / "site" / "kit_probe.py").write_text("ON_PATH = True\n")
    return gpu_check.Check(dry=True, quick=True, budget_s=600, work=tmp_path_factory.mktemp("work"), stage=stage)


def _lines(check, section: str, run) -> dict[str, str]:
    check.results.clear()
    run(check)
    return {r["check"]: r["status"] for r in check.results if r["section"] == section}


def test_gpu_check_dry_run_passes_every_section(gpu_check, tmp_path, capsys):
    rc = gpu_check.main(["--dry-run", "--work", str(tmp_path), "--stage", str(tmp_path / "no-stage")])
    out = capsys.readouterr().out
    report = json.loads(out.strip().splitlines()[-2])
    assert rc == 0 and report["failed"] == 0, out[-3000:]
    assert report["dry_run"] and report["device"] == "cpu"
    sections = {r["section"] for r in report["checks"]}
    assert sections == set(gpu_check.SECTIONS)
    skipped = [r for r in report["checks"] if r["status"] == "SKIP"]
    assert not skipped, skipped  # the dry run reaches every check it has
    passed = sum(r["status"] == "OK" for r in report["checks"])
    assert out.strip().splitlines()[-1] == f"gpu-check: {passed} passed, 0 failed"
    lines = [x for x in out.splitlines() if x.startswith("[")]
    for start in ("[MEMORY] training, 42 layers", "[MEMORY] scoring no cache, 42 layers",
                  "[MEMORY] scoring with cache, 42 layers", "[CURVES] 16-bit LoRA vs fp32", "[CURVES] T4 arm: gemma2",
                  "[PARALLEL] balanced vs whole placement", "[PARALLEL] inference.dtype=bfloat16 override: OK"):
        assert any(x.startswith(start) for x in lines), start


def test_tests_section_sees_the_kit_and_counts_a_skip_as_a_failure(gpu_check, check, tmp_path):
    (tmp_path / "test_kit.py").write_text("import kit_probe\n\ndef test_kit():\n    assert kit_probe.ON_PATH\n")
    (tmp_path / "test_skips.py").write_text("import pytest\n\ndef test_a():\n    pass\n\n"
                                            "@pytest.mark.skip(reason='no GPU')\ndef test_b():\n    pass\n")
    status, summary = gpu_check.pytest_status(*gpu_check.run_pytest(check, tmp_path / "test_kit.py"))
    assert (status, summary.split(" in ")[0]) == ("OK", "1 passed")  # the kit's site/ is on its path
    status, summary = gpu_check.pytest_status(*gpu_check.run_pytest(check, tmp_path / "test_skips.py"))
    assert (status, summary.split(" in ")[0]) == ("FAIL", "1 passed, 1 skipped")
    assert gpu_check.pytest_status(1, "1 failed, 3 passed in 2.0s")[0] == "FAIL"
    assert gpu_check.pytest_status(0, "4 tests collected in 0.5s")[0] == "OK"  # the dry run collects


@pytest.fixture
def parallel_lines(gpu_check, check):
    return lambda: _lines(check, "PARALLEL", gpu_check.parallel)


def test_parallel_checks_pass_on_the_package_as_it_is(parallel_lines):
    lines = parallel_lines()
    assert set(lines.values()) == {"OK"}, lines
    assert len(lines) == 3


def test_placement_check_fails_when_the_spread_copy_predicts_otherwise(parallel_lines, monkeypatch):
    from wsdm_helpers import modeling

    real = modeling.load_run

    def load_run(*args, device_map=None, **kwargs):  # broken: a placed copy whose head is off
        run = real(*args, device_map=device_map, **kwargs)
        if device_map is not None:
            import torch

            with torch.no_grad():
                for name, param in run.model.named_parameters():
                    if "score" in name:
                        param[0] += 1.0  # class a's row only: a shift shared by both classes would cancel
        return run

    monkeypatch.setattr(modeling, "load_run", load_run)
    lines = parallel_lines()
    assert lines["balanced vs whole placement on cpu 16/32-bit"] == "FAIL", lines


def test_override_check_fails_when_the_dtype_override_is_ignored(parallel_lines, monkeypatch):
    from wsdm_helpers import modeling

    real = modeling.load_run
    monkeypatch.setattr(modeling, "load_run", lambda *args, dtype=None, **kwargs: real(*args, **kwargs))
    lines = parallel_lines()
    assert lines["inference.dtype=bfloat16 override"] == "FAIL", lines


def test_nonfinite_check_fails_when_rows_stay_nan(parallel_lines, monkeypatch):
    from wsdm_helpers.inference import Worker

    real = Worker._forward

    def forward(self, rows, float32=False):  # broken: the first row of every batch NaN, in float32 too
        probs = real(self, rows, float32)
        probs[0] = np.nan
        return probs

    monkeypatch.setattr(Worker, "_forward", forward)
    lines = parallel_lines()
    assert lines["non-finite rows"] == "FAIL", lines


def test_nonfinite_and_override_rules(gpu_check):
    assert gpu_check.nonfinite_status(3, 3) == "INFO" and gpu_check.nonfinite_status(0, 0) == "OK"
    assert gpu_check.nonfinite_status(3, 2) == "FAIL"
    assert gpu_check.override_status("float16", "float32", "float32") == "OK"
    assert gpu_check.override_status("float16", "float16", "float32") == "FAIL"  # ignored, even if diff > 0
    assert gpu_check.override_status("float32", "float32", "float32") == "FAIL"  # changes nothing: proves nothing


def test_t4_curve_check_fails_on_a_diverged_or_unscaled_fp16_run(gpu_check):
    status = gpu_check.t4_curve_status
    assert status(0.690, 0.693, scale=65536.0, cuda=True) == "OK"
    assert status(0.690, 0.693, scale=None, cuda=False) == "OK"  # the dry run: no GradScaler on a CPU
    assert status(float("nan"), 0.693, scale=65536.0, cuda=True) == "FAIL"
    assert status(0.80, 0.693, scale=65536.0, cuda=True) == "FAIL"  # fp16 strays from fp32
    assert status(0.690, 0.693, scale=None, cuda=True) == "FAIL"  # fp16 on a GPU without a GradScaler


def test_t4_curve_arm_trains_both_dtypes_and_agrees(gpu_check, check):
    lines = _lines(check, "CURVES", gpu_check.t4_curves)
    assert lines == {"T4 arm: gemma2 bfloat16 with GradScaler vs float32": "OK"}, check.results
