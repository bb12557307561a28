"""K-fold cross-validation: one run folder per fold, out-of-fold predictions, a CV report.

``wsdm cv --config PRESET [--folds 0,1]`` (LLM runs) and ``wsdm cv --baseline logreg`` (the feature
baseline, seconds) write the same layout into OUTPUT (``train.output_dir``)::

    folds.parquet      id, fold: made once (grouped by prompt, stratified by label x language, seeded,
                       independent of row order) and reused; give it to the other models of a project
                       (``--folds-file`` or ``data.folds_file``) so every model sees the same folds
    cv_config.yaml     the resolved config; a rerun into the same OUTPUT with another config is refused (the
                       folder's own paths aside: a moved or copied cv folder is the same cv)
    fold-K/            a normal ``wsdm train`` run folder (data.fold=K), plus
      cv_config.yaml     the cv config it was made with: a fold copied in from a cv of other settings is refused
      valid_ab.parquet   its held-out rows predicted as given
      valid_ba.parquet   its held-out rows predicted with A and B swapped, mapped back to AB
    oof.parquet        every labelled training row exactly once (with data.valid_from=train_path: every
                       labelled row of train_path; extra files train in every fold), predicted by the fold model that did
                       not train on it, with the TTA of the inference section: id, probabilities,
                       label, language, fold
    cv_report.json     accuracy, log loss, flip rate (AB vs BA), per-language accuracy; all and per fold

Resume: a fold whose two valid files exist is done and skipped; a fold with metrics.json is trained
and only predicted; any other fold trains, resuming from its last checkpoint (HF Trainer). So a
killed ``wsdm cv`` continues at the fold and step where it stopped, and ``--folds`` lets separate
sessions (one Kaggle session per fold) train folds into copies of OUTPUT that are merged later;
oof.parquet and the report are written once every fold is done.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import DataConfig, InferenceConfig, RunConfig, load_yaml, save_yaml, to_dict
from .errors import ConfigError
from .io import atomic_write_json, atomic_write_parquet, check_output_dir

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

FOLDS_FILE = "folds.parquet"
CONFIG_FILE = "cv_config.yaml"
OOF_FILE = "oof.parquet"
REPORT_FILE = "cv_report.json"
PASSES = ("valid_ab.parquet", "valid_ba.parquet")
BASELINES = ("logreg", "hgb")


@dataclasses.dataclass
class CVResult:
    out_dir: Path
    done: list[int]
    missing: list[int]
    report: dict[str, Any] | None  # None until every fold is done

    def to_text(self) -> str:
        if self.report is None:
            return (f"{self.out_dir}: folds done {self.done}, still to train {self.missing} "
                    f"(wsdm cv --folds {','.join(map(str, self.missing))}); oof.parquet comes after the last fold")
        lines = [f"{'fold':>6} {'rows':>6} {'accuracy':>9} {'log_loss':>9} {'flip_rate':>9}"]
        for name, r in [*((str(f["fold"]), f) for f in self.report["folds"]), ("all", self.report)]:
            lines.append(f"{name:>6} {r['rows']:>6} {r['accuracy']:>9.4f} {r['log_loss']:>9.4f} {r['flip_rate']:>9.4f}")
        tta = self.report["tta"] + (f", averaged in {self.report['tta_average']} space" if self.report["tta"] != "none"
                                    else "")
        lines.append(f"TTA: {tta} (accuracy without it: {self.report['accuracy_ab']:.4f}); "
                     f"wrote {self.out_dir / OOF_FILE} and {self.out_dir / REPORT_FILE}")
        return "\n".join(lines)


def parse_folds(text: str | None, n_folds: int) -> list[int]:
    """``"0,2"`` -> [0, 2]; None or empty = every fold."""
    if not text:
        return list(range(n_folds))
    try:
        folds = sorted({int(part) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ConfigError(f"--folds {text!r} must be comma-separated fold numbers, e.g. --folds 0,1") from None
    bad = [k for k in folds if not 0 <= k < n_folds]
    if bad or not folds:
        raise ConfigError(f"--folds {text!r}: folds must be between 0 and data.n_folds-1={n_folds - 1}")
    return folds


# ---- folds and config of an OUTPUT folder --------------------------------------------------------------
def prepare_folds(out_dir: Path, frame: pd.DataFrame, data: DataConfig) -> tuple[Path, Any]:
    """OUTPUT/folds.parquet (reused if present, else copied from ``data.folds_file``, else made) and
    the fold of every row of ``frame``."""
    import pandas as pd

    from .data import fold_table, folds_from_table, read_table

    path = out_dir / FOLDS_FILE
    if path.is_file():
        table = pd.read_parquet(path)
        if data.folds_file and Path(data.folds_file).resolve() != path.resolve():
            given = read_table(data.folds_file)
            if not given.astype({"id": str}).sort_values("id", ignore_index=True).equals(
                    table.astype({"id": str}).sort_values("id", ignore_index=True)):
                raise ConfigError(f"{path} differs from data.folds_file={data.folds_file}: this cv folder was made "
                                  "with other folds; use a new output folder or drop --folds-file")
    else:
        table = read_table(data.folds_file) if data.folds_file else fold_table(frame, data.n_folds, data.seed)
        folds_from_table(frame, table, data.n_folds, data.folds_file or path)  # check before saving
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_parquet(table[["id", "fold"]].astype({"id": str, "fold": "int64"}), path)
    return path, folds_from_table(frame, table, data.n_folds, path)


def check_config(out_dir: Path, resolved: dict[str, Any]) -> None:
    """Save the CV's config once; refuse a rerun whose config differs (it would mix two recipes). The cv
    folder's own paths do not count: a moved or copied cv folder is the same cv."""
    path = out_dir / CONFIG_FILE
    if not path.is_file():
        save_yaml(resolved, path)
        return
    changed = config_changes(load_yaml(path), resolved)
    if changed:
        raise ConfigError(f"{out_dir} holds a cv with another config ({'; '.join(changed)}); resume with the same "
                          "settings (rerun with the old values), or use a new output folder for the new ones")


