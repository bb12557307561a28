"""Config values that used to fail late (or never) are refused up front, naming the key and the fix."""
from __future__ import annotations

import typing
from pathlib import Path

import pytest

from wsdm_helpers import cli, data
from wsdm_helpers.config import (
    DataConfig,
    Optimizer,
    RunConfig,
    Scheduler,
    annotated_yaml,
    apply_overrides,
    choices,
    field_choices,
    load_run_config,
)
from wsdm_helpers.errors import ConfigError

TINY = Path(__file__).resolve().parents[1] / "configs" / "tiny-test.yaml"

# (override, what the message must say: the key with its value, and the fix)
REFUSED = [
    ({"train.scheduler": "foo"}, "'train.scheduler' must be one of linear, cosine,"),
    ({"train.scheduler": "cosin"}, "did you mean 'cosine'?"),
    ({"train.optimizer": "foo"}, "'train.optimizer' must be one of auto, adamw_torch,"),
    ({"train.logging_steps": 0}, "train.logging_steps=0 must be at least 1"),
    ({"train.save_steps": 0}, "train.save_steps=0 must be at least 1"),
    ({"data.max_rows": 0}, "data.max_rows=0 must be at least 1 (or null for every row)"),
    ({"data.max_rows": -3}, "data.max_rows=-3 must be at least 1 (or null for every row)"),
    ({"train.max_eval_rows": 0}, "train.max_eval_rows=0 must be at least 1 (or null for every row)"),
    ({"lora.alpha": -5}, "lora.alpha=-5 must be positive"),
    ({"inference.devices": ["gpu0"]}, "inference.devices: 'gpu0' is not a device name; use cpu, cuda or cuda:N"),
    ({"data.ties": "keeep"}, "'data.ties' must be one of keep, drop, split, got 'keeep'; did you mean 'keep'?"),
    ({"model.num_labels": 4}, "'model.num_labels' must be one of 2, 3, got 4"),
    ({"format.head": "mcq2"}, "did you mean 'mcq'?"),
]


@pytest.mark.parametrize("override,message", REFUSED, ids=lambda v: str(v))
def test_bad_value_is_refused_at_load_naming_key_and_fix(override, message):
    with pytest.raises(ConfigError) as info:
        load_run_config(TINY, override)
    assert message in str(info.value)


