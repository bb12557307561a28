"""GPU check: the CUDA paths of training and inference on one GPU, in at most 8 minutes, without network.

One line per check, ``[SECTION] what: STATUS details`` (STATUS: OK, FAIL, INFO for a measurement, SKIP):

* DTYPES   dtype of every trainable and frozen tensor after ``load_model(training=True)`` in bf16, fp16 and
           4-bit (trainable must be fp32; after k-bit preparation the embeddings are back in the compute dtype)
* CURVES   16-bit LoRA vs fp32 LoRA vs QLoRA learning curves on the demo preset, 2 seeds each (compact
           Gemma 3 270M from the devcheck kit: ``--stage``); and the T4's way, fp16 with a GradScaler, beside
           fp32 on a tiny Gemma-2 (Gemma 3 refuses fp16): the final losses must agree
* MEMORY   peak reserved memory of the T4 preset (configs/gemma2-9b-qlora-t4.yaml) from 2- and 4-layer Gemma-2 9B
           shapes, extrapolated to 42 layers: training, and scoring one batch of the preset's inference tokens
           without the KV cache (as the package scores) and with it (as it did)
* PADDING  a left-padded batch against each row alone, forward and backward, in half precision
* PARALLEL one copy spread by accelerate ("balanced") against one copy placed whole (4-bit on a GPU); the
           dtype override must change the dtype rows are scored in; no row may stay NaN/inf
* SCALER   fp16 training: the GradScaler exists, steps are taken and every trainable tensor moves
* TESTS    tests/test_cuda.py with the kit's site/ on its path; a skipped test is a FAIL

    python benchmarks/gpu_check.py [--quick] [--dry-run] [--budget-s 480] [--stage .stage] [--sections A,B]
    make gpu-check

``--stage`` is a folder holding the GPU check kit (beside the clone in ``../shared/devcheck/`` on the
project's machines; ``gemma3c/``: the compact Gemma 3 270M; ``site/``: bitsandbytes for CUDA 13, put first on
sys.path and on the TESTS subprocess's PYTHONPATH). Every section skips itself when a piece is missing or the
time budget is spent. ``--dry-run`` runs small versions of every section on the CPU (the test suite runs it,
so this script cannot rot). The last lines printed are one JSON object with every check, then
``gpu-check: N passed, M failed``.
"""
from __future__ import annotations

import argparse
import collections
import dataclasses
import importlib.util
import json
import logging
import lzma
import os
import subprocess
import sys
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
T4_USABLE_GIB = 14.6  # a 16 GB T4 less the CUDA context and allocator reserve
NF4_CODES = [-1.0, -0.6961928009986877, -0.5250730514526367, -0.39491748809814453, -0.28444138169288635,
             -0.18477343022823334, -0.09105003625154495, 0.0, 0.07958029955625534, 0.16093020141124725,
             0.24611230194568634, 0.33791524171829224, 0.44070982933044434, 0.5626170039176941,
             0.7229568362236023, 1.0]  # bitsandbytes' NF4 code book
SECTIONS = ("ENV", "DTYPES", "CURVES", "MEMORY", "PADDING", "PARALLEL", "SCALER", "TESTS")
NEEDS_S = {"ENV": 0, "DTYPES": 20, "CURVES": 60, "MEMORY": 120, "PADDING": 25, "PARALLEL": 30, "SCALER": 30,
           "TESTS": 45}


