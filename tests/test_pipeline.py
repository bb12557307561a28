"""The submission pipeline: one clock for all runs, fills, layouts, baseline run folders, CLI = notebook.

Tiny random Llama classifiers (tokenizer trained in the session) are saved as run folders. Time is
an injected ManualClock: every forward pass advances it by its padded tokens / RATE and every model
load by LOAD seconds, so the plans and stops are exact and nothing sleeps.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from wsdm_helpers.clock import Deadline, ManualClock
from wsdm_helpers.config import FormatConfig, InferenceConfig, ModelConfig, RunConfig, save_yaml
from wsdm_helpers.data import read_pairs
from wsdm_helpers.demo_data import write_demo_dataset, write_hidden_test
from wsdm_helpers.errors import ConfigError, SubmissionError
from wsdm_helpers.pipeline import REPORT_FILE, submit
from wsdm_helpers.submission import check_against_sample
from wsdm_helpers.tiny import build_tiny_model, pair_texts, train_tokenizer

RATE = 2000.0  # simulated padded tokens per second
LOAD = 1.0  # simulated seconds per model load
N_TEST = 40
CPU = {"devices": ["cpu"], "tta": "none", "progress_bar": False}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    train, test, _, labels = write_demo_dataset(root, n_train=200, n_test=N_TEST, seed=5)
    wsdm = pd.read_parquet(test)
    lmsys = wsdm[["id"]].assign(**{c: [json.dumps([t]) for t in wsdm[c]] for c in ("prompt", "response_a",
                                                                                   "response_b")})
    lmsys.to_csv(root / "test.csv", index=False)
    return {"train": train, "wsdm_test": test, "lmsys_test": root / "test.csv", "labels": labels}


def _run(root, tokenizer, name, num_labels=2, seed=0, max_length=128):
    run = root / name
    build_tiny_model("llama", tokenizer, run / "model", num_labels=num_labels, seed=seed)
    tokenizer.save_pretrained(str(run / "tokenizer"))
    save_yaml(RunConfig(model=ModelConfig(source=str(run / "model"), num_labels=num_labels),
                        format=FormatConfig(max_length=max_length),
                        inference=InferenceConfig(devices=["cpu"], tta="swap", progress_bar=False)),
              run / "config.yaml")
    return run


@pytest.fixture(scope="module")
def runs(data, tmp_path_factory):
    """Three 2-class runs (max_length 128: no shorter context to plan, so time only buys rows), a 3-class
    run and a feature-baseline run folder written by `wsdm baseline --run-dir`."""
    from wsdm_helpers.cli import main

    root = tmp_path_factory.mktemp("runs")
    frame, _ = read_pairs(data["train"])
    tokenizer = train_tokenizer(pair_texts(frame), vocab_size=600)
    out = {f"two{i}": _run(root, tokenizer, f"two{i}", seed=i) for i in range(3)}
    out["three"] = _run(root, tokenizer, "three", num_labels=3, seed=7)
    assert main(["baseline", "--train", str(data["train"]), "--run-dir", str(root / "baseline")]) == 0
    out["baseline"] = root / "baseline"
    return out


@pytest.fixture
def clock(monkeypatch):
    """A ManualClock that forward passes and model loads advance (the real model still runs)."""
    from wsdm_helpers import modeling
    from wsdm_helpers.inference import Worker

    clock = ManualClock()
    forward, load = Worker._forward, modeling.load_run

    def timed_forward(self, rows):
        clock.advance(len(rows) * max(len(r) for r in rows) / RATE)
        return forward(self, rows)

    def timed_load(*args, **kwargs):
        clock.advance(LOAD)
        return load(*args, **kwargs)

    monkeypatch.setattr(Worker, "_forward", timed_forward)
    monkeypatch.setattr(modeling, "load_run", timed_load)
    return clock


def _deadline(clock, seconds):
    return Deadline(clock, clock.now(), clock.now() + seconds)


def _submission(path):
    return pd.read_csv(path, dtype={"id": str})


def test_three_runs_with_a_deadline_that_fits_two(runs, data, clock, tmp_path):
    one = submit([runs["two0"]], data["wsdm_test"], tmp_path / "one" / "submission.csv", overrides=CPU,
                 deadline=_deadline(clock, 1e6))
    need = one.report.runs[0].actual_seconds  # load + pilot + the AB pass of one run
    assert need > LOAD
    finish = 2.0
    deadline = _deadline(clock, 2.5 * need + finish)
    three = [runs["two0"], runs["two1"], runs["two2"]]
    result = submit(three, data["wsdm_test"], tmp_path / "submission.csv", overrides=CPU, deadline=deadline,
                    settings={"finish_seconds": finish}, probs_out=tmp_path / "probs.parquet")
    assert clock.now() <= deadline.end
    first, second, third = result.report.runs
    assert (first.status, first.rows_predicted, first.rows_filled) == ("done", N_TEST, 0)
    assert (second.status, second.rows_predicted, second.rows_filled) == ("done", N_TEST, 0)
    assert third.status == "stopped" and 0 <= third.rows_predicted < N_TEST
    assert third.rows_filled == N_TEST - third.rows_predicted
    assert result.report.rows_uniform == 0 and result.report.rows_from_fallback == 0
    sub = _submission(tmp_path / "submission.csv")
    assert sub.columns.tolist() == ["id", "winner"] and len(sub) == N_TEST
    saved = json.loads((tmp_path / REPORT_FILE).read_text())
    assert [r["status"] for r in saved["runs"]] == ["done", "done", "stopped"]
    assert saved["runs"][2]["rows_filled"] == third.rows_filled and saved["elapsed_seconds"] <= 2.5 * need + finish
    assert "stopped" in result.report.to_text()


def test_deadline_too_short_for_any_llm_run_gives_the_baseline_submission(runs, data, clock, tmp_path):
    from wsdm_helpers.features import load_baseline

    with pytest.raises(SubmissionError, match=r"40 of 40 rows \(100%\) came from the fallback baseline"):
        submit([runs["two0"], runs["baseline"]], data["wsdm_test"], tmp_path / "submission.csv",
               weights=[1, 0], overrides=CPU, deadline=_deadline(clock, 1.5))  # a local run: raises, once written
    assert _submission(tmp_path / "submission.csv").shape == (N_TEST, 2)
    result = submit([runs["two0"], runs["baseline"]], data["wsdm_test"], tmp_path / "submission.csv",
                    weights=[1, 0], overrides=CPU, deadline=_deadline(clock, 1.5), settings={"on_failure": "fill"})
    llm, baseline = result.report.runs
    assert llm.status == "skipped" and llm.rows_filled == N_TEST
    assert baseline.status == "done" and result.report.rows_from_fallback == N_TEST
    expected = load_baseline(runs["baseline"]).predict(read_pairs(data["wsdm_test"])[0])
    winner = np.where(expected["winner_model_a"] >= expected["winner_model_b"], "model_a", "model_b")
    assert _submission(tmp_path / "submission.csv")["winner"].tolist() == winner.tolist()


def test_a_run_that_loads_but_cannot_finish_a_batch_is_filled_by_the_baseline(runs, data, clock, tmp_path):
    result = submit([runs["two0"], runs["baseline"]], data["wsdm_test"], tmp_path / "submission.csv",
                    weights=[1, 0], overrides=CPU, settings={"finish_seconds": 0.0, "on_failure": "fill"},
                    deadline=_deadline(clock, LOAD + 0.05))
    llm = result.report.runs[0]
    assert llm.status == "stopped" and llm.rows_predicted < N_TEST
    assert result.report.rows_from_fallback == N_TEST - llm.rows_predicted
    assert len(_submission(tmp_path / "submission.csv")) == N_TEST


HIDDEN_ROWS = 25_000  # the size of the WSDM hidden test


def test_a_25k_row_rerun_under_a_binding_deadline_writes_a_valid_submission_before_it(runs, clock, tmp_path,
                                                                                       monkeypatch):
    """The competition rerun: the hidden test in the WSDM layout (integer ids, ``scored``), a deadline about a
    tenth of what the run needs unconstrained; the run stops, the baseline fills, Kaggle's checks pass."""
    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "1")
    test, sample = write_hidden_test(tmp_path / "input", n_rows=HIDDEN_ROWS, seed=2)
    seconds = 150.0  # simulated; the AB pass alone needs about 1500 s at RATE
    deadline = _deadline(clock, seconds)
    result = submit([runs["two0"], runs["baseline"]], test, tmp_path / "submission.csv", weights=[1, 0],
                    overrides={**CPU, "tta": "swap"}, deadline=deadline)
    llm, report = result.report.runs[0], result.report
    assert clock.now() <= deadline.end and report.elapsed_seconds <= seconds
    assert report.elapsed_seconds >= 0.85 * seconds  # the deadline is used, not left idle
    assert llm.status == "stopped" and 0 < llm.rows_predicted < HIDDEN_ROWS / 5 and llm.swapped_rows == 0
    assert report.rows_from_fallback == HIDDEN_ROWS - llm.rows_predicted and report.rows_uniform == 0
    checked = check_against_sample(tmp_path / "submission.csv", sample)
    assert len(checked) == HIDDEN_ROWS and set(checked["winner"]) == {"model_a", "model_b"}


