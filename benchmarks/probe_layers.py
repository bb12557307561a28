"""Which depth should the pair probe read? Out-of-fold accuracy of the linear probe on each depth of the frozen model.

For every k, the probe of ``train.probe_head`` fitted on the states that the model cut by ``model.num_layers=k``
would pool (its first k decoder layers through the final norm, mean over the tokens), on the LMSYS Arena rows
without a tie, with prompt-grouped folds of several fold seeds. Two rows keep the choice honest:

- "chosen by inner CV": the depth picked inside each training split (4 inner folds), then fitted there and scored
  on the held-out fold, so no row helps choose the depth it is scored with. A depth read off the table instead
  was chosen on the very rows it is scored on.
- the log-odds blend (benchmarks/quality.py's members: longer-wins, the feature baseline with its extra sets, the
  baseline on Arena rows alone, and the probe at depth k), against the feature baseline: a probe that reads
  better alone may add less to the blend, which is what a submission uses.

Then the learning curve of the whole model's probe: each fold's probe fitted on 50 to 550 of its training
pairs, 3 draws each.

One pass of the model over the rows and their swaps (about 7 minutes at 256 tokens on 2 CPU cores), cached in
--out/features.npz for the same config; then the probe fits take seconds.

    python benchmarks/probe_layers.py [--folds 5] [--seeds 42,0,1,2,3,4,5,6] [--blend-depths 15,18]
                                      [--set format.max_length=128] [--out runs/probe_layers]

The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from quality import (  # noqa: E402
    BASELINE_EXTRAS,
    PRESET,
    REPO,
    bootstrap_interval,
    nested_blend,
    reference_members,
    run,
    skipped_without,
)

INNER_FOLDS = 4
CURVE_SIZES = [50, 100, 200, 350, 550]  # training pairs per fold; 5 folds of the 692 rows train on ~553
CURVE_SEEDS = [0, 1, 2]


def depth_differences(cfg, frame) -> np.ndarray:
    """[depths, rows, hidden]: each pair's pooled states minus its swap's, per depth (one pass of the model)."""
    import pandas as pd

    from wsdm_helpers.modeling import load_model, mean_states_per_depth
    from wsdm_helpers.probe import pooled_features
    from wsdm_helpers.tokenization import encode_pairs
    from wsdm_helpers.tta import swap_pairs

    model, tokenizer, family = load_model(cfg, "cpu")
    template = family.template if cfg.format.template == "auto" else cfg.format.template
    encoded = encode_pairs(pd.concat([frame, swap_pairs(frame)], ignore_index=True), tokenizer, cfg.format, template)
    features = pooled_features(model, encoded, tokenizer.pad_token_id, family.padding_side, "mean",
                               cfg.train.per_device_batch_size * 2, pool=mean_states_per_depth)
    n = len(frame)
    return (features[:n] - features[n:]).transpose(1, 0, 2)


def probe_logits(diff: np.ndarray, a_wins: np.ndarray, folds: np.ndarray, l2: float) -> np.ndarray:
    """Out-of-fold logits of P(a wins): each fold scored by the probe fitted on the other folds."""
    from wsdm_helpers.probe import fit_pair_probe

    logits = np.zeros(len(diff))
    for fold in np.unique(folds):
        held = folds == fold
        logits[held] = diff[held] @ fit_pair_probe(diff[~held], a_wins[~held], l2)
    return logits


def accuracy(logits: np.ndarray, a_wins: np.ndarray) -> float:
    return float(np.mean((logits > 0) == a_wins))


def depth_row(name: str, logits_per_seed: list[np.ndarray], a_wins: np.ndarray) -> dict:
    """Accuracy over the fold seeds, and the 95% interval of the seed that scored lowest."""
    accuracies = np.array([accuracy(logits, a_wins) for logits in logits_per_seed])
    worst = logits_per_seed[int(accuracies.argmin())]
    low, high = bootstrap_interval(((worst > 0) == a_wins).astype(float))
    return {"depth": name, "mean": float(accuracies.mean()), "min": float(accuracies.min()),
            "max": float(accuracies.max()), "min_ci": [low, high], "per_seed": accuracies.tolist()}


def learning_curve(diff: np.ndarray, a_wins: np.ndarray, folds: np.ndarray, l2: float, sizes: list[int],
                   seeds: list[int]) -> list[dict]:
    """Out-of-fold accuracy when each fold's probe is fitted on ``size`` of its training pairs (drawn per seed)."""
    from wsdm_helpers.probe import fit_pair_probe

    rows = []
    for size in sizes:
        per_seed = []
        for seed in seeds:
            rng, logits = np.random.default_rng(seed), np.zeros(len(diff))
            for fold in np.unique(folds):
                train = np.flatnonzero(folds != fold)
                drawn = rng.choice(train, size=min(size, len(train)), replace=False)
                logits[folds == fold] = diff[folds == fold] @ fit_pair_probe(diff[drawn], a_wins[drawn], l2)
            per_seed.append(logits)
        rows.append(depth_row(f"{size} pairs", per_seed, a_wins))
    return rows


