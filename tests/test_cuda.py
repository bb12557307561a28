"""CUDA paths: QLoRA 4-bit training (fp16 compute, the T4 recipe; bf16 for Gemma 3), adapter reload on a
quantized base, half-precision inference against fp32 on CPU, and two inference workers on GPUs.

Every test here skips without a CUDA GPU (CI has none); run them on a GPU machine with
``pytest tests/test_cuda.py``. Tiny random models and a tokenizer trained in the session keep them
hermetic and fast.
"""
from __future__ import annotations

import dataclasses
import importlib.util
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

from wsdm_helpers.config import InferenceConfig, load_run_config  # noqa: E402
from wsdm_helpers.data import write_canonical  # noqa: E402
from wsdm_helpers.demo_data import make_demo_frame  # noqa: E402
from wsdm_helpers.inference import predict_proba, run_prediction  # noqa: E402
from wsdm_helpers.tiny import build_tiny_model, pair_texts, train_tokenizer  # noqa: E402
from wsdm_helpers.training import train  # noqa: E402

TINY_PRESET = Path(__file__).resolve().parents[1] / "configs" / "tiny-test.yaml"
needs_bnb = pytest.mark.skipif(importlib.util.find_spec("bitsandbytes") is None, reason="needs bitsandbytes")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("cuda-demo")
    frame = make_demo_frame(80, seed=1)
    write_canonical(frame, root / "train.parquet")
    tokenizer = train_tokenizer(pair_texts(frame), vocab_size=500)
    models = {family: build_tiny_model(family, tokenizer, root / family, head="mcq") for family in ("llama", "gemma3")}
    return frame, root / "train.parquet", models


def _train(demo, out: Path, overrides: dict | None = None, family: str = "llama"):
    cfg = load_run_config(TINY_PRESET, {"data.train_path": str(demo[1]), "model.source": str(demo[2][family]),
                                        "train.output_dir": str(out), **(overrides or {})})
    return train(cfg)


def _oof_frame(demo, run_dir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    oof = pd.read_parquet(run_dir / "oof.parquet")
    return demo[0].set_index("id").loc[oof["id"]].reset_index(), oof


@needs_bnb
@pytest.mark.parametrize("family,dtype", [("llama", "float16"), ("gemma3", "bfloat16")])
def test_qlora_4bit_trains_and_the_adapter_reloads_on_a_quantized_base(family, dtype, demo, tmp_path):
    """fp16 is the T4 recipe; Gemma 3 overflows fp16, so it trains in bf16 (Ampere or newer)."""
    if dtype == "bfloat16" and torch.cuda.get_device_capability()[0] < 8:
        pytest.skip("bf16 needs an Ampere or newer GPU")
    result = _train(demo, tmp_path / "q4", {"model.quantization": "4bit", "model.dtype": dtype,
                                            "model.gradient_checkpointing": True}, family=family)
    metrics = result.metrics
    assert metrics["global_step"] == 6 and metrics["peak_cuda_memory_gib"] > 0
    assert metrics["train_tokens_per_s"] > 0
    frame, oof = _oof_frame(demo, tmp_path / "q4")
    cfg = InferenceConfig(devices=["cuda:0"], tta="swap", progress_bar=False)  # the policy oof.parquet used
    again = predict_proba(tmp_path / "q4", frame, cfg)  # base re-quantized from config.yaml + adapter
    assert again["id"].tolist() == oof["id"].tolist()
    np.testing.assert_allclose(again["winner_model_a"], oof["winner_model_a"], atol=2e-2)


def test_half_precision_inference_matches_fp32_on_cpu(demo, tmp_path):
    """model.dtype auto: fp16 on a T4, bf16 on newer GPUs (autocast in the same dtype), fp32 on CPU."""
    _train(demo, tmp_path / "lora", {"train.max_steps": 2})
    frame, _ = _oof_frame(demo, tmp_path / "lora")
    cpu = predict_proba(tmp_path / "lora", frame, InferenceConfig(devices=["cpu"], tta="swap", progress_bar=False))
    gpu = predict_proba(tmp_path / "lora", frame, InferenceConfig(devices=["cuda:0"], tta="swap", progress_bar=False))
    assert gpu["id"].tolist() == cpu["id"].tolist()
    np.testing.assert_allclose(gpu["winner_model_a"], cpu["winner_model_a"], atol=2e-2)


def test_two_gpu_workers_equal_one_row_by_row(demo, tmp_path):
    """Two model copies (on two GPUs, or twice on the one there is) give the one-worker predictions."""
    _train(demo, tmp_path / "lora", {"train.max_steps": 2})
    frame = demo[0]
    gpus = [f"cuda:{i % torch.cuda.device_count()}" for i in range(2)]
    one_cfg = InferenceConfig(devices=gpus[:1], tta="swap", progress_bar=False, max_batch_size=8)
    one = run_prediction(tmp_path / "lora", frame, one_cfg)
    two = run_prediction(tmp_path / "lora", frame, dataclasses.replace(one_cfg, devices=gpus))
    assert two.report.devices == gpus
    assert one.predictions["id"].tolist() == two.predictions["id"].tolist() == frame["id"].tolist()
    np.testing.assert_allclose(one.predictions.iloc[:, 1:], two.predictions.iloc[:, 1:], atol=5e-3)
    assert one.report.real_tokens == two.report.real_tokens


def test_model_parallel_run_predicts_like_one_copy(demo, tmp_path):
    _train(demo, tmp_path / "lora", {"train.max_steps": 2})
    cfg = InferenceConfig(devices=["cuda:0"], tta="none", progress_bar=False)
    devices = [f"cuda:{i}" for i in range(max(torch.cuda.device_count(), 1))]
    spread = dataclasses.replace(cfg, devices=devices, model_parallel=True)
    np.testing.assert_allclose(predict_proba(tmp_path / "lora", demo[0], cfg).iloc[:, 1:],
                               predict_proba(tmp_path / "lora", demo[0], spread).iloc[:, 1:], atol=5e-3)

