"""GPU paths checked on a CPU: model-parallel placement and loading (faked CUDA), the inference dtype
override and its family rules, float32 redo of non-finite rows, Gemma-2 attention rules, and the dtype
of frozen embeddings after k-bit preparation.

CUDA is faked by patching ``torch.cuda`` queries (capability, name, free memory); the model class's
``from_pretrained`` is wrapped so the call's placement arguments are recorded and the weights then
load on the CPU, where the rest of the path (adapter, tokenizer, scorer) runs for real.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from transformers import (  # noqa: E402
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    PreTrainedModel,
    TrainerCallback,
)

from wsdm_helpers import inference, modeling  # noqa: E402
from wsdm_helpers.config import FormatConfig, InferenceConfig, ModelConfig, RunConfig, save_yaml  # noqa: E402
from wsdm_helpers.demo_data import make_demo_frame  # noqa: E402
from wsdm_helpers.errors import ConfigError  # noqa: E402
from wsdm_helpers.inference import Worker, load_runs, model_parallel_placement, run_prediction  # noqa: E402
from wsdm_helpers.modeling import FAMILIES, PairScorer, load_run, resolve_dtype, restore_frozen_dtype  # noqa: E402
from wsdm_helpers.tiny import build_tiny_model, pair_texts, train_tokenizer  # noqa: E402

GIB = 2**30
TINY_PRESET = Path(__file__).resolve().parents[1] / "configs" / "tiny-test.yaml"


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_demo_frame(24, seed=5)


@pytest.fixture(scope="module")
def tokenizer(frame):
    return train_tokenizer(pair_texts(frame), vocab_size=600)


def _run_folder(root, tokenizer, family="llama", **model) -> str:
    """A run folder in the layout of a full fine-tune (config.yaml, model/, tokenizer/)."""
    tokenizer.save_pretrained(str(root / "tokenizer"))
    build_tiny_model(family, tokenizer, root / "model", num_labels=2)
    cfg = RunConfig(model=ModelConfig(source=str(root / "model"), **model), format=FormatConfig(max_length=192))
    save_yaml(cfg, root / "config.yaml")
    return root


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, tokenizer):
    return _run_folder(tmp_path_factory.mktemp("run"), tokenizer)


@pytest.fixture
def fake_t4s(monkeypatch):
    """Two 16 GiB T4s (sm 7.5) with 12 and 10 GiB free, as torch.cuda reports them."""
    free = {0: 12 * GIB, 1: 10 * GIB}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Tesla T4")
    monkeypatch.setattr(torch.cuda, "mem_get_info",
                        lambda device=None: (free[torch.device(device).index if not isinstance(device, int) else device],
                                             16 * GIB))
    return free


@pytest.fixture
def recorded_loads(monkeypatch):
    """Record from_pretrained's placement kwargs, then load on the CPU; a model moved with .to() fails."""
    calls = []

    def wrap(cls):
        original = cls.from_pretrained

        def from_pretrained(path, **kwargs):
            calls.append(dict(kwargs))
            for key in ("device_map", "max_memory", "quantization_config"):
                kwargs.pop(key, None)
            return original(path, **kwargs)
        monkeypatch.setattr(cls, "from_pretrained", from_pretrained)

    wrap(AutoModelForSequenceClassification)
    wrap(AutoModelForCausalLM)

    def no_move(self, *args, **kwargs):
        raise AssertionError(f"model moved with .to{args}: it should have been placed by from_pretrained")
    monkeypatch.setattr(PreTrainedModel, "to", no_move)
    return calls


def _pretend_bitsandbytes(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: object() if name == "bitsandbytes" else real(name, *a))


# ---- 1. model parallel ----------------------------------------------------------------------------
def test_model_parallel_placement_uses_every_gpu_with_a_per_gpu_budget(fake_t4s):
    first, device_map, max_memory = model_parallel_placement(["cuda:0", "cuda:1"])
    assert (first, device_map) == ("cuda:0", "balanced")
    share = inference.MODEL_PARALLEL_MEMORY_SHARE
    assert max_memory == {0: int(12 * GIB * share), 1: int(10 * GIB * share)}
    assert model_parallel_placement(["cuda:1"]) == ("cuda:1", {"": 1}, None)
    assert model_parallel_placement(["cuda:0", "cuda:0"]) == ("cuda:0", {"": 0}, None)
    assert model_parallel_placement(["cpu"]) == ("cpu", None, None)