def chosen_by_inner_cv(diffs: np.ndarray, a_wins: np.ndarray, frame, folds: np.ndarray, l2: float,
                       seed: int) -> tuple[np.ndarray, list[int]]:
    """Out-of-fold logits of the probe at the depth that inner CV on each training split prefers; the depths."""
    from wsdm_helpers.data import assign_folds
    from wsdm_helpers.probe import fit_pair_probe

    logits, chosen = np.zeros(len(frame)), []
    for fold in np.unique(folds):
        train = folds != fold
        inner = assign_folds(frame[train].reset_index(drop=True), INNER_FOLDS, seed)
        scores = [accuracy(probe_logits(d[train], a_wins[train], inner, l2), a_wins[train]) for d in diffs]
        best = int(np.argmax(scores))
        chosen.append(best + 1)
        logits[~train] = diffs[best][~train] @ fit_pair_probe(diffs[best][train], a_wins[train], l2)
    return logits, chosen


def blend_gain(members: dict[str, np.ndarray], probe: np.ndarray, labels: np.ndarray, folds: np.ndarray) -> float:
    """Accuracy of the nested log-odds blend of ``members`` and the probe, minus the feature baseline's."""
    p_a = 1 / (1 + np.exp(-probe))
    blended, _ = nested_blend({**members, "probe": np.stack([p_a, 1 - p_a], 1)}, labels, folds, space="log_odds")
    base = members["feature baseline"].argmax(1) == labels
    return float(np.mean(blended.argmax(1) == labels) - base.mean())


def to_text(rows: list[dict], title: str, first: str) -> str:
    blends = any("blend_gain" in r for r in rows)
    lines = [title, f"{first:<20} {'mean':>7} {'min':>7} {'(95%, lowest seed)':<18} {'max':>7}"
             + ("  log-odds blend vs baseline (mean, seeds above 0)" if blends else "")]
    for r in rows:
        blend = f"{r['blend_gain']:+.4f} ({r['blend_above']}/{len(r['blend_per_seed'])})" if "blend_gain" in r else ""
        lines.append(f"{r['depth']:<20} {r['mean']:>7.4f} {r['min']:>7.4f} [{r['min_ci'][0]:.3f}, {r['min_ci'][1]:.3f}]"
                     f"     {r['max']:>7.4f}  {blend}".rstrip())
    return "\n".join(lines)


