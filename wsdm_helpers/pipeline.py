"""The submission: every run in turn under one deadline, fallbacks, blend, validate, write.

``wsdm predict`` and ``notebooks/inference.ipynb`` both call :func:`submit`, so the same inputs give
byte-identical files. What it guarantees, in order of importance:

1. a valid submission is written before the deadline: ``time_budget_minutes`` counted from the
   caller's start (the notebook's first cell), less ``safety_minutes``, covers loading, tokenizing,
   predicting and writing for all runs. Feature-baseline runs go first (seconds). Each LLM run
   then gets an equal share of the time still left among the runs still to go (a run that ends
   early leaves its time to the next), plans its context and TTA on a pilot of its own speed
   (TTA is given up first, context second), and stops before a batch that would end past its
   share. A run that does not fit its share even at its shortest context may take what it needs
   from the time left (one finished run beats several that all miss the same shortest rows), so
   the runs after it get less, or are stopped, or are skipped when the time left would not even
   cover the loading time measured so far;
2. never zero: rows a run did not reach, or returned as NaN/inf, are filled from the other runs
   (their weights renormalised per row), then from the feature-baseline runs given with weight 0
   (fallback only), then 0.5 / uniform as the very last resort; every fill is counted per run;
3. the layout follows the test file (a WSDM test gives ``id,winner``, an LMSYS test the three
   probabilities) or an explicit task, never the class count: a 3-class model on a WSDM test is
   renormalised over P(a), P(b); a 2-class model on an LMSYS test leaves ``tie_share`` to the tie;
4. a plan-vs-actual report per run is printed and saved next to the submission
   (``submission_report.json``);
5. a broken submission is not mistaken for a good one: outside Kaggle's hidden competition rerun
   (an interactive or commit run on Kaggle, any local run), once the submission is written, a
   weighted run that failed, or more than ``max_fallback_share`` of the rows taken from the fallback
   baseline or 0.5, raises :class:`SubmissionError` naming the runs and their errors
   (``on_failure``). In the rerun itself never-zero stands: the file is the submission.

On Kaggle, ``time_budget_minutes`` left at null is the attached competition's run-time limit (WSDM
720 minutes, LMSYS 540), less ``safety_minutes`` as always.

Each run loads with its own saved settings plus the caller's typed inference overrides (a dict of
real values), and its model (and GPU memory) is freed before the next run loads.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from .clock import Deadline
from .config import (
    BlendSpace,
    FailurePolicy,
    InferenceConfig,
    Section,
    Task,
    from_dict,
    load_run_config,
    option,
    to_dict,
)
from .errors import ConfigError, SubmissionError

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

REPORT_FILE = "submission_report.json"
# Inference keys the pipeline owns: one clock for the whole submission, one place for resumable chunks.
PIPELINE_KEYS = {"time_budget_minutes": "time_budget_minutes", "safety_minutes": "safety_minutes",
                 "work_dir": "resume / work_dir"}


@dataclasses.dataclass
class PipelineConfig(Section):
    task: Literal["auto", Task] = option("auto", help="submission layout: auto = the test file's "
                                                    "(WSDM test: id,winner; LMSYS test: id + three probabilities)")
    time_budget_minutes: float | None = option(None, help="the whole submission must be written within this, "
                                               "counted from the start; null = on Kaggle the attached "
                                               "competition's limit (720 for WSDM, 540 for LMSYS), elsewhere "
                                               "no limit")
    safety_minutes: float = option(5.0, help="minutes of the budget kept free for surprises")
    finish_seconds: float = option(2.0, help="seconds kept after the last run for blending and writing")
    tie_share: float = option(0.3, help="LMSYS test: P(tie) given to a 2-class model's rows (LMSYS train "
                                        "has about 31% ties)")
    resume: bool | None = option(None, help="save each run's finished chunks and reuse them when rerun with the "
                                 "same runs, test rows and settings; null = on under /kaggle/working, else off")
    work_dir: str = option("", help="folder for the resumable chunks; empty = .wsdm-chunks beside the submission")
    blend_space: BlendSpace = option("probability", help="how the weighted runs combine: probability = weighted "
                                     "mean of probabilities (weights renormalised); log_odds = softmax of the "
                                     "weighted sum of log-probabilities (the weights' scale kept, as `wsdm ensemble "
                                     "fit --space log_odds` fits them)")
    on_failure: FailurePolicy = option("auto", help="after the submission is written: raise = an error (rc 2) "
                                       "when a weighted run failed or more than max_fallback_share of the rows "
                                       "came from the fallback baseline or 0.5, naming the runs and their "
                                       "errors; fill = keep the filled submission without an error; auto = fill "
                                       "in Kaggle's competition rerun (KAGGLE_IS_COMPETITION_RERUN), raise "
                                       "everywhere else (interactive and commit runs, local runs)")
    max_fallback_share: float = option(0.05, help="on_failure=raise: the largest share of rows that may come "
                                       "from the fallback baseline or 0.5 (rows no weighted run predicted) "
                                       "without an error")

    def check(self) -> list[str]:
        problems = []
        if not 0 <= self.max_fallback_share <= 1:
            problems.append(f"max_fallback_share={self.max_fallback_share} must be between 0 and 1")
        if self.time_budget_minutes is not None and self.time_budget_minutes <= self.safety_minutes:
            problems.append(f"time_budget_minutes={self.time_budget_minutes} must exceed "
                            f"safety_minutes={self.safety_minutes}")
        if self.safety_minutes < 0 or self.finish_seconds < 0:
            problems.append("safety_minutes and finish_seconds must be at least 0")
        if not 0 <= self.tie_share < 1:
            problems.append(f"tie_share={self.tie_share} must be in [0, 1)")
        return problems


def pipeline_config(values: dict[str, Any] | None = None) -> PipelineConfig:
    """A checked PipelineConfig from typed values (unknown keys and wrong types are errors), with the
    Kaggle competition's time budget when none is given (:func:`time_budget_minutes`)."""
    cfg = from_dict(PipelineConfig, values or {}, "")
    cfg = dataclasses.replace(cfg, time_budget_minutes=time_budget_minutes(cfg.time_budget_minutes))
    cfg.validate()
    return cfg


