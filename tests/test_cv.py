"""k-fold cross-validation (wsdm cv): folds, out-of-fold files, resume after a real SIGKILL."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from wsdm_helpers import data
from wsdm_helpers.cli import parse_sets
from wsdm_helpers.config import DataConfig, load_run_config
from wsdm_helpers.cv import run_baseline_cv, run_cv
from wsdm_helpers.demo_data import make_demo_frame
from wsdm_helpers.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]
TINY_PRESET = REPO / "configs" / "tiny-test.yaml"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """120 demo pairs (several languages) as a canonical parquet file, and the same rows shuffled."""
    root = tmp_path_factory.mktemp("cvdemo")
    frame = make_demo_frame(120, seed=2)
    data.write_canonical(frame, root / "train.parquet")
    data.write_canonical(frame.sample(frac=1, random_state=5), root / "shuffled.parquet")
    return root


@pytest.fixture(scope="module")
def tiny_model(demo, tmp_path_factory):
    pytest.importorskip("torch")
    from wsdm_helpers.tiny import build_tiny_model, pair_texts, train_tokenizer

    frame = data.read_canonical(demo / "train.parquet")
    tokenizer = train_tokenizer(pair_texts(frame), vocab_size=400)
    return build_tiny_model("llama", tokenizer, tmp_path_factory.mktemp("cvmodel") / "llama")


def _oof_promise(out: Path, frame: pd.DataFrame, train_ids_of) -> pd.DataFrame:
    """oof.parquet holds every labelled training row exactly once, each predicted by a model that did not
    train on it (``train_ids_of(k)``: the ids fold k's model trained on)."""
    oof = pd.read_parquet(out / "oof.parquet")
    assert not oof["id"].duplicated().any()
    assert set(oof["id"]) == set(frame["id"][frame["label"] >= 0])
    for k in sorted(oof["fold"].unique()):
        assert not set(oof["id"][oof["fold"] == k]) & set(train_ids_of(k)), k
    folds = pd.read_parquet(out / "folds.parquet").set_index("id")["fold"]
    assert (folds.loc[oof["id"]].to_numpy() == oof["fold"].to_numpy()).all()
    return oof


def test_folds_ignore_row_order_and_stratify_by_language(demo):
    frame = data.read_canonical(demo / "train.parquet")
    shuffled = data.read_canonical(demo / "shuffled.parquet")
    one = data.fold_table(frame, 4, seed=7).set_index("id")["fold"]
    two = data.fold_table(shuffled, 4, seed=7).set_index("id")["fold"]
    assert one.sort_index().equals(two.sort_index())
    assert not one.sort_index().equals(data.fold_table(frame, 4, seed=8).set_index("id")["fold"].sort_index())
    counts = pd.crosstab(one.loc[frame["id"]].to_numpy(), frame["language"])
    assert (counts.max() - counts.min() <= 2).all()  # each language spread over the folds


def test_baseline_cv_oof_holds_every_row_once_from_the_model_that_did_not_see_it(demo, tmp_path):
    cfg = DataConfig(train_path=str(demo / "train.parquet"), n_folds=4)
    result = run_baseline_cv(cfg, tmp_path / "cv")
    frame = data.read_canonical(demo / "train.parquet")
    folds = pd.read_parquet(tmp_path / "cv" / "folds.parquet").set_index("id")["fold"]
    oof = _oof_promise(tmp_path / "cv", frame, lambda k: folds.index[folds != k])
    report = json.loads((tmp_path / "cv" / "cv_report.json").read_text())
    assert report == result.report and report["rows"] == len(frame) == len(oof)
    assert {r["language"] for r in report["per_language"]} == set(frame["language"])
    assert report["flip_rate"] == 0  # the baseline averages both orientations by construction
    assert sum(f["rows"] for f in report["folds"]) == len(frame)
    # the same folds for a second run into another folder, and from the shuffled copy of the file
    again = run_baseline_cv(DataConfig(train_path=str(demo / "shuffled.parquet"), n_folds=4), tmp_path / "again")
    assert pd.read_parquet(tmp_path / "again" / "folds.parquet").set_index("id")["fold"].sort_index().equals(
        folds.sort_index())
    assert again.report["accuracy"] == pytest.approx(report["accuracy"])


def test_rerun_with_another_config_or_other_folds_is_refused(demo, tmp_path):
    run_baseline_cv(DataConfig(train_path=str(demo / "train.parquet"), n_folds=4), tmp_path / "cv", folds=[0])
    with pytest.raises(ConfigError, match="another config.*n_folds"):
        run_baseline_cv(DataConfig(train_path=str(demo / "train.parquet"), n_folds=3), tmp_path / "cv")
    pd.DataFrame({"id": ["x"], "fold": [0]}).to_parquet(tmp_path / "other.parquet")
    with pytest.raises(DataError, match="have no fold"):
        run_baseline_cv(DataConfig(train_path=str(demo / "train.parquet"), n_folds=4,
                                   folds_file=str(tmp_path / "other.parquet")), tmp_path / "new")


def test_llm_cv_shares_the_baseline_folds_and_predicts_each_row_out_of_fold(demo, tiny_model, tmp_path):
    from wsdm_helpers.training import split_data

    run_baseline_cv(DataConfig(train_path=str(demo / "train.parquet"), n_folds=2), tmp_path / "base")
    cfg = load_run_config(TINY_PRESET, parse_sets([
        f"data.train_path={demo / 'shuffled.parquet'}", f"model.source={tiny_model}", "data.n_folds=2",
        f"train.output_dir={tmp_path / 'llm'}", "train.max_steps=2", "train.eval_steps=2", "train.save_steps=2"]))
    result = run_cv(cfg)
    assert result.missing == [] and (tmp_path / "llm" / "fold-1" / "adapter" / "adapter_model.safetensors").is_file()
    assert pd.read_parquet(tmp_path / "llm" / "folds.parquet").sort_values("id", ignore_index=True).equals(
        pd.read_parquet(tmp_path / "base" / "folds.parquet").sort_values("id", ignore_index=True))

    def trained_on(k: int):  # the rows fold k's run trained on, read back through its saved config
        return split_data(load_run_config(tmp_path / "llm" / f"fold-{k}" / "config.yaml"))[0]["id"]

    oof = _oof_promise(tmp_path / "llm", data.read_canonical(demo / "train.parquet"), trained_on)
    assert np.allclose(oof[["winner_model_a", "winner_model_b"]].sum(axis=1), 1)
    ab = pd.concat(pd.read_parquet(tmp_path / "llm" / f"fold-{k}" / "valid_ab.parquet") for k in (0, 1))
    ba = pd.concat(pd.read_parquet(tmp_path / "llm" / f"fold-{k}" / "valid_ba.parquet") for k in (0, 1))
    mean = (ab.set_index("id")["winner_model_a"] + ba.set_index("id")["winner_model_a"]) / 2  # swap TTA
    assert np.allclose(mean.loc[oof["id"]].to_numpy(), oof["winner_model_a"].to_numpy())


def _poll(path: Path, proc: subprocess.Popen, seconds: float = 300) -> None:
    deadline = time.monotonic() + seconds
    while not path.exists():
        assert proc.poll() is None, proc.communicate()[0][-3000:]
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)