@dataclasses.dataclass
class Check:
    """State shared by the sections: device, time budget, fixtures, and every result line."""

    dry: bool
    quick: bool
    budget_s: float
    work: Path
    stage: Path | None
    results: list = dataclasses.field(default_factory=list)
    t0: float = dataclasses.field(default_factory=time.monotonic)

    def __post_init__(self):
        import torch

        self.cuda = torch.cuda.is_available() and not self.dry
        self.dev = "cuda:0" if self.cuda else "cpu"
        self.bnb = self.cuda and importlib.util.find_spec("bitsandbytes") is not None
        ampere = self.cuda and torch.cuda.get_device_capability()[0] >= 8
        self.half = "bfloat16" if ampere or not self.cuda else "float16"  # bf16 on a CPU: the dry run's half

    def left(self) -> float:
        return self.budget_s - (time.monotonic() - self.t0)

    def line(self, section: str, what: str, status: str, detail: str = "", **figures) -> None:
        print(f"[{section}] {what}: {status} {detail}".rstrip(), flush=True)
        self.results.append({"section": section, "check": what, "status": status, **figures})

    def run(self, name: str, fn) -> None:
        if self.left() < NEEDS_S[name]:
            self.line(name, "section", "SKIP", f"{self.left():.0f}s left < {NEEDS_S[name]}s")
            return
        started = time.monotonic()
        try:
            fn(self)
        except Exception as exc:  # one broken section must not hide the others
            self.line(name, "section", "FAIL", f"{type(exc).__name__}: {str(exc)[:300]}")
            traceback.print_exc(limit=3)
        print(f"[{name}] ({time.monotonic() - started:.0f}s, {self.left():.0f}s left)", flush=True)

    # ---- fixtures -----------------------------------------------------------------------------------
    @property
    def demo(self):
        if not hasattr(self, "_demo"):
            from wsdm_helpers.data import write_canonical
            from wsdm_helpers.demo_data import make_demo_frame
            from wsdm_helpers.tiny import pair_texts, train_tokenizer

            frame = make_demo_frame(80, seed=1)
            write_canonical(frame, self.work / "train80.parquet")
            tok = train_tokenizer(pair_texts(frame) + ["Answer: A", "Answer: B"] * 50, vocab_size=500)
            self._demo = (frame, self.work / "train80.parquet", tok)
        return self._demo

    def tiny(self, family: str, head: str = "classifier") -> Path:
        from wsdm_helpers.tiny import build_tiny_model

        out = self.work / f"tiny-{family}-{head}"
        return out if (out / "config.json").exists() else build_tiny_model(family, self.demo[2], out, head=head)

    def tiny_cfg(self, source, out, *overrides):
        from wsdm_helpers.config import load_run_config

        return load_run_config(REPO / "configs/tiny-test.yaml", _sets(
            f"data.train_path={self.demo[1]}", f"model.source={source}", f"train.output_dir={out}",
            "train.resume=false", *overrides))


def _sets(*items: str) -> dict:
    """``key.path=value`` texts as typed config overrides (as ``--set`` reads them)."""
    from wsdm_helpers.cli import parse_sets

    return parse_sets(list(items))


def _dtypes(model, trainable: bool) -> dict[str, int]:
    return dict(collections.Counter(str(p.dtype).replace("torch.", "") for p in model.parameters()
                                    if p.requires_grad == trainable))


def _name(dtype) -> str:
    return str(dtype).replace("torch.", "")


# ---- sections ---------------------------------------------------------------------------------------
def env(c: Check) -> None:
    import accelerate
    import peft
    import torch
    import transformers

    bnb = "absent"
    if importlib.util.find_spec("bitsandbytes"):
        try:
            import bitsandbytes
            bnb = bitsandbytes.__version__
        except Exception as exc:
            bnb = f"import failed: {exc}"
    gpu = f"{torch.cuda.get_device_name()} sm{torch.cuda.get_device_capability()}" if c.cuda else "cpu"
    c.line("ENV", "versions", "INFO", f"torch {torch.__version__} (cuda {torch.version.cuda}) transformers "
           f"{transformers.__version__} peft {peft.__version__} accelerate {accelerate.__version__} bitsandbytes "
           f"{bnb}; device {gpu}; half={c.half}; dry_run={c.dry}")


def dtypes(c: Check) -> None:
    """Trainable weights fp32 in every recipe; frozen ones in the compute dtype (4-bit: packed uint8)."""
    from wsdm_helpers import modeling

    rows = [("llama", "classifier", "float32", "none"), ("gemma3", "mcq", c.half, "none")]
    if c.cuda:
        rows += [("llama", "classifier", "float16", "none"), ("gemma2", "classifier", "float16", "4bit"),
                 ("qwen2", "mcq", "float16", "4bit"), ("gemma3", "classifier", c.half, "4bit")]
    for family, head, dtype, quant in rows:
        what = f"{family} {head} {dtype} quant={quant}"
        if quant != "none" and not c.bnb:
            c.line("DTYPES", what, "SKIP", "needs CUDA and bitsandbytes")
            continue
        cfg = c.tiny_cfg(c.tiny(family, head), c.work / "dtypes", f"format.head={head}", f"model.dtype={dtype}",
                         f"model.quantization={quant}", "model.gradient_checkpointing=true")
        model, _, _ = modeling.load_model(cfg, c.dev, training=True)
        trainable, frozen = _dtypes(model, True), _dtypes(model, False)
        emb = model.get_input_embeddings().weight.dtype
        out = model.get_output_embeddings() if head == "mcq" else None
        expected_emb = dtype if quant == "none" or dtype == "float32" else dtype  # k-bit: back to compute dtype
        ok = set(trainable) == {"float32"} and _name(emb) == expected_emb
        if out is not None and not out.weight.requires_grad:
            ok = ok and _name(out.weight.dtype) == expected_emb
        c.line("DTYPES", what, "OK" if ok else "FAIL",
               f"trainable={trainable} frozen={frozen} embeddings={_name(emb)}"
               + (f" lm_head={_name(out.weight.dtype)}" if out is not None else ""))
        del model
        _empty_cache(c)