def time_budget_minutes(given: float | None) -> float | None:
    """``given``, else on Kaggle the attached competition's run-time limit (WSDM 720, LMSYS 540), else None."""
    from . import kaggle

    if given is not None or kaggle.environment() != "kaggle":
        return given
    competition = kaggle.competition()
    if competition is None:
        log.warning("submission: on Kaggle without a time budget and no competition data attached under %s; "
                    "no time limit (set time_budget_minutes)", kaggle.input_dir())
        return None
    log.info("submission: time budget %.0f minutes, the Kaggle run-time limit of %s", competition.minutes,
             competition.slug)
    return competition.minutes


def submission_deadline(minutes: float | None, safety_minutes: float, started: float | None = None) -> Deadline:
    """The submission's deadline (``minutes`` defaulting as :func:`time_budget_minutes` does), printed."""
    import datetime

    minutes = time_budget_minutes(minutes)
    deadline = Deadline.after(minutes, safety_minutes, started=started)
    if not deadline.limited:
        print("submission deadline: none (no time budget)")
        return deadline
    at = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=deadline.left())
    print(f"submission deadline: {minutes:g} min budget less {safety_minutes:g} min safety, "
          f"{deadline.left() / 60:.1f} min from now, at {at:%H:%M:%S} UTC")
    return deadline


# ---- members ----------------------------------------------------------------------------------------
@dataclasses.dataclass
class Member:
    path: Path
    kind: Literal["llm", "baseline"]
    weight: float
    index: int  # position in the caller's list (blend order)

    @property
    def name(self) -> str:
        return f"{self.index}-{self.path.name}"


def run_kind(path: str | Path) -> str | None:
    """``"llm"`` (config.yaml + adapter/ or model/), ``"baseline"`` (baseline.json) or None."""
    from .features import BASELINE_FILE

    path = Path(path)
    baseline = (path / BASELINE_FILE).is_file()
    llm = (path / "config.yaml").is_file() and ((path / "adapter").is_dir() or (path / "model").is_dir())
    if baseline and llm:
        raise ConfigError(f"{path} holds both a feature baseline ({BASELINE_FILE}) and an LLM run (config.yaml + "
                          f"adapter/ or model/), so which run it is cannot be told. Fix: delete {path / BASELINE_FILE} "
                          "and write the baseline to a folder of its own (`wsdm baseline --run-dir NEW`)")
    return "baseline" if baseline else "llm" if llm else None