@pytest.mark.parametrize("devices,device_map", [(["cuda:0", "cuda:1"], "balanced"), (["cuda:0"], {"": 0}),
                                                ([], "balanced")])
def test_model_parallel_loads_straight_onto_the_gpus(devices, device_map, fake_t4s, recorded_loads, run_dir):
    """No CPU-first load (the old path loaded the whole model on the CPU, then dispatched it; with one GPU it
    even stayed on the CPU): from_pretrained gets the device map, the GPUs' dtype, and nothing moves it."""
    runs = load_runs(run_dir, InferenceConfig(devices=devices, model_parallel=True))
    assert len(runs) == 1 and len(recorded_loads) == 1
    call = recorded_loads[0]
    assert call["device_map"] == device_map and call["dtype"] == torch.float16  # auto on a T4
    if device_map == "balanced":
        assert set(call["max_memory"]) == {0, 1}
    else:
        assert "max_memory" not in call


def test_model_parallel_4bit_run_is_quantized_on_the_gpus_not_refused(monkeypatch, fake_t4s, recorded_loads,
                                                                       tmp_path, tokenizer):
    """Both Gemma-2 presets are 4-bit: model_parallel used to fail with "needs a CUDA GPU" (CPU-first load)."""
    _pretend_bitsandbytes(monkeypatch)
    run = _run_folder(tmp_path, tokenizer, quantization="4bit", dtype="float16")
    for devices, device_map in ((["cuda:0", "cuda:1"], "balanced"), (["cuda:1"], {"": 1})):
        recorded_loads.clear()
        load_runs(run, InferenceConfig(devices=devices, model_parallel=True))
        call = recorded_loads[0]
        assert call["device_map"] == device_map
        assert call["quantization_config"].load_in_4bit
        assert call["quantization_config"].bnb_4bit_compute_dtype == torch.float16


def test_predict_quantization_override_loads_a_16bit_run_in_4bit(monkeypatch, fake_t4s, recorded_loads, tmp_path,
                                                                  tokenizer):
    """`wsdm predict --set model.quantization=4bit` (or 8bit) on a run trained in 16 bits: NF4 weights on the GPU."""
    from wsdm_helpers.cli import _inference_overrides

    _pretend_bitsandbytes(monkeypatch)
    run = _run_folder(tmp_path, tokenizer, dtype="float16")
    for kind in ("4bit", "8bit"):
        overrides = _inference_overrides([f"model.quantization={kind}"])
        assert overrides == {"quantization": kind}
        load_runs(run, InferenceConfig(devices=["cuda:0"], model_parallel=True, **overrides))
        quantization = recorded_loads[-1]["quantization_config"]
        assert (quantization.load_in_4bit, quantization.load_in_8bit) == (kind == "4bit", kind == "8bit")
    assert recorded_loads[-1]["device_map"] == {"": 0}
    load_runs(run, InferenceConfig(devices=["cuda:0"], model_parallel=True))
    assert "quantization_config" not in recorded_loads[-1]  # run: the run's own (none)
    with pytest.raises(ConfigError, match="'inference.quantization' must be one of"):
        inference.load_run_config(run / "config.yaml", {"inference.quantization": "nf5"})


