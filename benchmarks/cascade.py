"""Uncertainty cascades: a cheap first member on every row, a dearer second one only where the first is unsure.

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

``--demo ROWS``: the same on ROWS pairs of the demo data (the package's multilingual set) with two LLM runs of
different sizes instead: the probe of the first --small-layers decoder layers of Gemma 3 270M (a smaller
model: its pass is timed on its own) on every row, then the probe of all its layers on the rows the small one
is least sure of. Compute: the small pass on every row + the large pass's seconds per row x its rows.

    python benchmarks/cascade.py [--quick] [--demo ROWS [--small-layers 4]] [--folds 5] [--shares 0.1,0.2,0.3,0.4,0.5]

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
    """name -> (cross-fitted probabilities, share of rows the second member scored); ``members``: the first
    (every row) and the second (the cascade member), in that order."""
    from wsdm_helpers.ensemble import cross_fitted

    first, second = members
    stack = np.stack([members[first], members[second]])
    out = {first: (stack[0], 0.0), second: (stack[1], 1.0)}
    for name, share in [("full blend", None), *((f"cascade {s:g}", s) for s in shares)]:
        probs, usable = cross_fitted(stack, labels, folds, [None, share], "log_loss", space, ids)
        out[name] = (probs, float(usable[1].mean()))
    return out


def table(configs: dict[str, tuple[np.ndarray, float]], labels: np.ndarray, base_s: float, llm_s_per_row: float) -> list[dict]:
    """Scores and compute: ``base_s`` for the first member on every row (not paid by the second alone), plus
    ``llm_s_per_row`` for each row the second member scores."""
    from wsdm_helpers import metrics

    second = list(configs)[1]
    full = configs["full blend"][0].argmax(1) == labels
    rows = []
    for name, (probs, share) in configs.items():
        correct = probs.argmax(1) == labels
        losses = metrics.row_log_loss(labels, probs)
        llm_rows = round(share * len(labels))
        seconds = (base_s if name != second else 0.0) + llm_s_per_row * llm_rows
        rows.append({"config": name, "accuracy": float(correct.mean()),
                     "accuracy_ci": list(bootstrap_interval(correct.astype(float))),
                     "log_loss": float(losses.mean()), "log_loss_ci": list(bootstrap_interval(losses)),
                     "vs_full": float(correct.mean() - full.mean()),
                     "vs_full_ci": list(bootstrap_interval(correct.astype(float) - full)),
                     "llm_rows": llm_rows, "llm_share": share, "seconds": seconds})
    return rows


def to_text(rows: list[dict], title: str) -> str:
    width = max(17, *(len(r["config"]) for r in rows))
    lines = [title, f"{'config':<{width}} {'accuracy':>8}  {'95% interval':<15} {'vs full (95%)':<23} {'log loss':>8}  "
                    f"{'95% interval':<15} {'LLM rows':>8} {'seconds':>8}", "-" * (96 + width)]
    for r in rows:
        lines.append(f"{r['config']:<{width}} {r['accuracy']:>8.4f}  [{r['accuracy_ci'][0]:.3f}, {r['accuracy_ci'][1]:.3f}]  "
                     f"{r['vs_full']:+.4f} [{r['vs_full_ci'][0]:+.3f}, {r['vs_full_ci'][1]:+.3f}]  {r['log_loss']:>8.4f}  "
                     f"[{r['log_loss_ci'][0]:.3f}, {r['log_loss_ci'][1]:.3f}] {r['llm_rows']:>8} {r['seconds']:>8.1f}")
    return "\n".join(lines)


def target(rows: list[dict]) -> dict | None:
    """The cheapest cascade within the full blend's accuracy interval at half the probe's rows or less."""
    full = next(r for r in rows if r["config"] == "full blend")
    hits = [r for r in rows if r["config"].startswith("cascade") and r["llm_share"] <= 0.5
            and r["accuracy"] >= full["accuracy_ci"][0]]
    return min(hits, key=lambda r: r["llm_rows"]) if hits else None


def arena_members(args, cfg, frame, folds: np.ndarray):
    """The feature baseline (with its LLMBar sets), then the preset's probe; (members, the baseline's
    inference seconds, the probe pass's seconds, a title)."""
    import pandas as pd

    from wsdm_helpers.data import read_pairs

    extras = pd.concat([read_pairs(p, ties="drop")[0] for p in args.baseline_extras], ignore_index=True) \
        if args.baseline_extras else frame.iloc[:0]
    diffs, llm_seconds = cached_differences(cfg, frame, Path(args.out))
    members = {"feature baseline": reference_members(frame, extras, folds)["feature baseline"],
               "probe": _probe(diffs, frame, folds, cfg.train.probe_l2)}
    title = (f"{len(frame)} Arena rows without a tie; probe: Gemma 3 270M, {cfg.model.num_layers or 'all'} layers "
             f"(its pass: {llm_seconds:.0f}s for the rows and their swaps)")
    return members, baseline_seconds(frame, extras), llm_seconds, title