def run_members(runs: Sequence[str | Path], weights: Sequence[float] | None) -> list[Member]:
    from .ensemble import check_weights

    if not runs:
        raise ConfigError("no run folders given")
    check_weights(weights, len(runs))
    problems = []
    kinds = [run_kind(r) for r in runs]
    bad = [str(r) for r, k in zip(runs, kinds, strict=True) if k is None]
    if bad:
        problems.append(f"not a run folder: {', '.join(bad)} (an LLM run has config.yaml and adapter/ or model/, "
                        "from `wsdm train`; a feature baseline has baseline.json, from `wsdm baseline --run-dir`)")
    if problems:
        raise ConfigError("cannot start the submission:\n" + "\n".join(f"  - {p}" for p in problems))
    weights = list(weights) if weights is not None else [1.0] * len(runs)
    return [Member(Path(r), k, float(w), i) for i, (r, k, w) in enumerate(zip(runs, kinds, weights, strict=True))]


def inference_settings(run_dir: str | Path, overrides: dict[str, Any] | None) -> InferenceConfig:
    """The run's saved inference section with typed ``overrides`` (field name -> value) on top, checked."""
    overrides = dict(overrides or {})
    owned = [k for k in overrides if k in PIPELINE_KEYS]
    if owned:
        raise ConfigError(f"inference override(s) {owned}: the submission has one clock and one chunk folder; "
                          f"set {', '.join(PIPELINE_KEYS[k] for k in owned)} on the pipeline instead "
                          "(CLI: --time-budget-minutes, --safety-minutes, --resume, --work-dir)")
    saved = load_run_config(Path(run_dir) / "config.yaml").inference
    cfg = from_dict(InferenceConfig, {**to_dict(saved), **overrides}, "inference.")
    cfg = dataclasses.replace(cfg, time_budget_minutes=None, work_dir="")
    cfg.validate("inference.")
    return cfg


# ---- report -----------------------------------------------------------------------------------------
@dataclasses.dataclass
class RunReport:
    """Plan against actual for one run (seconds on the submission clock)."""

    run: str  # <position>-<folder name>
    path: str
    kind: str
    weight: float
    status: str = "pending"  # done, stopped (time limit), skipped (no time), failed (error)
    share_seconds: float | None = None  # time the pipeline gave this run
    planned_seconds: float | None = None  # loading + tokenizing + pilot + the plan's prediction
    actual_seconds: float = 0.0
    load_seconds: float = 0.0
    max_length: int | None = None  # the planned context (the run's own when no limit)
    planned_swap_rows: int | None = None
    swapped_rows: int = 0
    rows_predicted: int = 0
    nan_rows: int = 0  # rows the run returned as NaN or inf
    rows_filled: int = 0  # rows it did not deliver (not reached, NaN, failed), filled from the others
    chunks_resumed: int = 0  # chunks read back from the resume folder instead of computed
    note: str = ""


@dataclasses.dataclass
class SubmissionReport:
    task: str
    rows: int
    submission: str
    deadline_seconds: float | None  # from the start to the deadline (budget less safety)
    elapsed_seconds: float = 0.0  # from the start to the written submission
    runs: list[RunReport] = dataclasses.field(default_factory=list)
    rows_from_fallback: int = 0  # rows no weighted member covered, taken from weight-0 baselines
    rows_uniform: int = 0  # rows nothing covered: 0.5 / uniform

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_text(self) -> str:
        header = (f"{'run':<28} {'kind':<8} {'status':<8} {'share':>7} {'planned':>8} {'actual':>7} "
                  f"{'load':>6} {'max_len':>7} {'swaps':>11} {'rows':>7} {'nan':>5} {'filled':>6}")
        lines = [header, "-" * len(header)]
        for r in self.runs:
            swaps = f"{r.swapped_rows}/{'-' if r.planned_swap_rows is None else r.planned_swap_rows}"
            lines.append(f"{r.run[:28]:<28} {r.kind:<8} {r.status:<8} {_s(r.share_seconds):>7} "
                         f"{_s(r.planned_seconds):>8} {_s(r.actual_seconds):>7} {_s(r.load_seconds):>6} "
                         f"{r.max_length or '-':>7} {swaps:>11} {r.rows_predicted:>7} {r.nan_rows:>5} "
                         f"{r.rows_filled:>6}" + (f"  {r.note}" if r.note else ""))
        deadline = "no limit" if self.deadline_seconds is None else f"deadline {self.deadline_seconds:.1f}s"
        lines.append(f"{self.task} submission of {self.rows} rows written to {self.submission} after "
                     f"{self.elapsed_seconds:.1f}s ({deadline}); rows from the fallback baseline: "
                     f"{self.rows_from_fallback}, rows at 0.5: {self.rows_uniform}")
        return "\n".join(lines)


