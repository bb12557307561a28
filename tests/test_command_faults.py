"""Command faults of the second probe (issue 27): outputs that are inputs, folders or the wrong format;
NaN settings; single-class training files; run folders of the wrong kind; permissions; Ctrl-C."""
from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
import pytest

from wsdm_helpers.cli import main
from wsdm_helpers.config import InferenceConfig, ModelConfig, RunConfig, save_yaml
from wsdm_helpers.data import read_pairs
from wsdm_helpers.demo_data import write_demo_dataset


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, Path]:
    """Demo data (a WSDM test also as csv), a feature-baseline run, its predictions, a tiny LLM run."""
    from wsdm_helpers.tiny import build_tiny_model, pair_texts, train_tokenizer

    root = tmp_path_factory.mktemp("faults")
    train, test, _, labels = write_demo_dataset(root / "demo", n_train=160, n_test=24, seed=3)
    pd.read_parquet(test).to_csv(root / "test.csv", index=False)
    assert main(["baseline", "--train", str(train), "--run-dir", str(root / "bl"), "--test", str(test),
                 "--out", str(root / "preds.parquet")]) == 0
    pd.read_parquet(root / "preds.parquet").to_csv(root / "preds.csv", index=False)
    llm = root / "llm"
    tokenizer = train_tokenizer(pair_texts(read_pairs(train)[0]), vocab_size=400)
    build_tiny_model("llama", tokenizer, llm / "model")
    tokenizer.save_pretrained(str(llm / "tokenizer"))
    save_yaml(RunConfig(model=ModelConfig(source=str(llm / "model")),
                        inference=InferenceConfig(devices=["cpu"], tta="none", progress_bar=False)), llm / "config.yaml")
    return {"root": root, "train": train, "test": test, "test_csv": root / "test.csv", "labels": labels,
            "bl": root / "bl", "preds": root / "preds.parquet", "preds_csv": root / "preds.csv", "llm": llm}


# ---- row 3: no command writes over one of its own inputs --------------------------------------------
OWN_INPUT = {
    "predict --out = --test": (["predict", "--run", "@bl", "--test", "@test_csv", "--out", "@test_csv"], "test_csv"),
    "predict --probs-out = --test": (["predict", "--run", "@bl", "--test", "@test", "--out", "@root/s.csv",
                                      "--probs-out", "@test"], "test"),
    "submit --out = the probabilities": (["submit", "@preds_csv", "--test", "@test", "--out", "@preds_csv"],
                                         "preds_csv"),
    "submit --out = --test": (["submit", "@preds", "--test", "@test_csv", "--out", "@test_csv"], "test_csv"),
    "ensemble --out = an input": (["ensemble", "@preds", "@preds_csv", "--out", "@preds"], "preds"),
    "pseudo-label --out = --data": (["pseudo-label", "--run", "@llm", "--data", "@train", "--out", "@train"],
                                    "train"),
    "baseline --out = --train": (["baseline", "--train", "@train", "--test", "@test", "--out", "@train"], "train"),
}


def _expand(files: dict[str, Path], template: list[str]) -> list[str]:
    """``@key`` -> files[key] and ``@key/name`` -> files[key] / name (inside a ``KEY=`` too); other words as they are."""
    out = []
    for word in template:
        head, at, ref = word.partition("@")
        if at:
            key, _, name = ref.partition("/")
            word = head + str(files[key] / name if name else files[key])
        out.append(word)
    return out


@pytest.mark.parametrize("case", list(OWN_INPUT))
def test_no_command_writes_over_its_own_input(files, case, capsys):
    template, kept = OWN_INPUT[case]
    before = files[kept].read_bytes()
    assert main(_expand(files, template)) == 2
    err = capsys.readouterr().err
    assert "would replace that file" in err and str(files[kept]) in err, err
    assert files[kept].read_bytes() == before


def test_a_hard_link_to_the_test_file_is_the_test_file(files, capsys):
    link = files["root"] / "linked.csv"
    if not link.exists():
        os.link(files["test_csv"], link)
    before = files["test_csv"].read_bytes()
    assert main(["predict", "--run", str(files["bl"]), "--test", str(files["test_csv"]), "--out", str(link)]) == 2
    assert "would replace that file" in capsys.readouterr().err
    assert files["test_csv"].read_bytes() == before


