"""Distillation: the loss against a hand computation, soft labels joined on id and flipped with the pair."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from wsdm_helpers import data  # noqa: E402
from wsdm_helpers.cli import parse_sets  # noqa: E402
from wsdm_helpers.config import load_run_config  # noqa: E402
from wsdm_helpers.demo_data import make_demo_frame  # noqa: E402
from wsdm_helpers.distill import attach_soft_labels, pair_loss  # noqa: E402
from wsdm_helpers.errors import ConfigError, DataError  # noqa: E402
from wsdm_helpers.tiny import build_tiny_model, pair_texts, train_tokenizer  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
TINY_PRESET = REPO / "configs" / "tiny-test.yaml"


def hand_loss(logits, labels, soft, t, mix, smoothing=0.0):
    """The documented formula, row by row in plain numpy."""
    total = 0.0
    for z, y, p in zip(np.asarray(logits, float), labels, soft, strict=True):
        c = len(z)
        row = 0.0
        if not np.isnan(p).any():
            teacher = p ** (1 / t) / (p ** (1 / t)).sum()
            student = np.exp(z / t) / np.exp(z / t).sum()
            row += mix * t * t * float((teacher * np.log(teacher / student)).sum())
        if y >= 0:
            target = np.full(c, smoothing / c)
            target[y] += 1 - smoothing
            row += (1 - mix) * float(-(target * (z - np.log(np.exp(z).sum()))).sum())
        total += row
    return total / len(labels)


@pytest.mark.parametrize("classes", [2, 3])
def test_pair_loss_equals_the_hand_computation(classes):
    rng = np.random.default_rng(classes)
    logits = rng.normal(size=(6, classes)) * 2
    soft = rng.dirichlet(np.ones(classes), size=6)
    soft[1] = np.nan  # hard label only
    labels = np.array([0, 1, -1, classes - 1, -1, 0])  # -1: soft label only
    for t, mix, smoothing in ((1.0, 0.5, 0.0), (5.0, 0.45, 0.0), (2.0, 0.3, 0.1)):
        got = pair_loss(torch.tensor(logits, dtype=torch.float32), torch.tensor(labels),
                        torch.tensor(soft, dtype=torch.float32), t, mix, smoothing)
        assert float(got) == pytest.approx(hand_loss(logits, labels, soft, t, mix, smoothing), rel=1e-5)
    plain = pair_loss(torch.tensor(logits), torch.tensor(np.abs(labels)))
    assert float(plain) == pytest.approx(hand_loss(logits, np.abs(labels), np.full_like(soft, np.nan), 1, 0), rel=1e-6)
    with pytest.raises(DataError, match="soft labels"):
        pair_loss(torch.tensor(logits), torch.tensor(labels))


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """Demo pairs (a third unlabelled), a teacher soft-label file for all of them, tiny models."""
    root = tmp_path_factory.mktemp("distill")
    frame = make_demo_frame(60, seed=3)
    frame.loc[frame.index[40:], "label"] = -1
    data.write_canonical(frame, root / "train.parquet")
    rng = np.random.default_rng(0)
    for classes in (2, 3):
        probs = rng.dirichlet(np.ones(classes), size=len(frame))
        cols = ["winner_model_a", "winner_model_b", "winner_tie"][:classes]
        pd.DataFrame({"id": frame["id"], **dict(zip(cols, probs.T, strict=True))}).to_parquet(root / f"soft{classes}.parquet")
    tokenizer = train_tokenizer(pair_texts(frame) + ["Answer: A", "Answer: B", "Answer: C"] * 30, vocab_size=400)
    models = {(head, c): build_tiny_model("qwen2", tokenizer, root / f"model-{head}-{c}", num_labels=c,
                                          head="mcq" if head == "mcq" else "classifier")
              for head in ("classifier", "mcq") for c in (2, 3)}
    return root, frame, models


def _cfg(setup, head, classes, out, *extra):
    root, _, models = setup
    return load_run_config(TINY_PRESET, parse_sets([
        f"data.train_path={root / 'train.parquet'}", f"model.source={models[head, classes]}", f"format.head={head}",
        f"model.num_labels={classes}", f"train.output_dir={out}", f"train.distill.soft_labels=[{root / f'soft{classes}.parquet'}]",
        "train.distill.temperature=3", "train.distill.mix=0.4", "train.label_smoothing=0.1", *extra]))


@pytest.mark.parametrize("head,classes", [("classifier", 2), ("classifier", 3), ("mcq", 2), ("mcq", 3)])
def test_trainer_loss_on_a_fixed_batch_equals_the_hand_computation(setup, head, classes, tmp_path):
    """The PairTrainer's training loss on real tiny models of both heads, 2 and 3 classes."""
    from wsdm_helpers import training
    from wsdm_helpers.modeling import answer_ids_for, class_logits, resolve_model

    cfg = _cfg(setup, head, classes, tmp_path / "run")
    resolved = resolve_model(cfg)
    family, tokenizer = resolved.family, resolved.tokenizer
    cfg = training.dataclasses.replace(cfg, format=training.dataclasses.replace(cfg.format, template=family.template))
    answer_ids = answer_ids_for(tokenizer, cfg.format, classes)
    train_frame, _ = training.split_data(cfg)
    dataset = training._train_dataset(train_frame, tokenizer, cfg, family.template)
    trainer = training._make_trainer(cfg, resolved, answer_ids, dataset, None, tmp_path / "ck", [], 4, 1, True)
    picks = [0, 1, len(dataset) - 1] + [i for i in range(len(dataset)) if dataset[i]["labels"] < 0][:3]
    batch = trainer.data_collator([dataset[i] for i in picks])
    model = trainer.model.train()
    loss = trainer.compute_loss(model, batch)
    with torch.no_grad():
        logits = class_logits(model, head, answer_ids, batch["input_ids"], batch["attention_mask"]).numpy()
    expected = hand_loss(logits, batch["labels"].numpy(), batch["soft"].numpy(), 3.0, 0.4, 0.1)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-4)
    assert (batch["labels"].numpy() < 0).any() and not torch.isnan(batch["soft"]).any()