def _s(seconds: float | None) -> str:
    return "-" if seconds is None else f"{seconds:.1f}"


@dataclasses.dataclass
class SubmissionResult:
    predictions: pd.DataFrame  # blended probabilities in the task's classes, test order
    submission: Path
    report: SubmissionReport


# ---- the runs ---------------------------------------------------------------------------------------
def _predict_baseline(member: Member, frame: pd.DataFrame, report: RunReport, deadline: Deadline) -> pd.DataFrame:
    from .features import load_baseline

    started = deadline.clock.now()
    preds = load_baseline(member.path).predict(frame)
    report.actual_seconds = deadline.clock.now() - started
    report.status, report.rows_predicted = "done", len(preds)
    return preds


def _predict_llm(member: Member, frame: pd.DataFrame, cfg: InferenceConfig, report: RunReport,
                 deadline: Deadline, stop_at: float | None, latest: float | None, store_key: dict) -> pd.DataFrame:
    from .inference import run_prediction

    result = run_prediction(member.path, frame, cfg, clock=deadline.clock, stop_at=stop_at, latest=latest,
                            store_key=store_key)
    r = result.report
    report.actual_seconds, report.load_seconds = r.actual_seconds, r.load_seconds
    report.max_length, report.swapped_rows, report.rows_predicted = r.max_length, r.swapped_rows, r.rows_predicted
    report.chunks_resumed = r.chunks_loaded
    if r.plan is not None:
        report.planned_swap_rows = r.plan.swap_rows
        report.planned_seconds = r.planned_seconds
    report.status = "stopped" if r.stopped else "done"
    if r.plan is not None and not r.plan.fits:
        report.note = "the shortest context did not fit its share: it took more" + (
            ", up to the time left" if r.stopped else "")
    return result.predictions


def _free_memory() -> None:
    """Drop the finished run's model before the next one loads (and give its GPU memory back)."""
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()


def _work_dir(settings: PipelineConfig, out: Path) -> Path | None:
    from .kaggle import KAGGLE_WORKING

    resume = settings.resume
    if resume is None:
        resume = out.resolve().is_relative_to(KAGGLE_WORKING)
    if not resume:
        return None
    return Path(settings.work_dir) if settings.work_dir else out.parent / ".wsdm-chunks"


def _run_all(members: list[Member], frame: pd.DataFrame, configs: dict[int, InferenceConfig],
             settings: PipelineConfig, deadline: Deadline, work_dir: Path | None, reports: list[RunReport],
             blend_key: dict) -> dict[int, pd.DataFrame]:
    """Predictions per member index: the baselines first (seconds), then the LLM runs under the clock."""
    preds: dict[int, pd.DataFrame] = {}
    for m in (m for m in members if m.kind == "baseline"):
        preds[m.index] = _predict_baseline(m, frame, reports[m.index], deadline)
    llms = [m for m in members if m.kind == "llm" and m.weight > 0]
    for m in (m for m in members if m.kind == "llm" and m.weight == 0):
        reports[m.index].status, reports[m.index].note = "skipped", "weight 0"
    load_estimate = 0.0
    for k, m in enumerate(llms):
        report = reports[m.index]
        stop_at = latest = None
        if deadline.limited:
            left = deadline.left() - settings.finish_seconds
            if left <= load_estimate:
                report.status = "skipped"
                report.note = f"{max(left, 0):.1f}s left, loading alone took {load_estimate:.1f}s"
                log.warning("submission: skipping %s (%s)", m.path, report.note)
                continue
            report.share_seconds = left / (len(llms) - k)
            stop_at, latest = deadline.clock.now() + report.share_seconds, deadline.clock.now() + left
        cfg = configs[m.index]
        if work_dir is not None:
            cfg = dataclasses.replace(cfg, work_dir=str(work_dir / m.name))
        try:
            preds[m.index] = _predict_llm(m, frame, cfg, report, deadline, stop_at, latest, blend_key)
        except Exception as exc:  # never zero: the other runs and the baseline fill its rows
            log.exception("submission: run %s failed; its rows are filled from the other runs", m.path)
            report.status, report.note = "failed", f"{type(exc).__name__}: {exc}"[:200]
        load_estimate = max(load_estimate, report.load_seconds)
        _free_memory()
    return preds


