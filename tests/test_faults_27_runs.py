"""Issue 27's faults of run folders and training (rows 2, 5, 6, 7, 8, 13) on tiny models: each test fails on
the code before its fix."""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys

import pandas as pd
import pytest
import yaml

pytest.importorskip("torch")

from test_training import InterruptAfterSave, tiny_cfg  # noqa: E402
from transformers import TrainerControl, TrainerState, TrainingArguments  # noqa: E402

from wsdm_helpers.cli import main  # noqa: E402
from wsdm_helpers.data import fold_table, read_canonical  # noqa: E402
from wsdm_helpers.errors import BundleError, ConfigError, OutputError  # noqa: E402
from wsdm_helpers.kaggle.adapter import bundle_adapter  # noqa: E402
from wsdm_helpers.modeling import load_run  # noqa: E402
from wsdm_helpers.tiny import build_tiny_model  # noqa: E402
from wsdm_helpers.trainer import MovedCheckpoints, PairTrainer  # noqa: E402
from wsdm_helpers.training import train  # noqa: E402


# ---- row 8: a checkpoint cut short by a kill ---------------------------------------------------------
@pytest.mark.parametrize("damage", ["empty folder", "truncated optimizer", "truncated adapter", "no state"])
def test_resume_skips_an_incomplete_last_checkpoint(demo, tiny_model, tmp_path, caplog, damage):
    cfg = tiny_cfg(demo, tiny_model("llama"), tmp_path / "run",
                   {"train.max_steps": 3, "train.save_steps": 1, "train.eval_steps": 0, "train.keep_checkpoints": True})
    train(cfg)
    checkpoints = tmp_path / "run" / "checkpoints"
    last = checkpoints / "checkpoint-3"
    if damage == "empty folder":
        for f in last.iterdir():
            f.unlink()
    elif damage == "no state":
        (last / "trainer_state.json").unlink()
    else:
        target = last / ("optimizer.pt" if damage == "truncated optimizer" else "adapter_model.safetensors")
        target.write_bytes(target.read_bytes()[: target.stat().st_size // 2])
    with caplog.at_level(logging.WARNING):
        result = train(cfg)
    assert result.metrics["resumed_from_step"] == 2 and result.metrics["global_step"] == 3
    warning = next(r.message for r in caplog.records if "checkpoint-3" in r.message and "incomplete" in r.message)
    assert "checkpoint-2" in warning


def test_checkpoints_are_written_aside_and_renamed_when_complete(demo, tiny_model, tmp_path, monkeypatch):
    checkpoints, during = tmp_path / "run" / "checkpoints", []
    save_rng = PairTrainer._save_rng_state

    def spy(self, output_dir):  # the Trainer's last write into a checkpoint folder but trainer_state.json
        during.append((output_dir, sorted(p.name for p in checkpoints.iterdir())))
        return save_rng(self, output_dir)

    monkeypatch.setattr(PairTrainer, "_save_rng_state", spy)
    cfg = tiny_cfg(demo, tiny_model("llama"), tmp_path / "run",
                   {"train.max_steps": 2, "train.save_steps": 1, "train.eval_steps": 0, "train.keep_checkpoints": True})
    train(cfg)
    assert [d for d, _ in during] == [str(checkpoints / ".saving" / f"checkpoint-{n}") for n in (1, 2)]
    assert [names for _, names in during] == [[".saving", "settings.json"],
                                              [".saving", "checkpoint-1", "settings.json"]]
    assert sorted(p.name for p in checkpoints.iterdir()) == ["checkpoint-1", "checkpoint-2", "settings.json"]
    state = json.loads((checkpoints / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2


# ---- row 5: a run folder that cannot load names the cause up front ---------------------------------
@pytest.fixture(scope="module")
def trained_run(demo, tiny_model, tmp_path_factory):
    out = tmp_path_factory.mktemp("trained") / "run"
    train(tiny_cfg(demo, tiny_model("llama"), out, {"train.max_steps": 1, "train.eval_steps": 0}))
    return out


def _copy_run(run, tmp_path):
    shutil.copytree(run, tmp_path / "run")
    return tmp_path / "run"


def _edit_yaml(path, section, key, value):
    data = yaml.safe_load(path.read_text())
    data[section][key] = value
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def _no_tokenizer(run):
    shutil.rmtree(run / "tokenizer")


def _num_labels_edited(run):
    _edit_yaml(run / "config.yaml", "model", "num_labels", 3)


def _rank_edited(run):
    path = run / "adapter" / "adapter_config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "r": 8}))


BROKEN_RUNS = {
    "tokenizer": (_no_tokenizer, r"tokenizer/ is missing"),
    "num_labels": (_num_labels_edited, r"config\.yaml has model\.num_labels=3 but the adapter's score layer has 2 outputs"),
    "rank": (_rank_edited, r"adapter/adapter_config\.json says r=8 but its LoRA tensors have rank 4"),
}


@pytest.mark.parametrize("broken", sorted(BROKEN_RUNS))
def test_a_run_that_cannot_load_names_the_cause_before_loading(trained_run, tmp_path, broken):
    damage, cause = BROKEN_RUNS[broken]
    run = _copy_run(trained_run, tmp_path)
    damage(run)
    with pytest.raises(ConfigError, match=rf"{run}: cannot be loaded:\n  - {cause}"):
        load_run(run)
    with pytest.raises(BundleError, match=cause):  # the same check, one home
        bundle_adapter(run, tmp_path / "bundle")


@pytest.mark.parametrize("broken", sorted(BROKEN_RUNS))
def test_predict_reports_the_cause_of_a_failed_run(trained_run, tmp_path, broken):
    damage, cause = BROKEN_RUNS[broken]
    run = _copy_run(trained_run, tmp_path)
    damage(run)
    pd.DataFrame({"id": ["1", "2"], "prompt": "p", "response_a": "a", "response_b": "b"}).to_parquet(tmp_path / "t.parquet")
    main(["predict", "--run", str(run), "--test", str(tmp_path / "t.parquet"), "--out", str(tmp_path / "s.csv")])
    report = json.loads((tmp_path / "submission_report.json").read_text())

    note = report["runs"][0]["note"]
    assert note.startswith(f"ConfigError: {run}: cannot be loaded") and re.search(cause, note), note


# ---- row 2: the run records the identity of its base model and of its adapter -----------------------
def test_a_run_loaded_on_another_base_model_is_refused_naming_both(trained_run, demo, tmp_path):
    other = build_tiny_model("llama", demo[1], tmp_path / "other-base", seed=7)  # same family, same shapes
    run = _copy_run(trained_run, tmp_path)
    trained_on = json.loads((run / "identity.json").read_text())["base_model"]["folder"]
    with pytest.raises(ConfigError, match=rf"trained on the base model {trained_on} .* but model.source gives "
                                          rf"{other} .*weights differ"):
        load_run(run, base_source=str(other))
    _edit_yaml(run / "config.yaml", "model", "source", str(other))  # the same, edited in config.yaml
    with pytest.raises(ConfigError, match=rf"but model.source gives {other}"):
        load_run(run)


def test_a_copied_base_model_folder_is_the_same_base(trained_run, tmp_path):
    recorded = json.loads((trained_run / "identity.json").read_text())["base_model"]["folder"]
    copy = shutil.copytree(recorded, tmp_path / "moved-base")
    assert load_run(_copy_run(trained_run, tmp_path), base_source=str(copy)).model is not None


def test_another_runs_adapter_copied_in_is_refused(trained_run, demo, tiny_model, tmp_path):
    other = train(tiny_cfg(demo, tiny_model("llama"), tmp_path / "other",
                           {"train.max_steps": 1, "train.eval_steps": 0, "train.learning_rate": 0.05})).run_dir
    run = _copy_run(trained_run, tmp_path)
    shutil.rmtree(run / "adapter")
    shutil.copytree(other / "adapter", run / "adapter")
    with pytest.raises(ConfigError, match=r"adapter/adapter_model.safetensors is not the adapter this run trained"):
        load_run(run)


def test_an_old_run_without_identity_loads_with_a_warning(trained_run, tmp_path, caplog):
    run = _copy_run(trained_run, tmp_path)
    (run / "identity.json").unlink()
    with caplog.at_level(logging.WARNING):
        load_run(run)
    assert any("identity.json" in r.message and "cannot check" in r.message for r in caplog.records)


# ---- row 6: one writer per train.output_dir ---------------------------------------------------------
HOLD_LOCK = """
import sys
from wsdm_helpers.io import writer_lock
with writer_lock(sys.argv[1], "train.output_dir"):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_second_train_into_one_output_dir_is_refused_with_the_holders_pid(demo, tiny_model, tmp_path, caplog):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(out)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, env={**os.environ, "PYTHONPATH": os.getcwd()})
    assert holder.stdout.readline() == b"locked\n"
    cfg = tiny_cfg(demo, tiny_model("llama"), out, {"train.max_steps": 1, "train.eval_steps": 0})
    with pytest.raises(OutputError, match=rf"{out} is being written by another process \(pid {holder.pid}\)"):
        train(cfg)
    assert not (out / "checkpoints").exists()
    holder.send_signal(signal.SIGKILL)  # dies holding it: the lock file stays, its pid is gone
    holder.wait()
    assert (out / ".wsdm-writer.lock").is_file()
    with caplog.at_level(logging.WARNING):
        train(cfg)
    assert any(f"pid {holder.pid}" in r.message and "taken over" in r.message for r in caplog.records)
    assert not (out / ".wsdm-writer.lock").exists()


# ---- row 13: a fold run moved with its cv folder resumes ---------------------------------------------
def test_a_run_whose_folds_file_moved_resumes(demo, tiny_model, tmp_path):
    old, new = tmp_path / "old", tmp_path / "new"
    old.mkdir()
    fold_table(read_canonical(demo[0]), 4, 42).to_parquet(old / "folds.parquet")
    cfg = tiny_cfg(demo, tiny_model("llama"), old / "fold-0", {"data.folds_file": str(old / "folds.parquet")})
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[InterruptAfterSave(at=4)])
    shutil.move(old, new)  # the whole cv folder, mid-fold
    moved = tiny_cfg(demo, tiny_model("llama"), new / "fold-0", {"data.folds_file": str(new / "folds.parquet")})
    metrics = train(moved).metrics
    assert metrics["resumed_from_step"] == 4
    assert metrics["best_checkpoint"].startswith(str(new / "fold-0" / "checkpoints"))


def test_a_moved_runs_best_checkpoint_is_found_under_its_new_folder(tmp_path):
    (tmp_path / "new" / "checkpoint-2").mkdir(parents=True)
    state = TrainerState(best_model_checkpoint=str(tmp_path / "old" / "checkpoint-2"))
    args = TrainingArguments(output_dir=str(tmp_path / "new"), report_to="none", use_cpu=True)
    MovedCheckpoints().on_train_begin(args, state, TrainerControl())
    assert state.best_model_checkpoint == str(tmp_path / "new" / "checkpoint-2")
