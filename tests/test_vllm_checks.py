"""inference.backend=vllm without vLLM running: the merged model folder, and the refusals (rc 2).

These run in the main venv too (vLLM installed or not); tests/test_vllm_backend.py compares the two
backends' predictions where vLLM is installed.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from wsdm_helpers.cli import main
from wsdm_helpers.config import (
    FormatConfig,
    InferenceConfig,
    ModelConfig,
    RunConfig,
    load_run_config,
    resolve_preset,
    save_yaml,
)
from wsdm_helpers.data import read_pairs
from wsdm_helpers.demo_data import write_demo_dataset
from wsdm_helpers.modeling import MERGED_MARKER, load_run
from wsdm_helpers.tiny import build_tiny_model, pair_texts, train_tokenizer
from wsdm_helpers.tokenization import encode_pairs
from wsdm_helpers.training import train
from wsdm_helpers.vllm_backend import engine_arguments, merged_folder, placement

TINY_PRESET = resolve_preset("tiny-test")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    train_path, test, _, _ = write_demo_dataset(root, n_train=120, n_test=24, seed=5)
    tokenizer = train_tokenizer(pair_texts(read_pairs(train_path)[0]), vocab_size=600)
    return {"train": train_path, "test": test, "tokenizer": tokenizer, "root": root}


@pytest.fixture(scope="module")
def lora_run(data):
    """A tiny Gemma 3 classifier trained for two LoRA steps (adapter + trained score head)."""
    model = build_tiny_model("gemma3", data["tokenizer"], data["root"] / "base")
    cfg = load_run_config(TINY_PRESET, {"data.train_path": str(data["train"]), "model.source": str(model),
                                        "train.output_dir": str(data["root"] / "run"), "train.max_steps": 2})
    return train(cfg).run_dir


def _full_run(data, family: str, name: str, **inference) -> Path:
    """A run folder holding a whole model (model/ + tokenizer/ + config.yaml), no training."""
    run = data["root"] / name
    build_tiny_model(family, data["tokenizer"], run / "model")
    data["tokenizer"].save_pretrained(str(run / "tokenizer"))
    save_yaml(RunConfig(model=ModelConfig(source=str(run / "model")), format=FormatConfig(max_length=128),
                        inference=InferenceConfig(devices=["cpu"], progress_bar=False, **inference)), run / "config.yaml")
    return run


def test_merged_folder_reloads_in_hf_with_the_runs_logits_and_is_written_once(lora_run, data, tmp_path, monkeypatch):
    from transformers import AutoModelForSequenceClassification

    monkeypatch.setenv("WSDM_CACHE", str(tmp_path))
    folder = merged_folder(lora_run, "float32")
    assert folder.parent == tmp_path / "merged" and list(folder.glob("*.safetensors"))
    assert not list(folder.glob("adapter*")) and (folder / "tokenizer.json").is_file()
    run = load_run(lora_run)
    merged = AutoModelForSequenceClassification.from_pretrained(str(folder), dtype=torch.float32).eval()
    encoded = encode_pairs(read_pairs(data["test"], ties="keep")[0], run.tokenizer, run.config.format,
                           run.family.template)
    with torch.inference_mode():
        for ids in encoded.input_ids[:8]:
            x = torch.tensor([ids])
            expected = run.scorer.logits(x, torch.ones_like(x))
            torch.testing.assert_close(merged(input_ids=x).logits.float(), expected, atol=1e-5, rtol=1e-5)
    stamp = (folder / MERGED_MARKER).stat().st_mtime_ns
    assert merged_folder(lora_run, "float32") == folder and (folder / MERGED_MARKER).stat().st_mtime_ns == stamp


def test_bundle_adapter_merged_ships_the_folder_the_vllm_backend_loads(lora_run, tmp_path, monkeypatch):
    monkeypatch.setenv("WSDM_CACHE", str(tmp_path / "cache"))
    bundle = tmp_path / "bundle"
    assert main(["bundle", "adapter", str(lora_run), "--out", str(bundle), "--username", "tester", "--base-model",
                 "/kaggle/input/tiny-gemma3", "--merged"]) == 0
    from safetensors import safe_open

    with safe_open(str(bundle / "merged" / "model.safetensors"), "pt") as fh:
        assert {fh.get_slice(k).get_dtype() for k in fh.keys()} == {"BF16"}  # the default merge dtype
    # the bundle is a run folder whose base is not here: its merged/ serves an engine of either dtype
    assert merged_folder(bundle, "float32") == bundle / "merged" == merged_folder(bundle, "bfloat16")
    assert not (tmp_path / "cache" / "merged").exists()


def _refused(capsys, run: Path, data, *sets: str) -> str:
    out = data["root"] / "out" / "submission.csv"
    args = ["predict", "--run", str(run), "--test", str(data["test"]), "--out", str(out), "--set",
            "inference.backend=vllm"]
    for item in sets:
        args += ["--set", item]
    assert main(args) == 2
    assert not out.exists()
    return capsys.readouterr().err


@pytest.mark.skipif(importlib.util.find_spec("vllm") is not None, reason="vLLM is installed here")
def test_vllm_not_installed_is_refused_with_the_install_command(lora_run, data, capsys):
    assert "pip install 'wsdm_helpers[vllm]'" in _refused(capsys, lora_run, data)


def test_a_family_vllm_does_not_serve_is_refused(data, capsys):
    err = _refused(capsys, _full_run(data, "deberta-v2", "deberta"), data)
    assert "deberta-v2 family has no vLLM architecture" in err and "inference.backend=hf" in err


def test_a_dtype_the_engine_refuses_is_refused(lora_run, data, capsys):
    err = _refused(capsys, lora_run, data, "model.dtype=float16")
    assert "model.dtype=float16 on cpu" in err


def test_model_parallel_and_too_many_tensor_parallel_gpus_are_refused(lora_run, data, capsys):
    err = _refused(capsys, lora_run, data, "inference.model_parallel=true", "inference.tensor_parallel_size=2")
    assert "inference.model_parallel=true" in err and "tensor_parallel_size=2 but the devices hold no GPU" in err


def test_engine_arguments_follow_the_run(lora_run):
    from wsdm_helpers.modeling import family_for

    cfg = load_run_config(lora_run / "config.yaml")
    swap = engine_arguments(cfg, InferenceConfig(tta="swap"), family_for("gemma3"), lora_run, torch.float32, "cpu", 1)
    assert swap["runner"] == "pooling" and swap["hf_overrides"] == {"architectures": ["Gemma3ForSequenceClassification"]}
    assert swap["enable_prefix_caching"] and swap["max_model_len"] == cfg.format.max_length
    assert swap["pooler_config"] == {"seq_pooling_type": "LAST"} and swap["kv_cache_memory_bytes"] == 2**30
    mean = load_run_config(lora_run / "config.yaml", {"format.pooling": "mean"})
    mean_args = engine_arguments(mean, InferenceConfig(tta="swap"), family_for("gemma3"), lora_run, torch.float32, "cpu", 1)
    assert mean_args["pooler_config"] == {"seq_pooling_type": "MEAN"} and not mean_args["enable_prefix_caching"]
    mcq = load_run_config(lora_run / "config.yaml", {"format.head": "mcq", "format.pooling": "last"})
    plain = engine_arguments(mcq, InferenceConfig(tta="none"), family_for("qwen2"), lora_run, torch.float16, "cuda", 2)
    assert plain["runner"] == "generate" and plain["max_model_len"] == cfg.format.max_length + 1
    assert not plain["enable_prefix_caching"] and plain["tensor_parallel_size"] == 2 and plain["dtype"] == "float16"
    assert "kv_cache_memory_bytes" not in plain and not plain["enforce_eager"] and "hf_overrides" not in plain


@pytest.fixture
def two_gpus(monkeypatch):
    """What placement sees on 2x T4 (it only counts and names GPUs; nothing runs on them)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)