def test_a_run_out_of_time_while_tokenizing_stops_there(runs, data, clock, tmp_path, monkeypatch):
    """Tokenizing reads the clock between slices of rows: a run whose time is up stops tokenizing, skips the
    pilot and predicts nothing; the baseline fills every row."""
    from wsdm_helpers import inference, tokenization

    encode, slices = tokenization.encode_pairs, []

    def timed_encode(frame, *args, **kwargs):
        slices.append(len(frame))
        clock.advance(0.01 * len(frame))  # simulated: 10 ms per row
        return encode(frame, *args, **kwargs)

    monkeypatch.setattr(tokenization, "encode_pairs", timed_encode)
    monkeypatch.setattr(inference, "ENCODE_ROWS", 10)
    monkeypatch.setattr(inference.Worker, "_forward", lambda *a, **k: pytest.fail("no time was left for a batch"))
    result = submit([runs["two0"], runs["baseline"]], data["wsdm_test"], tmp_path / "submission.csv", weights=[1, 0],
                    overrides=CPU, settings={"finish_seconds": 0.0, "on_failure": "fill"},
                    deadline=_deadline(clock, LOAD + 0.25))
    llm = result.report.runs[0]
    assert slices == [10, 10] and clock.now() == pytest.approx(LOAD + 0.2)  # a third would end at LOAD + 0.3
    assert llm.status == "stopped" and llm.rows_predicted == 0 and result.report.rows_from_fallback == N_TEST
    assert len(_submission(tmp_path / "submission.csv")) == N_TEST