def test_a_run_too_big_for_one_gpu_suggests_model_parallel_and_4bit(monkeypatch, fake_t4s, recorded_loads, run_dir):
    """One copy per T4 runs out of memory while loading: the error names the settings that make it fit."""
    def out_of_memory(path, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.75 GiB")

    monkeypatch.setattr(AutoModelForSequenceClassification, "from_pretrained", out_of_memory)
    with pytest.raises(ConfigError, match=r"does not fit \(one copy per device; out of memory while loading: CUDA "
                       r"out of memory. Tried to allocate 1.75 GiB\). Fix: wsdm predict --set "
                       r"inference.model_parallel=true .* or --set model.quantization=4bit"):
        load_runs(run_dir, InferenceConfig(devices=["cuda:0", "cuda:1"]))
    with pytest.raises(ConfigError, match=r"spread over cuda:0, cuda:1; .*Fix: wsdm predict --set model.quantization=4bit"):
        load_runs(run_dir, InferenceConfig(devices=["cuda:0", "cuda:1"], model_parallel=True))


def test_data_parallel_stays_the_default(fake_t4s, recorded_loads, monkeypatch, run_dir):
    """One copy per GPU unless model_parallel is asked for (the copies are then moved with .to(device))."""
    assert InferenceConfig().model_parallel is False
    moved = []
    monkeypatch.setattr(PreTrainedModel, "to", lambda self, device: moved.append(str(device)) or self)
    load_runs(run_dir, InferenceConfig(devices=["cuda:0", "cuda:1"]))
    assert [c.get("device_map") for c in recorded_loads] == [None, None] and moved == ["cuda:0", "cuda:1"]


# ---- 2. inference dtype override ------------------------------------------------------------------
def test_gemma3_float16_falls_back_at_prediction_and_is_logged(monkeypatch, caplog):
    gpu, gemma3 = torch.device("cuda", 0), FAMILIES["gemma3"]
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (7, 5))
    with pytest.raises(ConfigError, match="overflow float16"):
        resolve_dtype("float16", gpu, gemma3)  # training: an error
    with caplog.at_level(logging.WARNING, logger="wsdm_helpers.modeling"):
        assert resolve_dtype("float16", gpu, gemma3, fallback=True) == torch.float32  # T4
    assert "predicting in float32" in caplog.text
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    assert resolve_dtype("float16", gpu, gemma3, fallback=True) == torch.bfloat16  # A100


def test_float16_on_a_cpu_is_refused_with_the_fix(run_dir, frame):
    """It used to crash inside the score head (Half != float)."""
    with pytest.raises(ConfigError, match="float32 or auto"):
        resolve_dtype("float16", torch.device("cpu"))
    with pytest.raises(ConfigError, match="float32 or auto"):
        run_prediction(run_dir, frame, InferenceConfig(devices=["cpu"], dtype="float16", tta="none"))
    from wsdm_helpers.cli import _inference_overrides

    assert _inference_overrides(["model.dtype=float16", "inference.tta=none"]) == {"dtype": "float16", "tta": "none"}
    with pytest.raises(ConfigError, match="model.dtype and model.quantization"):
        _inference_overrides(["model.num_labels=3"])


@pytest.mark.parametrize("family,expected", [("gemma3", torch.float32), ("llama", torch.float16)])
def test_bf16_run_on_a_t4_falls_back_as_auto_does_and_is_logged(family, expected, fake_t4s, recorded_loads,
                                                                tmp_path, tokenizer, caplog):
    """A run trained in bf16 predicts on a T4 in what auto gives there (fp16; fp32 for Gemma 3), logged;
    training in bf16 on a T4 stays an error."""
    run = _run_folder(tmp_path, tokenizer, family=family, dtype="bfloat16")
    with caplog.at_level(logging.WARNING, logger="wsdm_helpers.modeling"):
        load_runs(run, InferenceConfig(devices=["cuda:0"], model_parallel=True))
    assert recorded_loads[-1]["dtype"] == expected
    assert "model.dtype=bfloat16: Tesla T4 (pre-Ampere)" in caplog.text
    assert f"predicting in {str(expected).replace('torch.', '')} instead" in caplog.text
    with pytest.raises(ConfigError, match="bfloat16 on Tesla T4"):
        resolve_dtype("bfloat16", torch.device("cuda", 0), FAMILIES[family])
    load_runs(run, InferenceConfig(devices=["cuda:0"], model_parallel=True, dtype="float16"))
    assert recorded_loads[-1]["dtype"] == expected  # Gemma 3 never fp16: fp32 on a T4


def test_dtype_override_changes_the_compute_dtype(run_dir, frame):
    cfg = InferenceConfig(devices=["cpu"], tta="none", progress_bar=False)
    fp32 = run_prediction(run_dir, frame, cfg)
    bf16 = run_prediction(run_dir, frame, dataclasses.replace(cfg, dtype="bfloat16"))
    runs = load_runs(run_dir, dataclasses.replace(cfg, dtype="bfloat16"))
    assert runs[0].model.get_input_embeddings().weight.dtype == torch.bfloat16
    diff = np.abs(fp32.predictions["winner_model_a"] - bf16.predictions["winner_model_a"]).max()
    assert 0 < diff < 0.05


