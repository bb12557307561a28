"""Security: safetensors-only loading (pickles refused unless trusted), no remote code, no socket use."""
from __future__ import annotations

import json
import os
import pickle
import socket
from pathlib import Path

import pandas as pd
import pytest

torch = pytest.importorskip("torch")

from wsdm_helpers.config import load_run_config  # noqa: E402
from wsdm_helpers.data import write_canonical  # noqa: E402
from wsdm_helpers.demo_data import make_demo_frame  # noqa: E402
from wsdm_helpers.errors import ConfigError  # noqa: E402
from wsdm_helpers.modeling import family_of_folder, load_model, load_run  # noqa: E402
from wsdm_helpers.pipeline import submit  # noqa: E402
from wsdm_helpers.tiny import build_tiny_model, pair_texts, train_tokenizer  # noqa: E402
from wsdm_helpers.training import train  # noqa: E402

PRESET = Path(__file__).resolve().parents[1] / "configs" / "tiny-test.yaml"


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("sec")
    frame = make_demo_frame(40, seed=3)
    write_canonical(frame, root / "train.parquet")
    tokenizer = train_tokenizer(pair_texts(frame), vocab_size=400)
    model = build_tiny_model("llama", tokenizer, root / "model")
    return root, model


def _cfg(demo, source, out, **extra):
    root, _ = demo
    return load_run_config(PRESET, {"data.train_path": str(root / "train.parquet"), "model.source": str(source),
                                    "train.output_dir": str(out), "train.max_steps": 2, "train.eval_steps": 2,
                                    "train.save_steps": 2, **{k.replace("__", "."): v for k, v in extra.items()}})