def test_nan_rows_of_one_run_are_filled_from_the_other_and_reported(runs, data, monkeypatch, tmp_path):
    from wsdm_helpers.inference import Worker

    pair = [runs["two0"], runs["two1"]]
    clean = submit(pair, data["wsdm_test"], tmp_path / "clean.csv", overrides=CPU).predictions
    alone = submit([runs["two1"]], data["wsdm_test"], tmp_path / "alone.csv", overrides=CPU).predictions
    forward, calls = Worker._forward, []

    def nan_first_batch(self, rows):  # the first batch of the first run comes back as NaN
        probs = forward(self, rows)
        calls.append(len(rows))
        if len(calls) == 1:
            probs[:] = np.nan
        return probs

    monkeypatch.setattr(Worker, "_forward", nan_first_batch)
    result = submit(pair, data["wsdm_test"], tmp_path / "submission.csv", overrides=CPU)
    first = result.report.runs[0]
    assert first.nan_rows == calls[0] == first.rows_filled and first.rows_predicted == N_TEST
    changed = ~np.isclose(result.predictions["winner_model_a"], clean["winner_model_a"])
    assert changed.sum() == calls[0]
    np.testing.assert_allclose(result.predictions["winner_model_a"][changed], alone["winner_model_a"][changed])
    assert result.report.rows_uniform == 0


