"""wsdm ensemble fit: blend weights on true out-of-fold files, cross-fitted blend CV, bootstrap gain interval."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from wsdm_helpers import cli
from wsdm_helpers.config import DataConfig
from wsdm_helpers.cv import run_baseline_cv
from wsdm_helpers.data import write_canonical
from wsdm_helpers.demo_data import make_demo_frame
from wsdm_helpers.ensemble import fit_oof_files
from wsdm_helpers.errors import SubmissionError


def _members(tmp_path, n=600, folds=True):
    """Two members, each informative on a different half of the rows (so the blend beats both)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, n)
    ids = np.array([f"r{i}" for i in range(n)])
    paths = []
    for m in range(2):
        good = (np.arange(n) % 2) == m
        p_b = np.where(good, np.where(y == 1, 0.8, 0.2), 0.5) + rng.normal(0, 0.05, n)
        p_b = np.clip(p_b, 0.02, 0.98)
        frame = pd.DataFrame({"id": ids, "winner_model_a": 1 - p_b, "winner_model_b": p_b, "label": y})
        if folds:
            frame["fold"] = np.arange(n) % 5
        frame = frame.sample(frac=1, random_state=m)  # joined on id, not on position
        paths.append(tmp_path / f"m{m}.parquet")
        frame.to_parquet(paths[-1])
    return paths


def test_blend_weights_beat_each_member_with_a_bootstrap_interval(tmp_path):
    paths = _members(tmp_path)
    assert cli.main(["ensemble", "fit", *map(str, paths), "--out", str(tmp_path / "w.json")]) == 0
    report = json.loads((tmp_path / "w.json").read_text())
    assert report["blend"]["cross_fitted"] and report["rows"] == 600
    assert sum(report["weights"]) == pytest.approx(1) and min(report["weights"]) > 0.3
    assert report["blend"]["log_loss"] < min(m["log_loss"] for m in report["members"]) - 0.01
    gain = report["gain_over_best"]
    assert gain["ci95"][0] < gain["mean"] < gain["ci95"][1] and gain["ci95"][0] > 0
    assert report["space"] == "probability"
    assert cli.main(["ensemble", "fit", *map(str, paths), "--space", "log_odds", "--out", str(tmp_path / "l.json")]) == 0
    log_odds = json.loads((tmp_path / "l.json").read_text())
    assert log_odds["space"] == "log_odds" and log_odds["blend"]["cross_fitted"] and min(log_odds["weights"]) > 0.3
    assert log_odds["blend"]["log_loss"] < min(m["log_loss"] for m in log_odds["members"]) - 0.01
    (tmp_path / "nofold").mkdir()
    without = fit_oof_files(_members(tmp_path / "nofold", folds=False))
    assert not without["blend"]["cross_fitted"]


def test_members_must_agree_on_labels_and_ids(tmp_path):
    a, b = _members(tmp_path)
    other = pd.read_parquet(b)
    other.loc[other["id"] == "r3", "label"] = 1 - other.loc[other["id"] == "r3", "label"]
    other.to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(SubmissionError, match="disagree on the label of 1 id.*r3"):
        fit_oof_files([a, tmp_path / "bad.parquet"])
    pd.read_parquet(b).iloc[:-1].to_parquet(tmp_path / "short.parquet")
    with pytest.raises(SubmissionError, match="no prediction"):
        fit_oof_files([a, tmp_path / "short.parquet"])
    assert cli.main(["ensemble", "fit", str(a), "--out", str(tmp_path / "w.json")]) == 2


def test_fit_on_two_baseline_cv_outputs(tmp_path):
    frame = make_demo_frame(160, seed=4)
    write_canonical(frame, tmp_path / "train.parquet")
    cfg = DataConfig(train_path=str(tmp_path / "train.parquet"), n_folds=4)
    run_baseline_cv(cfg, tmp_path / "logreg", "logreg")
    run_baseline_cv(cfg, tmp_path / "hgb", "hgb")
    report = fit_oof_files([tmp_path / "logreg" / "oof.parquet", tmp_path / "hgb" / "oof.parquet"],
                           metric="accuracy")
    assert report["rows"] == 160 and report["blend"]["cross_fitted"]
    assert report["gain_over_best"]["ci95"][0] <= report["gain_over_best"]["mean"] <= report["gain_over_best"]["ci95"][1]


