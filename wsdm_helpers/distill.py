"""Soft labels: attach a teacher's probabilities to training rows, the distillation loss, pseudo-labelling.

A soft-label file is a predictions file (id, winner_model_a, winner_model_b[, winner_tie]): what
``wsdm pseudo-label`` writes, or a cv ``oof.parquet``. :func:`attach_soft_labels` joins one or more
(one soft label per id) on id onto
the training frame as columns ``soft_a``, ``soft_b`` (, ``soft_tie``); ``tta.swap_pairs``
exchanges ``soft_a`` and ``soft_b`` with the responses, so swap augmentation flips the soft label
with the pair. Rows without a soft label keep NaN there and train on their hard label alone; rows
with neither (label -1 and no soft label) are an error.

The loss of one row (:func:`pair_loss`, the batch loss is the mean over rows)::

    mix * T^2 * KL(teacher_T || student_T)  +  (1 - mix) * CE(hard label, label smoothing)

``teacher_T = softmax(log p / T)`` (the teacher's probabilities re-tempered), ``student_T =
softmax(logits / T)``; the KL term is 0 for rows without a soft label and the CE term is 0 for rows
without a hard label (label -1). ``T^2`` keeps the gradient scale of the KL term independent of T.
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, DataError

if TYPE_CHECKING:
    import pandas as pd

    from .pipeline import Member

log = logging.getLogger(__name__)

SOFT_COLUMNS = ["soft_a", "soft_b", "soft_tie"]
EPS = 1e-8


def soft_columns(num_labels: int) -> list[str]:
    return SOFT_COLUMNS[:num_labels]


def read_soft_labels(paths: Sequence[str | Path], num_labels: int) -> pd.DataFrame:
    """The soft labels of every file, indexed by id, columns ``soft_columns(num_labels)``.

    Errors name the file: a class count different from ``num_labels``, an id already given by an
    earlier file (two teachers for one row: blend them first with ``wsdm pseudo-label --run A --run B``).
    """
    import pandas as pd

    from .submission import prob_columns, read_predictions

    tables: list[pd.DataFrame] = []
    for path in paths:
        soft = read_predictions(path)
        cols = prob_columns(soft)
        if len(cols) != num_labels:
            raise ConfigError(f"{path}: soft labels have {len(cols)} classes ({', '.join(cols)}) but "
                              f"model.num_labels={num_labels}; use a teacher with the same classes")
        table = soft.set_index("id")[cols].set_axis(soft_columns(num_labels), axis=1)
        for earlier, seen in zip(paths, tables, strict=False):
            twice = table.index.intersection(seen.index)
            if len(twice):
                raise DataError(f"{path}: {len(twice)} id(s) already have a soft label in {earlier}, e.g. "
                                f"{', '.join(twice[:5])}; give each row one soft label (blend teachers first)")
        tables.append(table)
    return pd.concat(tables) if tables else pd.DataFrame(columns=soft_columns(num_labels))


def attach_soft_labels(frame: pd.DataFrame, paths: Sequence[str | Path], num_labels: int) -> pd.DataFrame:
    """``frame`` with the soft labels of ``paths`` joined on id (NaN where no file has the row).

    Training rows with neither a hard nor a soft label are an error. Soft-label ids absent from
    ``frame`` are logged, not an error (a file may cover several data sets, or other folds).
    """
    import numpy as np

    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    table = read_soft_labels(paths, num_labels)
    path = ", ".join(map(str, paths))
    ids = frame["id"].astype(str)
    out = frame.drop(columns=[c for c in SOFT_COLUMNS if c in frame.columns]).reset_index(drop=True)
    joined = table.reindex(ids.to_numpy())
    for column in table.columns:
        out[column] = joined[column].to_numpy()
    has_soft = ~np.isnan(out[soft_columns(num_labels)].to_numpy()).any(axis=1)
    orphan = ids[(out["label"].to_numpy() < 0) & ~has_soft]
    if len(orphan):
        raise DataError(f"{path}: {len(orphan)} unlabeled training row(s) have no soft label, e.g. id "
                        f"{', '.join(orphan[:5])}; pseudo-label them (wsdm pseudo-label) or remove them")
    unused = len(set(table.index) - set(ids))
    log.info("soft labels from %s: %d of %d training rows (%d file rows not in the training data)",
             path, int(has_soft.sum()), len(out), unused)
    return out


def pair_loss(logits, labels, soft=None, temperature: float = 1.0, mix: float = 0.5, label_smoothing: float = 0.0):
    """Mean per-row loss of class ``logits`` [n, C] (see the module docstring).

    ``labels``: long [n], -1 = no hard label. ``soft``: float [n, C] teacher probabilities, NaN rows =
    no soft label; ``None`` = plain (smoothed) cross-entropy, exactly the loss without distillation.
    """
    import torch
    import torch.nn.functional as F

    has_hard = labels >= 0
    ce = F.cross_entropy(logits, labels.clamp(min=0), reduction="none", label_smoothing=label_smoothing)
    if soft is None:
        if not bool(has_hard.all()):
            raise DataError("rows without a hard label (label -1) need soft labels (train.distill.soft_labels)")
        return ce.mean()
    has_soft = ~torch.isnan(soft).any(dim=1)
    teacher = torch.softmax(torch.log(soft.nan_to_num(1.0).clamp(min=EPS)) / temperature, dim=1)
    student = torch.log_softmax(logits / temperature, dim=1)
    kl = (teacher * (torch.log(teacher.clamp(min=EPS)) - student)).sum(dim=1)
    zero = torch.zeros_like(ce)
    per_row = (mix * temperature ** 2 * torch.where(has_soft, kl, zero)
               + (1 - mix) * torch.where(has_hard, ce, zero))
    return per_row.mean()


# ---- pseudo-labelling -------------------------------------------------------------------------------
def pseudo_label(run_dirs: Sequence[str | Path], data_path: str | Path, out: str | Path,
                 weights: Sequence[float] | None = None, overrides: dict[str, Any] | None = None,
                 layout: str = "auto") -> pd.DataFrame:
    """``wsdm pseudo-label``: soft labels for the pairs of ``data_path`` (labelled or not) from one run
    or a blend of runs, each predicting with its saved inference settings (swap TTA by default) plus
    typed inference ``overrides`` (field name -> value). Writes the predictions layout (id + class
    probabilities) to ``out``."""
    from .data import read_pairs
    from .ensemble import blend
    from .io import check_output_file
    from .pipeline import run_members
    from .submission import PREDICTION_FORMATS, write_predictions

    check_output_file(out, PREDICTION_FORMATS, "--out", {"the --data file": data_path})
    members = run_members(run_dirs, weights)
    frame, _ = read_pairs(data_path, layout=layout, ties="keep")
    preds = [_run_predictions(m, frame, overrides) for m in members]
    soft = blend(preds, weights, names=[str(r) for r in run_dirs]) if len(preds) > 1 else preds[0]
    write_predictions(soft, out)
    log.info("pseudo-labelled %d pairs of %s with %d run(s) -> %s", len(soft), data_path, len(preds), out)
    return soft


def _run_predictions(member: Member, frame: pd.DataFrame, overrides: dict[str, Any] | None) -> pd.DataFrame:
    """A run's probabilities: an LLM run with its inference settings, a feature baseline as it is."""
    from .features import load_baseline
    from .inference import predict_proba
    from .pipeline import inference_settings

    if member.kind == "baseline":
        return load_baseline(member.path).predict(frame)
    return predict_proba(member.path, frame, inference_settings(member.path, overrides))