def test_probs_out_and_out_are_one_file(files, capsys):
    out = files["root"] / "both.csv"
    assert main(["predict", "--run", str(files["bl"]), "--test", str(files["test"]), "--out", str(out),
                 "--probs-out", str(out)]) == 2
    assert "--probs-out" in capsys.readouterr().err and not out.exists()


# ---- row 18: an output's extension names the format written -------------------------------------------
WRONG_SUFFIX = {
    "predict --out x.parquet": ["predict", "--run", "@bl", "--test", "@test", "--out", "@root/x.parquet"],
    "predict --probs-out x.json": ["predict", "--run", "@bl", "--test", "@test", "--out", "@root/s.csv",
                                   "--probs-out", "@root/x.json"],
    "submit --out x.json": ["submit", "@preds", "--test", "@test", "--out", "@root/x.json"],
    "submit --out x.csv.gz": ["submit", "@preds", "--test", "@test", "--out", "@root/x.csv.gz"],
    "ensemble --out x.json": ["ensemble", "@preds", "@preds_csv", "--out", "@root/x.json"],
    "baseline --out x.txt": ["baseline", "--train", "@train", "--test", "@test", "--out", "@root/x.txt"],
    "pseudo-label --out x.json": ["pseudo-label", "--run", "@llm", "--data", "@test", "--out", "@root/x.json"],
}


@pytest.mark.parametrize("case", list(WRONG_SUFFIX))
def test_an_output_named_for_another_format_is_refused(files, case, capsys):
    argv = _expand(files, WRONG_SUFFIX[case])
    wrong = Path(argv[-1])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"{wrong}" in err and "Fix: name the output" in err, err
    assert not wrong.exists()


def test_ensemble_fit_weights_are_json(files, tmp_path, capsys):
    assert main(["ensemble", "fit", str(files["preds"]), str(files["preds"]), "--out", str(tmp_path / "w.csv")]) == 2
    assert "Fix: name the output" in capsys.readouterr().err and not (tmp_path / "w.csv").exists()


# ---- row 11: --out an existing folder, refused before any work -----------------------------------
@pytest.mark.parametrize("command", [
    ["predict", "--run", "@root/no-such-run", "--test", "@test", "--out", "@root/a-folder"],
    ["predict", "--run", "@root/no-such-run", "--test", "@test", "--out", "@root/s.csv", "--probs-out", "@root/a-folder"],
    ["submit", "@preds", "--test", "@test", "--out", "@root/a-folder"],
    ["ensemble", "@preds", "@preds_csv", "--out", "@root/a-folder"],
    ["pseudo-label", "--run", "@root/no-such-run", "--data", "@test", "--out", "@root/a-folder"],
], ids=["predict", "probs-out", "submit", "ensemble", "pseudo-label"])
def test_an_output_that_is_a_folder_is_refused_up_front(files, command, capsys):
    (files["root"] / "a-folder").mkdir(exist_ok=True)
    assert main(_expand(files, command)) == 2
    err = capsys.readouterr().err
    assert "a-folder is a folder" in err and "not a run folder" not in err, err  # before any run is opened
    assert list((files["root"] / "a-folder").iterdir()) == []