def config_changes(saved: dict[str, Any], now: dict[str, Any]) -> list[str]:
    """``key: old -> new`` for every setting that differs, the cv folder's own paths left out."""
    old, new = _flat(_own_paths_relative(saved)), _flat(_own_paths_relative(now))
    return [f"{k}: {old.get(k, '(absent)')} -> {new.get(k, '(absent)')}" for k in sorted(set(old) | set(new))
            if old.get(k) != new.get(k)]


def _own_paths_relative(config: dict[str, Any]) -> dict[str, Any]:
    """The config with the paths into its own cv folder (data.folds_file = CV/folds.parquet, train.output_dir
    = CV) written relative to that folder."""
    folds_file = config.get("data", {}).get("folds_file")
    if not folds_file or Path(folds_file).name != FOLDS_FILE:
        return config
    own = Path(folds_file).parent
    out = {**config, "data": {**config["data"], "folds_file": FOLDS_FILE}}
    if "train" in config and Path(config["train"].get("output_dir", "")) == own:
        out["train"] = {**config["train"], "output_dir": "."}
    return out


def check_fold_origin(out_dir: Path, fold: int, resolved: dict[str, Any]) -> None:
    """Stamp fold-K with the cv config (``fold-K/cv_config.yaml``) or, when it has one, refuse a fold made
    by a cv with other settings (fold folders copied together from several sessions)."""
    folder = fold_dir(out_dir, fold)
    stamp = folder / CONFIG_FILE
    if stamp.is_file():
        changed = config_changes(load_yaml(stamp), resolved)
        if changed:
            raise ConfigError(f"{folder} was made by a cv with other settings ({'; '.join(changed)}); its "
                              f"predictions would mix two recipes in oof.parquet. Fix: delete {folder} (or move it "
                              f"to a cv folder of its own settings) and run wsdm cv --folds {fold} again")
    elif folder.is_dir():
        log.warning("%s has no %s (made by an older version): cannot check that it was made with this cv's "
                    "settings", folder, CONFIG_FILE)
    else:
        folder.mkdir(parents=True)
        save_yaml(resolved, stamp)


def _flat(data: dict, prefix: str = "") -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = repr(value)
    return out


# ---- the fold loop ---------------------------------------------------------------------------------------
def fold_dir(out_dir: Path, fold: int) -> Path:
    return out_dir / f"fold-{fold}"


def fold_done(out_dir: Path, fold: int) -> bool:
    return all((fold_dir(out_dir, fold) / name).is_file() for name in PASSES)


def validated_rows(frame, data: DataConfig):
    """Rows a fold can hold out: labelled ones, and with data.valid_from=train_path only train_path's
    (the rule training applies; the other rows train in every fold)."""
    from .data import UNLABELED
    from .training import main_file_rows

    mask = frame["label"].to_numpy() != UNLABELED
    if data.valid_from == "train_path" and data.extra_train_paths:
        mask &= main_file_rows(frame, data)
    return mask