# ---- 2. non-finite rows redone in float32 ---------------------------------------------------------
def _overflowing_fp16_run(run_dir):
    """The run in float16 with a score head whose logits overflow float16 (|logit| > 65504) but not float32;
    its weights (+-60000) are exact in float16."""
    run = load_run(run_dir)
    with torch.no_grad():
        run.model.score.weight.copy_(run.model.score.weight.sign() * 6e4)
    reference = PairScorer(run.model, "classifier")
    run.model.half()
    return run, reference


def test_non_finite_rows_are_redone_in_float32_and_counted(run_dir, frame):
    run, reference = _overflowing_fp16_run(run_dir)
    before = {n: p.detach().clone() for n, p in run.model.named_parameters()}
    worker = Worker(run.scorer, torch.device("cpu"), run.tokenizer.pad_token_id, "left", torch.float16, model=run.model)
    from wsdm_helpers.tokenization import encode_pairs

    enc = encode_pairs(frame, run.tokenizer, run.config.format, run.family.template)
    rows = enc.input_ids[:6]
    assert not np.isfinite(worker.score_batch(rows)).all()  # what float16 gives
    probs = worker.score(rows, InferenceConfig(max_batch_size=3).for_device("cpu"))
    assert np.isfinite(probs).all() and worker.nonfinite_rows == worker.redone_rows > 0
    assert all(torch.equal(before[n], p) and p.dtype == torch.float16 for n, p in run.model.named_parameters())
    run.model.float()
    from wsdm_helpers.batching import collate

    expected = [reference(**collate([r], run.tokenizer.pad_token_id, "left")).numpy()[0] for r in rows]
    np.testing.assert_allclose(probs, np.array(expected), atol=1e-3)


def test_redone_rows_are_reported_and_rows_that_cannot_be_redone_stay_nan(run_dir, frame):
    run, _ = _overflowing_fp16_run(run_dir)
    cfg = InferenceConfig(devices=["cpu"], tta="none", progress_bar=False)
    result = run_prediction(run, frame, cfg)
    assert np.isfinite(result.predictions.iloc[:, 1:].to_numpy()).all()
    assert result.report.nonfinite_rows == result.report.redone_rows > 0
    assert "redone in float32" in result.report.to_text()
    worker = Worker(run.scorer, torch.device("cpu"), run.tokenizer.pad_token_id, "left", torch.float16)  # no model
    out = worker.redo_in_float32([[5, 6, 7]], 2)
    assert np.isnan(out).all() and (worker.nonfinite_rows, worker.redone_rows) == (1, 0)


# ---- 3. Gemma-2 attention -------------------------------------------------------------------------
def _gemma2_cfg(attn: str) -> RunConfig:
    return RunConfig(model=ModelConfig(source="unused", attn_implementation=attn))


def test_gemma2_sdpa_is_an_error_naming_eager_and_fa2_keeps_soft_capping():
    gemma2, cpu = FAMILIES["gemma2"], torch.device("cpu")
    with pytest.raises(ConfigError, match="eager.*flash_attention_2"):
        modeling._load_kwargs(_gemma2_cfg("sdpa"), gemma2, torch.float32, cpu, 0)
    for attn in ("auto", "eager", "flash_attention_2"):
        kwargs = modeling._load_kwargs(_gemma2_cfg(attn), gemma2, torch.float32, cpu, 0)
        assert kwargs["attn_implementation"] == ("eager" if attn == "auto" else attn)
        assert gemma2.softcap_attr not in kwargs  # soft-capping is never switched off
    assert modeling._load_kwargs(_gemma2_cfg("sdpa"), FAMILIES["llama"], torch.float32, cpu, 0)[
        "attn_implementation"] == "sdpa"


# ---- 4. frozen embeddings after k-bit preparation -------------------------------------------------
@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_frozen_embeddings_go_back_to_the_compute_dtype(family, tokenizer, tmp_path):
    """peft's k-bit preparation upcasts every non-quantized weight to fp32 (simulated here: bitsandbytes
    needs CUDA); the embeddings and an untied lm_head go back to bf16, the residual stream stays fp32."""
    path = build_tiny_model(family, tokenizer, tmp_path / family, head="mcq")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    model.requires_grad_(False)
    tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
    assert tied == (family == "gemma2")
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        before = model(input_ids=ids).logits.float()
    restore_frozen_dtype(model, torch.bfloat16)
    assert model.get_input_embeddings().weight.dtype == torch.bfloat16
    assert model.get_output_embeddings().weight.dtype == torch.bfloat16
    norms = [p for n, p in model.named_parameters() if "norm" in n]
    assert norms and all(p.dtype == torch.float32 for p in norms)
    assert model.get_input_embeddings()(ids).dtype == torch.float32  # residual stream stays fp32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        after = model(input_ids=ids).logits.float()
    assert torch.isfinite(after).all()
    assert (after - before).abs().max() < 0.1 * before.abs().max()  # bf16 rounding of the embedding rows only