# ---- row 16: wsdm evaluate --out an existing file ---------------------------------------------------
def test_evaluate_out_an_existing_file_is_refused(files, tmp_path, capsys):
    out = tmp_path / "report.md"
    out.write_text("mine")
    assert main(["evaluate", "--predictions", str(files["preds"]), "--data", str(files["test"]),
                 "--labels", str(files["labels"]), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{out} is a file" in err and "Fix:" in err, err
    assert out.read_text() == "mine"


# ---- row 17: pseudo-label with a feature-baseline run --------------------------------------------
def test_pseudo_label_takes_a_baseline_run(files, tmp_path):
    from wsdm_helpers.features import load_baseline
    from wsdm_helpers.submission import read_predictions

    out = tmp_path / "soft.parquet"
    assert main(["pseudo-label", "--run", str(files["bl"]), "--data", str(files["train"]), "--out", str(out)]) == 0
    expected = load_baseline(files["bl"]).predict(read_pairs(files["train"])[0])
    pd.testing.assert_frame_equal(read_predictions(out), expected, check_dtype=False)
    blended = tmp_path / "blend.parquet"
    assert main(["pseudo-label", "--run", str(files["bl"]), "--run", str(files["llm"]), "--data", str(files["train"]),
                 "--out", str(blended)]) == 0
    assert len(read_predictions(blended)) == len(expected)


def test_pseudo_label_names_a_folder_that_is_no_run(files, tmp_path, capsys):
    assert main(["pseudo-label", "--run", str(tmp_path), "--data", str(files["train"]),
                 "--out", str(tmp_path / "soft.parquet")]) == 2
    assert f"not a run folder: {tmp_path}" in capsys.readouterr().err


# ---- rows 10, 14, 15: NaN and infinity in float settings ------------------------------------------
@pytest.mark.parametrize("setting", ["train.learning_rate=nan", "train.max_hours=.nan", "train.warmup_ratio=.inf",
                                     "inference.tta_band=-.inf", "format.shares=[0.2, .nan, 0.4]",
                                     "inference.time_budget_minutes=nan"])
def test_every_float_setting_refuses_nan_and_infinity(setting, capsys):
    key = setting.partition("=")[0]
    assert main(["config", "show", "configs/tiny-test.yaml", "--set", setting]) == 2
    err = capsys.readouterr().err
    assert f"'{key}" in err and "must be a finite number" in err, err


def test_train_refuses_a_nan_learning_rate_before_loading(tmp_path, capsys):
    assert main(["train", "--config", "tiny-test", "--set", "train.learning_rate=nan",
                 "--set", f"train.output_dir={tmp_path / 'run'}"]) == 2
    assert "'train.learning_rate' must be a finite number, got nan" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("flags", [["--time-budget-minutes", "10", "--safety-minutes", "nan"],
                                   ["--time-budget-minutes", "nan"], ["--time-budget-minutes", "inf"]])
def test_predict_time_limits_refuse_nan(files, flags, tmp_path, capsys):
    out = tmp_path / "s.csv"
    assert main(["predict", "--run", str(files["bl"]), "--test", str(files["test"]), "--out", str(out), *flags]) == 2
    assert "must be a finite number" in capsys.readouterr().err and not out.exists()


@pytest.mark.parametrize("command", [["predict", "--run", "@bl", "--run", "@bl", "--test", "@test", "--out",
                                      "@root/w.csv", "--weights", "1e308", "1e308"],
                                     ["ensemble", "@preds", "@preds_csv", "--out", "@root/w.parquet", "--weights",
                                      "1e308", "1e308"]], ids=["predict", "ensemble"])
def test_weights_whose_sum_overflows_are_refused_with_that_cause(files, command, capsys):
    argv = _expand(files, command)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "overflows" in err and "NaN probabilities" not in err, err
    assert not Path(argv[argv.index("--out") + 1]).exists()


# ---- row 12: a training file of ties only ------------------------------------------------------------
@pytest.fixture(scope="module")
def all_ties(files) -> Path:
    path = files["root"] / "alltie.parquet"
    pd.read_parquet(files["train"]).assign(winner="tie").to_parquet(path)
    return path


@pytest.mark.parametrize("command", [
    ["train", "--config", "tiny-test", "--set", "data.train_path=@alltie", "--set", "model.source=@llm/model",
     "--set", "train.output_dir=@root/tie-run"],
    ["cv", "--config", "tiny-test", "--data", "@alltie", "--set", "model.source=@llm/model", "--out", "@root/tie-cv"],
    ["baseline", "--train", "@alltie", "--ties", "drop", "--run-dir", "@root/tie-bl"],
    ["cv", "--baseline", "logreg", "--data", "@alltie", "--out", "@root/tie-bcv"],
], ids=["train", "cv", "baseline", "cv-baseline"])
def test_a_file_of_ties_only_with_ties_drop_names_the_file(files, all_ties, command, capsys):
    assert main(_expand({**files, "alltie": all_ties}, command)) == 2
    err = capsys.readouterr().err
    assert f"{all_ties}: no training rows are left: all 160 rows are ties and ties=drop drops them" in err, err
    assert "Fix: train on a file with winners" in err


def test_a_file_of_one_class_names_the_file(files, all_ties, capsys):
    assert main(["baseline", "--train", str(all_ties), "--ties", "keep", "--run-dir", str(files["root"] / "t")]) == 2
    err = capsys.readouterr().err
    assert f"{all_ties}: all 160 training rows are labelled tie" in err, err
    assert not (files["root"] / "t").exists()


# ---- row 19: permissions of runs and bundles, Ctrl-C ---------------------------------------------------
def _modes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): oct(p.stat().st_mode & 0o777) for p in sorted(folder.rglob("*"))
            if "checkpoints" not in p.parts}


