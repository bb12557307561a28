"""Blend several models' predictions, joined on id; fit blend weights on out-of-fold predictions.

Two blend spaces (config.BlendSpace):

- ``probability``: the weighted mean of the probability rows, weights on the simplex. Its log loss is
  convex in the weights, so exponentiated-gradient descent finds the optimum with numpy alone.
- ``log_odds``: the softmax of the weighted sum of log-probabilities, weights >= 0 with a free scale
  (a member's weight is also its temperature). Its log loss is convex too (a logistic regression on
  fixed inputs without intercept); projected Newton steps find the optimum.

Accuracy is piecewise constant, so it is searched on a simplex grid (ties broken by log loss); in
log-odds space the argmax does not depend on the scale, so those weights sum to 1 as well.
"""
from __future__ import annotations

import itertools
import logging
import typing
from collections.abc import Sequence
from typing import TYPE_CHECKING

from .config import BlendMetric, BlendSpace
from .errors import SubmissionError
from .submission import align_to_ids, check_predictions, prob_columns

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)
METRICS = typing.get_args(BlendMetric)
SPACES = typing.get_args(BlendSpace)
LOG_FLOOR = 1e-7  # probabilities are clipped here before the log: one member's 0 must not veto a class


def align(frames: Sequence[pd.DataFrame], names: Sequence[str] | None = None) -> list[pd.DataFrame]:
    """Check every frame and reorder it to the first frame's ids; id sets and classes must match."""
    if not frames:
        raise SubmissionError("no prediction frames to blend")
    names = list(names) if names else [f"predictions #{i + 1}" for i in range(len(frames))]
    first = check_predictions(frames[0], names[0])
    cols = prob_columns(first)
    out = [first]
    for frame, name in zip(frames[1:], names[1:], strict=True):
        frame = check_predictions(frame, name)
        if prob_columns(frame) != cols:
            raise SubmissionError(f"{name} has columns {prob_columns(frame)} but {names[0]} has {cols}; "
                                  "blend models with the same number of classes")
        out.append(align_to_ids(frame, first["id"], where=f"{name} (ids compared with {names[0]})"))
    return out


def check_space(space: str) -> None:
    if space not in SPACES:
        raise SubmissionError(f"blend space {space!r} must be one of {SPACES}")


def check_weights(weights: Sequence[float] | None, n: int, space: str = "probability") -> np.ndarray:
    """Exactly ``n`` finite, non-negative numbers (equal when None), normalised to sum to 1 in probability
    space; in log-odds space their scale is kept (it is the blend's temperature)."""
    import numpy as np

    check_space(space)
    if weights is None:
        return np.full(n, 1.0 / n)
    w = np.asarray(weights, dtype="float64")
    if w.shape != (n,):
        raise SubmissionError(f"--weights got {len(w)} value(s) {list(weights)} for {n} model(s); give one weight "
                              "per --run / prediction file, or none for equal weights")
    with np.errstate(over="ignore"):
        total = w.sum()
        largest = total if space == "probability" else total * -np.log(LOG_FLOOR)  # the blend's largest sum
    if not np.isfinite(w).all() or (w < 0).any() or total <= 0:
        raise SubmissionError(f"weights {list(weights)} must be {n} finite non-negative numbers with a positive sum")
    if not np.isfinite(largest):
        fix = (f"only their ratios count: divide them by the largest, e.g. --weights "
               f"{' '.join(f'{v:g}' for v in w / w.max())}" if space == "probability" else
               "log-odds weights are temperatures near 1 (`wsdm ensemble fit --space log_odds` fits them)")
        raise SubmissionError(f"weights {list(weights)}: the blend's weighted sum overflows a float64 (to inf). "
                              f"Fix: {fix}")
    return w / total if space == "probability" else w


def _log(stack: np.ndarray) -> np.ndarray:
    import numpy as np

    return np.log(np.clip(stack, LOG_FLOOR, 1.0))


