"""The hf and vllm prediction backends on the same rows, in one run: end to end against each engine's raw speed.

The model is Gemma 3 270M (the packaged GGUF, converted once) with a seeded classifier head, saved as
a run folder with the real preset's format (configs/cpu-real-gemma3-270m.yaml: max_length 256, mean
pooling); ``--model-source`` takes another base folder (the GPU script passes the compact Gemma 3 of
../shared/devcheck/). Two row sets: the demo test set and LMSYS Arena rows (../shared/data).

Per backend and row set, end to end is ``inference.run_prediction`` (tokenizing, chunking, the
backend's batching, TTA off), timed without the model load or engine start (reported apart);
its rows/s and real (unpadded) tokens/s are set against the engine's raw forward throughput at its
best batch shape, measured in the same run on rows of one length (no padding): for hf, batches of
B rows x L tokens; for vLLM, request groups of B rows x L tokens. Measurements alternate between
the backends and the best of ``--repeats`` is kept, so the load of a shared machine hits both alike.
The vLLM engine starts once (vllm_backend.keep_engines).

    python benchmarks/backends.py [--quick] [--device cpu|cuda] [--demo-rows N] [--lmsys-rows N]
                                  [--model-source DIR] [--repeats N]
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "lmsys-arena-sample" / "train_sample.csv"
PRESET = "cpu-real-gemma3-270m"  # config.resolve_preset finds it wherever configs/ lies
BACKENDS = ("hf", "vllm")


def build_run(source: str, out: Path) -> Path:
    """A run folder (config.yaml, model/, tokenizer/) of ``source`` with a seeded 2-class head, in the preset's
    format; float32 weights (each backend casts them to its dtype)."""
    import torch

    from wsdm_helpers.config import InferenceConfig, TrainConfig, load_run_config, resolve_preset, save_yaml
    from wsdm_helpers.modeling import load_model, resolve_source

    preset = load_run_config(resolve_preset(PRESET))
    cfg = dataclasses.replace(preset, model=dataclasses.replace(preset.model, source=str(resolve_source(source)),
                                                                dtype="float32"),
                              train=TrainConfig(),  # the head is seeded, not a probe: nothing trained
                              inference=InferenceConfig(tta="none", progress_bar=False))
    torch.manual_seed(0)
    model, tokenizer, _ = load_model(cfg, "cpu")
    model.save_pretrained(str(out / "model"))
    tokenizer.save_pretrained(str(out / "tokenizer"))
    save_yaml(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, dtype="auto")), out / "config.yaml")
    return out


def row_sets(demo_rows: int, lmsys_rows: int, root: Path) -> dict:
    from wsdm_helpers.data import read_pairs
    from wsdm_helpers.demo_data import write_demo_dataset

    _, test, _, _ = write_demo_dataset(root / "demo", n_train=50, n_test=demo_rows, seed=11)
    sets = {"demo test": read_pairs(test, ties="keep")[0]}
    if lmsys_rows and SAMPLE.is_file():
        sets["lmsys"] = read_pairs(SAMPLE, ties="keep")[0].head(lmsys_rows)
    return sets


def inference_config(backend: str, device: str):
    from wsdm_helpers.config import InferenceConfig

    return InferenceConfig(devices=[device], tta="none", progress_bar=False, backend=backend)


def end_to_end(run_dir: Path, frame, backend: str, device: str) -> dict:
    from wsdm_helpers.inference import run_prediction

    result = run_prediction(run_dir, frame, inference_config(backend, device))
    report = result.report
    seconds = report.actual_seconds - report.load_seconds
    return {"rows_per_s": report.rows / seconds, "tokens_per_s": report.real_tokens / seconds,
            "seconds": seconds, "load_seconds": report.load_seconds, "predictions": result.predictions,
            "padding_efficiency": report.padding_efficiency, "tokenize_share": report.tokenize_seconds / seconds}


class Engines:
    """Each backend's worker, loaded once, for the raw measurements."""

    def __init__(self, run_dir: Path, device: str):
        import contextlib

        from wsdm_helpers.inference import open_backend

        self.stack = contextlib.ExitStack()
        self.workers = {b: self.stack.enter_context(open_backend(run_dir, inference_config(b, device)))[1][0]
                        for b in BACKENDS}

    def close(self) -> None:
        self.stack.close()


