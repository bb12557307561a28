"""Inference: device dealing, TTA joined on id, time-budget planning, OOM back-off, resumable chunks.

A tiny random Llama classifier with a tokenizer trained in the session is saved in the run-folder
layout (config.yaml, model/, tokenizer/) and goes through load_run like a trained run.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from wsdm_helpers.config import FormatConfig, InferenceConfig, ModelConfig, RunConfig, save_yaml
from wsdm_helpers.demo_data import make_demo_frame
from wsdm_helpers.inference import (
    ChunkEvent,
    computed_tokens,
    deal_by_tokens,
    plan_budget,
    predict_proba,
    run_prediction,
)
from wsdm_helpers.tiny import build_tiny_model, pair_texts, train_tokenizer

CPU1 = InferenceConfig(devices=["cpu"], tta="none", max_tokens_per_batch=2048, max_batch_size=8).for_device("cpu")


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_demo_frame(40, seed=3)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, frame):
    root = tmp_path_factory.mktemp("run")
    tokenizer = train_tokenizer(pair_texts(frame), vocab_size=800, out_dir=root / "tokenizer")
    build_tiny_model("llama", tokenizer, root / "model", num_labels=2)
    cfg = RunConfig(model=ModelConfig(source=str(root / "model")), format=FormatConfig(max_length=256))
    save_yaml(cfg, root / "config.yaml")
    return root


def _cfg(**changes) -> InferenceConfig:
    return dataclasses.replace(CPU1, **changes)


# ---- pure helpers ---------------------------------------------------------------------------------
def test_deal_by_tokens_balances_tokens_not_rows():
    lengths = np.array([1000] + [10] * 100)
    parts = deal_by_tokens(lengths, 2)
    assert sorted(np.concatenate(parts).tolist()) == list(range(101))
    loads = [lengths[p].sum() for p in parts]
    assert loads == [1000, 1000]  # the long row alone on one device, the 100 short rows on the other
    assert all((np.diff(p) > 0).all() for p in parts)  # each part in original row order


def test_plan_budget_keeps_context_and_cuts_tta_first():
    lengths = np.full(1000, 512)
    cfg = _cfg(max_tokens_per_batch=4096, time_budget_minutes=10, safety_minutes=1)
    total = computed_tokens(lengths, cfg)  # 512k tokens
    # AB takes 100 s at this speed; 540 s budget leaves room for every swap
    roomy = plan_budget(lengths, 512, cfg, total / 100, 540.0, 0.0, wanted_swaps=1000)
    assert (roomy.max_length, roomy.swap_rows) == (512, 1000)
    # AB takes 400 s: 140 s left, 0.4 s per swapped row -> 350 rows
    tight = plan_budget(lengths, 512, cfg, total / 400, 540.0, 0.0, wanted_swaps=1000)
    assert tight.max_length == 512 and tight.swap_rows == 350
    assert tight.predicted_seconds == pytest.approx(540, abs=1)
    # AB alone takes 800 s: max_length must shrink, no time left for TTA
    short = plan_budget(lengths, 512, cfg, total / 800, 540.0, 0.0, wanted_swaps=1000)
    assert short.max_length < 512 and short.predicted_seconds <= 540


# ---- prediction with a tiny model -----------------------------------------------------------------
def test_two_cpu_workers_equal_one_row_by_row(run_dir, frame):
    one = run_prediction(run_dir, frame, _cfg())
    two = run_prediction(run_dir, frame, _cfg(devices=["cpu", "cpu"]))
    assert two.report.devices == ["cpu", "cpu"]
    assert one.predictions["id"].tolist() == frame["id"].tolist() == two.predictions["id"].tolist()
    np.testing.assert_allclose(one.predictions.iloc[:, 1:], two.predictions.iloc[:, 1:], atol=1e-5)
    assert one.report.real_tokens == two.report.real_tokens
    assert 0.5 < one.report.padding_efficiency <= 1.0


def test_swap_tta_is_joined_on_id_when_rows_are_shuffled(run_dir, frame):
    cfg = _cfg(tta="swap")
    straight = predict_proba(run_dir, frame, cfg)
    shuffled_frame = frame.sample(frac=1.0, random_state=1)
    shuffled = predict_proba(run_dir, shuffled_frame, cfg)
    assert shuffled["id"].tolist() == shuffled_frame["id"].tolist()  # the caller's order
    pd.testing.assert_frame_equal(straight.set_index("id").loc[shuffled["id"]].reset_index(), shuffled,
                                  check_exact=False, atol=1e-5)
    plain = predict_proba(run_dir, frame, _cfg())
    assert not np.allclose(plain["winner_model_a"], straight["winner_model_a"])  # the swap pass did count


def test_swap_tta_averages_in_the_configured_space(run_dir, frame):
    from wsdm_helpers.tta import PROB2, average_orientations, swap_pairs

    ab, ba = predict_proba(run_dir, frame, _cfg()), predict_proba(run_dir, swap_pairs(frame), _cfg())
    for average in ("probability", "log_odds"):
        swapped = predict_proba(run_dir, frame, _cfg(tta="swap", tta_average=average))
        expected = average_orientations(ab[PROB2].to_numpy(), ba[PROB2].to_numpy(), average)
        np.testing.assert_allclose(swapped[PROB2].to_numpy(), expected, atol=1e-5)


def test_selective_tta_swaps_only_the_uncertain_share(run_dir, frame):
    result = run_prediction(run_dir, frame, _cfg(tta="selective", tta_band=0.5, tta_share=0.25))
    assert result.report.swapped_rows == 10
    plain = predict_proba(run_dir, frame, _cfg())
    changed = ~np.isclose(plain["winner_model_a"], result.predictions["winner_model_a"], atol=1e-7)
    assert changed.sum() <= 10


def test_interrupted_run_resumes_and_matches(run_dir, frame, tmp_path):
    cfg = _cfg(tta="swap", chunk_rows=16, work_dir=str(tmp_path / "work"))
    expected = predict_proba(run_dir, frame, _cfg(tta="swap"))

    def stop_after_first_chunk(event: ChunkEvent):
        if event.pass_name == "ab" and event.index == 0:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        predict_proba(run_dir, frame, cfg, progress=stop_after_first_chunk)
    events: list[ChunkEvent] = []
    resumed = run_prediction(run_dir, frame, cfg, progress=events.append)
    assert [(e.pass_name, e.index, e.loaded) for e in events][:3] == [("ab", 0, True), ("ab", 1, False),
                                                                      ("ab", 2, False)]
    assert resumed.report.chunks_loaded == 1 and resumed.report.chunks_computed == 5
    pd.testing.assert_frame_equal(resumed.predictions, expected, check_exact=False, atol=1e-6)
    again = run_prediction(run_dir, frame, cfg)  # everything is on disk now
    assert again.report.chunks_computed == 0


class _OomAbove:
    """A scorer that fails like CUDA does when a batch has more than ``max_rows`` rows."""

    def __init__(self, scorer, max_rows: int):
        self.scorer, self.max_rows, self.calls = scorer, max_rows, []

    def __call__(self, input_ids, attention_mask):
        self.calls.append(len(input_ids))
        if len(input_ids) > self.max_rows:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.scorer(input_ids, attention_mask)


def test_out_of_memory_halves_the_batch_and_retries(run_dir, frame):
    from wsdm_helpers.modeling import load_run

    loaded = load_run(run_dir)
    expected = predict_proba(loaded, frame, _cfg())
    flaky = _OomAbove(loaded.scorer, max_rows=3)
    result = predict_proba(dataclasses.replace(loaded, scorer=flaky), frame, _cfg())
    np.testing.assert_allclose(result.iloc[:, 1:], expected.iloc[:, 1:], atol=1e-5)
    assert max(flaky.calls) == 8 and flaky.calls.count(8) == 1  # after one failure, big batches are split first


def test_time_budget_plan_is_reported(run_dir, frame):
    result = run_prediction(run_dir, frame, _cfg(tta="swap", time_budget_minutes=60, safety_minutes=1))
    plan = result.report.plan
    assert plan is not None and plan.max_length == 256 and plan.swap_rows == len(frame)
    assert result.report.swapped_rows == len(frame)
    assert "predicted" in result.report.to_text()


def test_wsdm_predict_writes_a_validated_submission(run_dir, frame, tmp_path):
    from wsdm_helpers.cli import main
    from wsdm_helpers.data import write_canonical

    test_path = write_canonical(frame, tmp_path / "test.parquet")
    out, probs = tmp_path / "submission.csv", tmp_path / "probs.parquet"
    code = main(["predict", "--run", str(run_dir), "--run", str(run_dir), "--weights", "1", "3", "--test",
                 str(test_path), "--out", str(out), "--probs-out", str(probs), "--set", "inference.tta=none",
                 "--set", "inference.devices=[cpu]", "--task", "wsdm"])  # a canonical test file has no layout
    assert code == 0
    submission = pd.read_csv(out, dtype={"id": str})
    assert submission.columns.tolist() == ["id", "winner"]
    assert submission["id"].tolist() == frame["id"].tolist()
    assert set(submission["winner"]) <= {"model_a", "model_b"}
    assert pd.read_parquet(probs).shape == (len(frame), 3)
    assert main(["predict", "--run", str(run_dir), "--test", str(test_path), "--out", str(out)]) == 2  # no task
    assert main(["predict", "--run", str(run_dir), "--test", str(test_path), "--out", str(out),
                 "--set", "format.max_length=64"]) == 2


def test_model_parallel_on_cpu_is_one_worker_with_the_same_predictions(run_dir, frame):
    result = run_prediction(run_dir, frame, _cfg(devices=["cpu", "cpu"], model_parallel=True))
    assert result.report.devices == ["cpu"]
    np.testing.assert_allclose(result.predictions.iloc[:, 1:], predict_proba(run_dir, frame, _cfg()).iloc[:, 1:],
                               atol=1e-5)


def test_batching_defaults_follow_the_device():
    """Null batching values take the device's defaults; values set by the user are kept."""
    cpu, gpu = InferenceConfig().for_device("cpu"), InferenceConfig().for_device("cuda")
    assert (cpu.max_tokens_per_batch, cpu.batch_overhead_tokens) == (2048, 16)
    assert (gpu.max_tokens_per_batch, gpu.batch_overhead_tokens) == (16384, 512)
    mine = InferenceConfig(max_tokens_per_batch=999, batch_overhead_tokens=0).for_device("cuda")
    assert (mine.max_tokens_per_batch, mine.batch_overhead_tokens) == (999, 0)
    with pytest.raises(ValueError, match="for_device"):  # a caller bug, not a config problem
        computed_tokens([10, 20], InferenceConfig())


