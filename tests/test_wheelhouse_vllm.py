"""``wsdm bundle wheels --vllm``, hermetic: pip's own resolver on a folder of tiny fake wheels, no network.

The fake index mimics PyPI's shape: the image's torch 2.10.0 and a vLLM 0.34.0 that pins torch 2.14.0,
each torch with its own triton and CUDA wheel, and vLLM with a CUDA wheel of its own. The project wheel
is a stand-in with wsdm_helpers' name, version and torch floor (building the real one needs setuptools
and its real closure), so every pip run is the real one, on ``--no-index --find-links``.
"""
from __future__ import annotations

import json
import os
import sys
import zipfile
from pathlib import Path

import pytest
from packaging.utils import canonicalize_name

from wsdm_helpers import __version__
from wsdm_helpers.cli import main
from wsdm_helpers.kaggle import wheels
from wsdm_helpers.kaggle.images import NotebookImage

PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"  # the running pip resolves: no other interpreter
IMAGE = NotebookImage(name="test-image", place="kaggle", python=PYTHON, packages={"torch": "2.10.0", "numpy": "2.0.2"},
                      source="test")
INDEX = {  # (name, version): Requires-Dist
    ("torch", "2.10.0"): ["triton==3.6.0", "nvidia-cublas-cu12==12.8.0", "cuda-bindings==12.9.4"],
    ("torch", "2.14.0"): ["triton==3.8.0", "nvidia-cublas==13.1.0"],
    ("triton", "3.6.0"): [], ("triton", "3.8.0"): [],
    ("nvidia-cublas-cu12", "12.8.0"): [], ("nvidia-cublas", "13.1.0"): [], ("cuda-bindings", "12.9.4"): [],
    ("vllm", "0.34.0"): ["torch==2.14.0", "numpy>=2.3", "nvidia-cutlass-dsl>=4"],
    ("vllm", "0.19.1"): ["torch==2.10.0", "nvidia-cutlass-dsl>=4"],  # an older vLLM: it pins the image's torch
    ("nvidia-cutlass-dsl", "4.8.0"): [],
    ("numpy", "2.0.2"): [], ("numpy", "2.3.5"): [],
}
PROJECT = ["torch>=2.6", "numpy", 'vllm>=0.10; extra == "vllm"']
EXTRAS = ("training", "quantization", "notebooks", "vllm")