def test_wsdm_predict_blends_in_log_odds_space_as_the_ensemble_function_does(runs, data, tmp_path):
    from wsdm_helpers.cli import main
    from wsdm_helpers.ensemble import blend

    members = [runs["baseline"], runs["two0"]]
    alone = [submit([m], data["wsdm_test"], tmp_path / f"alone{i}.csv", overrides=CPU).predictions
             for i, m in enumerate(members)]
    assert main(["predict", "--run", str(members[0]), "--run", str(members[1]), "--weights", "0.5", "2",
                 "--blend-space", "log_odds", "--test", str(data["wsdm_test"]), "--out", str(tmp_path / "s.csv"),
                 "--probs-out", str(tmp_path / "p.parquet"), "--set", "inference.devices=[cpu]",
                 "--set", "inference.tta=none"]) == 0
    expected = blend(alone, [0.5, 2], space="log_odds")
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "p.parquet"), expected, atol=1e-6, check_dtype=False)
    assert not np.allclose(expected["winner_model_a"], blend(alone, [0.5, 2])["winner_model_a"])


def test_a_failing_run_is_reported_and_its_rows_filled(runs, data, monkeypatch, tmp_path):
    from wsdm_helpers.inference import Worker

    alone = submit([runs["two1"]], data["wsdm_test"], tmp_path / "alone.csv", overrides=CPU).predictions
    forward, first = Worker._forward, []

    def first_run_breaks(self, rows):  # the first run's model fails on every batch
        if not first:
            first.append(self.scorer)
        if self.scorer is first[0]:
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return forward(self, rows)

    monkeypatch.setattr(Worker, "_forward", first_run_breaks)
    result = submit([runs["two0"], runs["two1"]], data["wsdm_test"], tmp_path / "submission.csv", overrides=CPU,
                    settings={"on_failure": "fill"})
    broken, fine = result.report.runs
    assert broken.status == "failed" and "illegal memory access" in broken.note and broken.rows_filled == N_TEST
    assert fine.status == "done" and fine.rows_filled == 0
    np.testing.assert_allclose(result.predictions["winner_model_a"], alone["winner_model_a"])
    assert "failed" in json.loads((tmp_path / REPORT_FILE).read_text())["runs"][0]["status"]


def test_resume_reuses_chunks_only_for_the_same_submission(runs, data, tmp_path):
    settings = {"resume": True, "work_dir": str(tmp_path / "chunks"), "time_budget_minutes": 600}
    first = submit([runs["two0"]], data["wsdm_test"], tmp_path / "a.csv", overrides=CPU, settings=settings)
    assert first.report.runs[0].chunks_resumed == 0
    again = submit([runs["two0"]], data["wsdm_test"], tmp_path / "b.csv", overrides=CPU, settings=settings)
    assert again.report.runs[0].chunks_resumed == 1
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    other = submit([runs["two0"]], data["wsdm_test"], tmp_path / "c.csv", overrides=CPU,
                   settings={**settings, "time_budget_minutes": 300})  # another deadline: nothing reused
    assert other.report.runs[0].chunks_resumed == 0
    off = submit([runs["two0"]], data["wsdm_test"], tmp_path / "d.csv", overrides=CPU)  # off outside Kaggle
    assert off.report.runs[0].chunks_resumed == 0 and not (tmp_path / ".wsdm-chunks").exists()


def test_layout_follows_the_test_file_not_the_class_count(runs, data, tmp_path):
    three = submit([runs["three"]], data["wsdm_test"], tmp_path / "wsdm.csv", overrides=CPU)
    sub = _submission(tmp_path / "wsdm.csv")
    assert sub.columns.tolist() == ["id", "winner"]  # a 3-class model on the WSDM test
    np.testing.assert_allclose(three.predictions[["winner_model_a", "winner_model_b"]].sum(axis=1), 1)
    assert "winner_tie" not in three.predictions.columns
    two = submit([runs["two0"]], data["lmsys_test"], tmp_path / "lmsys.csv", overrides=CPU)
    sub = _submission(tmp_path / "lmsys.csv")
    assert sub.columns.tolist() == ["id", "winner_model_a", "winner_model_b", "winner_tie"]  # 2-class on LMSYS
    np.testing.assert_allclose(sub["winner_tie"], 0.3)
    np.testing.assert_allclose(sub.iloc[:, 1:].sum(axis=1), 1)
    assert two.report.task == "lmsys"


