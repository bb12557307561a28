"""Uncertainty cascades on real votes: the feature baseline on every row, the Gemma 3 270M probe only where it is unsure.

Rows: the LMSYS Arena sample without a tie (692), prompt-grouped folds (data.assign_folds, the preset's seed).
Members, out of fold:

- feature baseline: quality.reference_members (logistic regression on the other folds plus the LLMBar sets
  of --baseline-extras); its inference time: one fitted baseline predicting every row, timed here
- probe: the preset's (configs/cpu-real-gemma3-270m.yaml) linear probe of the frozen Gemma 3 270M on each
  pair minus its swap (probe_layers.cached_differences: one pass of the model over the rows and their
  swaps, cached in --out/features.npz with the wall time of that pass, loading included), fitted on the
  other folds (probe_layers.probe_logits); P(a) = sigmoid(logit), which is the preset's swap TTA in
  log-odds space

Configurations, all cross-fitted by fold exactly as ``wsdm ensemble fit`` scores them (ensemble.cross_fitted):
each member alone, the full blend (weights fitted on the other folds, --space), and cascades at each share
of --shares: the probe scores only that share of a held-out fold's rows, the ones the baseline is least sure
of (tta.uncertainty_order, what ``wsdm predict --rows uncertain:SHARE`` picks), blended there with weights
fitted on the other folds' cascade rows. Accuracy and log loss carry bootstrap 95% intervals over rows, and
the accuracy difference to the full blend a paired one. Compute: LLM rows scored, and wall time = the
baseline's inference + the probe's seconds per row (from the cached pass) x LLM rows.

Target: a cascade whose accuracy lies within the full blend's interval at half of the probe's compute or less.

    python benchmarks/cascade.py [--quick] [--folds 5] [--shares 0.1,0.2,0.3,0.4,0.5] [--set KEY=VALUE ...]

``--quick``: the probe on the first 6 decoder layers at 128 tokens (model.num_layers=6, format.max_length=128;
a third of the layers and half the context of the preset: its pass is the cost). The last line is one JSON
object.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from probe_layers import cached_differences, probe_logits  # noqa: E402
from quality import BASELINE_EXTRAS, PRESET, REPO, bootstrap_interval, reference_members, run, skipped_without  # noqa: E402

QUICK = {"format.max_length": 128, "model.num_layers": 6}


def baseline_seconds(frame, extras) -> float:
    """Inference time of the feature baseline on every row (fitted once beforehand, not timed)."""
    import pandas as pd

    from wsdm_helpers.features import FeatureBaseline

    fitted = FeatureBaseline().fit(pd.concat([frame, extras], ignore_index=True))
    started = time.perf_counter()
    fitted.predict_array(frame)
    return time.perf_counter() - started


def configurations(members: dict[str, np.ndarray], labels: np.ndarray, folds: np.ndarray, ids: np.ndarray,
                   shares: list[float], space: str) -> dict[str, tuple[np.ndarray, float]]:
    """name -> (cross-fitted probabilities, share of rows the probe scored)."""
    from wsdm_helpers.ensemble import cross_fitted

    stack = np.stack([members["feature baseline"], members["probe"]])
    out = {"feature baseline": (stack[0], 0.0), "probe": (stack[1], 1.0)}
    for name, share in [("full blend", None), *((f"cascade {s:g}", s) for s in shares)]:
        probs, usable = cross_fitted(stack, labels, folds, [None, share], "log_loss", space, ids)
        out[name] = (probs, float(usable[1].mean()))
    return out


def table(configs: dict[str, tuple[np.ndarray, float]], labels: np.ndarray, base_s: float, llm_s_per_row: float) -> list[dict]:
    from wsdm_helpers import metrics

    full = configs["full blend"][0].argmax(1) == labels
    rows = []
    for name, (probs, share) in configs.items():
        correct = probs.argmax(1) == labels
        losses = metrics.row_log_loss(labels, probs)
        llm_rows = round(share * len(labels))
        seconds = (base_s if name != "probe" else 0.0) + llm_s_per_row * llm_rows
        rows.append({"config": name, "accuracy": float(correct.mean()),
                     "accuracy_ci": list(bootstrap_interval(correct.astype(float))),
                     "log_loss": float(losses.mean()), "log_loss_ci": list(bootstrap_interval(losses)),
                     "vs_full": float(correct.mean() - full.mean()),
                     "vs_full_ci": list(bootstrap_interval(correct.astype(float) - full)),
                     "llm_rows": llm_rows, "llm_share": share, "seconds": seconds})
    return rows


def to_text(rows: list[dict], title: str) -> str:
    lines = [title, f"{'config':<17} {'accuracy':>8}  {'95% interval':<15} {'vs full (95%)':<23} {'log loss':>8}  "
                    f"{'95% interval':<15} {'LLM rows':>8} {'seconds':>8}", "-" * 113]
    for r in rows:
        lines.append(f"{r['config']:<17} {r['accuracy']:>8.4f}  [{r['accuracy_ci'][0]:.3f}, {r['accuracy_ci'][1]:.3f}]  "
                     f"{r['vs_full']:+.4f} [{r['vs_full_ci'][0]:+.3f}, {r['vs_full_ci'][1]:+.3f}]  {r['log_loss']:>8.4f}  "
                     f"[{r['log_loss_ci'][0]:.3f}, {r['log_loss_ci'][1]:.3f}] {r['llm_rows']:>8} {r['seconds']:>8.1f}")
    return "\n".join(lines)


def target(rows: list[dict]) -> dict | None:
    """The cheapest cascade within the full blend's accuracy interval at half the probe's rows or less."""
    full = next(r for r in rows if r["config"] == "full blend")
    hits = [r for r in rows if r["config"].startswith("cascade") and r["llm_share"] <= 0.5
            and r["accuracy"] >= full["accuracy_ci"][0]]
    return min(hits, key=lambda r: r["llm_rows"]) if hits else None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="the probe on 6 layers at 128 tokens")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--shares", default="0.1,0.2,0.3,0.4,0.5", help="cascade shares of the probe's rows")
    parser.add_argument("--space", default="log_odds", choices=["probability", "log_odds"], help="blend space")
    parser.add_argument("--config", default=str(PRESET), help="the probe's preset (its data section: the Arena sample)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override the preset, e.g. data.train_path=/path/train_sample.csv")
    parser.add_argument("--baseline-extras", nargs="*", default=BASELINE_EXTRAS, metavar="FILE",
                        help="real sets the feature baseline trains with besides the Arena folds")
    parser.add_argument("--out", default=str(REPO / "runs" / "cascade"), help="feature cache and results")
    args = parser.parse_args()
    import pandas as pd

    from wsdm_helpers.cli import parse_sets
    from wsdm_helpers.config import load_run_config
    from wsdm_helpers.data import assign_folds, read_pairs
    from wsdm_helpers.io import atomic_write_json

    cfg = load_run_config(args.config, {**(QUICK if args.quick else {}), **parse_sets(args.overrides)})
    sample = Path(cfg.data.train_path)
    if skipped_without(sample, "cascade"):
        return 0
    frame, _ = read_pairs(sample, ties="drop")
    labels, ids = frame["label"].to_numpy(), frame["id"].astype(str).to_numpy()
    folds = assign_folds(frame, args.folds, cfg.data.seed)
    extras = pd.concat([read_pairs(p, ties="drop")[0] for p in args.baseline_extras], ignore_index=True) \
        if args.baseline_extras else frame.iloc[:0]
    diffs, llm_seconds = cached_differences(cfg, frame, Path(args.out))
    p_a = 1 / (1 + np.exp(-probe_logits(diffs[-1], labels == 0, folds, cfg.train.probe_l2)))
    members = {"feature baseline": reference_members(frame, extras, folds)["feature baseline"],
               "probe": np.stack([p_a, 1 - p_a], axis=1)}
    shares = [float(s) for s in args.shares.split(",")]
    base_s = baseline_seconds(frame, extras)
    rows = table(configurations(members, labels, folds, ids, shares, args.space), labels, base_s,
                 llm_seconds / len(frame))
    hit = target(rows)
    print(to_text(rows, f"out of fold on {len(frame)} Arena rows without a tie, {args.folds} prompt-grouped folds; "
                        f"probe: Gemma 3 270M, {cfg.model.num_layers or 'all'} layers, {cfg.format.max_length} tokens "
                        f"(its pass: {llm_seconds:.0f}s for {len(frame)} rows and their swaps); blend in {args.space} "
                        f"space"))
    print("target (cascade within the full blend's accuracy interval at <= half the probe's rows): "
          + (f"{hit['config']}, {hit['llm_rows']} LLM rows, {hit['seconds']:.1f}s" if hit else "not met"))
    result = {"benchmark": "cascade", "rows": len(frame), "folds": args.folds, "quick": args.quick,
              "max_length": cfg.format.max_length, "num_layers": cfg.model.num_layers, "space": args.space,
              "llm_pass_seconds": llm_seconds, "baseline_seconds": base_s, "configs": rows,
              "target_met": hit is not None, "target": hit["config"] if hit else None}
    atomic_write_json(Path(args.out) / "cascade.json", result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    run(main)
