"""A real `wsdm predict --resume` process killed mid-run (SIGKILL) resumes from its chunks to a
byte-identical submission."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

torch = pytest.importorskip("torch")

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


# ---- `wsdm train` killed during checkpoint saves ---------------------------------------------------
TRAIN_STEPS, KILLS = 26, 20


def _train_cmd(root: Path, out: str) -> list[str]:
    return [sys.executable, "-m", "wsdm_helpers", "train", "--config", str(REPO / "configs" / "tiny-test.yaml"),
            "--set", f"data.train_path={root / 'train.parquet'}", "--set", f"model.source={root / 'model'}",
            "--set", f"train.output_dir={root / out}", "--set", f"train.max_steps={TRAIN_STEPS}",
            "--set", "train.save_steps=1", "--set", "train.eval_steps=0", "--set", "train.save_total_limit=3",
            "--set", "train.per_device_batch_size=2"]


def _complete(checkpoint: Path) -> bool:
    """Every file of the checkpoint loads (the test's own check, independent of the package's)."""
    import torch
    from safetensors.torch import load_file

    try:
        json.loads((checkpoint / "trainer_state.json").read_text())
        load_file(str(checkpoint / "adapter_model.safetensors"))
        for name in ("optimizer.pt", "scheduler.pt", "rng_state.pth"):
            torch.load(checkpoint / name, weights_only=False)
    except Exception:  # noqa: BLE001 (any failure to load means incomplete)
        return False
    return True


def _newest(folder: Path) -> Path | None:
    found = sorted(folder.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return found[-1] if found else None


def _kill_during_a_save(proc: subprocess.Popen, checkpoints: Path, after: Path | None, timeout: float = 300) -> bool:
    """SIGKILL once a checkpoint newer than ``after`` exists and the next save has begun (an event seen on
    disk, not a fixed sleep); True when the save was still under way when the process died."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        newest = _newest(checkpoints) if checkpoints.is_dir() else None
        progressed = newest is not None and (after is None or int(newest.name[11:]) > int(after.name[11:]))
        if progressed and (checkpoints / ".saving").is_dir():
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            return (checkpoints / ".saving").is_dir()
        time.sleep(0.002)
    if proc.poll() is None:
        raise TimeoutError("no checkpoint save to kill")
    return False


@pytest.mark.slow  # ~22 `wsdm train` processes of a tiny model (a few minutes of CPU)
def test_sigkill_during_checkpoint_saves_resumes_to_the_uninterrupted_adapter(tmp_path):
    from safetensors.torch import load_file

    frame = make_demo_frame(40, seed=5)
    write_canonical(frame, tmp_path / "train.parquet")
    build_tiny_model("llama", train_tokenizer(pair_texts(frame), vocab_size=400), tmp_path / "model")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    checkpoints = tmp_path / "killed" / "checkpoints"
    kills_mid_save, runs = 0, 0
    while kills_mid_save < KILLS:
        resume_from = _newest(checkpoints) if checkpoints.is_dir() else None
        log = tmp_path / f"run-{runs}.log"
        with open(log, "wb") as err:
            proc = subprocess.Popen(_train_cmd(tmp_path, "killed"), env=env, stdout=subprocess.DEVNULL, stderr=err)
            cut = _kill_during_a_save(proc, checkpoints, resume_from)
        runs += 1
        assert proc.returncode == -signal.SIGKILL, log.read_text()[-3000:]
        if resume_from is not None:
            assert f"resuming from {resume_from} (step {resume_from.name[11:]})" in log.read_text()
        kills_mid_save += cut
        assert all(_complete(c) for c in checkpoints.glob("checkpoint-*")), "a kill left a partial checkpoint-N"
        assert runs < 2 * KILLS, "the kills did not land in saves"
    resume_from = _newest(checkpoints)
    finished = subprocess.run(_train_cmd(tmp_path, "killed"), env=env, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert f"resuming from {resume_from}" in finished.stderr
    solo = subprocess.run(_train_cmd(tmp_path, "solo"), env=env, capture_output=True, text=True, timeout=600)
    assert solo.returncode == 0, solo.stderr[-3000:]
    killed, reference = (load_file(str(tmp_path / d / "adapter" / "adapter_model.safetensors")) for d in ("killed", "solo"))
    assert killed.keys() == reference.keys()
    assert all(torch.equal(killed[k], reference[k]) for k in reference)
