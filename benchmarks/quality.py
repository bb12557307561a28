"""Out-of-fold quality on real Arena votes: constant, longer-wins, feature baseline, Gemma 3 270M (the preset), blend.

Rows: the LMSYS Arena sample without a tie (692). Folds: data.assign_folds (grouped by prompt, label
stratified; the same folds ``wsdm train`` holds out with data.n_folds/fold). For each fold, every
method is trained on the other folds (plus the real sets that help it) and predicts the held-out rows:

- constant: P = 0.5 (the argmax is always "a")
- longer-wins: P = 0.6 for the response with more characters
- feature baseline: features.FeatureBaseline (logistic regression), with the other Arena folds and the
  sets of --baseline-extras (default: the four LLMBar sets that help it most, see BASELINE_EXTRAS);
  "baseline, arena only" is the same fitted on the other Arena folds alone
- Gemma 3 270M: ``wsdm train`` with the preset (``configs/cpu-real-gemma3-270m.yaml``, its own data
  section: its extra_train_paths), one run per fold, its oof.parquet (the held-out rows under the
  preset's inference TTA, as its submission would score them); ``--no-llm`` leaves it out (and the
  blend then mixes the others)
- blend: probability weights fitted (ensemble.fit_weights, --blend-metric) on the other folds' out-of-fold
  predictions of the methods above, applied to the held-out fold (nested: no row fits its own weights)
- blend, log-odds: the same in log-odds space (ensemble's ``log_odds``: the weights also scale each
  method's confidence, which lets the blend sharpen an under-confident LLM probe)

Accuracy carries a bootstrap 95% interval over rows, and its difference to the feature baseline a
paired one; so does the log loss difference (what LMSYS scores; below 0 = better than the baseline).
Writes quality.md / quality.json and the evaluate report of all methods (PNG plots) into --out.

    python benchmarks/quality.py [--quick] [--folds 5] [--no-llm] [--set train.max_steps=60 ...]
    python benchmarks/quality.py --mix [FILE ...]   # which extra sets help the baseline on Arena votes
                                                    # (default: BASELINE_EXTRAS)

``--quick``: 2 folds. The last line is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "configs" / "cpu-real-gemma3-270m.yaml"
# The real sets the feature baseline trains with besides the Arena folds. Chosen with --mix (5 folds, the
# other Arena folds + one set): none 0.640, + MT-Bench 0.656, + LLMEval2 0.645, + FairEval 0.642,
# + Natural 0.640, + oasst1 pairs 0.613, + hh-rlhf 0.556, + KUDGE 0.481 (objective correctness, not a taste
# vote); all four kept together 0.660.
BASELINE_EXTRAS = [str(REPO.parent / "shared" / "data" / "llmbar" / name) for name in (
    "Processed_MT-Bench.json", "Processed_LLMEval2.json", "Processed_FairEval.json", "LLMBar_Natural.json")]
BOOTSTRAP = 2000


def bootstrap_interval(correct: np.ndarray, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of the mean of ``correct`` (rows resampled with replacement)."""
    rng = np.random.default_rng(seed)
    means = correct[rng.integers(0, len(correct), (BOOTSTRAP, len(correct)))].mean(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def skipped_without(sample: Path, benchmark: str) -> bool:
    """True (after printing the skip and its JSON line) when the shared real-data file is absent."""
    if sample.is_file():
        return False
    print(f"skipped: {sample} is absent (the shared real-data folder is not part of the project)")
    print(json.dumps({"benchmark": benchmark, "skipped": True}))
    return True


def run(main) -> None:
    """Exit with ``main()``'s code; bad input exits 2 with its message (file and fix), no traceback."""
    from wsdm_helpers.errors import WsdmError

    try:
        sys.exit(main())
    except WsdmError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)


def llm_fold(cfg_path: Path, overrides: dict, fold: int, n_folds: int, out: Path, valid_ids) -> np.ndarray:
    """Train the preset on every fold but ``fold`` (resuming a finished run is a no-op); its OOF in
    the order of ``valid_ids``."""
    import pandas as pd

    from wsdm_helpers.config import load_run_config
    from wsdm_helpers.training import train

    run_dir = out / f"llm-fold{fold}"
    if not (run_dir / "oof.parquet").is_file():
        cfg = load_run_config(cfg_path, {**overrides, "data.valid_from": "train_path", "data.n_folds": n_folds,
                                         "data.fold": fold, "train.output_dir": str(run_dir)})
        train(cfg)
    oof = pd.read_parquet(run_dir / "oof.parquet").set_index("id")
    if set(oof.index) != set(valid_ids):
        raise SystemExit(f"{run_dir}: its validation rows are not fold {fold}'s rows; remove the folder")
    return oof.loc[list(valid_ids), ["winner_model_a", "winner_model_b"]].to_numpy()