def unpack_compact_gemma3(pack: Path, out: Path) -> Path:
    """The devcheck kit's compact Gemma 3 270M as an HF folder: NF4 codes (two per byte, low nibble first,
    blocks of 128 with an absmax each) dequantized, the kept embedding rows put back (others zero)."""
    import numpy as np
    import torch
    from safetensors.torch import load_file, save_file

    if (out / "model.safetensors").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    shapes = json.loads((pack / "shapes.json").read_text())
    body, codebook, state = load_file(str(pack / "body.safetensors")), torch.tensor(NF4_CODES), {}
    for name, shape in shapes["nf4"].items():
        packed = body.pop(f"{name}.codes")
        codes = torch.stack([packed & 15, packed >> 4], dim=1).flatten().long()
        blocks = codebook[codes].view(-1, 128) * body.pop(f"{name}.absmax").float()[:, None]
        state[name] = blocks.flatten()[: int(np.prod(shape))].view(shape).contiguous()
    state.update({k: v.contiguous() for k, v in body.items()})
    rows = load_file(str(pack / "embed.safetensors"))
    embed = torch.zeros(shapes["embed"])
    embed[rows["ids"]] = rows["rows"].float()
    state["model.embed_tokens.weight"] = embed
    for f in ("config.json", "tokenizer_config.json", "generation_config.json"):
        if (pack / f).is_file():
            (out / f).write_bytes((pack / f).read_bytes())
    (out / "tokenizer.json").write_bytes(lzma.decompress((pack / "tokenizer.json.xz").read_bytes()))
    np.save(out / "kept_ids.npy", rows["ids"].numpy())
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _curve_setup(c: Check):
    """(preset, base overrides, steps, arms): the compact Gemma 3 on the demo data on a GPU; a tiny Llama
    for a few steps in the dry run."""
    if c.dry:
        overrides = [f"data.train_path={c.demo[1]}", f"model.source={c.tiny('llama')}"]
        overrides += ["train.eval_steps=2", "train.save_steps=2"]
        return REPO / "configs/tiny-test.yaml", overrides, 2, [("lora-16bit", c.half, "none"), ("fp32", "float32", "none")]
    pack = c.stage / "gemma3c" if c.stage else None
    if pack is None or not (pack / "body.safetensors").is_file():
        return None
    import numpy as np

    from wsdm_helpers import modeling
    from wsdm_helpers.config import load_run_config
    from wsdm_helpers.data import read_pairs
    from wsdm_helpers.demo_data import write_demo_dataset
    from wsdm_helpers.tokenization import encode_pairs

    source = unpack_compact_gemma3(pack, c.work / "gemma3c-hf")
    write_demo_dataset(c.work / "bench-data", n_train=2000, n_test=400)
    preset = REPO / "configs/cpu-demo-gemma3-270m.yaml"
    frame, _ = read_pairs(c.work / "bench-data" / "train.parquet", ties="keep")
    tok = modeling.load_tokenizer(source, modeling.family_for("gemma3"))
    used = {i for r in encode_pairs(frame, tok, load_run_config(preset).format, "gemma").input_ids for i in r}
    missing = len(used - set(np.load(source / "kept_ids.npy").tolist()))
    c.line("CURVES", "compact Gemma 3 covers the demo data", "OK" if not missing else "FAIL",
           f"{missing} token ids without an embedding row")
    arms = [("lora-16bit", c.half, "none"), ("fp32", "float32", "none"), ("qlora-4bit", c.half, "4bit")]
    steps = 80 if c.quick else 160
    return preset, [f"model.source={source}", f"data.train_path={c.work / 'bench-data' / 'train.parquet'}"], steps, arms