@pytest.mark.parametrize("override,message", REFUSED[:10], ids=lambda v: str(v))
def test_cli_refuses_it_before_training(override, message, capsys, tmp_path):
    (key, value), = override.items()
    text = f"{key}=[{', '.join(value)}]" if isinstance(value, list) else f"{key}={value}"
    out_dir = tmp_path / "run"
    assert cli.main(["train", "--config", "tiny-test", "--set", text, "--set", f"train.output_dir={out_dir}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid configuration") and message in err and "Traceback" not in err
    assert not out_dir.exists()


def test_every_problem_is_reported_at_once():
    with pytest.raises(ConfigError) as info:
        load_run_config(TINY, {"train.scheduler": "foo", "train.logging_steps": 0, "data.max_rows": 0,
                               "lora.alpha": -5, "train.max_eval_rows": 0, "train.optimizer": "foo"})
    lines = [line for line in str(info.value).splitlines() if line.startswith("  - ")]
    assert len(lines) == 6


def test_an_empty_yaml_file_is_refused(tmp_path, capsys):
    empty = tmp_path / "empty.yaml"
    empty.write_text("# nothing here\n")
    with pytest.raises(ConfigError, match=r"empty.yaml is empty; start from a preset in configs/"):
        load_run_config(empty)
    assert cli.main(["train", "--config", str(empty)]) == 2
    assert "is empty" in capsys.readouterr().err


def test_preflight_refuses_a_missing_gpu_and_an_empty_train_path():
    torch = pytest.importorskip("torch")
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    from wsdm_helpers.training import train

    cfg = load_run_config(TINY, {"data.train_path": "", "model.source": "/nowhere", "inference.devices": ["cuda:0"],
                                 "train.optimizer": "paged_adamw_8bit"})
    with pytest.raises(ConfigError) as info:
        train(cfg)
    text = str(info.value)
    assert "data.train_path is empty" in text
    assert "inference.devices: cuda:0 does not exist here, this machine has no CUDA GPU; set inference.devices=[]" in text
    assert "train.optimizer=paged_adamw_8bit needs a CUDA GPU" in text and "train.optimizer=auto" in text


def test_overrides_are_typed_values_not_strings():
    merged = apply_overrides({"data": {"train_path": "a"}}, {"data.train_path": "runs #2/train.parquet",
                                                             "train.max_steps": 100})
    assert merged == {"data": {"train_path": "runs #2/train.parquet"}, "train": {"max_steps": 100}}
    with pytest.raises(ConfigError, match=r"overrides must be a mapping of dotted keys to values"):
        load_run_config(TINY, ["train.max_steps=100"])
    # the CLI parses --set text once, as YAML literals
    assert cli.parse_sets(["train.max_steps=100", "inference.devices=[cpu]", "train.learning_rate=2e-4"]) == {
        "train.max_steps": 100, "inference.devices": ["cpu"], "train.learning_rate": "2e-4"}
    assert load_run_config(TINY, cli.parse_sets(["train.learning_rate=2e-4"])).train.learning_rate == 2e-4
    with pytest.raises(ConfigError, match="must look like key.path=value"):
        cli.parse_sets(["train.max_steps"])


def test_choice_lists_are_derived_from_the_literals():
    assert data.LAYOUTS == field_choices(DataConfig, "layout")
    assert data.TIE_POLICIES == field_choices(DataConfig, "ties") == choices(typing.Literal["keep", "drop", "split"])
    parser = cli.build_parser()
    validate = parser.parse_args(["data", "validate", "x.csv"])
    assert (validate.layout, validate.ties) == (DataConfig().layout, DataConfig().ties)  # one default
    with pytest.raises(SystemExit):
        parser.parse_args(["data", "validate", "x.csv", "--ties", "sometimes"])
    assert "[one of log_loss, accuracy, log_loss_swap_tta, accuracy_swap_tta, flip_rate]" in annotated_yaml(RunConfig())


def test_schedule_and_optimizer_choices_exist_in_transformers():
    pytest.importorskip("transformers")
    from transformers.trainer_utils import SchedulerType
    from transformers.training_args import OptimizerNames

    assert set(typing.get_args(Scheduler)) <= {s.value for s in SchedulerType}
    assert set(typing.get_args(Optimizer)) - {"auto"} <= {o.value for o in OptimizerNames}


def test_constructed_sections_are_checked_too():
    cfg = RunConfig()
    cfg.inference.tta = "swapp"
    with pytest.raises(ConfigError, match=r"'inference.tta' must be one of none, swap, selective.*did you mean 'swap'"):
        cfg.validate()


def test_config_show_prints_the_resolved_config_with_help_and_loads_back(capsys):
    import yaml

    from wsdm_helpers.config import to_dict

    assert cli.main(["config", "show", "tiny-test", "--set", "train.max_steps=3"]) == 0
    out = capsys.readouterr().out
    assert "  max_steps: 3  # stop after this many optimizer steps" in out
    assert "  scheduler: cosine  # learning-rate schedule (transformers scheduler name) [one of linear, cosine," in out
    assert yaml.safe_load(out) == to_dict(load_run_config(TINY, {"train.max_steps": 3}))
    assert cli.main(["config", "show"]) == 2  # the defaults, and what is missing from them
    captured = capsys.readouterr()
    assert "name: run" in captured.out and "model.source is empty" in captured.err


def test_tiny_test_preset_runs_as_the_readme_says(tmp_path, monkeypatch, capsys):
    pytest.importorskip("torch")
    monkeypatch.chdir(tmp_path)
    assert cli.main(["demo-data", "--out", "demo", "--n-train", "120", "--n-test", "10"]) == 0
    assert cli.main(["tiny-model", "--data", "demo/train.parquet", "--out", "tiny-model"]) == 0
    assert cli.main(["train", "--config", "tiny-test", "--set", "train.max_steps=2"]) == 0
    saved = load_run_config(tmp_path / "runs" / "tiny-test" / "config.yaml")
    assert saved.model.source == str(tmp_path / "tiny-model") and saved.train.max_steps == 2