def test_plan_batches_respects_the_budget_and_cuts_where_lengths_drop():
    from wsdm_helpers.inference import plan_batches

    lengths = np.array([100] * 4 + [50] * 4 + [300, 10])
    cfg = _cfg(max_tokens_per_batch=400, max_batch_size=8, batch_overhead_tokens=0)
    batches = plan_batches(lengths, cfg)
    assert sorted(np.concatenate(batches).tolist()) == list(range(10))
    assert batches[0].tolist() == [8]  # longest first
    assert all(len(b) * lengths[b].max() <= 400 or len(b) == 1 for b in batches)
    assert computed_tokens(lengths, cfg) == lengths.sum()  # free passes: no padding at all
    costly = _cfg(max_tokens_per_batch=400, max_batch_size=8, batch_overhead_tokens=1000)
    assert len(plan_batches(lengths, costly)) < len(batches)  # expensive passes: fewer, fuller batches



def test_work_dir_is_not_reused_by_another_model(run_dir, frame, tmp_path):
    from transformers import AutoTokenizer

    other = tmp_path / "other"
    build_tiny_model("llama", AutoTokenizer.from_pretrained(str(run_dir / "tokenizer")), other / "model", seed=1)
    (other / "tokenizer").mkdir()
    AutoTokenizer.from_pretrained(str(run_dir / "tokenizer")).save_pretrained(str(other / "tokenizer"))
    save_yaml(RunConfig(model=ModelConfig(source=str(other / "model")), format=FormatConfig(max_length=256)),
              other / "config.yaml")
    cfg = _cfg(work_dir=str(tmp_path / "work"))
    assert run_prediction(run_dir, frame, cfg).report.chunks_computed == 1
    assert run_prediction(other, frame, cfg).report.chunks_loaded == 0