def raw_rate(worker, rows: list[list[int]], shapes: list[tuple[int, int]]) -> tuple[float, tuple[int, int]]:
    """Best real tokens/s of ``worker.score_batch`` over batches of B rows x L tokens (one warm-up each)."""
    best = (0.0, shapes[0])
    for n, length in shapes:
        batch = [(r * (length // max(len(r), 1) + 1))[:length] for r in rows[:n]]
        worker.score_batch(batch)
        started = time.perf_counter()
        worker.score_batch(batch)
        rate = n * length / (time.perf_counter() - started)
        best = max(best, (rate, (n, length)))
    return best


def encoded_rows(run_dir: Path, frame) -> list[list[int]]:
    from wsdm_helpers.config import load_run_config
    from wsdm_helpers.modeling import family_of_folder, load_tokenizer
    from wsdm_helpers.tokenization import encode_pairs

    cfg = load_run_config(run_dir / "config.yaml")
    family = family_of_folder(run_dir / "model")
    encoded = encode_pairs(frame, load_tokenizer(run_dir / "tokenizer", family), cfg.format, family.template)
    return [list(r) for r in encoded.input_ids]


def shapes_for(backend: str, device: str, length: int, n_rows: int) -> list[tuple[int, int]]:
    if backend == "hf":
        budgets = (1024, 2048, 4096) if device == "cpu" else (8192, 16384, 32768)
        return sorted({(max(1, min(n_rows, b // length)), length) for b in budgets})
    groups = (8, 32, 128) if device == "cpu" else (64, 256, 1024)
    return sorted({(min(n_rows, g), length) for g in groups})


def measure(run_dir: Path, sets: dict, device: str, repeats: int) -> dict:
    from wsdm_helpers.vllm_backend import keep_engines

    results: dict = {}
    with keep_engines():
        engines = Engines(run_dir, device)
        try:
            for name, frame in sets.items():
                rows = encoded_rows(run_dir, frame)
                length = int(np.median([len(r) for r in rows]))
                pool = rows * (1 + 1024 // len(rows))  # enough rows for the largest shape
                for _ in range(repeats):
                    for backend in BACKENDS:
                        e2e = end_to_end(run_dir, frame, backend, device)
                        raw, shape = raw_rate(engines.workers[backend], pool, shapes_for(backend, device, length, len(pool)))
                        kept = results.setdefault((name, backend), {"tokens_per_s": 0.0, "raw_tokens_per_s": 0.0})
                        if e2e["tokens_per_s"] > kept["tokens_per_s"]:
                            kept.update({k: v for k, v in e2e.items()})
                        if raw > kept["raw_tokens_per_s"]:
                            kept.update(raw_tokens_per_s=raw, raw_shape=shape)
                        kept["rows"] = len(frame)
        finally:
            engines.close()
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32 demo rows, 48 LMSYS rows, one repeat")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--demo-rows", type=int, default=400)
    parser.add_argument("--lmsys-rows", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--model-source", default="pypi:gemma3-270m", help="base model folder or pypi: name")
    args = parser.parse_args()
    if args.quick:
        args.demo_rows, args.lmsys_rows, args.repeats = 32, 48, 1
    logging.basicConfig(level=logging.WARNING)
    if importlib.util.find_spec("vllm") is None:
        print("skipped: vLLM is not installed here (run it in the venv `make test-vllm` builds)")
        print(json.dumps({"benchmark": "backends", "skipped": True}))
        return 0
    os.environ.setdefault("VLLM_CPU_NUM_OF_RESERVED_CPU", "0")  # vLLM reserves a core by default: give it all
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = build_run(args.model_source, Path(tmp) / "run")
        os.environ["WSDM_CACHE"] = tmp  # the merged folder (the base was resolved from the usual cache above)
        sets = row_sets(args.demo_rows, args.lmsys_rows, Path(tmp))
        results = measure(run_dir, sets, args.device, args.repeats)
    print_table(results, args)
    return 0


def print_table(results: dict, args) -> None:
    print(f"Gemma 3 270M classifier ({args.model_source}), preset format (max_length 256, mean pooling), "
          f"{args.device}, TTA off, best of {args.repeats}; load/engine start not in end to end")
    header = (f"{'rows':<10} {'backend':<7} {'n':>5} {'rows/s':>8} {'tok/s e2e':>10} {'tok/s raw':>10} "
              f"{'raw shape':>10} {'e2e/raw':>8} {'real/computed':>13} {'tokenizing':>10} {'load s':>7}")
    print(header)
    print("-" * len(header))
    figures: dict = {"benchmark": "backends", "device": args.device, "quick": args.quick}
    for (name, backend), r in results.items():
        ratio = r["tokens_per_s"] / r["raw_tokens_per_s"]
        shape = "x".join(map(str, r["raw_shape"]))
        print(f"{name:<10} {backend:<7} {r['rows']:>5} {r['rows_per_s']:>8.2f} {r['tokens_per_s']:>10.0f} "
              f"{r['raw_tokens_per_s']:>10.0f} {shape:>10} {ratio:>8.2f} {r['padding_efficiency']:>13.3f} "
              f"{r['tokenize_share']:>10.1%} {r['load_seconds']:>7.1f}")
        key = f"{name.split()[0]}_{backend}"
        figures.update({f"{key}_rows_per_s": round(r["rows_per_s"], 3), f"{key}_tokens_per_s": round(r["tokens_per_s"], 1),
                        f"{key}_raw_tokens_per_s": round(r["raw_tokens_per_s"], 1), f"{key}_e2e_over_raw": round(ratio, 3),
                        f"{key}_padding_efficiency": round(r["padding_efficiency"], 3),
                        f"{key}_tokenize_share": round(r["tokenize_share"], 3)})
    for name in dict.fromkeys(n for n, _ in results):
        hf, vllm = results[(name, "hf")], results[(name, "vllm")]
        e2e, raw = vllm["tokens_per_s"] / hf["tokens_per_s"], vllm["raw_tokens_per_s"] / hf["raw_tokens_per_s"]
        diff = float(np.abs(vllm["predictions"].set_index("id").loc[hf["predictions"]["id"]].to_numpy(float)
                            - hf["predictions"].set_index("id").to_numpy(float)).max())
        print(f"{name}: vLLM / hf end to end {e2e:.2f}x, raw {raw:.2f}x; largest probability difference {diff:.1e}")
        key = name.split()[0]
        figures.update({f"{key}_vllm_over_hf_e2e": round(e2e, 3), f"{key}_vllm_over_hf_raw": round(raw, 3),
                        f"{key}_max_prob_diff": diff})
    print(json.dumps(figures))


if __name__ == "__main__":
    sys.exit(main())
