"""Peak resident memory of prediction (inference.run_prediction) for 1k, 5k and 25k synthetic rows.

Each size runs in a fresh child process with the same tiny random model (built from a config, with a
tokenizer trained on the synthetic text), so every child has the same fixed cost (Python, torch, the
model). The child builds its rows (prompt and two responses of random words, ``--words`` per response,
so most rows are truncated to ``--max-length`` tokens), loads the model, resets the kernel's peak-RSS
mark (``/proc/self/clear_refs``), predicts (``--tta none`` by default; ``swap`` doubles the work) and
reads the peak back (``VmHWM``).

The reference is the 1k-row run of the same command: ``peak_ratio_25k_vs_1k`` is the peak RSS during
the 25k prediction over the peak during the 1k prediction (both with the model resident; target
<= 1.5). ``growth_mb`` is each peak minus the resident size right before prediction, the part that
scales with rows. The input frame itself is built before the mark and counted in ``before_mb``.

    python benchmarks/memory.py [--quick] [--sizes 1000 5000 25000] [--max-length 256] [--words 150] [--tta swap]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
WORDS = ("the model answer question because people often think about data language response quality "
         "which better clear helpful short long wrong right city number friend water light music code "
         "simple example reason result first second world time good great").split()


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def synthetic_frame(n: int, words: int, seed: int = 0):
    import numpy as np

    from wsdm_helpers.data import frame_from_records

    rng = np.random.default_rng(seed)
    vocab = np.array(WORDS)

    def text(k: int) -> str:
        return " ".join(vocab[rng.integers(len(vocab), size=k)])

    return frame_from_records([{"id": f"row-{i}", "prompt": text(words // 4), "response_a": text(words),
                                "response_b": text(words)} for i in range(n)], source="synthetic")


def build_model(folder: Path, words: int) -> None:
    from wsdm_helpers.tiny import build_tiny_model, pair_texts, train_tokenizer

    tokenizer = train_tokenizer(pair_texts(synthetic_frame(200, words, seed=1)), vocab_size=400)
    build_tiny_model("llama", tokenizer, folder)


def child(args: argparse.Namespace) -> dict:
    """One measurement in this process: rows -> model -> reset peak -> predict -> peak."""
    from wsdm_helpers.runtime import sleeping_threads

    sleeping_threads()
    from wsdm_helpers.config import FormatConfig, InferenceConfig, ModelConfig, RunConfig
    from wsdm_helpers.inference import run_prediction
    from wsdm_helpers.modeling import LoadedRun, PairScorer, load_model

    frame = synthetic_frame(args.child, args.words)
    cfg = RunConfig(model=ModelConfig(source=args.model, num_labels=2), format=FormatConfig(max_length=args.max_length))
    model, tokenizer, family = load_model(cfg, "cpu")
    model.eval()
    run = LoadedRun(model, tokenizer, cfg, family, PairScorer(model, "classifier"))
    inference = InferenceConfig(devices=["cpu"], tta=args.tta, progress_bar=False, chunk_rows=args.chunk_rows)
    before = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # peak RSS mark := current RSS
    started = time.perf_counter()
    result = run_prediction(run, frame, inference)
    seconds = time.perf_counter() - started
    peak = _status_mb("VmHWM")
    assert len(result.predictions) == args.child
    return {"rows": args.child, "before_mb": round(before, 1), "peak_mb": round(peak, 1),
            "growth_mb": round(peak - before, 1), "seconds": round(seconds, 1),
            "max_length": args.max_length, "words": args.words}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a fifth of the rows (200, 1000, 5000), max_length 128")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 5000, 25000])
    parser.add_argument("--max-length", type=int, default=256)
    parser.add_argument("--words", type=int, default=150, help="random words per response (prompt: a quarter)")
    parser.add_argument("--chunk-rows", type=int, default=2048, help="inference.chunk_rows")
    parser.add_argument("--tta", default="none", choices=["none", "swap"], help="inference.tta (swap: twice the work)")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return
    if args.quick:
        args.sizes, args.max_length, args.words = [n // 5 for n in args.sizes], 128, 80
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "model"
        build_model(model, args.words)
        env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
               "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
        for n in args.sizes:
            out = subprocess.run([sys.executable, __file__, "--child", str(n), "--model", str(model),
                                  "--max-length", str(args.max_length), "--words", str(args.words),
                                  "--chunk-rows", str(args.chunk_rows), "--tta", args.tta],
                                 env=env, capture_output=True, text=True, check=True)
            rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
    base = rows[0]
    print(f"prediction peak RSS (tiny llama, max_length {args.max_length}, tta {args.tta}, chunk_rows {args.chunk_rows})")
    print(f"{'rows':>7} {'before MB':>10} {'peak MB':>9} {'growth MB':>10} {'peak / ' + str(base['rows']):>12} {'s':>6}")
    for r in rows:
        print(f"{r['rows']:>7} {r['before_mb']:>10.1f} {r['peak_mb']:>9.1f} {r['growth_mb']:>10.1f} "
              f"{r['peak_mb'] / base['peak_mb']:>12.2f} {r['seconds']:>6.1f}")
    last = rows[-1]
    summary = {"benchmark": "memory", "sizes": [r["rows"] for r in rows],
               "peak_mb": [r["peak_mb"] for r in rows], "growth_mb": [r["growth_mb"] for r in rows],
               "before_mb": [r["before_mb"] for r in rows],
               f"peak_ratio_{last['rows'] // 1000}k_vs_{base['rows'] // 1000}k": round(last["peak_mb"] / base["peak_mb"], 3),
               "target_ratio": 1.5, "max_length": args.max_length, "words": args.words, "tta": args.tta,
               "quick": args.quick}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
