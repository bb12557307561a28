"""The submission clock on real CPU runs: does `pipeline.submit` end before the deadline, and use it?

Default mode: three LLM runs of different sizes and speeds (random-initialised Llama / Qwen2
classifiers built here, with a byte-level BPE tokenizer trained here on the demo data: their speed,
not their accuracy, is what is measured) and a feature-baseline run folder (trained here, weight 0:
the fallback) are blended on the demo test set with swap TTA. First the submission runs without a
limit (the reference: its wall time, loading included, is the unconstrained time U); then with
deadlines of 50%, 100% and 200% of U, each on the real clock, counted from just before the call,
reading the test file and loading included. For every deadline: the wall time from the start to the
written submission against the deadline, and the share of the deadline used when it binds (some run
lost TTA rows, context or rows, or was skipped).

Rerun mode (``--rerun-rows N``): what Kaggle's competition rerun does, on a hidden test of N rows in
the WSDM layout (``demo_data.write_hidden_test``: integer ids, the ``scored`` column): one tiny
Llama run and the weight-0 feature baseline under a deadline it cannot meet unconstrained; the
submission is checked against the hidden test's sample_submission.csv (every id, valid values).

    python benchmarks/time_budget.py [--quick] [--rows N]
    python benchmarks/time_budget.py --rerun-rows 25000 [--deadline-seconds S]

(default: 600 test rows, U of 2-5 minutes on 2 busy shared cores, 15-20 minutes in all; --quick: 48
rows; rerun: the deadline (default 120 s) plus about half a minute of setup.)

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
RERUN_MODEL = ("tiny-llama-32x2", "llama", 32, 2, 4)
FRACTIONS = (0.5, 1.0, 2.0)
MAX_LENGTH = 256  # every run's own context


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
    save_yaml(RunConfig(name=name, model=ModelConfig(source=str(run / "model")),
                        format=FormatConfig(max_length=MAX_LENGTH),
                        inference=InferenceConfig(devices=["cpu"], tta="swap", progress_bar=False,
                                                  chunk_rows=256)), run / "config.yaml")
    return run


def prepare(root: Path, n_test: int, models=MODELS) -> tuple[list[str], Path]:
    """The LLM run folders of ``models`` and a feature-baseline run folder, and the demo test file."""
    from wsdm_helpers.data import read_pairs
    from wsdm_helpers.demo_data import write_demo_dataset
    from wsdm_helpers.features import train_and_predict
    from wsdm_helpers.tiny import pair_texts, train_tokenizer

    train, test, _, _ = write_demo_dataset(root / "data", n_train=400, n_test=n_test, seed=11)
    tokenizer = train_tokenizer(pair_texts(read_pairs(train)[0]), vocab_size=2000)
    runs = [str(build_run(root, tokenizer, *spec)) for spec in models]
    train_and_predict(str(train), run_dir=str(root / "baseline"))  # what `wsdm baseline --run-dir` does
    return [*runs, str(root / "baseline")], test


def one_submission(runs: list[str], test: Path, out: Path, seconds: float | None):
    """Wall time of one submission from the start of the clock (reading and loading included) and its report;
    every LLM run has weight 1, the baseline (last) weight 0."""
    from wsdm_helpers.clock import Deadline
    from wsdm_helpers.pipeline import submit

    deadline = Deadline.after(None if seconds is None else seconds / 60, 0.0)
    result = submit(runs, test, out / "submission.csv", weights=[1] * (len(runs) - 1) + [0], deadline=deadline,
                    settings={"safety_minutes": 0.0, "on_failure": "fill"})  # binding deadlines fill rows
    return deadline.elapsed(), result.report


def binds(report, reference=None) -> bool:
    """The deadline changed what some run did: fewer swapped rows, a shorter context, fewer rows, skipped
    (against the unconstrained ``reference``; without one, against every row swapped at MAX_LENGTH)."""
    refs = reference.runs if reference is not None else [None] * len(report.runs)
    for run, ref in zip(report.runs, refs, strict=True):
        swaps, length = (ref.swapped_rows, ref.max_length or 0) if ref is not None else (report.rows, MAX_LENGTH)
        if run.kind == "llm" and (run.status != "done" or run.swapped_rows < swaps or (run.max_length or 0) < length):
            return True
    return False


def result_row(fraction: float | None, deadline: float, actual: float, report, reference=None) -> dict:
    return {"fraction": fraction, "deadline_seconds": round(deadline, 2), "actual_seconds": round(actual, 2),
            "actual_over_deadline": round(actual / deadline, 4), "binding": binds(report, reference),
            "swapped_rows": sum(r.swapped_rows for r in report.runs),
            "rows_filled": sum(r.rows_filled for r in report.runs if r.kind == "llm"),
            "rows_from_fallback": report.rows_from_fallback, "rows_uniform": report.rows_uniform}


def print_summary(rows: list[dict], unconstrained: float | None, reference=None) -> None:
    print(f"\n{'deadline':>9} {'seconds':>8} {'actual':>8} {'actual/deadline':>16} {'binds':>6} {'swapped':>8} "
          f"{'llm rows filled':>16} {'fallback':>9} {'at 0.5':>7}")
    if reference is not None:
        print(f"{'none':>9} {'-':>8} {unconstrained:>8.1f} {'-':>16} {'-':>6} "
              f"{sum(r.swapped_rows for r in reference.runs):>8} {0:>16} {0:>9} {0:>7}")
    for r in rows:
        label = "given" if r["fraction"] is None else f"{r['fraction']:.0%}"
        print(f"{label:>9} {r['deadline_seconds']:>8.1f} {r['actual_seconds']:>8.1f} "
              f"{r['actual_over_deadline']:>16.3f} {str(r['binding']):>6} {r['swapped_rows']:>8} "
              f"{r['rows_filled']:>16} {r['rows_from_fallback']:>9} {r['rows_uniform']:>7}")


def summary_json(mode: str, n_test: int, rows: list[dict], **extra) -> str:
    binding = [r["actual_over_deadline"] for r in rows if r["binding"]]
    return json.dumps({"benchmark": "time_budget", "mode": mode, "test_rows": n_test, **extra,
                       "max_actual_over_deadline": max(r["actual_over_deadline"] for r in rows),
                       "min_used_share_when_binding": min(binding) if binding else None, "results": rows})


def deadlines(n_test: int) -> int:
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
            rows.append(result_row(fraction, deadline, actual, report, reference))
    print_summary(rows, unconstrained, reference)
    print(summary_json("deadlines", n_test, rows, unconstrained_seconds=round(unconstrained, 2)))
    return 0


def rerun(n_rows: int, deadline: float) -> int:
    """The competition rerun on an ``n_rows`` hidden test under ``deadline`` seconds, checked against its sample."""
    from wsdm_helpers.demo_data import write_hidden_test
    from wsdm_helpers.submission import check_against_sample

    os.environ["KAGGLE_IS_COMPETITION_RERUN"] = "1"  # what Kaggle sets in the rerun
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        runs, _ = prepare(root, 8, models=(RERUN_MODEL,))
        test, sample = write_hidden_test(root / "hidden", n_rows)
        print(f"\n== competition rerun: {n_rows} hidden test rows, runs: {', '.join(Path(r).name for r in runs)}, "
              f"deadline {deadline:.1f}s")
        actual, report = one_submission(runs, test, root / "rerun", deadline)
        checked = check_against_sample(root / "rerun" / "submission.csv", sample)
        print(f"submission checked against {sample.name}: {len(checked)} ids, columns {list(checked.columns)}")
        rows = [result_row(None, deadline, actual, report)]
    print_summary(rows, None)
    print(summary_json("rerun", n_rows, rows, submission_checked=True))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="48 test rows instead of 600 (about a minute)")
    parser.add_argument("--rows", type=int, default=0, help="test rows (overrides --quick)")
    parser.add_argument("--rerun-rows", type=int, default=0,
                        help="rerun mode: a hidden WSDM test of this many rows (e.g. 25000) under --deadline-seconds")
    parser.add_argument("--deadline-seconds", type=float, default=120.0, help="rerun mode: the deadline")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    if args.rerun_rows:
        return rerun(args.rerun_rows, args.deadline_seconds)
    return deadlines(args.rows or (48 if args.quick else 600))


if __name__ == "__main__":
    sys.exit(main())
