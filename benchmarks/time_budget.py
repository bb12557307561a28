"""The submission clock on real CPU runs: does `pipeline.submit` end before the deadline, and use it?

Three LLM runs of different sizes and speeds (random-initialised Llama / Qwen2 classifiers built
here, with a byte-level BPE tokenizer trained here on the demo data: their speed, not their accuracy,
is what is measured) and a feature-baseline run folder (trained here, weight 0: the fallback) are
blended on the demo test set with swap TTA. First the submission runs without a limit (the
reference: its wall time, loading included, is the unconstrained time U); then with deadlines of
50%, 100% and 200% of U, each on the real clock, counted from just before the call, loading
included. For every deadline: the wall time from the start to the written submission against the
deadline, and the share of the deadline used when it binds (some run lost TTA rows, context or
rows, or was skipped).

    python benchmarks/time_budget.py [--quick] [--rows N]

(300 test rows: about 12 minutes on 2 shared cores; --quick: 48 rows.)

Prints the plan-vs-actual table of every submission, then one summary table; the last line is JSON
with ``max_actual_over_deadline`` (must stay <= 1) and ``min_used_share_when_binding`` (target >= 0.85).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
from pathlib import Path

from wsdm_helpers.runtime import sleeping_threads  # noqa: E402 (cheap: no torch)

sleeping_threads()
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# name, model_type, hidden, layers, heads: three speeds (the largest about 3x the smallest per token)
MODELS = (("llama-256x4", "llama", 256, 4, 4), ("qwen2-192x3", "qwen2", 192, 3, 4), ("llama-320x5", "llama", 320, 5, 5))
FRACTIONS = (0.5, 1.0, 2.0)


def build_run(root: Path, tokenizer, name: str, model_type: str, hidden: int, layers: int, heads: int) -> Path:
    """A run folder (config.yaml, model/, tokenizer/) around a random-initialised classifier."""
    import torch
    from transformers import AutoConfig, AutoModelForSequenceClassification

    from wsdm_helpers.config import FormatConfig, InferenceConfig, ModelConfig, RunConfig, save_yaml

    run = root / name
    config = AutoConfig.for_model(model_type, vocab_size=len(tokenizer), num_labels=2, hidden_size=hidden,
                                  intermediate_size=hidden * 2, num_hidden_layers=layers,
                                  num_attention_heads=heads, num_key_value_heads=heads, head_dim=hidden // heads,
                                  max_position_embeddings=1024, pad_token_id=tokenizer.pad_token_id,
                                  bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    torch.manual_seed(len(name))
    AutoModelForSequenceClassification.from_config(config).save_pretrained(str(run / "model"))
    for folder in ("model", "tokenizer"):
        tokenizer.save_pretrained(str(run / folder))
    save_yaml(RunConfig(name=name, model=ModelConfig(source=str(run / "model")), format=FormatConfig(max_length=256),
                        inference=InferenceConfig(devices=["cpu"], tta="swap", progress_bar=False,
                                                  chunk_rows=256)), run / "config.yaml")
    return run


def prepare(root: Path, n_test: int) -> tuple[list[str], Path]:
    from wsdm_helpers.data import read_pairs
    from wsdm_helpers.demo_data import write_demo_dataset
    from wsdm_helpers.features import train_and_predict
    from wsdm_helpers.tiny import pair_texts, train_tokenizer

    train, test, _, _ = write_demo_dataset(root / "data", n_train=400, n_test=n_test, seed=11)
    tokenizer = train_tokenizer(pair_texts(read_pairs(train)[0]), vocab_size=2000)
    runs = [str(build_run(root, tokenizer, *spec)) for spec in MODELS]
    train_and_predict(str(train), run_dir=str(root / "baseline"))  # what `wsdm baseline --run-dir` does
    return [*runs, str(root / "baseline")], test


def one_submission(runs: list[str], test: Path, out: Path, seconds: float | None):
    """Wall time of one submission from the start of the clock (loading included) and its report."""
    from wsdm_helpers.clock import Deadline
    from wsdm_helpers.pipeline import submit

    deadline = Deadline.after(None if seconds is None else seconds / 60, 0.0)
    result = submit(runs, test, out / "submission.csv", weights=[1, 1, 1, 0], deadline=deadline,
                    settings={"safety_minutes": 0.0})
    return deadline.elapsed(), result.report


def binds(report, reference) -> bool:
    """The deadline changed what some run did: fewer swapped rows, a shorter context, fewer rows, skipped."""
    for run, ref in zip(report.runs, reference.runs, strict=True):
        if run.kind == "llm" and (run.status != "done" or run.swapped_rows < ref.swapped_rows
                                  or (run.max_length or 0) < (ref.max_length or 0)):
            return True
    return False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="48 test rows instead of 300 (about 2 minutes)")
    parser.add_argument("--rows", type=int, default=0, help="test rows (overrides --quick)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    n_test = args.rows or (48 if args.quick else 300)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runs, test = prepare(root, n_test)
        print(f"\n== no limit (the reference), {n_test} test rows, runs: {', '.join(Path(r).name for r in runs)}")
        unconstrained, reference = one_submission(runs, test, root / "free", None)
        rows = []
        for fraction in FRACTIONS:
            deadline = fraction * unconstrained
            print(f"\n== deadline {fraction:.0%} of the unconstrained {unconstrained:.1f}s = {deadline:.1f}s")
            actual, report = one_submission(runs, test, root / f"at-{fraction}", deadline)
            rows.append({"fraction": fraction, "deadline_seconds": round(deadline, 2),
                         "actual_seconds": round(actual, 2), "actual_over_deadline": round(actual / deadline, 4),
                         "binding": binds(report, reference),
                         "swapped_rows": sum(r.swapped_rows for r in report.runs),
                         "rows_filled": sum(r.rows_filled for r in report.runs if r.kind == "llm"),
                         "rows_from_fallback": report.rows_from_fallback, "rows_uniform": report.rows_uniform})
    print(f"\n{'deadline':>9} {'seconds':>8} {'actual':>8} {'actual/deadline':>16} {'binds':>6} {'swapped':>8} "
          f"{'llm rows filled':>16} {'fallback':>9} {'at 0.5':>7}")
    print(f"{'none':>9} {'-':>8} {unconstrained:>8.1f} {'-':>16} {'-':>6} "
          f"{sum(r.swapped_rows for r in reference.runs):>8} {0:>16} {0:>9} {0:>7}")
    for r in rows:
        print(f"{r['fraction']:>9.0%} {r['deadline_seconds']:>8.1f} {r['actual_seconds']:>8.1f} "
              f"{r['actual_over_deadline']:>16.3f} {str(r['binding']):>6} {r['swapped_rows']:>8} "
              f"{r['rows_filled']:>16} {r['rows_from_fallback']:>9} {r['rows_uniform']:>7}")
    binding = [r["actual_over_deadline"] for r in rows if r["binding"]]
    print(json.dumps({"benchmark": "time_budget", "test_rows": n_test, "unconstrained_seconds": round(unconstrained, 2),
                      "max_actual_over_deadline": max(r["actual_over_deadline"] for r in rows),
                      "min_used_share_when_binding": min(binding) if binding else None, "results": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
