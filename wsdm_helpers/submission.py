"""Predictions files and Kaggle submissions: read, validate against the test ids, write atomically.

Predictions layout (every stage): ``id`` plus ``winner_model_a``, ``winner_model_b`` (and
``winner_tie`` for three classes), one row per id, rows summing to 1. A submission is built from
it in one of two layouts:

- ``wsdm``:  ``id, winner`` with ``winner`` in {model_a, model_b} (WSDM Cup 2025, scored by accuracy);
- ``lmsys``: ``id, winner_model_a, winner_model_b, winner_tie`` (LMSYS Arena, scored by log loss).

Every check names the first offending ids and the fix, because a rejected Kaggle submission costs
a whole inference run.
"""
from __future__ import annotations

import typing
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

from .config import Task
from .errors import SubmissionError
from .io import atomic_write_csv, atomic_write_parquet, check_output_suffix
from .tta import PROB2, PROB3, prob_columns

if TYPE_CHECKING:
    import pandas as pd

TASKS = typing.get_args(Task)
SUM_TOLERANCE = 1e-4
SHOWN_IDS = 5
SUBMISSION_FORMATS = {".csv": "csv"}  # what Kaggle scores
PREDICTION_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}


def _first(ids: Iterable) -> str:
    ids = [str(i) for i in ids]
    more = f" (and {len(ids) - SHOWN_IDS} more)" if len(ids) > SHOWN_IDS else ""
    return ", ".join(ids[:SHOWN_IDS]) + more


def check_predictions(preds: pd.DataFrame, where: str = "predictions") -> pd.DataFrame:
    """Check layout and values of a predictions frame; return it with ``id`` as str and float columns.

    Errors: missing columns, duplicated ids, NaN, probabilities outside [0, 1], rows not summing to 1.
    """
    import numpy as np
    import pandas as pd

    missing = [c for c in ["id", *PROB2] if c not in preds.columns]
    if missing:
        raise SubmissionError(f"{where}: missing column(s) {missing}; a predictions frame has id, "
                              f"{', '.join(PROB2)} and optionally winner_tie (got {list(preds.columns)})")
    cols = prob_columns(preds)
    out = preds[["id", *cols]].copy()
    out["id"] = out["id"].astype(str)
    dup = out["id"][out["id"].duplicated()].unique()
    if len(dup):
        raise SubmissionError(f"{where}: {len(dup)} duplicated id(s): {_first(dup)}; keep one row per id")
    for col in cols:
        numeric = pd.to_numeric(out[col], errors="coerce")
        bad = out["id"][numeric.isna() & out[col].notna()]
        if len(bad):
            raise SubmissionError(f"{where}: column {col} holds text, not numbers, for {len(bad)} id(s): "
                                  f"{_first(bad)} (e.g. {out[col][bad.index[0]]!r}); write probabilities as numbers")
        out[col] = numeric.astype("float64")
    values = out[cols].to_numpy()
    bad_nan = out["id"][np.isnan(values).any(axis=1)]
    if len(bad_nan):
        raise SubmissionError(f"{where}: NaN probabilities for {len(bad_nan)} id(s): {_first(bad_nan)}; "
                              "re-run prediction for these rows")
    bad_range = out["id"][((values < 0) | (values > 1)).any(axis=1)]
    if len(bad_range):
        raise SubmissionError(f"{where}: probabilities outside [0, 1] for {len(bad_range)} id(s): "
                              f"{_first(bad_range)}; columns {cols} must be probabilities, not logits")
    bad_sum = out["id"][np.abs(values.sum(axis=1) - 1) > SUM_TOLERANCE]
    if len(bad_sum):
        raise SubmissionError(f"{where}: rows do not sum to 1 for {len(bad_sum)} id(s): {_first(bad_sum)}; "
                              f"normalise {cols} per row")
    return out