def _softmax(z: np.ndarray) -> np.ndarray:
    import numpy as np

    z = np.exp(z - z.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def mix(stack: np.ndarray, w: np.ndarray, space: str) -> np.ndarray:
    """The blend of ``stack`` ([members, rows, classes] probabilities) with weights ``w`` in ``space``."""
    import numpy as np

    if space == "log_odds":
        return _softmax(np.tensordot(w, _log(stack), axes=1))
    mixed = np.tensordot(w, stack, axes=1)
    return mixed / mixed.sum(axis=-1, keepdims=True)


def blend(frames: Sequence[pd.DataFrame], weights: Sequence[float] | None = None,
          names: Sequence[str] | None = None, space: str = "probability") -> pd.DataFrame:
    """The blend of prediction frames joined on id (equal weights when none are given), in ``space``.

    The result has the first frame's row order.
    """
    import numpy as np

    aligned = align(frames, names)
    w = check_weights(weights, len(aligned), space)
    cols = prob_columns(aligned[0])
    out = aligned[0][["id"]].copy()
    out[cols] = mix(np.stack([f[cols].to_numpy() for f in aligned]), w, space)
    return out


def blend_available(frames: Sequence[pd.DataFrame], ids: Sequence[str], weights: Sequence[float] | None = None,
                    space: str = "probability") -> tuple[pd.DataFrame, np.ndarray]:
    """The blend over the members that have a finite prediction for each id, joined on id; rows no
    member covers stay NaN. Also returns the [members, rows] mask of usable predictions. A member
    lacking an id, or with NaN/inf there, simply does not vote: in probability space the others'
    weights are renormalised on that row; in log-odds space its term is left out (no evidence)."""
    import numpy as np

    w = check_weights(weights, len(frames), space)
    cols = prob_columns(frames[0])
    stack = np.stack([f.assign(id=f["id"].astype(str)).set_index("id").reindex(list(ids))[cols].to_numpy(float)
                      for f in frames])
    usable = np.isfinite(stack).all(axis=2)
    if space == "log_odds":  # probability 1 for every class: log 0, a term that adds nothing
        mixed = mix(np.where(usable[:, :, None], stack, 1.0), w, space)
    else:
        row_w = w[:, None] * usable
        with np.errstate(invalid="ignore", divide="ignore"):
            mixed = np.einsum("mr,mrc->rc", row_w, np.where(usable[:, :, None], stack, 0.0)) / row_w.sum(axis=0)[:, None]
            mixed = mixed / mixed.sum(axis=1, keepdims=True)
    mixed[~usable.any(axis=0)] = np.nan
    return _ids_frame(ids, cols, mixed), usable


def _ids_frame(ids: Sequence[str], cols: list[str], values: np.ndarray) -> pd.DataFrame:
    import pandas as pd

    out = pd.DataFrame({"id": [str(i) for i in ids]})
    out[cols] = values
    return out


def _labels_for(ids: pd.Series, labels: pd.DataFrame | pd.Series) -> np.ndarray:
    """Labels in the order of ``ids`` from a frame with id/label columns or a Series indexed by id."""
    import pandas as pd

    series = labels.set_index(labels["id"].astype(str))["label"] if isinstance(labels, pd.DataFrame) else labels
    series.index = series.index.astype(str)
    missing = pd.Index(ids).difference(series.index)
    if len(missing):
        raise SubmissionError(f"labels are missing for {len(missing)} id(s) of the out-of-fold predictions: "
                              f"{', '.join(missing[:5])}")
    values = series.loc[list(ids)].to_numpy().astype("int64")
    if (values < 0).any():
        raise SubmissionError("out-of-fold labels must be known (label -1 found); fit weights on validation rows")
    return values


def _log_loss(stack: np.ndarray, w: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray]:
    """Mean log loss of the mixture and its gradient with respect to the weights."""
    import numpy as np

    picked = stack[:, np.arange(len(labels)), labels]  # [models, rows]: P(true class) per model
    mix = np.clip(w @ picked, 1e-15, None)
    return float(-np.log(mix).mean()), -(picked / mix).mean(axis=1)


def _fit_log_loss(stack: np.ndarray, labels: np.ndarray, steps: int = 2000, lr: float = 0.5) -> np.ndarray:
    """Exponentiated-gradient descent on the simplex (the objective is convex in the weights)."""
    import numpy as np

    w = np.full(stack.shape[0], 1.0 / stack.shape[0])
    for _ in range(steps):
        _, grad = _log_loss(stack, w, labels)
        w = w * np.exp(-lr * (grad - grad.min()))
        w /= w.sum()
    return w


def _log_odds_loss(logp: np.ndarray, w: np.ndarray, labels: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
    """Mean log loss of softmax(sum_m w_m logp_m), its gradient and its Hessian in the weights."""
    import numpy as np

    rows = np.arange(len(labels))
    p = _softmax(np.tensordot(w, logp, axes=1))
    resid = p.copy()
    resid[rows, labels] -= 1
    expected = np.einsum("rc,mrc->mr", p, logp)  # E_p[logp_m] per row
    hess = (np.einsum("mrc,rc,nrc->mn", logp, p, logp) - expected @ expected.T) / len(labels)
    loss = float(-np.log(np.clip(p[rows, labels], 1e-15, None)).mean())
    return loss, np.einsum("mrc,rc->m", logp, resid) / len(labels), hess


def _fit_log_odds(stack: np.ndarray, labels: np.ndarray, steps: int = 100) -> np.ndarray:
    """Projected Newton steps with backtracking on the weights >= 0 (the objective is convex in them)."""
    import numpy as np

    logp = _log(stack)
    w = np.full(stack.shape[0], 1.0 / stack.shape[0])
    for _ in range(steps):
        loss, grad, hess = _log_odds_loss(logp, w, labels)
        free = (w > 0) | (grad < 0)  # a weight at 0 that the gradient pushes below 0 stays there
        step = np.zeros_like(w)
        step[free] = np.linalg.lstsq(hess[np.ix_(free, free)], grad[free], rcond=None)[0]
        t = 1.0
        while t > 1e-6 and _log_odds_loss(logp, np.maximum(w - t * step, 0), labels)[0] > loss:
            t /= 2
        moved = np.maximum(w - t * step, 0)
        if t <= 1e-6 or np.abs(moved - w).max() < 1e-9:
            break
        w = moved
    return w


def _check_fit(metric: str, space: str) -> None:
    if metric not in METRICS:
        raise SubmissionError(f"metric={metric!r} must be one of {METRICS}")
    check_space(space)


def _fit(stack: np.ndarray, labels: np.ndarray, metric: str, space: str) -> np.ndarray:
    if metric == "accuracy":
        return _fit_accuracy(stack, labels, space)
    return _fit_log_odds(stack, labels) if space == "log_odds" else _fit_log_loss(stack, labels)


def _simplex_grid(n: int, resolution: int) -> np.ndarray:
    import numpy as np

    points = [c for c in itertools.product(range(resolution + 1), repeat=n - 1) if sum(c) <= resolution]
    return np.array([[*c, resolution - sum(c)] for c in points], dtype="float64") / resolution


def _fit_accuracy(stack: np.ndarray, labels: np.ndarray, space: str) -> np.ndarray:
    """Best accuracy on a simplex grid (coarser for many models); ties broken by lower log loss."""
    import numpy as np

    resolution = {1: 1, 2: 50, 3: 20, 4: 10}.get(stack.shape[0], 5)
    rows = np.arange(len(labels))
    best, best_key = None, None
    for w in _simplex_grid(stack.shape[0], resolution):
        mixed = mix(stack, w, space)
        key = ((mixed.argmax(axis=1) == labels).mean(), np.log(np.clip(mixed[rows, labels], 1e-15, None)).mean())
        if best_key is None or key > best_key:
            best, best_key = w, key
    return best


def fit_weights(oof_frames: Sequence[pd.DataFrame], labels: pd.DataFrame | pd.Series,
                metric: str = "log_loss", names: Sequence[str] | None = None, space: str = "probability") -> np.ndarray:
    """Blend weights in ``space`` that optimise ``metric`` on out-of-fold predictions joined on id (they sum
    to 1, except log-odds weights fitted to log loss, whose scale is fitted too).

    ``labels``: a frame with ``id`` and ``label`` columns (an oof.parquet, a canonical frame) or a
    Series of labels indexed by id.
    """
    import numpy as np

    _check_fit(metric, space)
    aligned = align(oof_frames, names)
    cols = prob_columns(aligned[0])
    y = _labels_for(aligned[0]["id"], labels)
    if y.max() >= len(cols):
        raise SubmissionError(f"labels include class {y.max()} (tie) but predictions have only {cols}")
    stack = np.stack([f[cols].to_numpy() for f in aligned])
    w = _fit(stack, y, metric, space)
    log.info("fitted blend weights (%s, %s space): %s", metric, space, np.round(w, 4).tolist())
    return w


def _read_oof(path: str) -> pd.DataFrame:
    import pandas as pd

    try:
        return pd.read_parquet(path)
    except (ValueError, OSError) as exc:
        raise SubmissionError(f"out-of-fold file {path} cannot be read as parquet ({exc}); pass the runs' "
                              "oof.parquet files") from exc


def blend_files(pred_paths: Sequence[str], out: str, weights: Sequence[float] | None = None,
                oof_paths: Sequence[str] | None = None, metric: str = "log_loss",
                space: str = "probability") -> pd.DataFrame:
    """``wsdm ensemble``: blend prediction files; weights given, fitted on out-of-fold files, or equal.

    ``oof_paths`` (one per prediction file, same order) are ``oof.parquet`` files of the runs, with a
    ``label`` column; the fitted weights are logged.
    """
    from .io import check_output_file
    from .submission import PREDICTION_FORMATS, read_predictions, write_predictions

    check_output_file(out, PREDICTION_FORMATS, "--out", {"an input": pred_paths, "an out-of-fold file": oof_paths})
    if oof_paths:
        if weights is not None or len(oof_paths) != len(pred_paths):
            raise SubmissionError("give either --weights or one --oof file per prediction file, not both")
        oof = [_read_oof(p) for p in oof_paths]
        if "label" not in oof[0].columns:
            raise SubmissionError(f"{oof_paths[0]} has no 'label' column; pass the runs' oof.parquet files")
        weights = fit_weights(oof, oof[0][["id", "label"]], metric, names=list(oof_paths), space=space).tolist()
    blended = blend([read_predictions(p) for p in pred_paths], weights, names=list(pred_paths), space=space)
    write_predictions(blended, out)
    return blended


# ---- blend weights on true out-of-fold predictions (wsdm ensemble fit) ----------------------------------
def _oof_labels(frames: Sequence[pd.DataFrame], names: Sequence[str]) -> pd.Series:
    """The label of every id, the same in every member's OOF file (they describe the same rows)."""
    import pandas as pd

    first = None
    for frame, name in zip(frames, names, strict=True):
        if "label" not in frame.columns:
            raise SubmissionError(f"{name} has no 'label' column; pass oof.parquet files written by wsdm cv")
        labels = pd.Series(frame["label"].to_numpy(), index=frame["id"].astype(str))
        if first is None:
            first = labels
            continue
        common = labels.index.intersection(first.index)
        differ = common[labels.loc[common].to_numpy() != first.loc[common].to_numpy()]
        if len(differ):
            raise SubmissionError(f"{name} and {names[0]} disagree on the label of {len(differ)} id(s), e.g. "
                                  f"{', '.join(differ[:5])}; fit on OOF files of the same training data and tie policy")
    return first


def _shared_folds(frames: Sequence[pd.DataFrame], ids: pd.Series) -> np.ndarray | None:
    """The fold of every row when every member has the same ``fold`` column, else None."""
    import numpy as np

    if not all("fold" in f.columns for f in frames):
        return None
    folds = [f.set_index(f["id"].astype(str))["fold"].loc[list(ids)].to_numpy() for f in frames]
    return folds[0] if all(np.array_equal(folds[0], f) for f in folds[1:]) else None


def _row_scores(probs: np.ndarray, y: np.ndarray, metric: str) -> np.ndarray:
    """Per-row score, higher is better: correct (accuracy) or log probability of the label (log loss)."""
    import numpy as np

    if metric == "accuracy":
        return (probs.argmax(axis=1) == y).astype("float64")
    return np.log(np.clip(probs[np.arange(len(y)), y], 1e-15, 1 - 1e-15))


def fit_oof_files(paths: Sequence[str], out: str | None = None, metric: str = "log_loss", n_boot: int = 2000,
                  seed: int = 0, space: str = "probability") -> dict:
    """``wsdm ensemble fit``: blend weights fitted on the members' out-of-fold files, joined on id.

    The report holds each member's CV and the blend's. When every file carries the same ``fold``
    column (wsdm cv output), the blend's CV is cross-fitted: the rows of fold k are blended with
    weights fitted on the other folds, so the blend is scored on rows its weights never saw. The
    gain over the best member (log loss: best minus blend; accuracy: blend minus best) comes with a
    bootstrap 95% interval over rows. The weights to use on the test set are fitted on all rows.
    """
    import numpy as np

    from . import metrics
    from .io import atomic_write_json, check_output_file

    _check_fit(metric, space)
    if out:
        check_output_file(out, {".json": "JSON"}, "--out", {"an out-of-fold file": paths})
    names = [str(p) for p in paths]
    frames = [_read_oof(p) for p in paths]
    labels = _oof_labels(frames, names)
    aligned = align(frames, names)
    ids = aligned[0]["id"]
    y = labels.loc[list(ids)].to_numpy().astype("int64")
    cols = prob_columns(aligned[0])
    stack = np.stack([f[cols].to_numpy() for f in aligned])
    weights = _fit(stack, y, metric, space)
    folds = _shared_folds(frames, ids)
    blended = mix(stack, weights, space)
    if folds is not None:
        for k in np.unique(folds):
            rows = folds == k
            blended[rows] = mix(stack[:, rows], _fit(stack[:, ~rows], y[~rows], metric, space), space)
    members = [{"path": name, "weight": float(w), "accuracy": metrics.accuracy(y, p), "log_loss": metrics.log_loss(y, p)}
               for name, w, p in zip(names, weights, stack, strict=True)]
    best = max(range(len(members)), key=lambda i: -members[i]["log_loss"] if metric == "log_loss"
               else members[i]["accuracy"])
    diff = _row_scores(blended, y, metric) - _row_scores(stack[best], y, metric)
    boot = np.random.default_rng(seed).integers(0, len(y), size=(n_boot, len(y)))
    gains = diff[boot].mean(axis=1)
    report = {
        "metric": metric, "space": space, "rows": int(len(y)), "members": members, "weights": [float(w) for w in weights],
        "blend": {"accuracy": metrics.accuracy(y, blended), "log_loss": metrics.log_loss(y, blended),
                  "cross_fitted": folds is not None},
        "gain_over_best": {"best_member": names[best], "mean": float(diff.mean()),
                           "ci95": [float(np.percentile(gains, 2.5)), float(np.percentile(gains, 97.5))],
                           "bootstrap": n_boot, "meaning": "log loss of the best member minus the blend's"
                           if metric == "log_loss" else "accuracy of the blend minus the best member's"},
    }
    if out:
        atomic_write_json(out, report)
    return report


def fit_report_text(report: dict) -> str:
    """The members' CV, the blend's, the weights and the gain interval as a table."""
    lines = [f"{'member':<60} {'weight':>7} {'accuracy':>9} {'log_loss':>9}"]
    for m in report["members"]:
        lines.append(f"{m['path'][-60:]:<60} {m['weight']:>7.3f} {m['accuracy']:>9.4f} {m['log_loss']:>9.4f}")
    b, g = report["blend"], report["gain_over_best"]
    kind = ("cross-fitted by fold" if b["cross_fitted"] else "in-sample: no shared fold column") + f", {report['space']}"
    lines.append(f"{'blend (' + kind + ')':<60} {'':>7} {b['accuracy']:>9.4f} {b['log_loss']:>9.4f}")
    lines.append(f"gain over the best member ({g['meaning']}): {g['mean']:+.4f}, "
                 f"95% bootstrap CI [{g['ci95'][0]:+.4f}, {g['ci95'][1]:+.4f}] over {report['rows']} rows")
    return "\n".join(lines)