def _wheel(folder: Path, name: str, version: str, requires: list[str], extras: tuple[str, ...] = ()) -> Path:
    """A pure-Python wheel holding nothing but its metadata (what pip's resolver reads)."""
    stem = f"{canonicalize_name(name).replace('-', '_')}-{version}"
    path = folder / f"{stem}-py3-none-any.whl"
    metadata = "\n".join([f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}",
                          *(f"Provides-Extra: {e}" for e in extras), *(f"Requires-Dist: {r}" for r in requires)])
    with zipfile.ZipFile(path, "w") as wheel:
        wheel.writestr(f"{stem}.dist-info/METADATA", metadata + "\n")
        wheel.writestr(f"{stem}.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                   "Tag: py3-none-any\n")
        wheel.writestr(f"{stem}.dist-info/RECORD", "")
    return path


@pytest.fixture
def index(tmp_path, monkeypatch) -> Path:
    """The fake index, this machine's pip configuration out of the way, the stand-in project wheel and image."""
    for key in [k for k in os.environ if k.startswith("PIP_")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    folder = tmp_path / "index"
    folder.mkdir()
    for (name, version), requires in INDEX.items():
        _wheel(folder, name, version, requires)
    monkeypatch.setattr(wheels, "build_project_wheel",
                        lambda out, index_args, no_index: _wheel(out, "wsdm_helpers", __version__, PROJECT, EXTRAS))
    monkeypatch.setattr(wheels, "get_image", lambda name: IMAGE)
    return folder


def _build(index: Path, out: Path, vllm: bool, packages: tuple[str, ...] = ()):
    return wheels.build_wheelhouse(out, packages, image=IMAGE.name, find_links=[index], no_index=True,
                                   username="tester", vllm=vllm)


def test_vllm_wheelhouse_carries_vllms_torch_and_its_cuda_wheels(index, tmp_path, caplog):
    report = _build(index, tmp_path / "wheels", vllm=True)
    root = report.root
    requirements = (root / "requirements.txt").read_text().split()
    assert requirements[0] == f"wsdm_helpers[training,quantization,notebooks,vllm]=={__version__}"
    assert set(requirements[1:]) == {"vllm==0.34.0", "torch==2.14.0", "triton==3.8.0", "nvidia-cublas==13.1.0",
                                     "nvidia-cutlass-dsl==4.8.0", "numpy==2.3.5"}
    carried = {p.name.split("-")[0] + "==" + p.name.split("-")[1] for p in root.glob("*.whl")}
    assert {"torch==2.14.0", "triton==3.8.0", "nvidia_cublas==13.1.0", "vllm==0.34.0"} <= carried
    target = json.loads((root / "manifest.json").read_text())["target"]
    assert (target["torch"], target["torch_installed"], target["vllm"]) == ("2.10.0", "2.14.0", "0.34.0")
    change = "torch 2.10.0 (the image's) -> 2.14.0 (vLLM 0.34.0 pins it)"
    assert change in caplog.text
    assert change in json.loads((root / "dataset-metadata.json").read_text())["description"]
    summary = wheels.wheelhouse_summary(root)
    assert summary.startswith(change) and f"{report.total_size:,} bytes" in summary and "6 wheels carried" in summary


def test_a_vllm_that_pins_the_images_torch_carries_only_its_own_cuda_wheels(index, tmp_path, caplog):
    """torch, triton and the CUDA wheels torch requires stay the image's; vLLM's own CUDA wheel comes along."""
    root = _build(index, tmp_path / "wheels", vllm=True, packages=("vllm==0.19.1",)).root
    requirements = (root / "requirements.txt").read_text().split()
    assert set(requirements[1:]) == {"vllm==0.19.1", "nvidia-cutlass-dsl==4.8.0", "numpy==2.0.2"}
    target = json.loads((root / "manifest.json").read_text())["target"]
    assert (target["torch_installed"], target["vllm"]) == ("2.10.0", "0.19.1")
    assert "replaces" not in caplog.text
    assert wheels.wheelhouse_summary(root).startswith("torch 2.10.0 (the image's) stays: vLLM 0.19.1 pins it")


def test_without_vllm_the_image_keeps_its_torch(index, tmp_path):
    root = _build(index, tmp_path / "wheels", vllm=False).root
    requirements = (root / "requirements.txt").read_text().split()
    assert requirements == [f"wsdm_helpers[training,quantization,notebooks]=={__version__}", "numpy==2.0.2"]
    assert sorted(p.name for p in root.glob("*.whl")) == ["numpy-2.0.2-py3-none-any.whl",
                                                          f"wsdm_helpers-{__version__}-py3-none-any.whl"]
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["target"]["torch_installed"] == "2.10.0" and "vllm" not in manifest["target"]
    description = json.loads((root / "dataset-metadata.json").read_text())["description"]
    assert "This version carries vLLM" not in description
    assert wheels.wheelhouse_summary(root).startswith("torch 2.10.0 (the image's) stays; 1 wheels carried")


def test_resolve_only_prints_the_closure_and_its_size_and_writes_nothing(index, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["bundle", "wheels", "--resolve-only", "--vllm", "--image", IMAGE.name, "--packages",
                 "--no-index", "--find-links", str(index)]) == 0
    out = capsys.readouterr().out
    rows = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.startswith("  ")}
    assert rows["torch"][:3] == ["2.14.0", "replaces", "2.10.0"]
    assert rows["numpy"][:3] == ["2.3.5", "replaces", "2.0.2"]
    assert rows["vllm"][:2] == ["0.34.0", "new"]
    size = sum(p.stat().st_size for p in index.glob("*.whl") if p.name.split("-")[:2] in (
        ["vllm", "0.34.0"], ["torch", "2.14.0"], ["triton", "3.8.0"], ["nvidia_cublas", "13.1.0"],
        ["nvidia_cutlass_dsl", "4.8.0"], ["numpy", "2.3.5"]))
    assert "torch 2.10.0 (the image's) -> 2.14.0 (vLLM 0.34.0 pins it)" in out
    assert f"6 wheels carried, {size:,} bytes" in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]


def test_a_build_without_out_is_refused(index, capsys):
    assert main(["bundle", "wheels", "--vllm", "--image", IMAGE.name]) == 2
    assert "--out FOLDER (or --resolve-only" in capsys.readouterr().err


def test_a_metadata_only_resolution_refuses_a_pip_that_would_download_every_wheel(tmp_path):
    old = tmp_path / "python3.12"  # an interpreter whose pip predates metadata-only dry runs (pyenv's 3.12.1)
    old.write_text("#!/bin/sh\necho 'pip 23.2.1 from /somewhere (python 3.12)'\n")
    old.chmod(0o755)
    with pytest.raises(wheels.BundleError, match=r"has pip 23\.2\.1: below pip 25\.3 .* -m pip install -U"):
        wheels._require_metadata_only_pip(old)
    wheels._require_metadata_only_pip(sys.executable)  # this venv's pip (make installs a current one)