def test_a_canonical_test_file_needs_an_explicit_task(runs, data, tmp_path):
    from wsdm_helpers.data import write_canonical
    from wsdm_helpers.demo_data import make_demo_frame

    test = write_canonical(make_demo_frame(8, seed=1), tmp_path / "test.parquet")
    with pytest.raises(SubmissionError, match="task='wsdm'"):
        submit([runs["baseline"]], test, tmp_path / "submission.csv")
    submit([runs["baseline"]], test, tmp_path / "submission.csv", settings={"task": "lmsys"})
    assert _submission(tmp_path / "submission.csv").shape == (8, 4)


def test_overrides_are_typed_and_checked_before_any_run(runs, data, tmp_path):
    with pytest.raises(ConfigError, match="inference.tta"):
        submit([runs["two0"]], data["wsdm_test"], tmp_path / "s.csv", overrides={"tta": "sideways"})
    with pytest.raises(ConfigError, match="time_budget_minutes"):
        submit([runs["two0"]], data["wsdm_test"], tmp_path / "s.csv", overrides={"time_budget_minutes": 5})
    with pytest.raises(ConfigError, match="inference.max_batch_size"):
        submit([runs["two0"]], data["wsdm_test"], tmp_path / "s.csv", overrides={"max_batch_size": "8"})
    with pytest.raises(SubmissionError, match="one weight"):
        submit([runs["two0"]], data["wsdm_test"], tmp_path / "s.csv", weights=[1, 2])
    assert not (tmp_path / "s.csv").exists()


def test_baseline_run_folder_round_trip_and_wsdm_submit(runs, data, tmp_path):
    from wsdm_helpers.cli import main
    from wsdm_helpers.features import FeatureBaseline, load_baseline

    train, _ = read_pairs(data["train"])
    test, _ = read_pairs(data["wsdm_test"])
    fitted = FeatureBaseline().fit(train).predict(test)
    loaded = load_baseline(runs["baseline"]).predict(test)
    pd.testing.assert_frame_equal(fitted, loaded)
    probs = tmp_path / "probs.parquet"
    loaded.to_parquet(probs)
    assert main(["submit", str(probs), "--test", str(data["lmsys_test"]), "--out", str(tmp_path / "s.csv")]) == 0
    assert _submission(tmp_path / "s.csv").columns.tolist()[-1] == "winner_tie"
    assert main(["submit", str(probs), "--test", str(data["wsdm_test"]), "--out", str(tmp_path / "s.csv")]) == 0
    assert _submission(tmp_path / "s.csv").columns.tolist() == ["id", "winner"]
    assert main(["baseline", "--train", str(data["train"]), "--run-dir", str(tmp_path / "b"), "--model", "hgb"]) == 2


def test_notebook_and_wsdm_predict_write_byte_identical_submissions(runs, data, tmp_path):
    from wsdm_helpers.cli import main
    from wsdm_helpers.notebook_runner import run_notebook

    members = [str(runs["two0"]), str(runs["three"]), str(runs["baseline"])]
    cli_out = tmp_path / "cli" / "submission.csv"
    assert main(["predict", "--run", members[0], "--run", members[1], "--rows", "uncertain:0.5", "--run", members[2],
                 "--weights", "1", "2", "1", "--test", str(data["wsdm_test"]), "--out", str(cli_out),
                 "--set", "inference.devices=[cpu]", "--time-budget-minutes", "600"]) == 0
    nb = run_notebook("inference", {"run_dirs": members, "weights": [1, 2, 1], "devices": ["cpu"],
                                    "rows": ["all", "uncertain:0.5", "all"],
                                    "test_path": str(data["wsdm_test"]), "time_budget_minutes": 600,
                                    "labels_path": str(data["labels"])}, out_root=tmp_path / "nb", log_output=False)
    assert (nb.out_dir / "submission.csv").read_bytes() == cli_out.read_bytes()
    import nbformat

    printed = "".join(o.get("text", "") for cell in nbformat.read(str(nb.notebook), as_version=4).cells
                      for o in cell.get("outputs", []))
    assert "submission deadline: 600 min budget less 5 min safety" in printed  # printed before any work
    cascade = json.loads((nb.out_dir / REPORT_FILE).read_text())["runs"][1]
    assert cascade["status"] == "done" and (cascade["planned_share"], cascade["actual_share"]) == (0.5, 0.5)
    assert (nb.out_dir / "scores.json").is_file()