def _cascade_members(tmp_path, n=1000):
    """A first member sure and right on 70% of the rows and unsure (P near 0.5) on the rest; a second member
    moderately right everywhere: it is worth asking only where the first is unsure."""
    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, n)
    ids = np.array([f"r{i:04d}" for i in range(n)])
    hard = rng.random(n) < 0.3
    first = np.where(hard, 0.5 + rng.normal(0, 0.03, n), 0.9)
    second = np.clip(0.75 + rng.normal(0, 0.05, n), 0.55, 0.95)
    paths = []
    for m, p_true in enumerate((first, second)):
        p_b = np.where(y == 1, p_true, 1 - p_true)
        frame = pd.DataFrame({"id": ids, "winner_model_a": 1 - p_b, "winner_model_b": p_b, "label": y,
                              "fold": np.arange(n) % 4})
        paths.append(tmp_path / f"c{m}.parquet")
        frame.sample(frac=1, random_state=m).to_parquet(paths[-1])
    return paths, hard, first


def test_ensemble_fit_chooses_the_cascade_share_out_of_fold(tmp_path, capsys):
    paths, hard, first = _cascade_members(tmp_path)
    assert cli.main(["ensemble", "fit", *map(str, paths), "--cascade-shares", "0.1", "0.3", "0.5",
                     "--out", str(tmp_path / "w.json")]) == 0
    report = json.loads((tmp_path / "w.json").read_text())
    cascade = report["cascade"]
    assert [r["shares"] for r in cascade["table"]] == [[0.1], [0.3], [0.5], [1.0]]
    full = cascade["table"][-1]
    assert full["vs_full"] == 0 and full["compute"] == 1 and full["log_loss"] == pytest.approx(report["blend"]["log_loss"])
    chosen = cascade["chosen"]
    assert chosen["shares"] == [0.3] and chosen["compute"] == pytest.approx(0.3)
    assert chosen["vs_full"] > 0 and chosen["vs_full_ci95"][0] > 0  # better than asking the second member everywhere
    assert chosen["log_loss"] < min(m["log_loss"] for m in report["members"])
    out = capsys.readouterr().out
    assert "cascades" in out and "<- chosen" in out and "--rows uncertain:0.3" in out


def test_the_cascade_rows_of_a_fold_are_its_share_most_uncertain_under_the_first_member():
    from wsdm_helpers.ensemble import cross_fitted

    rng = np.random.default_rng(2)
    n, folds = 200, np.arange(200) % 4
    y = rng.integers(0, 2, n)
    p_a = rng.random((2, n))
    stack = np.stack([p_a, 1 - p_a], axis=2)
    ids = np.array([f"r{i:03d}" for i in range(n)])
    probs, usable = cross_fitted(stack, y, folds, [None, 0.2], "log_loss", "probability", ids)
    assert usable[0].all() and usable[1].sum() == 4 * 10
    for k in range(4):
        rows = np.flatnonzero(folds == k)
        margin = np.abs(p_a[0, rows] - (1 - p_a[0, rows]))
        assert set(rows[np.argsort(margin)[:10]]) == set(np.flatnonzero(usable[1] & (folds == k)))
    np.testing.assert_allclose(probs[~usable[1]], stack[0][~usable[1]])  # the first member alone elsewhere


def test_cascade_shares_are_checked(tmp_path):
    paths, _, _ = _cascade_members(tmp_path, n=100)
    with pytest.raises(SubmissionError, match="cascade shares"):
        fit_oof_files(paths, cascade_shares=[0.0, 0.3])
    assert cli.main(["ensemble", str(paths[0]), "--cascade-shares", "0.3", "--out", str(tmp_path / "b.parquet")]) == 2