def cached_differences(cfg, frame, out: Path) -> tuple[np.ndarray, float]:
    """depth_differences, kept in ``out/features.npz`` under a key of the config and the rows, with the wall
    seconds of the model pass that made them (loading included; both orientations of every row)."""
    from wsdm_helpers.config import to_dict

    key = hashlib.sha256(json.dumps([to_dict(cfg.model), to_dict(cfg.format), sorted(frame["id"].astype(str))],
                                    sort_keys=True, default=str).encode()).hexdigest()
    path = out / "features.npz"
    if path.is_file():
        cached = np.load(path)
        if str(cached["key"]) == key and "seconds" in cached:
            return cached["diffs"], float(cached["seconds"])
    started = time.perf_counter()
    diffs = depth_differences(cfg, frame)
    seconds = time.perf_counter() - started
    out.mkdir(parents=True, exist_ok=True)
    np.savez(path, diffs=diffs, key=key, seconds=seconds)
    return diffs, seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--seeds", default="42,0,1,2,3,4,5,6", help="fold seeds (data.assign_folds)")
    parser.add_argument("--blend-depths", default="", help="depths to also blend with the feature baseline "
                        "(default: the best mean depth and the last)")
    parser.add_argument("--config", default=str(PRESET), help="the probe's preset")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override the preset, e.g. format.max_length=128")
    parser.add_argument("--out", default=str(REPO / "runs" / "probe_layers"), help="feature cache and results")
    args = parser.parse_args()
    import pandas as pd

    from wsdm_helpers.cli import parse_sets
    from wsdm_helpers.config import load_run_config
    from wsdm_helpers.data import assign_folds, read_pairs
    from wsdm_helpers.io import atomic_write_json

    cfg = load_run_config(args.config, parse_sets(args.overrides))
    sample = Path(cfg.data.train_path)
    if skipped_without(sample, "probe_layers"):
        return 0
    seeds = [int(s) for s in args.seeds.split(",")]
    out, l2 = Path(args.out), cfg.train.probe_l2
    frame, _ = read_pairs(sample, ties="drop")
    labels = frame["label"].to_numpy()
    a_wins = labels == 0
    diffs, _ = cached_differences(cfg, frame, out)
    folds = {seed: assign_folds(frame, args.folds, seed) for seed in seeds}
    logits = [[probe_logits(d, a_wins, folds[s], l2) for s in seeds] for d in diffs]
    rows = [depth_row(f"{k + 1} layers", per_seed, a_wins) for k, per_seed in enumerate(logits)]
    nested = [chosen_by_inner_cv(diffs, a_wins, frame, folds[s], l2, s) for s in seeds]
    rows.append({**depth_row("chosen by inner CV", [lg for lg, _ in nested], a_wins), "chosen": [c for _, c in nested]})
    blend_depths = [int(k) for k in args.blend_depths.split(",")] if args.blend_depths else \
        sorted({int(np.argmax([r["mean"] for r in rows[:-1]])) + 1, len(diffs)})
    extras = pd.concat([read_pairs(p, ties="drop")[0] for p in BASELINE_EXTRAS], ignore_index=True)
    members = {s: reference_members(frame, extras, folds[s]) for s in seeds}
    for k in blend_depths:
        gains = np.array([blend_gain(members[s], logits[k - 1][i], labels, folds[s]) for i, s in enumerate(seeds)])
        rows[k - 1].update(blend_gain=float(gains.mean()), blend_above=int((gains > 0).sum()),
                           blend_per_seed=gains.tolist())
    curve = learning_curve(diffs[-1], a_wins, folds[seeds[0]], l2, CURVE_SIZES, CURVE_SEEDS)
    print(to_text(rows, f"probe out of fold on {len(frame)} Arena rows, {args.folds} prompt-grouped folds, fold "
                        f"seeds {seeds}", "depth"))
    print(to_text(curve, f"\nlearning curve of the whole model's probe (fold seed {seeds[0]}; each fold's probe "
                         f"fitted on a draw of its training pairs, draw seeds {CURVE_SEEDS})", "training pairs"))
    result = {"benchmark": "probe_layers", "rows": len(frame), "folds": args.folds, "seeds": seeds,
              "max_length": cfg.format.max_length, "depths": rows, "learning_curve": curve}
    atomic_write_json(out / "probe_layers.json", result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    run(main)