def align_to_ids(preds: pd.DataFrame, ids: Iterable, where: str = "predictions") -> pd.DataFrame:
    """Reorder checked predictions to ``ids``; missing or extra ids are an error naming them."""
    import pandas as pd

    preds = check_predictions(preds, where)
    wanted = pd.Index([str(i) for i in ids], name="id")  # pandas < 3 names the result after the indexer
    if wanted.has_duplicates:
        raise SubmissionError(f"test ids are duplicated: {_first(wanted[wanted.duplicated()].unique())}; "
                              "the test file must have one row per id")
    have = pd.Index(preds["id"])
    missing, extra = wanted.difference(have, sort=False), have.difference(wanted, sort=False)
    if len(missing) or len(extra):
        parts = []
        if len(missing):
            parts.append(f"{len(missing)} test id(s) have no prediction: {_first(missing)}")
        if len(extra):
            parts.append(f"{len(extra)} id(s) are not in the test set: {_first(extra)}")
        raise SubmissionError(f"{where}: " + "; ".join(parts) +
                              "; predict on exactly the test file's rows (join on id, never on position)")
    return preds.set_index("id").loc[wanted].reset_index()


def _test_ids(test: pd.DataFrame | Iterable) -> list[str]:
    import pandas as pd

    if isinstance(test, pd.DataFrame):
        if "id" not in test.columns:
            raise SubmissionError(f"test frame has no 'id' column (columns: {list(test.columns)})")
        return test["id"].astype(str).tolist()
    return [str(i) for i in test]


def build_submission(preds: pd.DataFrame, test: pd.DataFrame | Iterable, task: str = "wsdm") -> pd.DataFrame:
    """The submission frame in the test file's row order, for ``task`` wsdm (id, winner) or lmsys."""
    import numpy as np

    if task not in TASKS:
        raise SubmissionError(f"task={task!r} must be one of {TASKS}")
    preds = align_to_ids(preds, _test_ids(test))
    if task == "lmsys":
        if "winner_tie" not in preds.columns:
            raise SubmissionError("the LMSYS layout needs three probabilities (winner_tie is missing); "
                                  "use a 3-class model (model.num_labels=3) or task='wsdm'")
        return preds[["id", *PROB3]]
    winner = np.where(preds["winner_model_a"] >= preds["winner_model_b"], "model_a", "model_b")
    return preds[["id"]].assign(winner=winner)


def task_for_test(test: pd.DataFrame, task: str = "auto") -> str:
    """The submission layout: ``task`` when explicit, else the one the test file's layout asks for
    (a WSDM test gives ``wsdm``, an LMSYS test ``lmsys``), read from the canonical frame's ``source``.
    Never the model's class count: Kaggle rejects a file in the other competition's layout."""
    if task != "auto":
        if task not in TASKS:
            raise SubmissionError(f"task={task!r} must be auto or one of {TASKS}")
        return task
    layouts = set(test["source"].astype(str).str.split(":").str[0]) if "source" in test.columns else set()
    if len(layouts) == 1 and next(iter(layouts)) in TASKS:
        return next(iter(layouts))
    raise SubmissionError(f"cannot tell the submission layout from the test rows (their layouts: "
                          f"{sorted(layouts) or 'unknown'}); only a WSDM or LMSYS test file decides it. Pass "
                          "task='wsdm' (id, winner) or task='lmsys' (id + three probabilities), CLI: --task")


def to_task_classes(preds: pd.DataFrame, task: str, tie_share: float) -> pd.DataFrame:
    """Predictions with the classes ``task`` scores: for wsdm, P(a) and P(b) renormalised (a 3-class
    model's tie dropped); for lmsys, three classes (a 2-class model's P(a), P(b) scaled to leave
    ``tie_share`` for the tie). NaN rows stay NaN (the pipeline fills them)."""
    import numpy as np

    out = preds[["id"]].copy()
    a, b = preds["winner_model_a"].to_numpy(float), preds["winner_model_b"].to_numpy(float)
    if task == "wsdm":
        total = a + b
        with np.errstate(invalid="ignore", divide="ignore"):
            out["winner_model_a"] = np.where(total > 0, a / total, 0.5)
        out.loc[np.isnan(total), "winner_model_a"] = np.nan
        out["winner_model_b"] = 1 - out["winner_model_a"]
        return out
    if "winner_tie" in preds.columns:
        return preds[["id", *PROB3]].copy()
    total = a + b
    with np.errstate(invalid="ignore", divide="ignore"):
        out["winner_model_a"] = np.where(total > 0, a / total, 0.5) * (1 - tie_share)
    out["winner_model_b"] = (1 - tie_share) - out["winner_model_a"]
    out["winner_tie"] = np.where(np.isnan(total), np.nan, tie_share)
    return out