def test_engines_are_the_gpus_divided_by_tensor_parallel_size_each_seeing_its_own(two_gpus, monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")  # the GPUs' physical ids this process was given
    split = placement(InferenceConfig())
    assert (split.device, split.tensor_parallel_size) == ("cuda", 2)
    assert split.engine_envs == ({"CUDA_VISIBLE_DEVICES": "4,6"},)
    per_gpu = placement(InferenceConfig(tensor_parallel_size=1))
    assert per_gpu.engine_envs == ({"CUDA_VISIBLE_DEVICES": "4"}, {"CUDA_VISIBLE_DEVICES": "6"})
    assert placement(InferenceConfig(devices=["cuda:1"])).engine_envs == ({"CUDA_VISIBLE_DEVICES": "6"},)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert placement(InferenceConfig(tensor_parallel_size=1)).engine_envs[1] == {"CUDA_VISIBLE_DEVICES": "1"}


def test_a_tensor_parallel_size_that_does_not_divide_the_gpus_is_refused(two_gpus):
    from wsdm_helpers.errors import ConfigError

    for cfg in (InferenceConfig(tensor_parallel_size=3), InferenceConfig(devices=["cuda:0", "cuda:0"])):
        with pytest.raises(ConfigError, match="engines = GPUs / tensor_parallel_size"):
            placement(cfg)


def test_several_cpu_engines_each_get_their_own_cores(monkeypatch):
    from wsdm_helpers.errors import ConfigError

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: {0, 1, 2, 3})
    assert placement(InferenceConfig(devices=["cpu"])).engine_envs == ({},)  # vLLM binds one engine itself
    two = placement(InferenceConfig(devices=["cpu", "cpu"]))
    assert two.engine_envs == ({"VLLM_CPU_OMP_THREADS_BIND": "0,1"}, {"VLLM_CPU_OMP_THREADS_BIND": "2,3"})
    with pytest.raises(ConfigError, match="4 core"):
        placement(InferenceConfig(devices=["cpu"] * 5))