def reference_members(frame, extras, folds: np.ndarray) -> dict[str, np.ndarray]:
    """longer-wins and the feature baseline (with ``extras``, and on the Arena folds alone), out of fold."""
    import pandas as pd

    from wsdm_helpers.evaluate import longer_wins
    from wsdm_helpers.features import FeatureBaseline

    members = {"longer-wins": longer_wins(frame), "feature baseline": np.zeros((len(frame), 2)),
               "baseline, arena only": np.zeros((len(frame), 2))}
    for fold in np.unique(folds):
        held = folds == fold
        train = pd.concat([frame[~held], extras], ignore_index=True)
        members["feature baseline"][held] = FeatureBaseline().fit(train).predict_array(frame[held])
        members["baseline, arena only"][held] = FeatureBaseline().fit(frame[~held]).predict_array(frame[held])
    return members


def nested_blend(oof: dict[str, np.ndarray], labels: np.ndarray, folds: np.ndarray,
                 metric: str = "log_loss", space: str = "probability") -> tuple[np.ndarray, list]:
    """Each fold blended with weights fitted on the other folds' out-of-fold predictions."""
    import pandas as pd

    from wsdm_helpers.ensemble import fit_weights, mix

    names = list(oof)
    blended, weights = np.zeros_like(oof[names[0]]), []
    for fold in np.unique(folds):
        fit = folds != fold
        ids = pd.Series(np.flatnonzero(fit).astype(str))
        frames = [pd.DataFrame({"id": ids, "winner_model_a": oof[n][fit, 0], "winner_model_b": oof[n][fit, 1]})
                  for n in names]
        w = fit_weights(frames, pd.DataFrame({"id": ids, "label": labels[fit]}), metric=metric, names=names,
                        space=space)
        blended[~fit] = mix(np.stack([oof[n][~fit] for n in names]), w, space)
        weights.append({n: round(float(wi), 3) for n, wi in zip(names, w, strict=True)})
    return blended, weights


def mix_table(frame, folds: np.ndarray, sets: dict[str, str]) -> list[dict]:
    """Feature-baseline OOF accuracy on ``frame`` trained on the other folds plus one extra set at a time."""
    import pandas as pd

    from wsdm_helpers.data import read_pairs
    from wsdm_helpers.features import FeatureBaseline

    rows, labels = [], frame["label"].to_numpy()
    for name, path in {"(none)": None, **sets}.items():
        extra = read_pairs(path, ties="drop")[0] if path else frame.iloc[:0]
        probs = np.zeros((len(frame), 2))
        for fold in np.unique(folds):
            held = folds == fold
            fitted = FeatureBaseline().fit(pd.concat([frame[~held], extra], ignore_index=True))
            probs[held] = fitted.predict_array(frame[held])
        rows.append({"extra set": name, "rows": len(extra), "accuracy": float(np.mean(probs.argmax(1) == labels))})
        print(f"  + {name:<40} {len(extra):>5} rows  OOF accuracy {rows[-1]['accuracy']:.4f}", flush=True)
    return rows


def table(oof: dict[str, np.ndarray], labels: np.ndarray) -> list[dict]:
    from wsdm_helpers import metrics

    base = oof["feature baseline"].argmax(axis=1) == labels
    base_loss = metrics.row_log_loss(labels, oof["feature baseline"])
    rows = []
    for name, probs in oof.items():
        correct = probs.argmax(axis=1) == labels
        loss_diff = metrics.row_log_loss(labels, probs) - base_loss
        low, high = bootstrap_interval(correct.astype(float))
        rows.append({"method": name, "accuracy": float(correct.mean()), "ci_low": low, "ci_high": high,
                     "log_loss": metrics.log_loss(labels, probs), "vs_baseline": float(correct.mean() - base.mean()),
                     "vs_baseline_ci": list(bootstrap_interval(correct.astype(float) - base)),
                     "log_loss_vs_baseline": float(loss_diff.mean()),
                     "log_loss_vs_baseline_ci": list(bootstrap_interval(loss_diff))})
    return rows