# ---- cascade members (--rows uncertain:SHARE) ----------------------------------------------------------
def _most_uncertain(preds, k):
    """The k ids with the smallest |P(a) - P(b)|, ties by id (worked out here, not with the package's order)."""
    margin = (preds["winner_model_a"] - preds["winner_model_b"]).abs().round(9)
    return preds.assign(margin=margin, id=preds["id"].astype(str)).sort_values(["margin", "id"])["id"].head(k).tolist()


@pytest.fixture
def scored(monkeypatch):
    """The ids and predictions of every LLM run the pipeline starts, in the order it was given them."""
    from wsdm_helpers import inference

    calls, real = [], inference.run_prediction

    def spy(source, frame, *args, **kwargs):
        result = real(source, frame, *args, **kwargs)
        calls.append((frame["id"].astype(str).tolist(), result.predictions, kwargs.get("ranked")))
        return result

    monkeypatch.setattr(inference, "run_prediction", spy)
    return calls


def test_a_cascade_member_scores_exactly_the_chosen_ids_and_votes_only_there(runs, data, scored, tmp_path):
    from wsdm_helpers.features import load_baseline

    test = read_pairs(data["wsdm_test"])[0]
    base = load_baseline(runs["baseline"]).predict(test).astype({"id": str})
    alone = submit([runs["two0"]], data["wsdm_test"], tmp_path / "alone.csv", overrides=CPU).predictions
    result = submit([runs["baseline"], runs["two0"]], data["wsdm_test"], tmp_path / "submission.csv", weights=[1, 2],
                    overrides=CPU, rows=[None, "uncertain:0.35"])
    chosen = _most_uncertain(base, round(0.35 * N_TEST))
    ids, _, ranked = scored[-1]
    assert ids == chosen and ranked  # exactly those rows, most uncertain first
    on = result.predictions["id"].isin(chosen).to_numpy()
    b, a, got = (f.set_index("id").loc[result.predictions["id"], "winner_model_a"].to_numpy()
                 for f in (base, alone.astype({"id": str}), result.predictions))
    np.testing.assert_allclose(got[on], (b[on] + 2 * a[on]) / 3, atol=1e-6)  # its weight on its rows
    np.testing.assert_allclose(got[~on], b[~on], atol=1e-6)  # the baseline alone elsewhere
    llm = result.report.runs[1]
    assert (llm.planned_share, llm.planned_rows, llm.actual_share, llm.rows_filled) == (0.35, 14, 14 / N_TEST, 0)
    saved = json.loads((tmp_path / REPORT_FILE).read_text())["runs"][1]
    assert (saved["planned_share"], saved["actual_share"]) == (0.35, 14 / N_TEST)
    assert "35.0/35.0" in result.report.to_text() and result.report.rows_uniform == 0


