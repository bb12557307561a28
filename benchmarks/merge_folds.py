"""Merged fold adapters against the k fold models they come from: test quality and predict time, demo preset.

1. ``wsdm cv`` of the demo preset (configs/cpu-demo-gemma3-270m.yaml, 5 folds, Gemma 3 270M LoRA) on the demo
   data (demo_data.write_demo_dataset) into --out/cv; a finished cv there is reused (same settings).
2. ``wsdm merge-folds`` into --out/merged (one adapter of rank 5r: the exact mean of the folds' updates).
3. The demo test rows predicted through the submission pipeline (pipeline.submit, what ``wsdm predict`` runs,
   loading included, the preset's inference settings): once with the 5 fold runs at equal weights (the mean of
   their probabilities), once with the merged run, once with fold 0's run alone (what one model of the same
   cost as the merged one gives); each timed end to end in this process, one after the other.
4. Accuracy and log loss of each with bootstrap 95% intervals over rows, the paired differences (against the
   5-model mean; and merged minus fold 0 alone), and the time ratio. Target: the merged run takes at most 1/4
   of the 5-model time.

    python benchmarks/merge_folds.py [--quick] [--n-train 600] [--n-test 200] [--set KEY=VALUE ...]

``--quick``: 120 train rows, 40 test rows, the first 2 decoder layers of Gemma 3 270M (model.num_layers=2), 128
tokens, 4 training steps of batch 4 per fold: the same pipeline at a size that runs on 2 shared CPU cores. The
last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import REPO, bootstrap_interval, run  # noqa: E402

PRESET = REPO / "configs" / "cpu-demo-gemma3-270m.yaml"
QUICK = {"model.num_layers": 2, "format.max_length": 128, "train.max_steps": 4, "train.per_device_batch_size": 4,
         "train.eval_steps": 0, "train.save_steps": 1000, "train.logging_steps": 1}


def timed_submit(runs: list[Path], test: Path, out: Path, devices: list[str]) -> tuple[np.ndarray, float]:
    """(P(a), P(b)) of the test rows in id order, blended at equal weights, and the wall seconds of the submission."""
    import pandas as pd

    from wsdm_helpers.pipeline import submit

    started = time.perf_counter()
    submit(runs, test, out / "submission.csv", overrides={"devices": devices, "progress_bar": False},
           settings={"task": "wsdm"}, probs_out=out / "probs.parquet")
    seconds = time.perf_counter() - started
    probs = pd.read_parquet(out / "probs.parquet").astype({"id": str}).sort_values("id")
    return probs[["winner_model_a", "winner_model_b"]].to_numpy(), seconds


def scores(probs: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> dict:
    from wsdm_helpers import metrics

    correct, ref_correct = probs.argmax(1) == labels, reference.argmax(1) == labels
    losses, ref_losses = metrics.row_log_loss(labels, probs), metrics.row_log_loss(labels, reference)
    return {"accuracy": float(correct.mean()), "accuracy_ci": list(bootstrap_interval(correct.astype(float))),
            "log_loss": float(losses.mean()), "log_loss_ci": list(bootstrap_interval(losses)),
            "accuracy_vs_mean": float(correct.mean() - ref_correct.mean()),
            "accuracy_vs_mean_ci": list(bootstrap_interval(correct.astype(float) - ref_correct)),
            "log_loss_vs_mean": float((losses - ref_losses).mean()),
            "log_loss_vs_mean_ci": list(bootstrap_interval(losses - ref_losses))}


def to_text(rows: dict[str, dict], title: str) -> str:
    lines = [title, f"{'predictor':<22} {'accuracy':>8}  {'95% interval':<15} {'vs mean (95%)':<24} {'log loss':>8}  "
                    f"{'vs mean (95%)':<24} {'seconds':>8}", "-" * 118]
    for name, r in rows.items():
        lines.append(f"{name:<22} {r['accuracy']:>8.4f}  [{r['accuracy_ci'][0]:.3f}, {r['accuracy_ci'][1]:.3f}]  "
                     f"{r['accuracy_vs_mean']:+.4f} [{r['accuracy_vs_mean_ci'][0]:+.3f}, {r['accuracy_vs_mean_ci'][1]:+.3f}]  "
                     f"{r['log_loss']:>8.4f}  {r['log_loss_vs_mean']:+.4f} [{r['log_loss_vs_mean_ci'][0]:+.3f}, "
                     f"{r['log_loss_vs_mean_ci'][1]:+.3f}]  {r['seconds']:>8.1f}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="120/40 rows, 2 layers, 128 tokens, 4 steps per fold")
    parser.add_argument("--n-train", type=int, default=600)
    parser.add_argument("--n-test", type=int, default=200)
    parser.add_argument("--config", default=str(PRESET), help="the preset every fold trains with")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override the preset, e.g. train.max_steps=40")
    parser.add_argument("--devices", default="cpu", help="comma-separated inference devices")
    parser.add_argument("--out", default=str(REPO / "runs" / "merge_folds"))
    args = parser.parse_args()
    from wsdm_helpers.runtime import sleeping_threads

    sleeping_threads()  # before torch loads
    from wsdm_helpers.cli import parse_sets
    from wsdm_helpers.config import load_run_config
    from wsdm_helpers.cv import fold_dir, run_cv
    from wsdm_helpers.data import read_labels
    from wsdm_helpers.demo_data import write_demo_dataset
    from wsdm_helpers.io import atomic_write_json
    from wsdm_helpers.merge_folds import merge_folds

    out = Path(args.out)
    n_train, n_test = (120, 40) if args.quick else (args.n_train, args.n_test)
    train, test, _, labels_path = write_demo_dataset(out / "data", n_train=n_train, n_test=n_test, seed=0)
    cfg = load_run_config(args.config, {**(QUICK if args.quick else {}), **parse_sets(args.overrides),
                                        "data.train_path": str(train), "train.output_dir": str(out / "cv")})
    started = time.perf_counter()
    run_cv(cfg)
    cv_seconds = time.perf_counter() - started
    if not (out / "merged").is_dir():
        print(merge_folds(out / "cv", out / "merged").to_text())
    devices = args.devices.split(",")
    folds = [fold_dir(out / "cv", k) for k in range(cfg.data.n_folds)]
    mean, mean_s = timed_submit(folds, test, out / "five", devices)
    merged, merged_s = timed_submit([out / "merged"], test, out / "one", devices)
    single, single_s = timed_submit(folds[:1], test, out / "fold-0", devices)
    labels = read_labels(labels_path).astype({"id": str}).sort_values("id")["label"].to_numpy()
    rows = {f"mean of {len(folds)} fold models": {**scores(mean, labels, mean), "seconds": mean_s},
            "merged adapter": {**scores(merged, labels, mean), "seconds": merged_s},
            "fold 0 alone": {**scores(single, labels, mean), "seconds": single_s}}
    against_one = scores(merged, labels, single)
    print(to_text(rows, f"{n_test} demo test rows; {len(folds)} folds of {n_train} train rows; Gemma 3 270M, "
                        f"{cfg.model.num_layers or 'all'} layers, {cfg.format.max_length} tokens, {cfg.train.max_steps} "
                        f"steps per fold (cv: {cv_seconds:.0f}s); predict time includes loading"))
    print(f"merged minus fold 0 alone (the same predict cost): accuracy {against_one['accuracy_vs_mean']:+.4f} "
          f"[{against_one['accuracy_vs_mean_ci'][0]:+.3f}, {against_one['accuracy_vs_mean_ci'][1]:+.3f}], log loss "
          f"{against_one['log_loss_vs_mean']:+.4f} [{against_one['log_loss_vs_mean_ci'][0]:+.3f}, "
          f"{against_one['log_loss_vs_mean_ci'][1]:+.3f}]")
    ratio = merged_s / mean_s
    print(f"merged / {len(folds)}-model predict time: {ratio:.3f} (target <= 0.25: {'met' if ratio <= 0.25 else 'not met'})")
    result = {"benchmark": "merge_folds", "quick": args.quick, "folds": len(folds), "n_train": n_train, "n_test": n_test,
              "num_layers": cfg.model.num_layers, "max_length": cfg.format.max_length, "max_steps": cfg.train.max_steps,
              "rows": rows, "merged_vs_fold_0": {k: v for k, v in against_one.items() if "_vs_mean" in k},
              "time_ratio": ratio, "target_met": ratio <= 0.25}
    atomic_write_json(out / "merge_folds.json", result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    run(main)
