"""A feature baseline that trains in seconds: hand-made text statistics + scikit-learn.

Per response: size (chars, words, lines, paragraphs), structure (list items, headers, code blocks,
bold, tables, links), style (questions, digits, upper case, distinct words), refusals, and overlap
with the prompt. A pair is described by A's features, B's features, their difference and their log
ratio. Training adds every row again with A and B swapped, and prediction averages both
orientations, so the baseline has no position bias. It is a usable model alone (length alone is
right on about 60% of Arena votes) and a cheap ensemble member.

The logistic regression reads every feature through asinh (about log(2x) for large x, linear near
0). Raw counts are heavy-tailed, and the scaled raw count of one very long response made it certain:
out-of-fold log loss 0.693 at 0.640 accuracy on Arena votes without a tie, against 0.642 at 0.660
with asinh (``benchmarks/quality.py --no-llm``).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, DataError

if TYPE_CHECKING:
    import numpy as np
    import pandas as pd

log = logging.getLogger(__name__)

_PATTERNS = {
    "list_items": re.compile(r"^\s*(?:[-*+•]|\d+[.)])\s+", re.M),
    "headers": re.compile(r"^\s*#{1,6}\s+\S", re.M),
    "code_fences": re.compile(r"```"),
    "inline_code": re.compile(r"(?<!`)`[^`\n]+`(?!`)"),
    "bold": re.compile(r"\*\*[^*\n]+\*\*|__[^_\n]+__"),
    "table_rows": re.compile(r"^\s*\|.*\|\s*$", re.M),
    "links": re.compile(r"https?://|www\."),
    "questions": re.compile(r"[?？]"),
    "exclamations": re.compile(r"[!！]"),
    "refusals": re.compile(r"\b(?:I'm sorry|I am sorry|I cannot|I can't|I apologi[sz]e|as an AI|I'm not able|"
                           r"I am not able|I'm unable|I am unable)\b", re.I),
    "paragraphs": re.compile(r"\n\s*\n"),
}
_WORD = re.compile(r"\w+", re.U)
COUNT_FEATURES = ["chars", "words", "lines", *_PATTERNS, "null_turns", "distinct_words"]
RATIO_FEATURES = ["digit_share", "upper_share", "distinct_share", "prompt_coverage", "prompt_jaccard", "empty"]
RESPONSE_FEATURES = COUNT_FEATURES + RATIO_FEATURES
MODELS = ("logreg", "hgb")
TRANSFORM = "asinh"  # what logreg reads, recorded in baseline.json: a file fitted on other inputs must not load


def _join(turns: Any) -> str:
    if turns is None or isinstance(turns, str):
        return turns or ""
    return "\n".join(t for t in turns if t)


def _null_turns(turns: Any) -> int:
    return 0 if turns is None or isinstance(turns, str) else sum(1 for t in turns if t is None)


def response_features(text: str, prompt_words: set[str], null_turns: int = 0) -> dict[str, float]:
    """Statistics of one response (all turns joined) against the words of its prompt."""
    words = _WORD.findall(text.lower())
    distinct = set(words)
    letters = sum(c.isalpha() for c in text)
    row = {name: float(len(p.findall(text))) for name, p in _PATTERNS.items()}
    row["code_fences"] //= 2
    row.update(
        chars=float(len(text)), words=float(len(words)), lines=float(text.count("\n") + 1 if text else 0),
        null_turns=float(null_turns), distinct_words=float(len(distinct)),
        digit_share=sum(c.isdigit() for c in text) / max(len(text), 1),
        upper_share=sum(c.isupper() for c in text) / max(letters, 1),
        distinct_share=len(distinct) / max(len(words), 1),
        prompt_coverage=len(distinct & prompt_words) / max(len(prompt_words), 1),
        prompt_jaccard=len(distinct & prompt_words) / max(len(distinct | prompt_words), 1),
        empty=float(not text.strip()),
    )
    return row


def pair_features(frame: pd.DataFrame) -> pd.DataFrame:
    """One feature row per pair: shared prompt features, then A, B, A-B and log(1+A)-log(1+B)."""
    import numpy as np
    import pandas as pd

    missing = [c for c in ("prompt", "response_a", "response_b") if c not in frame.columns]
    if missing:
        raise DataError(f"feature baseline: frame lacks column(s) {missing}; pass a canonical frame (data.read_pairs)")
    rows_a, rows_b, shared = [], [], []
    for prompt, resp_a, resp_b in zip(frame["prompt"], frame["response_a"], frame["response_b"], strict=True):
        prompt_text = _join(prompt)
        prompt_words = set(_WORD.findall(prompt_text.lower()))
        turns = 1 if prompt is None or isinstance(prompt, str) else len(prompt)
        shared.append({"prompt_chars": float(len(prompt_text)), "prompt_words": float(len(prompt_words)),
                       "turns": float(turns)})
        rows_a.append(response_features(_join(resp_a), prompt_words, _null_turns(resp_a)))
        rows_b.append(response_features(_join(resp_b), prompt_words, _null_turns(resp_b)))
    a = pd.DataFrame(rows_a, columns=RESPONSE_FEATURES)
    b = pd.DataFrame(rows_b, columns=RESPONSE_FEATURES)
    parts = [pd.DataFrame(shared), a.add_prefix("a_"), b.add_prefix("b_"), (a - b).add_prefix("diff_"),
             (np.log1p(a[COUNT_FEATURES]) - np.log1p(b[COUNT_FEATURES])).add_prefix("logratio_")]
    return pd.concat(parts, axis=1)


def _swapped(features: pd.DataFrame) -> pd.DataFrame:
    """The same pairs with A and B exchanged, computed from the features (no second extraction)."""
    out = features.copy()
    for name in RESPONSE_FEATURES:
        out[f"a_{name}"], out[f"b_{name}"] = features[f"b_{name}"], features[f"a_{name}"]
        out[f"diff_{name}"] = -features[f"diff_{name}"]
    for name in COUNT_FEATURES:
        out[f"logratio_{name}"] = -features[f"logratio_{name}"]
    return out


class FeatureBaseline:
    """Hand-made features + gradient boosting (``hgb``) or logistic regression (``logreg``).

    ``fit`` takes a canonical frame with labels 0/1 (and 2 for ties: then three classes are
    predicted); ``predict`` returns the predictions layout (id, winner_model_a, winner_model_b
    [, winner_tie]) in the frame's row order.
    """

    def __init__(self, model: str = "logreg", seed: int = 0, **params: Any):
        if model not in MODELS:
            raise DataError(f"feature baseline model={model!r} must be one of {MODELS}")
        self.model, self.seed, self.params = model, seed, params
        self.estimator: Any = None
        self.num_classes = 0

    def _make_estimator(self) -> Any:
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import StandardScaler

        if self.model == "hgb":
            params = {"max_iter": 200, "learning_rate": 0.05, "max_leaf_nodes": 15, "l2_regularization": 1.0,
                      "random_state": self.seed, **self.params}
            return HistGradientBoostingClassifier(**params)
        return make_pipeline(StandardScaler(), LogisticRegression(**{"C": 0.1, "max_iter": 2000, **self.params}))

    def _model_input(self, features: pd.DataFrame) -> pd.DataFrame:
        """asinh of every feature for the logistic regression; the trees read raw values (their splits
        need no scale, and asinh moved their bin edges: 3-class CV on LMSYS 0.419 -> 0.404)."""
        import numpy as np

        return np.arcsinh(features) if self.model == "logreg" else features

    def fit(self, frame: pd.DataFrame) -> FeatureBaseline:
        import numpy as np
        import pandas as pd

        labels = frame["label"].to_numpy().astype("int64") if "label" in frame.columns else np.array([-1])
        known = labels >= 0
        if not known.any() or not np.isin(labels[known], (0, 1, 2)).all():
            raise DataError("feature baseline: fit needs labelled rows (label 0 = a, 1 = b, 2 = tie)")
        features = pair_features(frame[known])
        y = labels[known]
        self.num_classes = 3 if (y == 2).any() else 2
        swapped_y = np.where(y == 2, 2, 1 - y)
        x = pd.concat([features, _swapped(features)], ignore_index=True)
        self.estimator = self._make_estimator().fit(self._model_input(x), np.concatenate([y, swapped_y]))
        return self

    def predict_array(self, frame: pd.DataFrame) -> np.ndarray:
        """Probabilities [n, classes], averaged over both A/B orientations."""
        if self.estimator is None:
            raise DataError("feature baseline: call fit() before predict()")
        features = pair_features(frame)
        from .tta import average_orientations

        return average_orientations(self.estimator.predict_proba(self._model_input(features)),
                                    self.estimator.predict_proba(self._model_input(_swapped(features))))

    def predict(self, frame: pd.DataFrame) -> pd.DataFrame:
        from .tta import columns_for

        probs = self.predict_array(frame)
        out = frame[["id"]].astype({"id": str}).reset_index(drop=True)
        out[columns_for(self.num_classes)] = probs
        return out


# ---- run folder: the fitted logistic regression as plain numbers (no pickle) ----------------------
BASELINE_FILE = "baseline.json"
_SCALER = ("mean_", "scale_", "var_")
_LOGREG = ("coef_", "intercept_", "classes_")


def save_baseline(baseline: FeatureBaseline, run_dir: str | Path, train_rows: int) -> Path:
    """Write a baseline run folder (``baseline.json``) that the submission pipeline loads like a
    trained run. Only ``logreg`` is saved: its fitted numbers are plain JSON, whereas a tree model
    would need a pickle, which a run folder never holds."""
    from .io import atomic_write_json

    if baseline.model != "logreg" or baseline.estimator is None:
        raise DataError(f"feature baseline: only a fitted logreg baseline can be saved as a run folder "
                        f"(got model={baseline.model!r}); use --model logreg, or --out for hgb predictions")
    scaler, logreg = baseline.estimator[0], baseline.estimator[-1]
    data = {"kind": "feature_baseline", "model": "logreg", "transform": TRANSFORM, "num_classes": baseline.num_classes,
            "train_rows": train_rows, "features": [str(f) for f in scaler.feature_names_in_],
            "scaler": {k: getattr(scaler, k).tolist() for k in _SCALER},
            "logreg": {k: getattr(logreg, k).tolist() for k in _LOGREG}, "params": baseline.params}
    return atomic_write_json(Path(run_dir) / BASELINE_FILE, data)


def load_baseline(run_dir: str | Path) -> FeatureBaseline:
    """The baseline :func:`save_baseline` wrote, ready to predict (the same probabilities as before saving)."""
    import json

    import numpy as np

    path = Path(run_dir) / BASELINE_FILE
    try:
        data = json.loads(path.read_text())
        transform = data.get("transform")
        baseline = FeatureBaseline("logreg", **data["params"])
        baseline.num_classes = int(data["num_classes"])
        baseline.estimator = baseline._make_estimator()
        scaler, logreg = baseline.estimator[0], baseline.estimator[-1]
        for obj, part in ((scaler, "scaler"), (logreg, "logreg")):
            for key, value in data[part].items():
                setattr(obj, key, np.asarray(value))
            obj.n_features_in_ = len(data["features"])
        scaler.feature_names_in_ = np.asarray(data["features"], dtype=object)  # the scaler passes arrays on
        scaler.n_samples_seen_ = int(data["train_rows"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise DataError(f"{path}: not a feature-baseline run folder ({exc}); write it with "
                        "`wsdm baseline --train TRAIN --run-dir DIR`") from None
    if transform != TRANSFORM:
        raise DataError(f"{path}: fitted on features without this version's {TRANSFORM} transform "
                        f"(transform={transform!r}), so it would predict wrong probabilities. Fix: refit it with "
                        "`wsdm baseline --train TRAIN --run-dir DIR`")
    return baseline


def train_and_predict(train_path: str, test_path: str | None = None, out_path: str | None = None,
                      model: str = "logreg", ties: str = "keep", run_dir: str | None = None) -> pd.DataFrame | None:
    """``wsdm baseline``: fit on the training file (any supported layout); write a run folder
    (``run_dir``) and/or the test predictions (``test_path`` + ``out_path``)."""
    from .data import check_trainable, read_pairs
    from .io import check_output_file
    from .pipeline import run_kind
    from .submission import PREDICTION_FORMATS, write_predictions

    if not run_dir and not (test_path and out_path):
        raise DataError("feature baseline: give --run-dir DIR (a run folder for wsdm predict) and/or "
                        "--test TEST --out PREDICTIONS")
    if run_dir and run_kind(run_dir) == "llm":
        raise ConfigError(f"--run-dir {run_dir} is an LLM run folder (config.yaml + adapter/ or model/); a "
                          f"{BASELINE_FILE} beside it would make wsdm predict take the run for a feature baseline. "
                          "Fix: give the baseline a folder of its own, e.g. --run-dir runs/baseline")
    if test_path and out_path:
        check_output_file(out_path, PREDICTION_FORMATS, "--out", {"the --train file": train_path,
                                                                  "the --test file": test_path})
    train, report = read_pairs(train_path, ties=ties)
    check_trainable(train, train_path, report.ties_dropped)
    baseline = FeatureBaseline(model=model)
    if run_dir and model != "logreg":
        save_baseline(baseline, run_dir, 0)  # refuses before the fit, with the reason
    baseline.fit(train)
    if run_dir:
        save_baseline(baseline, run_dir, len(train))
        log.info("feature baseline: trained on %d rows, wrote the run folder %s", len(train), run_dir)
    if not (test_path and out_path):
        return None
    test, _ = read_pairs(test_path, ties="keep")
    preds = baseline.predict(test)
    write_predictions(preds, out_path)
    log.info("feature baseline: trained on %d rows, wrote %d predictions to %s", len(train), len(preds), out_path)
    return preds
