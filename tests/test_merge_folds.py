"""wsdm merge-folds: the k fold adapters of a real (tiny) wsdm cv as one adapter of rank k*r, read back by peft."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from wsdm_helpers import data
from wsdm_helpers.cli import main, parse_sets
from wsdm_helpers.demo_data import make_demo_frame

REPO = Path(__file__).resolve().parents[1]
K = 3


@pytest.fixture(scope="module")
def cv(tmp_path_factory):
    """A 3-fold wsdm cv of a tiny Llama classifier (LoRA r=4 on every projection, 2 steps a fold) and its merge."""
    pytest.importorskip("torch")
    from wsdm_helpers.config import load_run_config
    from wsdm_helpers.cv import run_cv
    from wsdm_helpers.tiny import build_tiny_model, pair_texts, train_tokenizer

    root = tmp_path_factory.mktemp("merge")
    frame = make_demo_frame(60, seed=2)
    data.write_canonical(frame, root / "train.parquet")
    source = build_tiny_model("llama", train_tokenizer(pair_texts(frame), vocab_size=300), root / "llama")
    cfg = load_run_config(REPO / "configs" / "tiny-test.yaml", parse_sets([
        f"data.train_path={root / 'train.parquet'}", f"model.source={source}", f"data.n_folds={K}",
        f"train.output_dir={root / 'cv'}", "train.max_steps=2", "train.eval_steps=0", "format.max_length=160"]))
    run_cv(cfg)
    assert main(["merge-folds", str(root / "cv"), "--out", str(root / "merged")]) == 0
    return {"root": root, "cv": root / "cv", "merged": root / "merged", "frame": frame}


def _deltas(run_dir: Path) -> dict[str, np.ndarray]:
    """Each LoRA layer's weight update as peft computes it, and the head's weights, of a run read back from disk."""
    from peft.tuners.lora import LoraLayer

    from wsdm_helpers.modeling import load_run

    model = load_run(run_dir).model
    out = {name: module.get_delta_weight("default").detach().numpy()
           for name, module in model.named_modules() if isinstance(module, LoraLayer)}
    out.update({name: p.detach().numpy() for name, p in model.named_parameters() if "modules_to_save" in name})
    return out


def test_the_merged_update_is_the_mean_of_the_folds_updates(cv):
    folds = [_deltas(cv["cv"] / f"fold-{k}") for k in range(K)]
    merged = _deltas(cv["merged"])
    assert merged.keys() == folds[0].keys() and any("score" in n for n in merged)
    assert all(np.abs(f[n]).max() > 0 for f in folds for n in f)  # trained: every update is nonzero
    for name, update in merged.items():
        np.testing.assert_allclose(update, np.mean([f[name] for f in folds], axis=0), rtol=1e-5, atol=1e-7)
    config = json.loads((cv["merged"] / "adapter" / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (4 * K, 8 * K)


def test_the_merged_run_predicts_as_the_base_model_with_the_mean_update(cv):
    import torch

    from wsdm_helpers.batching import collate
    from wsdm_helpers.config import load_run_config
    from wsdm_helpers.modeling import load_model, load_run
    from wsdm_helpers.tokenization import encode_pairs

    mean = {name: np.mean([_deltas(cv["cv"] / f"fold-{k}")[name] for k in range(K)], axis=0)
            for name in _deltas(cv["merged"])}
    cfg = load_run_config(cv["merged"] / "config.yaml")
    base, tokenizer, family = load_model(cfg, "cpu")  # the backbone alone, no adapter
    with torch.no_grad():
        for name, module in base.named_modules():
            key = f"base_model.model.{name}"
            if key in mean:
                module.weight += torch.as_tensor(mean[key])
            elif f"{key}.modules_to_save.default.weight" in mean:
                module.weight.copy_(torch.as_tensor(mean[f"{key}.modules_to_save.default.weight"]))
    assert sum(f"base_model.model.{n}" in mean for n, _ in base.named_modules()) == len(mean) - 1  # all but the head
    merged = load_run(cv["merged"])
    encoded = encode_pairs(cv["frame"].head(8), merged.tokenizer, cfg.format, family.template)
    batch = collate([encoded.input_ids[i] for i in range(8)], tokenizer.pad_token_id, family.padding_side)
    with torch.no_grad():
        expected = base.eval()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    got = merged.scorer.logits(batch["input_ids"], batch["attention_mask"])
    np.testing.assert_allclose(got.numpy(), expected.numpy(), rtol=1e-4, atol=1e-5)


def test_wsdm_predict_and_the_adapter_bundle_take_the_merged_run(cv, tmp_path):
    from wsdm_helpers.kaggle.adapter import bundle_adapter
    from wsdm_helpers.kaggle.checks import check_bundle
    from wsdm_helpers.modeling import load_run

    test = data.write_canonical(make_demo_frame(12, seed=9), tmp_path / "test.parquet")
    assert main(["predict", "--run", str(cv["merged"]), "--test", str(test), "--task", "wsdm", "--out",
                 str(tmp_path / "submission.csv"), "--set", "inference.devices=[cpu]"]) == 0
    assert len((tmp_path / "submission.csv").read_text().splitlines()) == 13
    bundle_adapter(cv["merged"], tmp_path / "bundle", base_model="/kaggle/input/llama", username="tester")
    assert check_bundle(tmp_path / "bundle").kind
    assert load_run(tmp_path / "bundle", base_source=str(cv["root"] / "llama")).config.lora.r == 4 * K


def _copy_cv(cv, tmp_path) -> Path:
    copy = tmp_path / "cv"
    shutil.copytree(cv["cv"], copy)
    return copy


def _edit_json(path: Path, **changes) -> None:
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


def test_folds_that_differ_are_refused_with_every_difference_named(cv, tmp_path, capsys):
    import yaml

    copy = _copy_cv(cv, tmp_path)
    _edit_json(copy / "fold-1" / "adapter" / "adapter_config.json", r=8, lora_alpha=16, target_modules=["q_proj"])
    config = yaml.safe_load((copy / "fold-2" / "config.yaml").read_text())
    config["model"]["source"], config["format"]["head"] = "other-model", "mcq"
    (copy / "fold-2" / "config.yaml").write_text(yaml.safe_dump(config))
    assert main(["merge-folds", str(copy), "--out", str(tmp_path / "merged")]) == 2
    err = capsys.readouterr().err
    for what in ("fold-1 differs from fold-0 in adapter r: 8 against 4", "adapter lora_alpha: 16 against 8",
                 "adapter target_modules", "fold-2 differs from fold-0 in base model (model.source): 'other-model'",
                 "head (format.head): 'mcq' against 'classifier'"):
        assert what in err, what
    assert "Traceback" not in err and not (tmp_path / "merged").exists()


def test_unmergeable_settings_and_unfinished_folds_are_refused(cv, tmp_path, capsys):
    copy = _copy_cv(cv, tmp_path)
    _edit_json(copy / "fold-0" / "adapter" / "adapter_config.json", use_dora=True)
    assert main(["merge-folds", str(copy), "--out", str(tmp_path / "m1")]) == 2
    assert "fold-0: use_dora=True cannot be merged" in capsys.readouterr().err
    shutil.rmtree(copy / "fold-2" / "adapter")
    assert main(["merge-folds", str(copy), "--out", str(tmp_path / "m2")]) == 2
    assert "fold-2 has no trained adapter" in capsys.readouterr().err
    assert main(["merge-folds", str(tmp_path), "--out", str(tmp_path / "m3")]) == 2
    assert "not a wsdm cv output folder" in capsys.readouterr().err
    assert main(["merge-folds", str(cv["cv"]), "--out", str(cv["merged"])]) == 2  # nothing is overwritten
    assert "not empty" in capsys.readouterr().err