class _Exploit:
    """Unpickling this writes a marker file: proof that code in a pickle ran."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.write_text, (self.marker, "pwned"))


def _pickle_only(model: Path, out: Path, weights_name: str, marker: Path) -> Path:
    """A copy of ``model`` whose weights are a hostile pickle instead of safetensors."""
    out.mkdir()
    for f in model.iterdir():
        if f.suffix != ".safetensors":
            (out / f.name).write_bytes(f.read_bytes())
    with open(out / weights_name, "wb") as fh:
        pickle.dump({"weights": _Exploit(marker)}, fh)
    return out


def test_pickled_base_model_is_refused_without_running_it(demo, tmp_path):
    marker = tmp_path / "marker"
    source = _pickle_only(demo[1], tmp_path / "pickled", "pytorch_model.bin", marker)
    with pytest.raises(ConfigError, match=r"holds only pickled weights \(pytorch_model.bin\).*"
                                          r"model.allow_pickled_weights=true"):
        load_model(_cfg(demo, source, tmp_path / "run"))
    assert not marker.exists()
    # With the trust flag the load is attempted; torch's weights_only guard still stops this exploit.
    with pytest.raises(Exception):  # noqa: B017 (any failure: the point is the marker below)
        load_model(_cfg(demo, source, tmp_path / "run", model__allow_pickled_weights=True))
    assert not marker.exists()


def test_trusted_pickled_checkpoint_loads_with_the_flag(demo, tmp_path):
    from safetensors.torch import load_file

    out = tmp_path / "bin-model"
    out.mkdir()
    for f in demo[1].iterdir():
        if f.suffix != ".safetensors":
            (out / f.name).write_bytes(f.read_bytes())
    torch.save(load_file(str(demo[1] / "model.safetensors")), out / "pytorch_model.bin")
    with pytest.raises(ConfigError, match="only pickled weights"):
        load_model(_cfg(demo, out, tmp_path / "run"))
    model, _, _ = load_model(_cfg(demo, out, tmp_path / "run", model__allow_pickled_weights=True))
    assert sum(p.numel() for p in model.parameters()) > 0


def test_run_with_a_pickled_adapter_is_refused(demo, tmp_path):
    run = train(_cfg(demo, demo[1], tmp_path / "run")).run_dir
    adapter = run / "adapter"
    marker = tmp_path / "marker"
    (adapter / "adapter_model.safetensors").unlink()
    with open(adapter / "adapter_model.bin", "wb") as fh:
        pickle.dump(_Exploit(marker), fh)
    with pytest.raises(ConfigError, match=r"the run's adapter .* only pickled weights \(adapter_model.bin\)"):
        load_run(run)
    assert not marker.exists()


def test_remote_code_in_a_model_folder_never_runs(demo, tmp_path):
    """config.json may name custom classes (auto_map); without trust_remote_code they are never imported."""
    folder = tmp_path / "remote"
    folder.mkdir()
    for f in demo[1].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    marker = tmp_path / "ran"
    (folder / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('ran')\n"
                                    "from transformers import LlamaConfig as EvilConfig\n"
                                    "from transformers import LlamaForSequenceClassification as EvilModel\n")
    config = json.loads((folder / "config.json").read_text())
    config["auto_map"] = {"AutoConfig": "evil.EvilConfig", "AutoModelForSequenceClassification": "evil.EvilModel"}
    (folder / "config.json").write_text(json.dumps(config))
    assert family_of_folder(folder).name == "llama"
    load_model(_cfg(demo, folder, tmp_path / "run"))
    assert not marker.exists()


@pytest.fixture
def no_sockets(monkeypatch):
    """Every network call fails and is recorded (unix sockets stay allowed: they never leave the machine)."""
    calls = []

    def refuse(name):
        def guard(*args, **kwargs):
            calls.append((name, args[1:2]))
            raise OSError(f"network use in a test: {name}{args[1:2]}")
        return guard

    real_connect = socket.socket.connect

    def connect(self, address):
        if self.family == socket.AF_UNIX:
            return real_connect(self, address)
        return refuse("socket.connect")(self, address)

    monkeypatch.setattr(socket.socket, "connect", connect)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse("socket.connect_ex"))
    monkeypatch.setattr(socket.socket, "sendto", refuse("socket.sendto"))
    monkeypatch.setattr(socket, "getaddrinfo", refuse("getaddrinfo"))
    monkeypatch.setattr(socket, "create_connection", refuse("create_connection"))
    return calls


def test_train_and_predict_use_no_network(demo, tmp_path, no_sockets):
    root, model = demo
    run = train(_cfg(demo, model, tmp_path / "run")).run_dir
    test = tmp_path / "test.parquet"
    frame = make_demo_frame(12, seed=9)
    pd.DataFrame({"id": frame["id"], "prompt": [t[0] for t in frame["prompt"]],
                  "response_a": [t[0] for t in frame["response_a"]],
                  "response_b": [t[0] for t in frame["response_b"]]}).to_parquet(test)
    result = submit([run], test, tmp_path / "submission.csv")
    assert len(result.predictions) == 12 and (tmp_path / "submission.csv").is_file()
    assert no_sockets == [], f"network calls: {no_sockets}"
    with pytest.raises(OSError, match="network use in a test"):  # the guard is live
        socket.create_connection(("127.0.0.1", 9))
    assert len(no_sockets) == 1
    assert os.environ.get("HF_HUB_OFFLINE") == "1"


# ---- the install path: the wheelhouse, never a package index by name ------------------------------
def _install_cell(name: str) -> str:
    nb = json.loads((PRESET.parents[1] / "notebooks" / f"{name}.ipynb").read_text())
    return next("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code" and "pip" in "".join(c["source"]))


@pytest.mark.parametrize("name", ["inference", "train_gemma", "train_deberta", "ensemble_oof"])
def test_install_cell_never_installs_by_bare_name(name, tmp_path, monkeypatch):
    """Outside a clone, with no wheelhouse and no WSDM_HELPERS_SOURCE, the cell stops with the fix; pip never runs."""
    import importlib.util
    import subprocess

    calls = []
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(subprocess, "run", lambda args, **kw: calls.append(args))
    monkeypatch.delenv("WSDM_HELPERS_SOURCE", raising=False)
    (tmp_path / "nb").mkdir()
    monkeypatch.chdir(tmp_path / "nb")
    cell = _install_cell(name)
    with pytest.raises(RuntimeError, match="attach the wheelhouse dataset"):
        exec(compile(cell, name, "exec"), {"wsdm_source": None})
    assert calls == []
    monkeypatch.setenv("WSDM_HELPERS_SOURCE", "/wheels/wsdm_helpers-0.1.0-py3-none-any.whl")
    exec(compile(cell, name, "exec"), {"wsdm_source": None})
    assert calls[0][-1] == "wsdm_helpers[training,notebooks] @ file:///wheels/wsdm_helpers-0.1.0-py3-none-any.whl"


def test_bundle_check_refuses_a_kernel_without_the_wheelhouse(tmp_path, monkeypatch, capsys):
    from wsdm_helpers.cli import main
    from wsdm_helpers.kaggle.checks import MANIFEST

    monkeypatch.setenv("KAGGLE_USERNAME", "tester")
    notebook = tmp_path / "inference.ipynb"
    notebook.write_text(json.dumps({"cells": [], "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    assert main(["bundle", "kernel", "--notebook", str(notebook), "--out", str(tmp_path / "k"),
                 "--dataset", "wsdm-adapter"]) == 2
    assert "lack the wheelhouse dataset wsdm-helpers-wheels" in capsys.readouterr().err
    assert not (tmp_path / "k").exists()
    assert main(["bundle", "kernel", "--notebook", str(notebook), "--out", str(tmp_path / "k"),
                 "--dataset", "wsdm-helpers-wheels", "--dataset", "wsdm-adapter"]) == 0
    meta_path = tmp_path / "k" / "kernel-metadata.json"
    meta = json.loads(meta_path.read_text())
    meta["dataset_sources"] = ["tester/wsdm-adapter"]  # edited by hand after the build
    meta_path.write_text(json.dumps(meta))
    assert (tmp_path / "k" / MANIFEST).is_file()
    assert main(["bundle", "check", str(tmp_path / "k")]) == 2
    assert "lack the wheelhouse dataset" in capsys.readouterr().err