def test_saved_plan_is_not_reused_for_another_test_set_or_budget(run_dir, frame, tmp_path):
    """The chunk store's key covers the test rows and the budget: a plan made for other rows or
    another deadline (its context maybe cut) is never applied."""
    cfg = _cfg(tta="swap", time_budget_minutes=60, safety_minutes=1, work_dir=str(tmp_path / "work"))
    first = run_prediction(run_dir, frame, cfg)
    assert len(list((tmp_path / "work").glob("plan-*.json"))) == 1
    assert run_prediction(run_dir, frame, cfg).report.chunks_computed == 0  # same job: resumed
    run_prediction(run_dir, frame.iloc[:30], cfg)
    run_prediction(run_dir, frame, dataclasses.replace(cfg, time_budget_minutes=30))
    assert len(list((tmp_path / "work").glob("plan-*.json"))) == 3
    assert first.report.rows_predicted == len(frame) and not first.report.stopped


def test_each_worker_batches_for_its_own_device():
    """In a mixed device list a CPU worker keeps CPU-sized batches: the job hands workers the batching
    values as given (null = per device), not values already resolved for the first device."""
    import torch

    from wsdm_helpers.inference import Worker

    seen = []

    def scorer(input_ids, attention_mask):
        seen.append(input_ids.numel())
        return torch.zeros(input_ids.shape[0], 2)

    worker = Worker(scorer=scorer, device=torch.device("cpu"), pad_id=0, padding_side="left")
    rows = [[1] * 500 for _ in range(40)]  # 20,000 tokens
    worker.score(rows, InferenceConfig(max_batch_size=64))
    assert max(seen) <= 2048  # CPU budget, although a GPU job would resolve 16,384
    seen.clear()
    worker.score(rows, InferenceConfig(max_batch_size=64).for_device("cuda"))
    assert max(seen) > 2048  # values a caller resolved are kept, as before


def test_each_gpu_worker_thread_makes_its_gpu_the_current_device(monkeypatch):
    """One thread per GPU: each sets its own device as the thread's current one before its first batch
    (kernels that read the current device, not their tensors', then run on the right GPU). CUDA is faked:
    set_device is recorded per thread, and each batch's forward notes its thread's current device."""
    import threading

    from wsdm_helpers.inference import Worker, score_rows

    current, batches = {}, []
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: current.__setitem__(threading.get_ident(), device))

    def forward(self, rows, float32=False):
        batches.append((str(self.device), str(current.get(threading.get_ident()))))
        return np.zeros((len(rows), 2))

    monkeypatch.setattr(Worker, "_forward", forward)
    workers = [Worker(scorer=None, device=torch.device("cuda", i), pad_id=0, padding_side="left") for i in (0, 1)]
    score_rows([[1] * 20] * 8, [str(i) for i in range(8)], workers, InferenceConfig(max_batch_size=2))
    assert {worker for worker, _ in batches} == {"cuda:0", "cuda:1"}
    assert all(worker == thread_current for worker, thread_current in batches), batches
