"""A real `wsdm predict --resume` process killed mid-run (SIGKILL) resumes from its chunks to a
byte-identical submission."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

pytest.importorskip("torch")

from wsdm_helpers.config import load_run_config  # noqa: E402
from wsdm_helpers.data import write_canonical  # noqa: E402
from wsdm_helpers.demo_data import make_demo_frame  # noqa: E402
from wsdm_helpers.tiny import build_tiny_model, pair_texts, train_tokenizer  # noqa: E402
from wsdm_helpers.training import train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ROWS, CHUNK_ROWS = 240, 12


@pytest.fixture(scope="module")
def run_and_test(tmp_path_factory):
    root = tmp_path_factory.mktemp("kill")
    frame = make_demo_frame(40, seed=5)
    write_canonical(frame, root / "train.parquet")
    model = build_tiny_model("llama", train_tokenizer(pair_texts(frame), vocab_size=400), root / "model")
    cfg = load_run_config(REPO / "configs" / "tiny-test.yaml", {
        "data.train_path": str(root / "train.parquet"), "model.source": str(model),
        "train.output_dir": str(root / "run"), "train.max_steps": 2, "train.eval_steps": 2, "train.save_steps": 2})
    run = train(cfg).run_dir
    test = make_demo_frame(ROWS, seed=6)
    pd.DataFrame({"id": test["id"], **{c: [t[0] for t in test[c]] for c in ("prompt", "response_a", "response_b")}}
                 ).to_parquet(root / "test.parquet")
    return root, run


def _predict(root: Path, run: Path, out: str, work_dir: Path | None) -> list[str]:
    cmd = [sys.executable, "-m", "wsdm_helpers", "predict", "--run", str(run), "--test", str(root / "test.parquet"),
           "--out", str(root / out), "--probs-out", str(root / out.replace(".csv", ".parquet")), "--set", f"inference.chunk_rows={CHUNK_ROWS}", "--set", "inference.tta=swap",
           "--set", "inference.progress_bar=false"]
    return cmd + (["--resume", "--work-dir", str(work_dir)] if work_dir else ["--no-resume"])


def _wait_for_chunks(proc: subprocess.Popen, folder: Path, at_least: int, timeout: float = 300) -> int:
    """Poll the chunk folder (an event from the child, not a fixed sleep) until enough chunks exist."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = len(list(folder.rglob("ab-*.parquet"))) if folder.is_dir() else 0
        if done >= at_least:
            return done
        assert proc.poll() is None, f"predict ended before it could be killed: {proc.stderr.read().decode()}"
        time.sleep(0.05)
    raise TimeoutError(f"no {at_least} chunks in {folder} after {timeout}s")


@pytest.mark.slow  # three `wsdm predict` processes (about a minute of CPU)
def test_sigkill_mid_predict_then_resume_is_byte_identical(run_and_test):
    root, run = run_and_test
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    work = root / "work"
    proc = subprocess.Popen(_predict(root, run, "killed.csv", work), env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    done_before_kill = _wait_for_chunks(proc, work, at_least=3)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL
    assert not (root / "killed.csv").exists(), "the killed run must not have written a submission"
    saved = sorted(p.name for p in work.rglob("*.parquet"))
    assert done_before_kill <= len(saved) < 2 * ROWS // CHUNK_ROWS

    resumed = subprocess.run(_predict(root, run, "submission.csv", work), env=env, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.stderr.count("resumed") >= len([s for s in saved if s.startswith("ab-")])
    fresh = subprocess.run(_predict(root, run, "reference.csv", None), env=env, capture_output=True, text=True,
                           timeout=600)
    assert fresh.returncode == 0, fresh.stderr
    assert (root / "submission.csv").read_bytes() == (root / "reference.csv").read_bytes()
    pd.testing.assert_frame_equal(pd.read_parquet(root / "submission.parquet"),
                                  pd.read_parquet(root / "reference.parquet"), check_exact=True)
    assert len(pd.read_csv(root / "submission.csv")) == ROWS