def test_swapped_rows_carry_flipped_soft_labels(setup, tmp_path):
    from wsdm_helpers import training
    from wsdm_helpers.modeling import resolve_model
    from wsdm_helpers.tokenization import encode_pairs
    from wsdm_helpers.tta import swap_pairs

    cfg = _cfg(setup, "classifier", 3, tmp_path / "run")
    resolved = resolve_model(cfg)
    family, tokenizer = resolved.family, resolved.tokenizer
    train_frame, _ = training.split_data(cfg)
    dataset = training._train_dataset(train_frame, tokenizer, cfg, family.template)
    n = len(train_frame)
    assert len(dataset) == 2 * n
    soft = pd.read_parquet(setup[0] / "soft3.parquet").set_index("id")
    swapped_ids = encode_pairs(swap_pairs(train_frame), tokenizer, cfg.format, family.template).input_ids
    for i in range(n):
        row_id = dataset.encoded.ids[i]
        assert dataset.encoded.ids[n + i] == row_id
        a, b, tie = soft.loc[row_id, ["winner_model_a", "winner_model_b", "winner_tie"]]
        assert np.allclose(dataset[i]["soft"], [a, b, tie]) and np.allclose(dataset[n + i]["soft"], [b, a, tie])
        assert dataset[n + i]["input_ids"] == swapped_ids[i]
        label = dataset[i]["labels"]
        assert dataset[n + i]["labels"] == {0: 1, 1: 0}.get(label, label)


def test_soft_label_file_problems_are_clear(setup, tmp_path):
    root, frame, _ = setup
    with pytest.raises(ConfigError, match="2 classes.*num_labels=3"):
        attach_soft_labels(frame, root / "soft2.parquet", 3)
    partial = pd.read_parquet(root / "soft2.parquet").iloc[:45]
    partial.to_parquet(tmp_path / "partial.parquet")
    with pytest.raises(DataError, match=f"15 unlabeled training row.*{frame['id'].iloc[45]}"):
        attach_soft_labels(frame, tmp_path / "partial.parquet", 2)
    rest = pd.read_parquet(root / "soft2.parquet").iloc[45:]
    rest.assign(label=0, fold=1).to_parquet(tmp_path / "rest.parquet")  # e.g. an oof.parquet: extra columns ignored
    both = attach_soft_labels(frame, [tmp_path / "partial.parquet", tmp_path / "rest.parquet"], 2)
    assert not both[["soft_a", "soft_b"]].isna().any().any()
    with pytest.raises(DataError, match="already have a soft label in .*partial.parquet"):
        attach_soft_labels(frame, [tmp_path / "partial.parquet", root / "soft2.parquet"], 2)
    joined = attach_soft_labels(frame, root / "soft2.parquet", 2).set_index("id")
    assert np.allclose(joined.loc[frame["id"], "soft_b"], pd.read_parquet(root / "soft2.parquet").set_index("id").loc[
        frame["id"], "winner_model_b"])
    with pytest.raises(ConfigError, match="unlabeled rows"):  # no soft labels: unlabelled rows cannot train
        from wsdm_helpers.training import split_data
        split_data(load_run_config(TINY_PRESET, parse_sets([f"data.train_path={root / 'train.parquet'}", "model.source=x"])))