def to_text(rows: list[dict], n: int, folds: int) -> str:
    lines = [f"out-of-fold on {n} LMSYS Arena rows without a tie, {folds} prompt-grouped folds",
             f"{'method':<20} {'accuracy':>8}  {'95% interval':<15} {'vs baseline (95%)':<24} {'log loss':>8}  "
             f"{'vs baseline (95%)':<24}",
             "-" * 107]
    for r in rows:
        lines.append(f"{r['method']:<20} {r['accuracy']:>8.4f}  [{r['ci_low']:.3f}, {r['ci_high']:.3f}]  "
                     f"{r['vs_baseline']:+.4f} [{r['vs_baseline_ci'][0]:+.3f}, {r['vs_baseline_ci'][1]:+.3f}]  "
                     f"{r['log_loss']:>8.4f}  {r['log_loss_vs_baseline']:+.4f} [{r['log_loss_vs_baseline_ci'][0]:+.3f}, "
                     f"{r['log_loss_vs_baseline_ci'][1]:+.3f}]")
    return "\n".join(line.rstrip() for line in lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="2 folds")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--no-llm", action="store_true", help="leave out the Gemma 3 270M runs")
    parser.add_argument("--config", default=str(PRESET), help="the LLM's preset (its data section: the Arena sample, the fold "
                        "seed, the LLM's own extra sets)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override the preset for the LLM runs, e.g. train.max_steps=30")
    parser.add_argument("--blend-metric", default="log_loss", choices=["log_loss", "accuracy"],
                        help="what the blend weights are fitted to on the other folds")
    parser.add_argument("--baseline-extras", nargs="*", default=BASELINE_EXTRAS, metavar="FILE",
                        help="real sets the feature baseline trains with besides the Arena folds")
    parser.add_argument("--mix", nargs="*", metavar="FILE", help="instead: the feature baseline's OOF accuracy "
                        "with each extra set alone (default: --baseline-extras)")
    parser.add_argument("--out", default=str(REPO / "runs" / "quality"), help="report folder (and LLM runs)")
    args = parser.parse_args()
    from wsdm_helpers.cli import parse_sets
    from wsdm_helpers.config import load_run_config

    args.overrides = parse_sets(args.overrides)
    cfg = load_run_config(args.config, args.overrides)
    sample = Path(cfg.data.train_path)
    if skipped_without(sample, "quality"):
        return 0
    import pandas as pd

    from wsdm_helpers.data import assign_folds, read_pairs
    from wsdm_helpers.evaluate import build_report, write_report
    from wsdm_helpers.io import atomic_write_json, atomic_write_text

    started = time.perf_counter()
    n_folds = 2 if args.quick else args.folds
    frame, _ = read_pairs(sample, ties="drop")
    extras = pd.concat([read_pairs(p, ties="drop")[0] for p in args.baseline_extras], ignore_index=True) \
        if args.baseline_extras else frame.iloc[:0]
    folds = assign_folds(frame, n_folds, cfg.data.seed)
    labels = frame["label"].to_numpy()
    out = Path(args.out)
    if args.mix is not None:
        print(f"feature baseline, {n_folds} folds of {len(frame)} Arena rows, trained with one extra set each:")
        mix = mix_table(frame, folds, {Path(p).name: p for p in args.mix or args.baseline_extras})
        print(json.dumps({"benchmark": "quality_mix", "folds": n_folds, "sets": mix}))
        return 0
    oof = {"constant": np.full((len(frame), 2), 0.5), **reference_members(frame, extras, folds)}
    if not args.no_llm:
        oof["Gemma 3 270M"] = np.zeros((len(frame), 2))
        for fold in range(n_folds):
            held = folds == fold
            oof["Gemma 3 270M"][held] = llm_fold(Path(args.config), args.overrides, fold, n_folds, out,
                                                 frame["id"][held].astype(str).tolist())
    members = {k: v for k, v in oof.items() if k != "constant"}
    oof["blend"], weights = nested_blend(members, labels, folds, args.blend_metric)
    oof["blend, log-odds"], log_odds_weights = nested_blend(members, labels, folds, args.blend_metric, "log_odds")
    rows = table(oof, labels)
    text = to_text(rows, len(frame), n_folds)
    print(text)
    print("blend weights per fold (fitted on the other folds):", weights)
    print("log-odds blend weights per fold:", log_odds_weights)
    out.mkdir(parents=True, exist_ok=True)
    report = build_report(frame, {k: v for k, v in oof.items() if k != "constant"})
    write_report(report, out, "Out-of-fold evaluation on the LMSYS Arena sample (benchmarks/quality.py)")
    atomic_write_text(out / "quality.md", "```\n" + text + "\n```\n")
    result = {"benchmark": "quality", "rows": len(frame), "folds": n_folds, "llm": not args.no_llm,
              "blend_metric": args.blend_metric,
              "blend_weights": weights, "log_odds_blend_weights": log_odds_weights,
              "seconds": round(time.perf_counter() - started, 1),
              **{re.sub(r"[^a-z0-9]+", "_", r["method"].lower()): {k: v for k, v in r.items() if k != "method"}
                 for r in rows}}
    atomic_write_json(out / "quality.json", result)
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    run(main)