def test_trainable_or_full_precision_embeddings_are_left_alone(tokenizer, tmp_path):
    path = build_tiny_model("llama", tokenizer, tmp_path / "m", head="mcq")
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    restore_frozen_dtype(model, torch.bfloat16)  # requires_grad: trained in full, kept fp32
    assert model.get_input_embeddings().weight.dtype == torch.float32
    model.requires_grad_(False)
    restore_frozen_dtype(model, torch.float32)  # an fp32 run has nothing to restore
    assert model.get_input_embeddings().weight.dtype == torch.float32


# ---- 5. train.max_hours: a checkpoint before the Kaggle session ends ------------------------------
class _Clock:
    """A fake monotonic clock: every reading is ``tick`` seconds after the previous one."""

    def __init__(self, tick: float):
        self.now, self.tick = 0.0, tick

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


def test_time_limit_stops_with_a_checkpoint_when_the_next_step_might_not_fit():
    from types import SimpleNamespace

    from transformers import TrainerControl

    from wsdm_helpers.trainer import TimeLimit

    limit = TimeLimit(55, clock=_Clock(10))
    args, state, control = SimpleNamespace(world_size=1), SimpleNamespace(global_step=0, max_steps=100), TrainerControl()
    limit.on_train_begin(args, state, control)  # start 10, last 20
    for step in range(1, 4):
        state.global_step = step
        control = limit.on_step_end(args, state, control)
        # after step k: elapsed 10k, longest step 10 -> stops once 10k + 20 >= 55, i.e. after step 3 (not 1, 2)
        assert control.should_training_stop == control.should_save == (step == 3)
    assert limit.stopped_at == 3
    last = TimeLimit(1, clock=_Clock(10))
    last.on_train_begin(args, SimpleNamespace(global_step=0, max_steps=1), TrainerControl())
    assert not last.on_step_end(args, SimpleNamespace(global_step=1, max_steps=1), TrainerControl()).should_save


class _Steps(TrainerCallback):
    def __init__(self):
        self.seen = []

    def on_step_end(self, args, state, control, **kwargs):
        self.seen.append(state.global_step)


def test_max_hours_saves_a_checkpoint_and_the_next_session_resumes(tmp_path, frame, tokenizer):
    from wsdm_helpers.config import load_run_config
    from wsdm_helpers.data import write_canonical
    from wsdm_helpers.trainer import TimeLimit
    from wsdm_helpers.training import train

    data = tmp_path / "train.parquet"
    write_canonical(make_demo_frame(60, seed=1), data)
    model = build_tiny_model("llama", tokenizer, tmp_path / "model")
    cfg = load_run_config(TINY_PRESET, {"data.train_path": str(data), "model.source": str(model),
                                        "train.output_dir": str(tmp_path / "run")})
    first = train(cfg, callbacks=[TimeLimit(55, clock=_Clock(10))])  # stops after step 3 of 6
    assert first.metrics["stopped"] == "max_hours" and first.metrics["global_step"] == 3
    assert first.metrics["checkpoint"].endswith("checkpoint-3")  # saved although save_steps=2
    assert not (tmp_path / "run" / "metrics.json").exists() and not (tmp_path / "run" / "adapter").exists()
    steps = _Steps()
    second = train(cfg, callbacks=[steps])  # the next session: same command, resumes
    assert steps.seen == [4, 5, 6] and second.metrics["global_step"] == 6
    assert (tmp_path / "run" / "metrics.json").is_file()


def _tree(folder: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(folder)): (p.stat().st_mode, p.read_bytes()) for p in sorted(folder.rglob("*"))
            if p.is_file()}