def _run_folds(out_dir: Path, frame, folds, data: DataConfig, selected: Sequence[int],
               fit_predict: Callable[[int, Any], tuple[Any, Any]], tta: InferenceConfig,
               resolved: dict[str, Any]) -> CVResult:
    """Train and predict the selected folds not yet done; assemble the OOF file when all are done. Every
    fold folder is checked (or stamped) against the cv's config first."""
    n_folds = data.n_folds
    labelled = validated_rows(frame, data)
    for k in range(n_folds):
        if k in selected or fold_dir(out_dir, k).is_dir():
            check_fold_origin(out_dir, k, resolved)
    for k in selected:
        if fold_done(out_dir, k):
            log.info("fold %d: done already (%s)", k, fold_dir(out_dir, k))
            continue
        valid = frame[(folds == k) & labelled].reset_index(drop=True)
        ab, ba = fit_predict(k, valid)
        atomic_write_parquet(ba, fold_dir(out_dir, k) / PASSES[1])
        atomic_write_parquet(ab, fold_dir(out_dir, k) / PASSES[0])  # last: the fold's done marker
    done = [k for k in range(n_folds) if fold_done(out_dir, k)]
    missing = [k for k in range(n_folds) if k not in done]
    report = assemble(out_dir, frame[labelled], folds[labelled], n_folds, tta) if not missing else None
    return CVResult(out_dir, done, missing, report)


def assemble(out_dir: Path, frame, folds, n_folds: int, tta: InferenceConfig) -> dict[str, Any]:
    """oof.parquet and cv_report.json from the folds' valid files: each row of ``frame`` (the held-out
    candidates, see :func:`validated_rows`) exactly once."""
    import numpy as np
    import pandas as pd

    from . import metrics
    from .submission import prob_columns
    from .tta import apply_policy

    labelled = frame.assign(fold=folds, id=frame["id"].astype(str)).set_index("id")
    parts, per_fold = [], []
    for k in range(n_folds):
        ab, ba = (pd.read_parquet(fold_dir(out_dir, k) / name) for name in PASSES)
        expected = set(labelled.index[labelled["fold"] == k])
        for name, pred in zip(PASSES, (ab, ba), strict=True):
            if set(pred["id"].astype(str)) != expected or pred["id"].duplicated().any():
                raise ConfigError(f"{fold_dir(out_dir, k) / name} does not hold exactly the {len(expected)} held-out "
                                  f"rows of fold {k} (the data or folds changed); delete {fold_dir(out_dir, k)} "
                                  f"and run wsdm cv --folds {k} again")
        merged = apply_policy(ab, ba, tta.tta, tta.tta_band, tta.tta_share, tta.tta_average)
        parts.append((merged.assign(fold=k), ab, ba))
        per_fold.append({"fold": k, **_scores(labelled, merged, ab, ba)})
    oof = pd.concat([p[0] for p in parts], ignore_index=True)
    ab = pd.concat([p[1] for p in parts], ignore_index=True)
    ba = pd.concat([p[2] for p in parts], ignore_index=True)
    oof["id"] = oof["id"].astype(str)
    oof["label"] = labelled.loc[oof["id"], "label"].to_numpy()
    oof["language"] = labelled.loc[oof["id"], "language"].to_numpy()
    oof = oof[["id", *prob_columns(oof), "label", "language", "fold"]]
    if len(oof) != len(labelled) or oof["id"].duplicated().any():  # guarded above; the file's promise
        raise ConfigError(f"internal: oof has {len(oof)} rows for {len(labelled)} labelled training rows")
    overall = _scores(labelled, oof, ab, ba)
    table = metrics.per_language_accuracy(oof["language"], oof["label"], oof[prob_columns(oof)].to_numpy())
    report = {**overall, "tta": tta.tta, "tta_average": tta.tta_average, "n_folds": n_folds, "folds": per_fold,
              "per_language": table.to_dict(orient="records"),
              "fold_sizes": np.bincount(oof["fold"], minlength=n_folds).tolist()}
    atomic_write_parquet(oof, out_dir / OOF_FILE)
    atomic_write_json(out_dir / REPORT_FILE, report)
    return report


def _scores(labelled, merged, ab, ba) -> dict[str, Any]:
    from . import metrics
    from .submission import prob_columns

    cols = prob_columns(merged)
    ids = merged["id"].astype(str)
    labels = labelled.loc[ids, "label"].to_numpy()
    ab_probs = ab.set_index(ab["id"].astype(str)).loc[ids, cols].to_numpy()
    ba_probs = ba.set_index(ba["id"].astype(str)).loc[ids, cols].to_numpy()
    probs = merged[cols].to_numpy()
    return {"rows": int(len(ids)), "accuracy": metrics.accuracy(labels, probs), "log_loss": metrics.log_loss(labels, probs),
            "accuracy_ab": metrics.accuracy(labels, ab_probs), "flip_rate": metrics.flip_rate(ab_probs, ba_probs)}