def test_a_binding_deadline_shrinks_the_cascade_share_from_the_certain_end(runs, data, clock, scored, tmp_path):
    from wsdm_helpers.features import load_baseline

    members = [runs["baseline"], runs["two0"]]
    free = submit(members, data["wsdm_test"], tmp_path / "free.csv", overrides=CPU, rows=[None, "uncertain:1"],
                  deadline=_deadline(clock, 1e6))
    need = free.report.runs[1].actual_seconds
    assert free.report.runs[1].actual_share == 1.0
    finish = 1.0
    deadline = _deadline(clock, LOAD + 0.6 * (need - LOAD) + finish)
    result = submit(members, data["wsdm_test"], tmp_path / "submission.csv", overrides=CPU,
                    rows=[None, "uncertain:1"], settings={"finish_seconds": finish}, deadline=deadline)
    assert clock.now() <= deadline.end
    llm = result.report.runs[1]
    kept = llm.rows_predicted
    assert 0 < kept < N_TEST and llm.actual_share == kept / N_TEST and llm.planned_share == 1.0
    assert llm.rows_filled == N_TEST - kept and "shrank" in llm.note
    base = load_baseline(runs["baseline"]).predict(read_pairs(data["wsdm_test"])[0]).astype({"id": str})
    order = _most_uncertain(base, N_TEST)
    ids, preds, _ = scored[-1]
    assert ids == order  # given every row, most uncertain first
    delivered = preds.loc[np.isfinite(preds["winner_model_a"]), "id"].astype(str).tolist()
    assert sorted(delivered) == sorted(order[:kept])  # it kept the most uncertain ones, the certain end went


def test_wsdm_predict_rows_follow_their_run_and_bad_policies_are_refused(runs, data, tmp_path, capsys):
    from wsdm_helpers.cli import main

    common = ["--test", str(data["wsdm_test"]), "--set", "inference.devices=[cpu]", "--set", "inference.tta=none"]
    assert main(["predict", "--run", str(runs["baseline"]), "--run", str(runs["two0"]), "--rows", "uncertain:0.5",
                 "--out", str(tmp_path / "cli.csv"), *common]) == 0
    expected = submit([runs["baseline"], runs["two0"]], data["wsdm_test"], tmp_path / "api.csv", overrides=CPU,
                      rows=[None, "uncertain:0.5"])
    assert (tmp_path / "cli.csv").read_bytes() == (tmp_path / "api.csv").read_bytes()
    assert expected.report.runs[1].planned_rows == N_TEST // 2
    bad = {("--rows", "uncertain:0.5", "--run", str(runs["two0"])): "must follow the --run",
           ("--run", str(runs["two0"]), "--rows", "uncertain:0.5"): "no run with a weight > 0 comes before it",
           ("--run", str(runs["two0"]), "--run", str(runs["baseline"]), "--rows", "uncertain:0.2"): "feature baseline",
           ("--run", str(runs["baseline"]), "--run", str(runs["two0"]), "--rows", "uncertain:1.5"): "uncertain:SHARE",
           ("--run", str(runs["baseline"]), "--run", str(runs["two0"]), "--rows", "half"): "uncertain:SHARE"}
    for args, message in bad.items():
        try:
            rc = main(["predict", *args, "--out", str(tmp_path / "bad.csv"), *common])
        except SystemExit as exc:  # argparse's usage error
            rc = exc.code
        assert rc == 2 and message in capsys.readouterr().err, args
    assert not (tmp_path / "bad.csv").exists()


# ---- the failure policy: a commit run that would score ~0.5 stops; the hidden rerun never does ----------
def _adapter_run(root, runs, base_source):
    """A LoRA run folder (adapter/, tokenizer/, config.yaml) whose config names ``base_source`` as its base."""
    import shutil

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForSequenceClassification

    run = root / "gemma-lora"
    model = AutoModelForSequenceClassification.from_pretrained(str(runs["two0"] / "model"))
    get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj"], task_type="SEQ_CLS")).save_pretrained(
        str(run / "adapter"))
    shutil.copytree(runs["two0"] / "tokenizer", run / "tokenizer")
    save_yaml(RunConfig(model=ModelConfig(source=base_source), format=FormatConfig(max_length=128),
                        inference=InferenceConfig(devices=["cpu"], tta="none", progress_bar=False)),
              run / "config.yaml")
    return run