class _AdapterAtFinalEval(TrainerCallback):
    """Notes whether the adapter was on disk when the final evaluation ran."""

    def __init__(self, run: Path):
        self.run, self.seen = run, None

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if "final_accuracy" in (metrics or {}):
            self.seen = (self.run / "adapter" / "adapter_model.safetensors").is_file()


def test_the_next_kaggle_session_resumes_from_the_attached_output_of_the_last(tmp_path, tokenizer):
    """Session 1 stops at max_hours; /kaggle/working is empty in session 2, which has session 1's output
    attached read-only as train.resume_from: it resumes at the saved step and writes the adapter."""
    import shutil
    import stat

    from wsdm_helpers.config import load_run_config
    from wsdm_helpers.data import write_canonical
    from wsdm_helpers.pipeline import run_kind
    from wsdm_helpers.trainer import TimeLimit
    from wsdm_helpers.training import train

    data = tmp_path / "train.parquet"
    write_canonical(make_demo_frame(60, seed=1), data)
    model = build_tiny_model("llama", tokenizer, tmp_path / "model")
    working = tmp_path / "kaggle" / "working"
    settings = {"data.train_path": str(data), "model.source": str(model), "train.output_dir": str(working / "run")}
    first = train(load_run_config(TINY_PRESET, settings), callbacks=[TimeLimit(55, clock=_Clock(10))])
    assert first.metrics["stopped"] == "max_hours" and first.metrics["global_step"] == 3
    assert run_kind(working / "run") is None  # no weights: not a finished run, but its curve and settings so far
    assert (working / "run" / "log_history.json").is_file() and (working / "run" / "config.yaml").is_file()
    attached = tmp_path / "kaggle" / "input" / "train-gemma-session-1"
    shutil.copytree(working, attached)
    shutil.rmtree(working)  # the next Kaggle session starts with an empty /kaggle/working
    for path in attached.rglob("*"):
        path.chmod(path.stat().st_mode & ~0o222)  # /kaggle/input is read-only
    before = _tree(attached)
    steps, at_final = _Steps(), _AdapterAtFinalEval(working / "run")
    second = train(load_run_config(TINY_PRESET, {**settings, "train.resume_from": str(attached)}),
                   callbacks=[steps, at_final])
    assert steps.seen == [4, 5, 6] and second.metrics["resumed_from_step"] == 3
    assert second.metrics["global_step"] == 6 and "final" in second.metrics
    assert at_final.seen is True  # the adapter was saved before the final evaluation
    assert (working / "run" / "metrics.json").is_file() and (working / "run" / "oof.parquet").is_file()
    assert _tree(attached) == before  # the attached output is only read
    for path in attached.rglob("*"):
        path.chmod(path.stat().st_mode | stat.S_IWUSR)
    changed = {**settings, "train.resume_from": str(attached), "train.output_dir": str(tmp_path / "other"),
               "train.learning_rate": 0.5}
    with pytest.raises(ConfigError, match=r"other training settings(.|\n)*train.learning_rate: 0.01 -> 0.5"):
        train(load_run_config(TINY_PRESET, changed))
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        train(load_run_config(TINY_PRESET, {**settings, "train.resume_from": str(working)}))  # finished: none kept


def _checkpoint_files(folder):
    """The files of a Trainer checkpoint but trainer_state.json, in their real formats (resume checks them)."""
    from safetensors.torch import save_file

    save_file({"lora_A.weight": torch.zeros(4, 8)}, str(folder / "adapter_model.safetensors"))
    torch.save({"state": {}}, folder / "optimizer.pt")