@pytest.mark.slow  # a one-step LoRA training (about a minute of CPU)
def test_run_and_bundle_files_follow_the_umask(files, tmp_path):
    """safetensors writes its files 0600 (a private temporary renamed into place); every file of a run
    folder and of its bundle gets the umask's mode like the others."""
    from wsdm_helpers.config import load_run_config, resolve_preset
    from wsdm_helpers.kaggle.adapter import bundle_adapter
    from wsdm_helpers.training import train

    cfg = load_run_config(resolve_preset("tiny-test"), {
        "data.train_path": str(files["train"]), "model.source": str(files["llm"] / "model"),
        "train.output_dir": str(tmp_path / "run"), "train.max_steps": 1, "train.eval_steps": 1,
        "train.save_steps": 1, "data.max_rows": 40})
    old = os.umask(0o027)
    try:
        run = train(cfg).run_dir
        bundle_adapter(run, tmp_path / "bundle", base_model="/kaggle/input/base", username="someone")
    finally:
        os.umask(old)
    for folder in (run, tmp_path / "bundle"):
        modes = _modes(folder)
        assert "adapter/adapter_model.safetensors" in modes
        expected = {name: oct(0o750 if (folder / name).is_dir() else 0o640) for name in modes}
        assert modes == expected


@pytest.mark.slow  # two `wsdm predict` processes (about a minute of CPU)
def test_ctrl_c_is_one_line_that_says_how_to_resume(files, tmp_path):
    """A real `wsdm predict --resume` process and a real SIGINT: rc 130, one line, no traceback; the same
    command again resumes from the chunks it finished."""
    import signal
    import subprocess
    import sys
    import time

    from wsdm_helpers.demo_data import make_demo_frame

    frame = make_demo_frame(240, seed=6)
    pd.DataFrame({"id": frame["id"], **{c: [t[0] for t in frame[c]] for c in ("prompt", "response_a", "response_b")}}
                 ).to_parquet(tmp_path / "test.parquet")
    work = tmp_path / "work"
    cmd = [sys.executable, "-m", "wsdm_helpers", "predict", "--run", str(files["llm"]), "--test",
           str(tmp_path / "test.parquet"), "--out", str(tmp_path / "sub.csv"), "--resume", "--work-dir", str(work),
           "--set", "inference.chunk_rows=12", "--set", "inference.tta=swap"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    # Ctrl-C reaches a foreground process with SIGINT at its default; a test run started in the background
    # (`make test &`) hands its children SIGINT ignored, and Python then installs no KeyboardInterrupt.
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 300
    while not (work.is_dir() and any(work.rglob("ab-*.parquet"))):  # an event from the child, not a fixed sleep
        assert proc.poll() is None and time.monotonic() < deadline, "predict ended before it could be interrupted"
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    err = proc.stderr.read()
    assert proc.wait(timeout=120) == 130
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
    said = [line for line in err.splitlines() if "interrupted" in line]
    assert len(said) == 1 and said[0].startswith("wsdm predict: interrupted"), err
    assert "rerunning the same command" in said[0]
    assert not (tmp_path / "sub.csv").exists()
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr
    assert "resumed" in again.stderr


# ---- row 9: a feature baseline written into an LLM run folder -------------------------------------------
def test_baseline_refuses_an_llm_run_folder(files, capsys):
    from wsdm_helpers.features import BASELINE_FILE

    assert main(["baseline", "--train", str(files["train"]), "--run-dir", str(files["llm"])]) == 2
    err = capsys.readouterr().err
    assert f"--run-dir {files['llm']} is an LLM run folder" in err and "Fix:" in err, err
    assert not (files["llm"] / BASELINE_FILE).exists()


def test_predict_refuses_a_folder_that_is_both_kinds(files, tmp_path, capsys):
    import shutil

    from wsdm_helpers.features import BASELINE_FILE

    both = tmp_path / "both"
    shutil.copytree(files["llm"], both)
    shutil.copy(files["bl"] / BASELINE_FILE, both / BASELINE_FILE)
    assert main(["predict", "--run", str(both), "--test", str(files["test"]), "--out", str(tmp_path / "s.csv")]) == 2
    err = capsys.readouterr().err
    assert f"{both} holds both a feature baseline" in err and "Fix:" in err, err
    assert not (tmp_path / "s.csv").exists()