def test_base_model_not_attached_stops_the_commit_run_and_not_the_competition_rerun(runs, data, tmp_path,
                                                                                    monkeypatch, capsys):
    from wsdm_helpers.cli import main

    missing = "/kaggle/input/gemma-2-9b-it-base/transformers/default/1"
    run = _adapter_run(tmp_path, runs, missing)
    members = [run, runs["baseline"]]
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")  # a Kaggle commit run
    monkeypatch.delenv("KAGGLE_IS_COMPETITION_RERUN", raising=False)
    monkeypatch.setenv("WSDM_INPUT_DIR", str(tmp_path / "input"))
    commit = tmp_path / "commit" / "submission.csv"
    with pytest.raises(SubmissionError, match="not Kaggle's competition rerun") as caught:
        submit(members, data["wsdm_test"], commit, weights=[1, 0], overrides=CPU)
    message = str(caught.value)
    assert f"run 0-gemma-lora ({run}) failed" in message and missing in message
    assert "40 of 40 rows (100%) came from the fallback baseline" in message
    assert _submission(commit).shape == (N_TEST, 2)  # the fallback submission is written first
    args = ["predict", "--run", str(run), "--run", str(runs["baseline"]), "--weights", "1", "0",
            "--test", str(data["wsdm_test"]), "--out", str(tmp_path / "cli" / "submission.csv"),
            "--set", "inference.devices=[cpu]"]
    assert main(args) == 2
    assert "run 0-gemma-lora" in capsys.readouterr().err
    assert main([*args, "--on-failure", "fill"]) == 0

    monkeypatch.setenv("KAGGLE_IS_COMPETITION_RERUN", "True")  # the hidden rerun: never zero, no error
    rerun = submit(members, data["wsdm_test"], tmp_path / "rerun" / "submission.csv", weights=[1, 0], overrides=CPU)
    assert rerun.report.runs[0].status == "failed" and rerun.report.rows_from_fallback == N_TEST
    assert _submission(tmp_path / "rerun" / "submission.csv").shape == (N_TEST, 2)
    with pytest.raises(SubmissionError, match="on_failure=raise"):
        submit(members, data["wsdm_test"], tmp_path / "forced" / "submission.csv", weights=[1, 0], overrides=CPU,
               settings={"on_failure": "raise"})


def test_a_share_of_fallback_rows_within_max_fallback_share_passes(runs, data, clock, tmp_path):
    settings = {"finish_seconds": 0.0, "max_fallback_share": 1.0}
    result = submit([runs["two0"], runs["baseline"]], data["wsdm_test"], tmp_path / "submission.csv",
                    weights=[1, 0], overrides=CPU, settings=settings, deadline=_deadline(clock, LOAD + 0.05))
    assert result.report.rows_from_fallback > 0
    with pytest.raises(ConfigError, match="max_fallback_share=1.5"):
        submit([runs["baseline"]], data["wsdm_test"], tmp_path / "s.csv", settings={"max_fallback_share": 1.5})


# ---- the Kaggle clock: the competition's run-time limit when no budget is given -------------------------
@pytest.mark.parametrize(("slug", "minutes"), [("wsdm-cup-multilingual-chatbot-arena", 720.0),
                                               ("lmsys-chatbot-arena", 540.0)])
def test_on_kaggle_the_time_budget_defaults_to_the_competitions_limit(slug, minutes, tmp_path, monkeypatch, capsys):
    from wsdm_helpers.pipeline import pipeline_config, submission_deadline

    (tmp_path / "input" / slug).mkdir(parents=True)
    monkeypatch.setenv("WSDM_INPUT_DIR", str(tmp_path / "input"))
    monkeypatch.delenv("KAGGLE_KERNEL_RUN_TYPE", raising=False)
    assert pipeline_config().time_budget_minutes is None  # not on Kaggle: no limit
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Interactive")
    assert pipeline_config().time_budget_minutes == minutes
    assert pipeline_config({"time_budget_minutes": 60}).time_budget_minutes == 60  # a given budget stands
    deadline = submission_deadline(None, 5.0, started=90.0)
    assert deadline.limited and deadline.end - deadline.started == (minutes - 5.0) * 60
    assert f"submission deadline: {minutes:g} min budget less 5 min safety" in capsys.readouterr().out