def _combine(members: list[Member], preds: dict[int, pd.DataFrame], ids: list[str], task: str,
             settings: PipelineConfig, report: SubmissionReport) -> pd.DataFrame:
    """Blend the weighted members over the rows each delivered; fill the rest (fallback baseline, 0.5)."""
    from .ensemble import blend_available
    from .submission import to_task_classes

    classes = {m.index: to_task_classes(preds[m.index], task, settings.tie_share) for m in members if m.index in preds}
    voters = [m for m in members if m.weight > 0]
    fallback = [m for m in members if m.weight == 0 and m.kind == "baseline" and m.index in classes]
    empty = _empty(ids, task)
    frames = [classes.get(m.index, empty) for m in voters]
    blended, usable = blend_available(frames, ids, [m.weight for m in voters], settings.blend_space)
    for m, ok in zip(voters, usable, strict=True):
        rr = report.runs[m.index]
        rr.rows_filled = int((~ok).sum())
        if m.index in classes:  # rows it reached but returned as NaN or inf
            rr.nan_rows = rr.rows_predicted - int(ok.sum())
    missing = ~usable.any(axis=0)
    if missing.any() and fallback:
        backup, covered = blend_available([classes[m.index] for m in fallback], ids)
        take = missing & covered.any(axis=0)
        blended.loc[take, blended.columns[1:]] = backup.loc[take, blended.columns[1:]].to_numpy()
        report.rows_from_fallback = int(take.sum())
        missing &= ~take
    cols = list(blended.columns[1:])
    blended.loc[missing, cols] = 1.0 / len(cols)
    report.rows_uniform = int(missing.sum())
    filled = {rr.run: rr.rows_filled for rr in report.runs if rr.rows_filled}
    if filled or report.rows_uniform:
        log.warning("submission: rows filled per run %s; %d from the fallback baseline, %d at 0.5", filled,
                    report.rows_from_fallback, report.rows_uniform)
    return blended


def _empty(ids: list[str], task: str) -> pd.DataFrame:
    import numpy as np
    import pandas as pd

    from .tta import PROB2, PROB3

    cols = PROB3 if task == "lmsys" else PROB2
    out = pd.DataFrame({"id": ids})
    out[cols] = np.nan
    return out


def read_test(test: str | Path | pd.DataFrame) -> pd.DataFrame:
    """The test rows as a canonical frame (a path is read with data.read_pairs; ties kept)."""
    import pandas as pd

    from .data import read_pairs

    return test if isinstance(test, pd.DataFrame) else read_pairs(test, ties="keep")[0]