def test_distilled_run_trains_on_unlabelled_rows_and_validates_on_labelled_ones(setup, tmp_path):
    from wsdm_helpers.training import train

    result = train(_cfg(setup, "classifier", 2, tmp_path / "run", "train.max_steps=4", "train.eval_steps=2",
                        "train.save_steps=2"))
    oof = pd.read_parquet(tmp_path / "run" / "oof.parquet")
    assert (oof["label"] >= 0).all() and result.metrics["global_step"] == 4
    assert result.metrics["train_rows"] > 2 * 20  # the 20 unlabelled rows trained too (with swap copies)
    history = json.loads((tmp_path / "run" / "log_history.json").read_text())
    assert all(np.isfinite(e["loss"]) for e in history if "loss" in e)


def test_pseudo_labels_for_unlabelled_pairs_then_a_distilled_student(setup, tmp_path):
    """Teacher -> `wsdm pseudo-label` on a WSDM-layout file without winners -> student on labels + soft labels."""
    from wsdm_helpers import cli
    from wsdm_helpers.inference import predict_proba
    from wsdm_helpers.training import train

    root, frame, models = setup
    labelled, unlabelled = frame.iloc[:40], frame.iloc[40:]
    data.write_canonical(labelled, tmp_path / "labelled.parquet")
    pd.DataFrame({"id": unlabelled["id"], **{c: unlabelled[c].str[0] for c in ("prompt", "response_a", "response_b")},
                  "model_a": "x", "model_b": "y", "language": unlabelled["language"]}).to_parquet(tmp_path / "extra.parquet")
    teacher = load_run_config(TINY_PRESET, parse_sets([f"data.train_path={tmp_path / 'labelled.parquet'}", "data.fold=-1",
                                            f"model.source={models['classifier', 2]}", f"train.output_dir={tmp_path / 't'}",
                                            "train.max_steps=2", "train.save_steps=2"]))
    train(teacher)
    assert cli.main(["pseudo-label", "--run", str(tmp_path / "t"), "--data", str(tmp_path / "extra.parquet"),
                     "--out", str(tmp_path / "soft.parquet")]) == 0
    soft = pd.read_parquet(tmp_path / "soft.parquet")
    assert sorted(soft["id"]) == sorted(unlabelled["id"])
    extra, _ = data.read_pairs(tmp_path / "extra.parquet")
    assert (extra["label"] == -1).all()
    again = predict_proba(tmp_path / "t", extra, load_run_config(tmp_path / "t" / "config.yaml").inference)  # swap TTA
    assert np.allclose(soft.set_index("id").loc[again["id"], "winner_model_a"], again["winner_model_a"], atol=1e-6)
    student = load_run_config(TINY_PRESET, parse_sets([
        f"data.train_path={tmp_path / 'labelled.parquet'}", f"data.extra_train_paths=[{tmp_path / 'extra.parquet'}]",
        f"model.source={models['classifier', 2]}", f"train.output_dir={tmp_path / 's'}", "train.max_steps=2",
        "train.eval_steps=2", "train.save_steps=2", f"train.distill.soft_labels=[{tmp_path / 'soft.parquet'}]"]))
    result = train(student)
    oof = pd.read_parquet(tmp_path / "s" / "oof.parquet")
    assert set(oof["id"]) <= set(labelled["id"]) and result.metrics["train_rows"] == 2 * (60 - len(oof))