def test_resume_from_takes_the_latest_complete_checkpoint_and_names_ambiguous_outputs(tmp_path):
    import json
    import shutil

    from wsdm_helpers.training import import_previous_checkpoint

    previous = tmp_path / "input" / "session-1" / "runs" / "gemma" / "checkpoints"
    for step, complete in ((2, True), (4, True), (6, False)):  # checkpoint-6: the session ended while saving it
        (previous / f"checkpoint-{step}").mkdir(parents=True)
        _checkpoint_files(previous / f"checkpoint-{step}")
        if complete:
            state = {"global_step": step, "best_model_checkpoint": "/kaggle/working/runs/gemma/checkpoints/checkpoint-2"}
            (previous / f"checkpoint-{step}" / "trainer_state.json").write_text(json.dumps(state))
    (previous / "settings.json").write_text("{}")
    local = tmp_path / "working" / "checkpoints"
    assert import_previous_checkpoint(tmp_path / "input" / "session-1", local) == 4
    assert sorted(p.name for p in local.iterdir()) == ["checkpoint-2", "checkpoint-4", "settings.json"]
    state = json.loads((local / "checkpoint-4" / "trainer_state.json").read_text())
    assert state["best_model_checkpoint"] == str(local / "checkpoint-2")  # the copy, not the old session's path
    assert import_previous_checkpoint(tmp_path / "input" / "session-1", local) is None  # has it already
    shutil.copytree(previous.parent, tmp_path / "input" / "session-1" / "runs" / "qwen")
    with pytest.raises(ConfigError, match="several run folders with checkpoints: .*gemma.*qwen"):
        import_previous_checkpoint(tmp_path / "input" / "session-1", tmp_path / "w2")
    with pytest.raises(ConfigError, match="is not a folder"):
        import_previous_checkpoint(tmp_path / "input" / "missing", tmp_path / "w2")


def test_the_final_evaluation_is_skipped_when_off_or_when_it_would_not_end_in_time(tmp_path, tokenizer):
    from types import SimpleNamespace

    from wsdm_helpers.config import load_run_config
    from wsdm_helpers.data import write_canonical
    from wsdm_helpers.trainer import TimeLimit
    from wsdm_helpers.training import _final_eval_skipped, train

    data = tmp_path / "train.parquet"
    write_canonical(make_demo_frame(60, seed=1), data)
    model = build_tiny_model("llama", tokenizer, tmp_path / "model")
    cfg = load_run_config(TINY_PRESET, {"data.train_path": str(data), "model.source": str(model),
                                        "train.output_dir": str(tmp_path / "run"), "train.final_eval": False})
    result = train(cfg)
    assert result.metrics["final_eval_skipped"] == "train.final_eval=false" and "final" not in result.metrics
    assert (tmp_path / "run" / "adapter" / "adapter_model.safetensors").is_file()
    assert not (tmp_path / "run" / "oof.parquet").exists()

    limit = TimeLimit(100, clock=_Clock(10))
    limit.on_train_begin(None, None, None)  # start 10
    limit.on_evaluate(None, None, None, metrics={"eval_samples_per_second": 2.0})
    trainer = SimpleNamespace(callback_handler=SimpleNamespace(callbacks=[limit]), args=SimpleNamespace(world_size=1))
    evals = (None, SimpleNamespace(dataset=[0] * 160))  # 80 s at 2 rows/s
    on = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, final_eval=True))
    assert _final_eval_skipped(on, trainer, evals) is None  # 100 - (30 - 10) = 80 s left: it fits
    assert _final_eval_skipped(on, trainer, evals).startswith("train.max_hours: about 80s needed")  # 70 s left


@pytest.mark.parametrize("name", ["gemma2-9b-qlora-t4", "gemma2-9b-2xt4", "qwen2.5-14b-qlora"])
def test_kaggle_presets_evaluate_briefly_and_stop_before_the_session_ends(name):
    """A 12 h Kaggle session: periodic evaluations of a few hundred rows in one orientation every few
    hundred steps, and a checkpointed stop before the limit; the derived step time is in the comments."""
    from wsdm_helpers.config import load_run_config

    path = TINY_PRESET.parent / f"{name}.yaml"
    t = load_run_config(path).train
    assert not t.eval_swap and t.max_eval_rows <= 500 and t.eval_steps >= 200
    assert t.max_hours is not None and t.max_hours <= 11.5
    assert "TFLOP/s" in path.read_text() and "s per step" in path.read_text()


def test_notebook_and_pipeline_take_the_dtype_override(run_dir):
    """notebooks/inference.ipynb's ``dtype`` parameter reaches each run as the inference override."""
    import json

    from wsdm_helpers.pipeline import inference_settings

    assert inference_settings(run_dir, {"dtype": "bfloat16"}).dtype == "bfloat16"
    with pytest.raises(ConfigError, match="dtype"):
        inference_settings(run_dir, {"dtype": "half"})
    nb = json.loads((TINY_PRESET.parents[1] / "notebooks" / "inference.ipynb").read_text())
    code = "".join("".join(c["source"]) for c in nb["cells"])
    assert 'dtype: "Optional[str]" = None' in code and "dtype=dtype" in code