def write_submission(preds: pd.DataFrame, test: pd.DataFrame | Iterable, path: str | Path,
                     task: str = "wsdm") -> Path:
    """Validate ``preds`` against the test ids and write the submission csv atomically."""
    check_output_suffix(path, SUBMISSION_FORMATS, "submission")
    return atomic_write_csv(build_submission(preds, test, task), path)


def read_predictions(path: str | Path) -> pd.DataFrame:
    """Read and check a predictions file (parquet or csv in the predictions layout)."""
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise SubmissionError(f"predictions file {path} does not exist")
    try:
        frame = pd.read_csv(path, dtype={"id": str}) if _is_csv(path) else pd.read_parquet(path)
    except (ValueError, OSError, UnicodeDecodeError) as exc:  # empty csv, not parquet, truncated, not UTF-8
        kind = "csv" if _is_csv(path) else "parquet"
        raise SubmissionError(f"predictions file {path} cannot be read as {kind} ({exc}); write it with "
                              "`wsdm predict --probs-out` or `wsdm ensemble`") from exc
    return check_predictions(frame, str(path))


def write_predictions(preds: pd.DataFrame, path: str | Path) -> Path:
    """Check and write a predictions frame as parquet (or csv when ``path`` ends in .csv), atomically."""
    path = check_output_suffix(path, PREDICTION_FORMATS, "predictions file")
    preds = check_predictions(preds)
    return atomic_write_csv(preds, path) if _is_csv(path) else atomic_write_parquet(preds, path)


def _is_csv(path: Path) -> bool:
    return PREDICTION_FORMATS.get(path.suffix.lower()) == "csv"


def check_against_sample(submission: str | Path, sample: str | Path) -> pd.DataFrame:
    """A written submission file checked as Kaggle checks it against the competition's ``sample``
    (sample_submission.csv): the same columns in the same order, exactly its ids (once each), and
    valid values (WSDM: ``winner`` in {model_a, model_b}; LMSYS: probabilities summing to 1).
    All problems are raised together; the checked submission is returned (ids as str)."""
    import pandas as pd

    from .data import read_sample_submission

    expected = read_sample_submission(sample)
    got = pd.read_csv(submission, dtype={"id": str})
    problems = []
    if list(got.columns) != list(expected.columns):
        problems.append(f"columns {list(got.columns)}, but {sample} has {list(expected.columns)}")
    dup = got["id"][got["id"].duplicated()].unique() if "id" in got.columns else []
    if len(dup):
        problems.append(f"{len(dup)} duplicated id(s): {_first(dup)}")
    have, wanted = pd.Index(got.get("id", [])), pd.Index(expected["id"])
    for what, ids in (("ids of the sample missing", wanted.difference(have, sort=False)),
                      ("ids not in the sample", have.difference(wanted, sort=False))):
        if len(ids):
            problems.append(f"{len(ids)} {what}: {_first(ids)}")
    if "winner" in got.columns:
        bad = got["id"][~got["winner"].isin(["model_a", "model_b"])]
        if len(bad):
            problems.append(f"winner is not model_a or model_b for {len(bad)} id(s): {_first(bad)}")
    elif not problems:
        try:
            check_predictions(got, str(submission))
        except SubmissionError as exc:
            problems.append(str(exc))
    if problems:
        raise SubmissionError(f"submission {submission} does not match {sample}:\n" +
                              "\n".join(f"  - {p}" for p in problems))
    return got
