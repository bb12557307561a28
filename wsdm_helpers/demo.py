"""The README's main job (``wsdm demo`` / ``make demo``): the whole pipeline on the embedded demo data.

1. write the multilingual demo set (train, test, sample submission, test labels);
2. run ``notebooks/train_gemma.ipynb``: Gemma 3 270M with LoRA on the CPU (the cpu-demo preset);
3. run ``notebooks/inference.ipynb`` on the demo test set with the trained run;
4. print where everything is, the validation accuracy and the test accuracy against the held-back labels.

Both notebooks run in a real Jupyter kernel through :func:`wsdm_helpers.notebook_runner.run_notebook`, with
their cell output (text progress bars included) streaming to the terminal as it happens.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .notebook_runner import run_notebook


@dataclass
class DemoSummary:
    submission: Path
    n_test_rows: int
    validation: dict[str, Any]
    test: dict[str, Any]
    notebooks: list[Path]
    plots: list[Path]
    run_dir: Path
    seconds: float

    def to_text(self) -> str:
        minutes, seconds = divmod(round(self.seconds), 60)
        lines = [
            f"wsdm demo finished in {minutes} min {seconds:02d} s",
            f"  submission.csv:       {self.submission} ({self.n_test_rows} rows)",
            f"  validation accuracy:  {_fmt(self.validation.get('accuracy'))} "
            f"(log loss {_fmt(self.validation.get('log_loss'))}, {self.validation.get('rows')} held-out rows)",
            "  validation curve:     " + _curve_text(self.validation.get("curve", [])),
            f"  test accuracy:        {_fmt(self.test.get('accuracy'))} "
            f"(log loss {_fmt(self.test.get('log_loss'))}, {self.test.get('rows')} rows of test_labels.parquet)",
            f"  trained run:          {self.run_dir} (adapter/, config.yaml, metrics.json)",
            "  executed notebooks:   " + "\n                        ".join(map(str, self.notebooks)),
            "  plots:                " + "\n                        ".join(map(str, self.plots)),
        ]
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "n/a"


def _curve_text(curve: list[dict[str, Any]]) -> str:
    """Accuracy at each evaluation with the training time it took: "step 40: 0.5310 (1:52), ..."."""
    return ", ".join(f"step {p['step']}: {_fmt(p.get('accuracy'))}{_clock(p.get('wall_s'))}" for p in curve) or "n/a"


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return ""
    minutes, rest = divmod(round(seconds), 60)
    return f" ({minutes}:{rest:02d})"


def _banner(text: str) -> None:
    print(f"\n==== {text}", flush=True)


def run_demo(out: str | Path, config: str = "cpu-demo-gemma3-270m", train_parameters: dict[str, Any] | None = None,
             n_train: int = 2000, n_test: int = 400, kernel_name: str = "python3") -> DemoSummary:
    """Run the demo into ``out`` (data/, notebooks/train_gemma-*/, notebooks/inference-*/) and summarise it.

    ``train_parameters`` go to train_gemma.ipynb on top of the preset (tests pass a tiny model there).
    """
    from .demo_data import write_demo_dataset

    start = time.perf_counter()
    out = Path(out).resolve()
    _banner(f"[1/3] demo data ({n_train} train rows, {n_test} test rows) -> {out / 'data'}")
    write_demo_dataset(out / "data", n_train=n_train, n_test=n_test)
    data = out / "data"
    _banner(f"[2/3] training: notebooks/train_gemma.ipynb with preset {config} (cell output follows)")
    train = run_notebook("train_gemma", {"config": config, "train_path": str(data / "train.parquet"),
                                         **(train_parameters or {})},
                         out_root=out / "notebooks", kernel_name=kernel_name)
    run_dir = train.out_dir / "run"
    _banner("[3/3] inference: notebooks/inference.ipynb on the demo test set (cell output follows)")
    infer = run_notebook("inference", {"run_dirs": [str(run_dir)], "test_path": str(data / "test.parquet"),
                                       "labels_path": str(data / "test_labels.parquet")},
                         out_root=out / "notebooks", kernel_name=kernel_name)
    submission = infer.out_dir / "submission.csv"
    return DemoSummary(
        submission=submission,
        n_test_rows=sum(1 for _ in submission.open(encoding="utf-8")) - 1,
        validation=validation_scores(run_dir),
        test=json.loads((infer.out_dir / "scores.json").read_text(encoding="utf-8")),
        notebooks=[train.notebook, infer.notebook],
        plots=[*sorted((run_dir / "plots").glob("*.png")), *sorted((infer.out_dir / "plots").glob("*.png"))],
        run_dir=run_dir,
        seconds=time.perf_counter() - start,
    )


def validation_scores(run_dir: Path) -> dict[str, Any]:
    """Scores of the selected checkpoint on the whole held-out fold (``final`` in metrics.json), and the
    periodic evaluations on the eval subset with the training time to each (``curve``)."""
    metrics = json.loads((run_dir / "metrics.json").read_text(encoding="utf-8"))
    return {**metrics.get("final", {}), "rows": metrics.get("valid_rows"), "curve": metrics.get("curve", [])}