def curves(c: Check) -> None:
    """Is a 16-bit LoRA run on the demo preset learning like fp32 and QLoRA? (2 seeds each)."""
    from wsdm_helpers.config import load_run_config
    from wsdm_helpers.training import train

    t4_curves(c)
    setup = _curve_setup(c)
    if setup is None:
        c.line("CURVES", "learning curves", "SKIP", "no compact Gemma 3 (pass --stage with gemma3c/)")
        return
    preset, base, steps, arms = setup
    reserve = 0 if c.dry else 230  # seconds kept for the sections after this one
    finals = collections.defaultdict(list)
    for name, dtype, quant in arms:
        for seed in (42,) if c.dry else (42, 43):
            what = f"{name} seed={seed}"
            if quant != "none" and not c.bnb:
                c.line("CURVES", what, "SKIP", "needs CUDA and bitsandbytes")
                continue
            if c.left() - reserve < 30:
                c.line("CURVES", what, "SKIP", "out of time")
                continue
            started = time.monotonic()
            cfg = load_run_config(preset, _sets(*base, f"train.output_dir={c.work / 'curves' / f'{name}-{seed}'}",
                                                f"train.max_steps={steps}", f"model.dtype={dtype}",
                                                f"model.quantization={quant}", f"train.seed={seed}", "train.resume=false"))
            metrics = train(cfg).metrics
            final = metrics["final"]["accuracy"]
            finals[name].append(final)
            curve = [(p["step"], round(p["accuracy"], 3)) for p in metrics["curve"]]
            c.line("CURVES", what, "INFO", f"final accuracy {final:.3f} log loss {metrics['final']['log_loss']:.3f} "
                   f"curve {curve} peak {metrics['peak_cuda_memory_gib']} GiB {time.monotonic() - started:.0f}s",
                   accuracy=final, curve=curve)
    if "lora-16bit" in finals and "fp32" in finals:
        gap = sum(finals["fp32"]) / len(finals["fp32"]) - sum(finals["lora-16bit"]) / len(finals["lora-16bit"])
        c.line("CURVES", "16-bit LoRA vs fp32 (mean final accuracy)", "INFO",
               f"fp32 {finals['fp32']} vs 16-bit {finals['lora-16bit']}: gap {gap:+.3f}"
               + (" (16-bit behind on every seed)" if min(finals["fp32"]) > max(finals["lora-16bit"]) else ""),
               gap=gap)


T4_CURVE_TOLERANCE = 0.05  # |final log loss, fp16 with GradScaler - fp32|: same model, seed, rows and steps


def t4_curve_status(half_loss: float, fp32_loss: float, scale: float | None, cuda: bool) -> str:
    """FAIL when the fp16 run's loss is not finite, strays from fp32's, or (on a GPU) trained without a GradScaler."""
    import math

    agree = math.isfinite(half_loss) and abs(half_loss - fp32_loss) <= T4_CURVE_TOLERANCE
    return "OK" if agree and (scale is not None) == cuda else "FAIL"


def t4_curves(c: Check) -> None:
    """fp16 training as on a T4 (GradScaler, Gemma-2: a family fp16 is allowed for) against fp32."""
    from wsdm_helpers.training import train

    half = "float16" if c.cuda else c.half  # a CPU does not train in fp16: the dry run stands in with bf16
    steps = 2 if c.dry else 60
    metrics, probes = {}, {}
    for dtype in (half, "float32"):
        probes[dtype] = scaler_probe()
        cfg = c.tiny_cfg(c.tiny("gemma2"), c.work / "t4-curves" / dtype, f"model.dtype={dtype}",
                         f"train.max_steps={steps}", f"train.eval_steps={max(steps // 4, 1)}")
        metrics[dtype] = train(cfg, callbacks=[probes[dtype]]).metrics
    losses = {dtype: m["final"]["log_loss"] for dtype, m in metrics.items()}
    curves = {dtype: [(p["step"], round(p["log_loss"], 4)) for p in m["curve"]] for dtype, m in metrics.items()}
    scale = probes[half].scale
    c.line("CURVES", f"T4 arm: gemma2 {half} with GradScaler vs float32",
           t4_curve_status(losses[half], losses["float32"], scale, c.cuda),
           f"final log loss {losses[half]:.4f} vs {losses['float32']:.4f} (tolerance {T4_CURVE_TOLERANCE}); "
           f"GradScaler scale {scale}; curves {curves}", losses=losses, scale=scale)


