"""Feature baseline on the real LMSYS Arena sample: out-of-fold accuracy next to "the longer response wins".

Folds come from data.assign_folds (grouped by prompt, stratified by label). Two variants are trained
per fold: on the rows without a tie (two classes), and on all rows (three classes; a/b decided by
the larger of P(a), P(b)). Accuracy is measured on the held-out rows without a tie, like the 0.604
of the length rule quoted in ../shared/data/README.md.

    python benchmarks/feature_baseline.py [--quick] [--folds 5]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

SAMPLE = Path(__file__).resolve().parents[2] / "shared" / "data" / "lmsys-arena-sample" / "train_sample.csv"


def longer_wins(frame) -> np.ndarray:
    """1 (b) when response b has more characters than a, else 0 (a)."""
    chars = {side: frame[side].map(lambda turns: sum(len(t or "") for t in turns)).to_numpy()
             for side in ("response_a", "response_b")}
    return (chars["response_b"] > chars["response_a"]).astype(int)


def oof_accuracy(frame, folds: np.ndarray, model: str, keep_ties: bool) -> tuple[float, float]:
    """Out-of-fold accuracy on held-out rows without a tie, and the mean fit+predict seconds per fold."""
    from wsdm_helpers.features import FeatureBaseline

    no_tie = frame["label"].to_numpy() != 2
    correct, seconds = [], []
    for fold in np.unique(folds):
        train = frame[(folds != fold) & (no_tie | keep_ties)]
        valid = frame[(folds == fold) & no_tie]
        started = time.perf_counter()
        probs = FeatureBaseline(model=model).fit(train).predict_array(valid)
        seconds.append(time.perf_counter() - started)
        correct.append(probs[:, :2].argmax(axis=1) == valid["label"].to_numpy())
    return float(np.concatenate(correct).mean()), float(np.mean(seconds))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="logistic regression only")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()
    if not SAMPLE.is_file():
        print(f"skipped: {SAMPLE} is absent (the shared real-data folder is not part of the project)")
        print(json.dumps({"benchmark": "feature_baseline", "skipped": True}))
        return 0
    from wsdm_helpers.data import assign_folds, read_pairs

    frame, _ = read_pairs(SAMPLE, ties="keep")
    folds = assign_folds(frame, args.folds, args.seed)
    no_tie = frame["label"].to_numpy() != 2
    rule = float((longer_wins(frame[no_tie]) == frame["label"].to_numpy()[no_tie]).mean())
    rows = [("longer response wins (rule)", rule, 0.0)]
    results = {"benchmark": "feature_baseline", "rows": int(len(frame)), "rows_without_tie": int(no_tie.sum()),
               "folds": args.folds, "longer_wins_accuracy": round(rule, 4)}
    for model in ["logreg"] if args.quick else ["logreg", "hgb"]:
        for keep_ties in (False, True):
            acc, seconds = oof_accuracy(frame, folds, model, keep_ties)
            name = f"{model}_{'3class' if keep_ties else '2class'}"
            rows.append((f"features + {model}, trained {'with ties (3 classes)' if keep_ties else 'without ties'}",
                         acc, seconds))
            results[f"{name}_accuracy"] = round(acc, 4)
            results[f"{name}_seconds_per_fold"] = round(seconds, 2)
    print(f"LMSYS sample: {len(frame)} rows, {int(no_tie.sum())} without a tie; {args.folds} prompt-grouped folds")
    print(f"{'method':<52} {'OOF accuracy (no ties)':>22} {'s/fold':>8}")
    for name, acc, seconds in rows:
        print(f"{name:<52} {acc:>22.4f} {seconds:>8.2f}")
    best = max(v for k, v in results.items() if k.endswith("2class_accuracy") or k.endswith("3class_accuracy"))
    results["best_accuracy"] = best
    results["gain_over_longer_wins"] = round(best - rule, 4)
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