def test_killed_cv_resumes_at_the_fold_and_step_where_it_stopped(demo, tiny_model, tmp_path):
    """A real `wsdm cv` subprocess gets SIGKILL right after fold 1 wrote checkpoint-4 (of 12 steps)."""
    out = tmp_path / "cv"
    command = [sys.executable, "-m", "wsdm_helpers", "cv", "--config", str(TINY_PRESET),
               "--data", str(demo / "train.parquet"), "--out", str(out), "--set", f"model.source={tiny_model}",
               "--set", "data.n_folds=2", "--set", "train.max_steps=12", "--set", "train.eval_steps=4",
               "--set", "train.save_steps=4", "--set", "inference.tta=none"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    _poll(out / "fold-1" / "checkpoints" / "checkpoint-4" / "trainer_state.json", proc)
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    fold0 = (out / "fold-0" / "valid_ab.parquet").stat().st_mtime_ns
    checkpoints = sorted(p.name for p in (out / "fold-1" / "checkpoints").glob("checkpoint-*"))
    assert not (out / "oof.parquet").exists()

    again = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    step = int(checkpoints[-1].split("-")[1])
    assert f"fold 1: resuming from step {step}" in again.stdout and "fold 0:" not in again.stdout
    assert (out / "fold-0" / "valid_ab.parquet").stat().st_mtime_ns == fold0  # fold 0 not redone
    metrics = json.loads((out / "fold-1" / "metrics.json").read_text())
    assert metrics["global_step"] == 12
    walls = {point["step"]: point["wall_s"] for point in metrics["curve"]}
    # evaluations up to the checkpoint ran in the killed process (no wall time in this one): resumed, not restarted
    assert all(walls[s] is None for s in walls if s <= step) and all(walls[s] is not None for s in walls if s > step)
    assert len(pd.read_parquet(out / "oof.parquet")) == 120


def test_cli_cv_baseline_and_its_argument_errors(demo, tmp_path, capsys):
    from wsdm_helpers import cli

    base = ["cv", "--baseline", "logreg", "--data", str(demo / "train.parquet"), "--set", "data.n_folds=3"]
    assert cli.main([*base, "--out", str(tmp_path / "cv"), "--folds", "0,1"]) == 0
    assert "still to train [2]" in capsys.readouterr().out and not (tmp_path / "cv" / "oof.parquet").exists()
    assert cli.main([*base, "--out", str(tmp_path / "cv"), "--folds", "2"]) == 0
    out = capsys.readouterr().out
    assert "all" in out and "TTA: swap, averaged in probability space" in out
    assert (tmp_path / "cv" / "oof.parquet").is_file()
    assert cli.main([*base, "--out", str(tmp_path / "cv"), "--folds", "7"]) == 2
    assert "between 0 and data.n_folds-1=2" in capsys.readouterr().err
    assert cli.main([*base]) == 2 and "--out DIR" in capsys.readouterr().err
    assert cli.main(["cv", "--data", str(demo / "train.parquet")]) == 2 and "--config" in capsys.readouterr().err


def test_valid_from_train_path_keeps_extra_files_out_of_the_oof(demo, tmp_path):
    frame = data.read_canonical(demo / "train.parquet")
    data.write_canonical(frame.iloc[:80], tmp_path / "main.parquet")
    data.write_canonical(frame.iloc[80:], tmp_path / "extra.parquet")
    cfg = DataConfig(train_path=str(tmp_path / "main.parquet"), extra_train_paths=[str(tmp_path / "extra.parquet")],
                     valid_from="train_path", n_folds=4)
    run_baseline_cv(cfg, tmp_path / "cv")
    oof = pd.read_parquet(tmp_path / "cv" / "oof.parquet")
    assert sorted(oof["id"]) == sorted(frame["id"].iloc[:80])
    assert all(json.loads((tmp_path / "cv" / f"fold-{k}" / "metrics.json").read_text())["train_rows"] ==
               120 - (oof["fold"] == k).sum() for k in range(4))  # the extra rows train in every fold