def memory(c: Check) -> None:
    """Peak reserved memory of the T4 preset for 2 and 4 Gemma-2 9B layers, training and scoring one batch at
    the preset's inference batch (without the KV cache, as the package scores, and with it, as it did), and
    the slope to 42 layers. Reserved, not allocated: what the allocator holds is what runs out."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, TrainerCallback

    from wsdm_helpers.config import load_run_config
    from wsdm_helpers.data import write_canonical
    from wsdm_helpers.demo_data import make_demo_frame
    from wsdm_helpers.training import train

    if not c.dry and not c.bnb:
        c.line("MEMORY", "T4 preset", "SKIP", "needs CUDA and bitsandbytes")
        return
    dims = (dict(vocab_size=256000, hidden_size=3584, intermediate_size=14336, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=256, query_pre_attn_scalar=256) if not c.dry else
            dict(vocab_size=2000, hidden_size=64, intermediate_size=128, num_attention_heads=4, num_key_value_heads=2,
                 head_dim=16, query_pre_attn_scalar=16))
    long = make_demo_frame(48, seed=2)
    for col in ("prompt", "response_a", "response_b"):  # past 1024 tokens: every row is cut to max_length
        long[col] = [[t * 60 for t in turns] for turns in long[col]]
    write_canonical(long, c.work / "long.parquet")
    tok = c.demo[2]

    class AtStart(TrainerCallback):
        def on_train_begin(self, args, state, control, model=None, **kwargs):
            e = model.get_input_embeddings().weight
            self.emb = f"{_name(e.dtype)} {e.numel() * e.element_size() / 2**30:.2f} GiB"

    peaks = collections.defaultdict(dict)
    for layers in (2, 4):
        source = c.work / f"gemma2-9b-L{layers}"
        if not (source / "config.json").is_file():
            cfg = AutoConfig.for_model("gemma2", num_hidden_layers=layers, sliding_window=4096,
                                       pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                       eos_token_id=tok.eos_token_id, **dims)
            with torch.device(c.dev):
                model = AutoModelForCausalLM.from_config(cfg, dtype=torch.float16 if c.cuda else torch.float32)
            model.save_pretrained(str(source))
            tok.save_pretrained(str(source))
            del model
            _empty_cache(c)
        run = load_run_config(REPO / "configs/gemma2-9b-qlora-t4.yaml", _sets(
            f"model.source={source}", f"data.train_path={c.work / 'long.parquet'}", "data.fold=-1",
            f"train.output_dir={c.work / f'memory-L{layers}'}", "train.max_steps=3", "train.logging_steps=1",
            "train.resume=false", "train.max_hours=null",
            *(["model.quantization=none", "model.dtype=float32", "format.max_length=128"] if c.dry else [])))
        probe = AtStart()
        metrics = train(run, callbacks=[probe]).metrics
        peaks["training"][layers] = metrics["peak_cuda_reserved_gib"] or 0.0
        c.line("MEMORY", f"training, {layers} layers", "INFO", f"peak reserved {peaks['training'][layers]:.2f} GiB "
               f"(allocated {metrics['peak_cuda_memory_gib'] or 0.0:.2f}); embeddings {probe.emb}; "
               f"{metrics['train_tokens']} tokens in 3 steps, {metrics['train_step_seconds']}s",
               peak_gib=peaks["training"][layers])
        _empty_cache(c)
        for cache, peak in _scoring_peaks(c, run).items():
            peaks[cache][layers] = peak
        c.line("MEMORY", f"scoring, {layers} layers", "INFO", f"peak reserved {peaks['no cache'][layers]:.2f} GiB "
               f"without the KV cache, {peaks['with cache'][layers]:.2f} GiB with it")
    for what, by_layers in peaks.items():
        slope = (by_layers[4] - by_layers[2]) / 2
        full = by_layers[2] + 40 * slope
        judged = c.cuda and what != "with cache"  # with the cache: how much the fix saves, not a pass mark
        c.line("MEMORY", f"{what if what == 'training' else 'scoring ' + what}, 42 layers (Gemma-2 9B, T4 preset)",
               ("OK" if full <= T4_USABLE_GIB else "FAIL") if judged else "INFO",
               f"{by_layers[2]:.2f} + 40 x {slope:.3f} GiB per layer = {full:.2f} GiB peak reserved "
               f"(T4 usable ~{T4_USABLE_GIB} GiB)", peak_gib=full, per_layer_gib=slope)


def _scoring_peaks(c: Check, run_cfg) -> dict[str, float]:
    """Peak reserved GiB of scoring one batch of the preset's inference tokens (rows of format.max_length),
    loaded as prediction loads it, without and with a KV cache (0 on a CPU: no allocator stats)."""
    import torch

    from wsdm_helpers import modeling

    model, tok, _ = modeling.load_model(run_cfg, c.dev)
    model.eval()
    length = run_cfg.format.max_length
    rows = max(1, run_cfg.inference.for_device("cuda" if c.cuda else "cpu").max_tokens_per_batch // length)
    ids = torch.randint(10, len(tok), (rows, length), device=c.dev)
    mask = torch.ones_like(ids)
    peaks = {}
    for name, use_cache in (("no cache", False), ("with cache", True)):
        _empty_cache(c)
        if c.cuda:
            torch.cuda.reset_peak_memory_stats()
        with torch.inference_mode():
            if use_cache:  # what class_logits did: the config's default use_cache=True
                model.config.use_cache = True
                model(input_ids=ids, attention_mask=mask)
                model.config.use_cache = False
            else:
                modeling.PairScorer(model, "classifier").logits(ids, mask)
        peaks[name] = torch.cuda.max_memory_reserved() / 2**30 if c.cuda else 0.0
    del model
    _empty_cache(c)
    return peaks


def _logits_and_grads(model, pad_id: int, dev: str, dtype: str, rows: list[list[int]], labels):
    """Classifier logits of ``rows`` (left-padded into one batch) under autocast, and every gradient."""
    import torch
    import torch.nn.functional as F

    from wsdm_helpers import modeling
    from wsdm_helpers.batching import collate

    model.zero_grad(set_to_none=True)
    batch = collate(rows, pad_id, "left")
    with torch.autocast(dev.split(":")[0], dtype=getattr(torch, dtype)):
        logits = modeling.class_logits(model, "classifier", [], batch["input_ids"].to(dev),
                                       batch["attention_mask"].to(dev))
    F.cross_entropy(logits, labels, reduction="sum").backward()
    return logits.detach(), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.grad is not None}


def _padding_check(c: Check, family: str, dtype: str) -> None:
    import torch

    from wsdm_helpers import modeling
    from wsdm_helpers.tokenization import encode_pairs

    cfg = c.tiny_cfg(c.tiny(family), c.work / "padding", f"model.dtype={dtype}", "lora.dropout=0.0")
    model, tok, fam = modeling.load_model(cfg, c.dev, training=True)
    model.train()
    enc = encode_pairs(c.demo[0].iloc[:6], tok, dataclasses.replace(cfg.format, max_length=192), fam.template)
    ids = [r[: 40 + 25 * i] for i, r in enumerate(enc.input_ids)]  # six lengths: left padding
    labels = torch.tensor([0, 1, 0, 1, 1, 0], device=c.dev)
    padded, g_padded = _logits_and_grads(model, tok.pad_token_id, c.dev, dtype, ids, labels)
    alone = [_logits_and_grads(model, tok.pad_token_id, c.dev, dtype, [r], labels[i:i + 1]) for i, r in enumerate(ids)]
    single = torch.cat([a[0] for a in alone])
    g_alone = {n: sum(a[1][n] for a in alone) for n in g_padded}
    dlogit = (padded - single).abs().max().item()
    rel = max(((g_padded[n] - g_alone[n]).norm() / g_alone[n].norm().clamp_min(1e-12)).item() for n in g_padded)
    ok = bool(torch.isfinite(padded).all()) and dlogit < 0.05 and rel < 0.1
    c.line("PADDING", f"{family} {dtype} attn={model.config._attn_implementation}", "OK" if ok else "FAIL",
           f"max |dlogit| {dlogit:.4f} (|logit| ~{single.abs().mean().item():.2f}), max rel grad diff {rel:.3f}")


def padding(c: Check) -> None:
    """Left padding in half precision: a padded batch scores (and back-propagates) like each row alone."""
    rows = [("gemma3", c.half), ("llama", c.half)]
    if c.cuda:
        rows += [("qwen2", c.half), ("mistral", c.half), ("llama", "float16"), ("qwen2", "float16"),
                 ("gemma2", "float16")]
    for family, dtype in rows:
        _padding_check(c, family, dtype)
        _empty_cache(c)


def parallel(c: Check) -> None:
    """One copy spread by accelerate ("balanced") predicts like one copy placed whole on the GPU (4-bit on a
    GPU); the float32 override changes the dtype the rows are scored in; no row stays NaN/inf."""
    import numpy as np
    import torch

    from wsdm_helpers import inference, modeling
    from wsdm_helpers.config import InferenceConfig
    from wsdm_helpers.training import train

    quant = ["model.quantization=4bit", "model.dtype=float16"] if c.bnb else []
    run = c.work / "parallel-run"
    if not (run / "config.yaml").is_file():
        train(c.tiny_cfg(c.tiny("llama"), run, "train.max_steps=2", *quant))
    cfg = InferenceConfig(devices=[c.dev], tta="none", progress_bar=False)
    if c.cuda:
        free = int(torch.cuda.mem_get_info(0)[0] * inference.MODEL_PARALLEL_MEMORY_SHARE)
        placements = {"balanced": ("balanced", {0: free}), "whole": ({"": 0}, None)}
    else:  # the dry run: accelerate's placement path on the CPU against a plain load
        placements = {"balanced": ({"": "cpu"}, None), "whole": (None, None)}
    probs = {}
    for name, (device_map, max_memory) in placements.items():
        loaded = modeling.load_run(run, c.dev, device_map=device_map, max_memory=max_memory)
        probs[name] = inference.predict_proba(loaded, c.demo[0], cfg).iloc[:, 1:].to_numpy()
        del loaded
        _empty_cache(c)
    diff = float(np.abs(probs["balanced"] - probs["whole"]).max())
    c.line("PARALLEL", f"balanced vs whole placement on {c.dev} {'4-bit' if quant else '16/32-bit'}",
           placement_status(diff), f"max |diff| {diff:.4f} (OK below {PLACEMENT_TOLERANCE})", diff=diff)
    plain = inference.run_prediction(run, c.demo[0], cfg)
    report = plain.report
    c.line("PARALLEL", "non-finite rows", nonfinite_status(report.nonfinite_rows, report.redone_rows),
           f"{report.nonfinite_rows} NaN/inf rows, {report.redone_rows} redone in float32, "
           f"{report.nonfinite_rows - report.redone_rows} left NaN")
    override = "float32" if c.cuda else "bfloat16"  # the dry run's run is float32 already
    runs = inference.load_runs(run, dataclasses.replace(cfg, dtype=override))
    used = _name(inference._worker(runs[0]).compute_dtype)
    base = _name(inference._worker(inference.load_runs(run, cfg)[0]).compute_dtype)
    del runs
    changed = inference.run_prediction(run, c.demo[0], dataclasses.replace(cfg, dtype=override))
    diff32 = float(np.abs(changed.predictions.iloc[:, 1:].to_numpy() - plain.predictions.iloc[:, 1:].to_numpy()).max())
    c.line("PARALLEL", f"inference.dtype={override} override", override_status(base, used, override),
           f"scored in {used} (the run's: {base}); max |diff| {diff32:.4f}")


PLACEMENT_TOLERANCE = 5e-3


def placement_status(diff: float) -> str:
    return "OK" if diff < PLACEMENT_TOLERANCE else "FAIL"


def nonfinite_status(nonfinite: int, redone: int) -> str:
    """FAIL when a row stays NaN/inf (redo in float32 failed); INFO when some needed the redo."""
    return "FAIL" if nonfinite > redone else ("INFO" if nonfinite else "OK")


def override_status(run_dtype: str, used: str, wanted: str) -> str:
    """An override that leaves the compute dtype as the run had it was ignored, whatever the predictions."""
    return "OK" if used == wanted != run_dtype else "FAIL"


def scaler_probe():
    """A Trainer callback that records the GradScaler the optimizer trained with (``scale``: its last scale,
    None without one) and the trainable tensors that never moved."""
    from transformers import TrainerCallback

    class ScalerProbe(TrainerCallback):
        scale = None

        def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
            self.before = {n: p.detach().float().clone() for n, p in model.named_parameters() if p.requires_grad}

        def on_train_end(self, args, state, control, model=None, optimizer=None, **kwargs):
            scaler = getattr(optimizer, "scaler", None)
            self.scale = scaler.get_scale() if scaler is not None else None
            self.unchanged = [n for n, p in model.named_parameters() if p.requires_grad
                              and (p.detach().float() == self.before[n]).all()]

    return ScalerProbe()


def scaler(c: Check) -> None:
    """fp16 training goes through a GradScaler, takes its steps and moves every trainable tensor."""
    from wsdm_helpers.training import train

    dtype = "float16" if c.cuda else "float32"
    probe = scaler_probe()
    metrics = train(c.tiny_cfg(c.tiny("llama"), c.work / "scaler", f"model.dtype={dtype}"), callbacks=[probe]).metrics
    scale = probe.scale
    ok = (scale is not None) == c.cuda and not probe.unchanged and metrics["global_step"] == 6
    c.line("SCALER", f"llama {dtype}", "OK" if ok else "FAIL",
           f"GradScaler scale {scale}; {len(probe.unchanged)} trainable tensors unchanged; "
           f"final accuracy {metrics['final']['accuracy']:.3f}")


def tests(c: Check) -> None:
    """tests/test_cuda.py with the kit's site/ on the subprocess's path (the dry run only collects them:
    the test suite runs them itself)."""
    c.line("TESTS", "tests/test_cuda.py", *pytest_status(*run_pytest(c, REPO / "tests" / "test_cuda.py", c.dry)))


def run_pytest(c: Check, path: Path, collect_only: bool = False) -> tuple[int, str]:
    """(return code, output) of pytest on ``path`` in a subprocess that sees the kit (``--stage``'s site/)."""
    site = [str(c.stage / "site")] if c.stage and (c.stage / "site").is_dir() else []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(site + [str(REPO)] + [os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
                           *(["--collect-only"] if collect_only else []), str(path)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=max(30, int(c.left()) - 5))
    if proc.returncode:
        print(proc.stdout[-2000:])
    return proc.returncode, proc.stdout


def pytest_status(returncode: int, output: str) -> tuple[str, str]:
    """(status, the summary line): FAIL on a failure, an error, or any skip (a skipped CUDA test is a check
    that did not run); a collection (the dry run) passes when it collected tests."""
    summary = (output.strip().splitlines() or ["(no output)"])[-1]
    ran = "passed" in summary or "collected" in summary
    return ("OK" if returncode == 0 and ran and "skipped" not in summary else "FAIL"), summary


def _empty_cache(c: Check) -> None:
    import gc

    import torch

    gc.collect()
    if c.cuda:
        torch.cuda.empty_cache()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="small versions of every section on the CPU")
    parser.add_argument("--quick", action="store_true", help="half the learning-curve steps")
    parser.add_argument("--budget-s", type=float, default=480.0, help="time budget; sections skip when it runs out")
    parser.add_argument("--stage", type=Path, default=REPO / ".stage", help="devcheck kit folder (gemma3c/, site/)")
    parser.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "wsdm-gpu-check",
                        help="scratch folder (models, runs)")
    args = parser.parse_args(argv)
    wanted = [s.strip().upper() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; known: {', '.join(SECTIONS)}")
    if args.stage and (args.stage / "site").is_dir():
        sys.path.insert(0, str(args.stage / "site"))
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TQDM_DISABLE", "1")  # one line per check, not progress bars
    logging.basicConfig(level=logging.WARNING)
    args.work.mkdir(parents=True, exist_ok=True)
    import torch

    if not args.dry_run and not torch.cuda.is_available():
        print("no CUDA GPU here: running the CPU dry run (--dry-run) instead")
        args.dry_run = True
    c = Check(args.dry_run, args.quick, args.budget_s, args.work, args.stage if args.stage.is_dir() else None)
    functions = {"ENV": env, "DTYPES": dtypes, "CURVES": curves, "MEMORY": memory, "PADDING": padding,
                 "PARALLEL": parallel, "SCALER": scaler, "TESTS": tests}
    for name in SECTIONS:
        if name in wanted:
            c.run(name, functions[name])
    failed = [r for r in c.results if r["status"] == "FAIL"]
    passed = [r for r in c.results if r["status"] == "OK"]
    print(f"{len(c.results)} checks, {len(failed)} failed, {time.monotonic() - c.t0:.0f}s")
    print(json.dumps({"benchmark": "gpu_check", "device": c.dev, "dry_run": c.dry, "seconds": round(time.monotonic() - c.t0),
                      "failed": len(failed), "checks": c.results}, default=str))
    print(f"gpu-check: {len(passed)} passed, {len(failed)} failed")  # the one line to paste from Kaggle or Colab
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