def demo_members(args, overrides: dict, frame, folds: np.ndarray):
    """The probe of the first --small-layers layers of Gemma 3 270M, then the probe of all of them, each pass
    timed on its own; (members, the small pass's seconds, the large pass's seconds, a title)."""
    from wsdm_helpers.config import load_run_config

    members, seconds = {}, {}
    for name, layers in ((f"small LLM ({args.small_layers} layers)", args.small_layers), ("large LLM (all layers)", None)):
        cfg = load_run_config(args.config, {**overrides, "model.num_layers": layers})
        diffs, seconds[name] = cached_differences(cfg, frame, Path(args.out) / f"demo-{layers or 'all'}")
        members[name] = _probe(diffs, frame, folds, cfg.train.probe_l2)
    small_s, large_s = seconds.values()
    title = (f"{len(frame)} demo rows; Gemma 3 270M probes of {args.small_layers} layers (pass {small_s:.0f}s) and "
             f"all layers (pass {large_s:.0f}s), each pass over the rows and their swaps")
    return members, small_s, large_s, title


def _probe(diffs: np.ndarray, frame, folds: np.ndarray, l2: float) -> np.ndarray:
    """Out-of-fold [P(a), P(b)] of the probe on the last depth (pair minus swap: the preset's swap TTA)."""
    p_a = 1 / (1 + np.exp(-probe_logits(diffs[-1], frame["label"].to_numpy() == 0, folds, l2)))
    return np.stack([p_a, 1 - p_a], axis=1)


def _rows(text: str) -> int:
    """--demo: a number of demo pairs, enough for every fold to fit a probe on the others."""
    rows = int(text)
    if rows < 10:
        raise argparse.ArgumentTypeError(f"{rows}: give at least 10 demo rows (e.g. --demo 400)")
    return rows


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
    parser.add_argument("--demo", type=_rows, default=0, metavar="ROWS",
                        help="ROWS demo pairs and two LLM probes of different sizes instead of the Arena sample")
    parser.add_argument("--small-layers", type=int, default=4, help="--demo: decoder layers of the small member")
    parser.add_argument("--out", default=str(REPO / "runs" / "cascade"), help="feature cache and results")
    args = parser.parse_args()
    from wsdm_helpers.cli import parse_sets
    from wsdm_helpers.config import load_run_config
    from wsdm_helpers.data import assign_folds, read_pairs
    from wsdm_helpers.demo_data import make_demo_frame
    from wsdm_helpers.io import atomic_write_json

    overrides = {**(QUICK if args.quick else {}), **parse_sets(args.overrides)}
    cfg = load_run_config(args.config, overrides)
    if not args.demo and skipped_without(Path(cfg.data.train_path), "cascade"):
        return 0
    frame = make_demo_frame(args.demo, seed=0) if args.demo else read_pairs(cfg.data.train_path, ties="drop")[0]
    labels, ids = frame["label"].to_numpy(), frame["id"].astype(str).to_numpy()
    folds = assign_folds(frame, args.folds, cfg.data.seed)
    members, base_s, llm_seconds, title = (demo_members(args, overrides, frame, folds) if args.demo
                                           else arena_members(args, cfg, frame, folds))
    shares = [float(s) for s in args.shares.split(",")]
    rows = table(configurations(members, labels, folds, ids, shares, args.space), labels, base_s,
                 llm_seconds / len(frame))
    hit = target(rows)
    print(to_text(rows, f"out of fold on {title}, {args.folds} prompt-grouped folds; {cfg.format.max_length} tokens; "
                        f"blend in {args.space} space"))
    print("target (cascade within the full blend's accuracy interval at <= half the second member's rows): "
          + (f"{hit['config']}, {hit['llm_rows']} LLM rows, {hit['seconds']:.1f}s" if hit else "not met"))
    result = {"benchmark": "cascade", "data": "demo" if args.demo else "arena", "rows": len(frame),
              "folds": args.folds, "quick": args.quick,
              "max_length": cfg.format.max_length, "space": args.space,
              "num_layers": [args.small_layers, None] if args.demo else cfg.model.num_layers,
              "llm_pass_seconds": llm_seconds, "baseline_seconds": base_s, "configs": rows,
              "target_met": hit is not None, "target": hit["config"] if hit else None}
    atomic_write_json(Path(args.out) / ("cascade-demo.json" if args.demo else "cascade.json"), result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    run(main)
