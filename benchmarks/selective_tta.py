"""Selective swap TTA against full swap TTA: accuracy and extra compute, on a trained run's validation rows.

One AB pass and one BA pass over every validation row give every policy's result exactly (the model
is deterministic): full TTA averages all rows, a selective policy only the rows it picks from the AB
pass. Extra compute = computed (padded) tokens of the BA pass over the picked rows / over all rows.
The default policy is also run end to end with inference.run_prediction to check that it gives the
same result.

    python benchmarks/selective_tta.py --run RUN_DIR [--quick] [--max-rows N]

RUN_DIR: a run trained with the CPU demo preset (configs/cpu-demo-gemma3-270m.yaml); its validation
rows come from the run's own data section (training.split_data).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys

import numpy as np

BANDS = (0.05, 0.1, 0.15, 0.2)
SHARES = (0.2, 0.3, 0.4, 0.5, 0.6)


def accuracy(preds, labels: np.ndarray) -> float:
    return float((preds[["winner_model_a", "winner_model_b"]].to_numpy().argmax(axis=1) == labels).mean())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="run folder (wsdm train output)")
    parser.add_argument("--quick", action="store_true", help="at most 128 validation rows, no end-to-end check")
    parser.add_argument("--max-rows", type=int, default=0, help="use at most N validation rows (0 = all)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    from wsdm_helpers.inference import computed_tokens, run_prediction
    from wsdm_helpers.modeling import load_run
    from wsdm_helpers.tokenization import encode_pairs
    from wsdm_helpers.training import split_data
    from wsdm_helpers.tta import merge_swapped, select_uncertain, swap_pairs

    run = load_run(args.run)
    _, valid = split_data(run.config)
    if valid is None:
        raise SystemExit(f"{args.run} was trained on every row (data.fold=-1): no validation rows to measure on")
    valid = valid[valid["label"] < 2]
    limit = args.max_rows or (128 if args.quick else 0)
    valid = valid.iloc[:limit] if limit else valid
    labels = valid["label"].to_numpy()
    cfg = dataclasses.replace(run.config.inference, devices=["cpu"], tta="none", time_budget_minutes=None,
                              work_dir="").for_device("cpu")
    ab = run_prediction(run, valid, cfg)
    swapped = swap_pairs(valid)
    ba = run_prediction(run, swapped, cfg)
    template = run.config.format.template if run.config.format.template != "auto" else run.family.template
    encoded = encode_pairs(swapped, run.tokenizer, run.config.format, template)
    ba_lengths = dict(zip(encoded.ids, encoded.lengths, strict=True))  # for the compute of any subset of the BA pass
    full_ba_tokens = computed_tokens(list(ba_lengths.values()), cfg)

    def merged(band, cap):
        ids = select_uncertain(ab.predictions, band, cap)
        return ids, merge_swapped(ab.predictions, ba.predictions[ba.predictions["id"].isin(set(ids))])

    def policy(band, cap):
        ids, preds = merged(band, cap)
        extra = computed_tokens([ba_lengths[i] for i in ids], cfg) / full_ba_tokens if ids else 0.0
        return accuracy(preds, labels), extra, len(ids)

    rows = [("no TTA", accuracy(ab.predictions, labels), 0.0, 0),
            ("full swap TTA", *policy(None, None))]
    for band in BANDS:
        rows.append((f"selective: band {band}", *policy(band, None)))
    for share in SHARES:
        rows.append((f"selective: {share:.0%} most uncertain", *policy(None, round(share * len(valid)))))
    default_band, default_share = run.config.inference.tta_band, run.config.inference.tta_share
    default_cap = None if default_share is None else round(default_share * len(valid))
    default = policy(default_band, default_cap)
    full_acc = rows[1][1]
    print(f"{args.run}: {len(valid)} validation rows without a tie")
    print(f"{'policy':<34} {'accuracy':>9} {'vs full':>9} {'extra compute':>14} {'rows swapped':>13}")
    for name, acc, extra, n in rows:
        print(f"{name:<34} {acc:>9.4f} {100 * (acc - full_acc):>+8.2f}p {extra:>14.1%} {n:>13d}")
    result = {"benchmark": "selective_tta", "rows": len(valid), "accuracy_no_tta": round(rows[0][1], 4),
              "accuracy_full_tta": round(full_acc, 4), "default_policy": {"tta_band": default_band,
                                                                          "tta_share": default_share},
              "accuracy_selective": round(default[0], 4),
              "points_below_full": round(100 * (full_acc - default[0]), 2),
              "extra_compute_share": round(default[1], 4),
              "targets_met": bool(100 * (full_acc - default[0]) <= 0.5 and default[1] <= 0.6),
              "table": {name: [round(acc, 4), round(extra, 4)] for name, acc, extra, _ in rows}}
    if not args.quick:
        end_to_end = run_prediction(run, valid, dataclasses.replace(cfg, tta="selective"))
        offline = merged(default_band, default_cap)[1]
        result["end_to_end_matches"] = bool(np.allclose(end_to_end.predictions["winner_model_a"],
                                                        offline["winner_model_a"], atol=1e-5))
    print(f"default policy (tta_band={default_band}, tta_share={default_share}): accuracy {default[0]:.4f} "
          f"({100 * (default[0] - full_acc):+.2f} points vs full TTA) at {default[1]:.1%} of its extra compute")
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