def submit(runs: Sequence[str | Path], test: str | Path | pd.DataFrame, out: str | Path,
           weights: Sequence[float] | None = None, overrides: dict[str, Any] | None = None,
           settings: PipelineConfig | dict[str, Any] | None = None, deadline: Deadline | None = None,
           probs_out: str | Path | None = None) -> SubmissionResult:
    """Predict with every run, blend, fill, validate and write ``out`` (and ``REPORT_FILE`` beside it).

    ``runs``: LLM run folders and feature-baseline run folders, in blend order. ``weights``: one per
    run (default equal); a baseline with weight 0 is the fallback only. ``overrides``: typed inference
    settings applied on top of every LLM run's own. ``deadline``: the clock and the moment the
    submission must be written (default: ``settings.time_budget_minutes`` from now).
    """
    import pandas as pd

    from .io import atomic_write_json, check_output_file
    from .submission import PREDICTION_FORMATS, SUBMISSION_FORMATS, task_for_test, write_predictions, write_submission

    settings = pipeline_config(to_dict(settings) if isinstance(settings, PipelineConfig) else settings)
    deadline = deadline or Deadline.after(settings.time_budget_minutes, settings.safety_minutes)
    inputs = {"the test file": None if isinstance(test, pd.DataFrame) else test}
    out = check_output_file(out, SUBMISSION_FORMATS, "--out", inputs)
    if probs_out:
        check_output_file(probs_out, PREDICTION_FORMATS, "--probs-out", {**inputs, "the submission --out": out})
    members = run_members(runs, weights)
    configs = {m.index: inference_settings(m.path, overrides) for m in members if m.kind == "llm"}
    frame = read_test(test)
    task = task_for_test(frame, settings.task)
    ids = frame["id"].astype(str).tolist()
    report = SubmissionReport(task, len(ids), str(out), deadline.end - deadline.started if deadline.limited else None,
                              runs=[RunReport(m.name, str(m.path), m.kind, m.weight) for m in members])
    blend_key = {"weights": [m.weight for m in members], "runs": [str(m.path) for m in members],
                 "time_budget_minutes": settings.time_budget_minutes, "safety_minutes": settings.safety_minutes}
    preds = _run_all(members, frame, configs, settings, deadline, _work_dir(settings, out), report.runs, blend_key)
    blended = _combine(members, preds, ids, task, settings, report)
    if probs_out:
        write_predictions(blended, probs_out)
    write_submission(blended, frame, out, task)
    report.elapsed_seconds = deadline.elapsed()
    atomic_write_json(out.parent / REPORT_FILE, report.to_dict())
    print(report.to_text())
    enforce_failure_policy(report, settings)
    return SubmissionResult(blended, out, report)


def enforce_failure_policy(report: SubmissionReport, settings: PipelineConfig) -> None:
    """Raise when the written submission hides failures (see the module docstring, point 5)."""
    from .kaggle import is_competition_rerun

    rerun = is_competition_rerun()
    if settings.on_failure == "fill" or (settings.on_failure == "auto" and rerun):
        return
    problems = [f"run {r.run} ({r.path}) failed: {r.note}" for r in report.runs if r.status == "failed" and r.weight > 0]
    filled = report.rows_from_fallback + report.rows_uniform
    if report.rows and filled / report.rows > settings.max_fallback_share:
        problems.append(f"{filled} of {report.rows} rows ({filled / report.rows:.0%}) came from the fallback "
                        f"baseline ({report.rows_from_fallback}) or 0.5 ({report.rows_uniform}), more than "
                        f"max_fallback_share={settings.max_fallback_share:g}; runs: "
                        + ", ".join(f"{r.run} {r.status}" + (f" ({r.note})" if r.note else "") for r in report.runs))
    if problems:
        where = "this is not Kaggle's competition rerun" if not rerun else "on_failure=raise"
        raise SubmissionError(
            f"{report.submission} was written with fallbacks, but {where}, so the submission stops here "
            "(a commit run that scores ~0.5 would waste a daily submission):\n"
            + "\n".join(f"  - {p}" for p in problems)
            + "\nFix the run (attach its base model and adapter datasets, see submission_report.json), or accept "
            "the filled file with on_failure=fill (wsdm predict --on-failure fill)")


def submit_probabilities(probs: str | Path, test: str | Path, out: str | Path, task: str = "auto") -> Path:
    """``wsdm submit``: a probabilities file (any blend, the feature baseline) as a validated submission
    in the test file's layout (or ``task``'s)."""
    from .io import check_output_file
    from .submission import SUBMISSION_FORMATS, read_predictions, task_for_test, to_task_classes, write_submission

    check_output_file(out, SUBMISSION_FORMATS, "--out", {"the probabilities file": probs, "the test file": test})
    frame = read_test(test)
    task = task_for_test(frame, task)
    preds = to_task_classes(read_predictions(probs), task, PipelineConfig().tie_share)
    return write_submission(preds, frame, out, task)