# ---- LLM runs -----------------------------------------------------------------------------------------
def run_cv(cfg: RunConfig, folds: Sequence[int] | None = None, callbacks: list | None = None) -> CVResult:
    """``wsdm cv --config``: every fold (or ``folds``) trained into OUTPUT/fold-K (see the module docstring)."""
    from .data import load_training_frame

    cfg.validate()
    out_dir = check_output_dir(cfg.train.output_dir, what="cv output (train.output_dir)")
    base = dataclasses.replace(cfg, data=dataclasses.replace(cfg.data, folds_file=str(out_dir / FOLDS_FILE)))
    resolved = to_dict(base)
    resolved["data"].pop("fold")
    check_config(out_dir, resolved)
    frame = load_training_frame(cfg.data)
    _, fold_of = prepare_folds(out_dir, frame, cfg.data)

    def fit_predict(k: int, valid):
        return _train_and_predict_fold(base, out_dir, k, valid, callbacks)

    return _run_folds(out_dir, frame, fold_of, cfg.data, list(folds or range(cfg.data.n_folds)),
                      fit_predict, cfg.inference, resolved)


def _train_and_predict_fold(base: RunConfig, out_dir: Path, k: int, valid, callbacks):
    from .training import last_checkpoint, train

    where = fold_dir(out_dir, k)
    cfg = dataclasses.replace(base, data=dataclasses.replace(base.data, fold=k),
                              train=dataclasses.replace(base.train, output_dir=str(where), resume=True))
    if (where / "metrics.json").is_file():
        log.info("fold %d: trained already; predicting its held-out rows", k)
    else:
        checkpoint = last_checkpoint(where / "checkpoints")
        step = int(Path(checkpoint).name.split("-")[-1]) if checkpoint else 0
        print(f"fold {k}: " + (f"resuming from step {step} ({checkpoint})" if checkpoint else "training"), flush=True)
        train(cfg, callbacks=callbacks)
    return predict_both(where, valid, base.inference)


def predict_both(run_dir: Path, valid, icfg: InferenceConfig):
    """(AB, BA mapped back) predictions of ``valid`` by the run in ``run_dir``, without TTA of their own."""
    from .inference import load_runs, run_prediction
    from .tta import flip_predictions, swap_pairs

    plain = dataclasses.replace(icfg, tta="none", time_budget_minutes=None, work_dir="")
    run = load_runs(run_dir, plain)[0]
    ab = run_prediction(run, valid, plain).predictions
    ba = flip_predictions(run_prediction(run, swap_pairs(valid), plain).predictions)
    return ab, ba


# ---- feature baseline ------------------------------------------------------------------------------
def run_baseline_cv(data: DataConfig, out_dir: str | Path, model: str = "logreg",
                    folds: Sequence[int] | None = None) -> CVResult:
    """``wsdm cv --baseline``: the feature baseline through the same folds, files and report."""
    from .data import load_training_frame
    from .features import FeatureBaseline
    from .tta import flip_predictions, swap_pairs

    if model not in BASELINES:
        raise ConfigError(f"--baseline {model!r} must be one of {', '.join(BASELINES)}")
    data.validate("data.")
    out_dir = check_output_dir(out_dir, what="cv output")
    resolved = {"baseline": model, "data": {**to_dict(data), "folds_file": str(out_dir / FOLDS_FILE)}}
    resolved["data"].pop("fold")
    check_config(out_dir, resolved)
    frame = load_training_frame(data)
    _, fold_of = prepare_folds(out_dir, frame, data)

    held_out = validated_rows(frame, data)

    def fit_predict(k: int, valid):
        train_rows = frame[~((fold_of == k) & held_out) & (frame["label"].to_numpy() >= 0)]
        fitted = FeatureBaseline(model=model, seed=data.seed).fit(train_rows)
        ab, ba = fitted.predict(valid), flip_predictions(fitted.predict(swap_pairs(valid)))
        atomic_write_json(fold_dir(out_dir, k) / "metrics.json", {"baseline": model, "train_rows": len(train_rows),
                                                                  "valid_rows": len(valid)})
        return ab, ba

    return _run_folds(out_dir, frame, fold_of, data, list(folds or range(data.n_folds)), fit_predict,
                      InferenceConfig(tta="swap"), resolved)
