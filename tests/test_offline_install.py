"""The offline Kaggle install, for real: wheelhouse -> fresh venv -> ``pip install --no-index`` -> ``wsdm predict``.

A fresh virtual environment stands for the Kaggle image. It gets the image's heavy packages
(torch, transformers, accelerate, numpy, pandas, ...) and nothing else: a ``.pth`` file points at a
folder that links exactly those distributions (and what they require) from the test's own
environment. ``wsdm bundle wheels --no-index --find-links .cache/wheels`` then resolves and builds the wheelhouse
(the whole closure but torch) from the local wheel cache that ``make test`` downloads beforehand (its
``.wheel-cache`` step), and the wheelhouse's ``install.py`` must install wsdm_helpers and
what the "image" lacks (peft, bitsandbytes, papermill's extras, ...) into that venv with every network
route closed (no pip configuration, proxies pointing at a closed port). A tiny LoRA run, packed with ``wsdm bundle adapter``, is then scored by
the venv's own ``wsdm predict`` on the demo test set.
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from wsdm_helpers.kaggle.wheels import default_packages

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
WHEEL_CACHE = REPO / ".cache" / "wheels"
# What Kaggle's image ships (their own requirements come along); the wheelhouse must supply the rest.
IMAGE_PACKAGES = ("torch", "transformers", "accelerate", "tokenizers", "safetensors", "huggingface_hub",
                  "numpy", "pandas", "pyarrow", "pyyaml", "tqdm")
# Colab's runtime also ships peft and the Jupyter stack (kaggle/images.py; papermill stands in for its front end).
COLAB_PACKAGES = (*IMAGE_PACKAGES, "peft", "papermill", "ipykernel", "ipywidgets", "matplotlib", "nbformat")
CLOSED_PORT = "http://127.0.0.1:9"


def _offline_env() -> dict[str, str]:
    """The environment with no pip configuration (no extra index, no find-links) and no way out."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("PIP_") and k not in ("PYTHONPATH", "VIRTUAL_ENV") and "proxy" not in k.lower()}
    proxies = {name: CLOSED_PORT for name in ("http_proxy", "https_proxy", "all_proxy",
                                              "HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY")}
    return {**env, **proxies, "PIP_CONFIG_FILE": os.devnull, "PIP_NO_INPUT": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _run(command: list, cwd: Path, timeout: int = 300) -> str:
    done = subprocess.run([str(c) for c in command], cwd=cwd, env=_offline_env(), capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, f"$ {' '.join(map(str, command))}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done.stdout


def _closure(names: tuple[str, ...]) -> list[importlib.metadata.Distribution]:
    """Installed distributions of ``names`` and, recursively, of their (non-extra) requirements."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = canonicalize_name(todo.pop())
        if name in seen:
            continue
        seen[name] = importlib.metadata.distribution(name)
        for text in seen[name].requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def _image_folder(folder: Path, packages: tuple[str, ...] = IMAGE_PACKAGES) -> Path:
    """Links to the top-level files and folders of the image's distributions (nothing else)."""
    folder.mkdir()
    for dist in _closure(packages):
        site = Path(dist.locate_file(""))
        tops = {Path(f).parts[0] for f in dist.files or []}
        for top in sorted(tops - {"..", "__pycache__"}):
            if not top.endswith(".pth") and (site / top).exists() and not (folder / top).exists():
                (folder / top).symlink_to(site / top)
    return folder


@pytest.fixture(scope="module")
def wheel_cache() -> Path:
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        pytest.skip("the wheelhouse targets Kaggle's Linux x86_64 image")
    wanted = [canonicalize_name(spec.split("==")[0]) for spec in default_packages()] + ["torch", "papermill"]
    have = {canonicalize_name(p.name.split("-")[0]) for p in WHEEL_CACHE.glob("*.whl")}
    if not set(wanted) <= have:
        pytest.skip(f"local wheel cache {WHEEL_CACHE} lacks {sorted(set(wanted) - have)}: `make test` fills it "
                    "(its .wheel-cache step downloads the closure of .[training,quantization,notebooks])")
    return WHEEL_CACHE


@pytest.fixture(scope="module")
def wheelhouse(wheel_cache, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bundle")
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    torch = importlib.metadata.version("torch").split("+")[0]
    _run([sys.executable, "-m", "wsdm_helpers", "bundle", "wheels", "--out", root / "wheels", "--no-index",
          "--find-links", wheel_cache, "--python-version", python, "--torch", torch, "--username", "tester"], cwd=root)
    return root / "wheels"


@pytest.fixture(scope="module")
def kaggle_venv(wheelhouse, tmp_path_factory) -> Path:
    """A fresh venv with the image's packages, then wsdm_helpers installed offline from the wheelhouse."""
    root = tmp_path_factory.mktemp("kaggle")
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=root)
    # The image's setuptools (torch needs a recent one) must not be shadowed by the venv's bundled copy;
    # removed before the image is linked in, so nothing outside the venv can be touched.
    _run([venv / "bin" / "python", "-m", "pip", "uninstall", "-y", "setuptools"], cwd=root)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "kaggle_image.pth").write_text(f"{_image_folder(root / 'image')}\n")
    print(_run([venv / "bin" / "python", wheelhouse / "install.py"], cwd=root))
    return venv


def test_wheelhouse_installs_offline_into_a_fresh_venv(wheelhouse, kaggle_venv, tmp_path):
    requirements = (wheelhouse / "requirements.txt").read_text().split()
    assert requirements[0] == "wsdm_helpers[training,quantization,notebooks]==0.1.0"
    assert set(default_packages()) <= set(requirements)
    # the stand-in image already has every pinned version it carries: the install replaces none of its files
    assert f"transformers=={importlib.metadata.version('transformers')}" in requirements
    assert (wheelhouse / "dataset-metadata.json").is_file()
    carried = {canonicalize_name(p.name.split("-")[0]) for p in wheelhouse.glob("*.whl")}
    assert {"bitsandbytes", "peft", "transformers", "papermill", "wsdm-helpers"} <= carried
    assert not {c for c in carried if c in ("torch", "triton") or c.startswith("nvidia-")}  # the image's own
    python = kaggle_venv / "bin" / "python"
    where = _run([python, "-c", "import importlib.metadata as m, peft, wsdm_helpers.kaggle as k, torch;"
                  "print(k.__file__, peft.__file__, torch.__file__, m.version('bitsandbytes'))"],
                 cwd=tmp_path).split()
    site = next((kaggle_venv / "lib").glob("python3*/site-packages"))
    assert Path(where[0]).is_relative_to(site) and Path(where[1]).is_relative_to(site)
    assert not Path(where[2]).is_relative_to(site)  # torch comes from the "image"
    assert any(p.name.startswith(f"bitsandbytes-{where[3]}-") for p in wheelhouse.glob("*.whl"))
    _run([python, "-m", "pip", "check"], cwd=tmp_path)
    assert "bundle" in _run([kaggle_venv / "bin" / "wsdm", "--help"], cwd=tmp_path)


def test_offline_venv_predicts_with_a_bundled_adapter(kaggle_venv, tmp_path):
    from wsdm_helpers.config import load_run_config
    from wsdm_helpers.demo_data import write_demo_dataset
    from wsdm_helpers.tiny import build_tiny_model, train_tokenizer
    from wsdm_helpers.training import train

    write_demo_dataset(tmp_path / "demo", n_train=120, n_test=40, seed=0)
    frame = pd.read_parquet(tmp_path / "demo" / "train.parquet")
    texts = [str(t) for col in ("prompt", "response_a", "response_b") for t in frame[col]]
    tokenizer = train_tokenizer(texts, vocab_size=400)
    build_tiny_model("llama", tokenizer, tmp_path / "base")
    cfg = load_run_config(REPO / "configs" / "tiny-test.yaml", {
        "data.train_path": str(tmp_path / "demo" / "train.parquet"), "model.source": str(tmp_path / "base"),
        "train.output_dir": str(tmp_path / "run"), "train.max_steps": 2})
    train(cfg)
    # Off Kaggle, /kaggle/input/base is looked up in the input folder (kaggle.input_dir: the working folder).
    _run([sys.executable, "-m", "wsdm_helpers", "bundle", "adapter", tmp_path / "run", "--out",
          tmp_path / "adapter", "--base-model", "/kaggle/input/base", "--username", "tester"], cwd=tmp_path)
    assert (tmp_path / "adapter" / "adapter" / "adapter_model.safetensors").is_file()  # LoRA: peft is needed
    _run([kaggle_venv / "bin" / "wsdm", "predict", "--run", tmp_path / "adapter", "--test",
          tmp_path / "demo" / "test.parquet", "--out", tmp_path / "submission.csv",
          "--set", "inference.devices=[cpu]"], cwd=tmp_path)
    submission = pd.read_csv(tmp_path / "submission.csv", dtype={"id": str})
    test_ids = pd.read_parquet(tmp_path / "demo" / "test.parquet")["id"].astype(str)
    assert submission.columns.tolist() == ["id", "winner"]
    assert submission["id"].tolist() == test_ids.tolist()
    assert set(submission["winner"]) <= {"model_a", "model_b"}


# ---- the notebooks' install cell (Colab, a laptop: no clone, no env var; only the wsdm_source parameter) --------
def _install_cell(notebook: str = "train_gemma") -> str:
    cells = json.loads((REPO / "notebooks" / f"{notebook}.ipynb").read_text())["cells"]
    return next("".join(c["source"]) for c in cells if "".join(c["source"]).startswith("# Install wsdm_helpers"))


def _bare_venv(root: Path) -> Path:
    """A venv with the "image" packages linked in and no wsdm_helpers (as a Colab runtime)."""
    venv = root / "venv"
    _run([sys.executable, "-m", "venv", venv], cwd=root)
    _run([venv / "bin" / "python", "-m", "pip", "uninstall", "-y", "setuptools"], cwd=root)
    site = next((venv / "lib").glob("python3*/site-packages"))
    (site / "image.pth").write_text(f"{_image_folder(root / 'image', COLAB_PACKAGES)}\n")
    return venv


def test_install_cell_installs_from_the_wsdm_source_wheel(tmp_path):
    wheels = tmp_path / "dist"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, REPO], cwd=tmp_path)
    wheel = next(wheels.glob("wsdm_helpers-*.whl"))
    venv = _bare_venv(tmp_path)
    cell = tmp_path / "cell.py"
    cell.write_text(f"wsdm_source = {str(wheel)!r}\n" + _install_cell())
    work = tmp_path / "content"  # no ../setup.py here: not a clone
    work.mkdir()
    out = _run([venv / "bin" / "python", cell], cwd=work)
    assert "installing wsdm_helpers:" in out and wheel.name in out
    where = _run([venv / "bin" / "python", "-c", "import wsdm_helpers; print(wsdm_helpers.__file__)"], cwd=work)
    assert Path(where.strip()).is_relative_to(next((venv / "lib").glob("python3*/site-packages")))


@pytest.mark.parametrize("source", ["wsdm_helpers", "wsdm-helpers==0.1.0", "/no/such/wheelhouse"])
def test_install_cell_refuses_a_bare_package_name(tmp_path, source):
    cell = tmp_path / "cell.py"
    cell.write_text(f"wsdm_source = {source!r}\n" + _install_cell("inference"))
    base = Path(sys.base_prefix) / "bin" / "python3"  # an interpreter without wsdm_helpers
    done = subprocess.run([str(base), str(cell)], cwd=tmp_path, env=_offline_env(), capture_output=True, text=True)
    assert done.returncode != 0
    assert f"wsdm_source={source!r}" in done.stderr and "bare package name is never installed" in done.stderr
    assert "installing wsdm_helpers" not in done.stdout
