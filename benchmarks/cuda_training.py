"""QLoRA on CUDA: Gemma 3 270M with a 4-bit NF4 base against the same LoRA run on a 16-bit base.

Both runs use the CPU demo preset (configs/cpu-demo-gemma3-270m.yaml: LoRA r=16 on q/k/v/o plus the
score head, batch 8, 160 steps, swap augmentation) on the demo data, on one GPU, in this one command:

* qlora-4bit: ``model.quantization=4bit`` (NF4, double quantization, prepared for k-bit training);
* lora-16bit (reference): the base kept in the compute dtype, nothing quantized.

Reported per run: peak CUDA memory (torch.cuda.max_memory_allocated over training), training tokens
per second (real tokens over the wall time of optimizer steps, evaluations excluded; training.py),
final validation accuracy / log loss on the held-out fold, and the 4-bit/16-bit ratios.
``--dtype auto`` (default) resolves as training does: bf16 on Ampere or newer GPUs, fp32 on a T4 (Gemma 3
overflows fp16: model.dtype=float16 is refused for it).

    python benchmarks/cuda_training.py [--quick] [--steps 160] [--dtype auto] [--out runs/cuda-bench] [--model DIR]

``--model DIR``: the Gemma 3 270M to train instead of the preset's ``pypi:gemma3-270m``, for a machine
without that package or network: an HF folder, or the GPU check kit's compact ``gemma3c/`` (unpacked once
into ``--out``, as ``benchmarks/gpu_check.py`` does; good for the demo data only).

The last line printed is one JSON object with the figures.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

PRESET = Path(__file__).resolve().parents[1] / "configs" / "cpu-demo-gemma3-270m.yaml"


def run(name: str, data: Path, out: Path, steps: int, dtype: str, overrides: dict | None = None) -> dict:
    from wsdm_helpers.config import load_run_config
    from wsdm_helpers.training import train

    cfg = load_run_config(PRESET, {"data.train_path": str(data), "train.output_dir": str(out / name),
                                   "train.max_steps": steps, "model.dtype": dtype, "train.resume": False,
                                   **(overrides or {})})
    metrics = train(cfg).metrics
    return {"peak_cuda_memory_gib": metrics["peak_cuda_memory_gib"],
            "train_tokens_per_s": metrics["train_tokens_per_s"], "train_step_seconds": metrics["train_step_seconds"],
            "accuracy": round(metrics["final"]["accuracy"], 4), "log_loss": round(metrics["final"]["log_loss"], 4),
            "per_language": {r["language"]: round(r["accuracy"], 3) for r in metrics["per_language"]}}


def model_folder(model: Path, out: Path) -> Path:
    """An HF folder as given; the kit's compact Gemma 3 (``body.safetensors``) unpacked under ``out``."""
    if (model / "config.json").is_file() and not (model / "body.safetensors").is_file():
        return model
    if not (model / "body.safetensors").is_file():
        raise SystemExit(f"--model {model}: neither an HF folder (config.json) nor the kit's gemma3c/ (body.safetensors)")
    from gpu_check import unpack_compact_gemma3  # benchmarks/ is on sys.path when this script runs

    return unpack_compact_gemma3(model, out / "gemma3c-hf")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=160, help="optimizer steps of each run")
    parser.add_argument("--quick", action="store_true", help="40 steps per run")
    parser.add_argument("--dtype", default="auto", help="model.dtype of both runs: auto, bfloat16 or float32")
    parser.add_argument("--out", type=Path, default=Path("runs/cuda-bench"), help="run folders and demo data")
    parser.add_argument("--model", type=Path, help="model folder: an HF folder or the kit's gemma3c/ (default: the "
                        "preset's model.source)")
    args = parser.parse_args()
    args.steps = 40 if args.quick else args.steps
    import torch

    if not torch.cuda.is_available():
        print("skipped: no CUDA GPU")
        print(json.dumps({"benchmark": "cuda_training", "skipped": True}))
        return 0
    logging.basicConfig(level=logging.WARNING)
    from wsdm_helpers.demo_data import write_demo_dataset

    write_demo_dataset(args.out / "data", n_train=2000, n_test=400)
    data = args.out / "data" / "train.parquet"
    source = {"model.source": str(model_folder(args.model, args.out))} if args.model else {}
    results = {"qlora-4bit": run("qlora-4bit", data, args.out, args.steps, args.dtype,
                                 {"model.quantization": "4bit", **source}),
               "lora-16bit": run("lora-16bit", data, args.out, args.steps, args.dtype, source)}
    q, ref = results["qlora-4bit"], results["lora-16bit"]
    print(f"Gemma 3 270M, demo preset, {args.steps} steps, {args.dtype}, {torch.cuda.get_device_name()}")
    print(f"{'run':<12} {'peak GiB':>9} {'tokens/s':>9} {'accuracy':>9} {'log loss':>9}")
    for name, r in results.items():
        print(f"{name:<12} {r['peak_cuda_memory_gib']:>9.3f} {r['train_tokens_per_s']:>9.0f} "
              f"{r['accuracy']:>9.4f} {r['log_loss']:>9.4f}")
    print(json.dumps({"benchmark": "cuda_training", "device": torch.cuda.get_device_name(), "dtype": args.dtype,
                      "steps": args.steps, **results,
                      "memory_ratio_4bit_vs_16bit": round(q["peak_cuda_memory_gib"] / ref["peak_cuda_memory_gib"], 3),
                      "speed_ratio_4bit_vs_16bit": round(q["train_tokens_per_s"] / ref["train_tokens_per_s"], 3)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
