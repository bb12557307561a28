"""Kaggle: environment detection, metadata against the Kaggle CLI's documented fields, bundle checks.

No torch here: run folders are written by hand in the contract's layout, with stand-in weight files.
The wheelhouse build and an offline install into a fresh virtual environment are in
test_offline_install.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from wsdm_helpers import kaggle
from wsdm_helpers.cli import main
from wsdm_helpers.errors import BundleError
from wsdm_helpers.kaggle.adapter import bundle_adapter
from wsdm_helpers.kaggle.checks import BUILD_PATH_RE, MANIFEST, check_bundle, write_manifest
from wsdm_helpers.kaggle.common import DATASETS, dataset_from_template, project_root, staged_folder
from wsdm_helpers.kaggle.kernel import COMPETITION, bundle_kernel
from wsdm_helpers.kaggle.metadata import (
    check_dataset_metadata,
    check_kernel_metadata,
    kernel_metadata,
    resolve_username,
    slugify,
)
from wsdm_helpers.kaggle.wheels import default_packages, linux_platforms, offline_install_command

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_kaggle_env(monkeypatch, tmp_path):
    """Tests decide the environment: no Kaggle/Colab variables, no /kaggle/input, a known username."""
    for name in ("KAGGLE_KERNEL_RUN_TYPE", "COLAB_RELEASE_TAG", "WSDM_INPUT_DIR", "WSDM_WORKING_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(kaggle, "KAGGLE_INPUT", tmp_path / "no-kaggle-input")
    monkeypatch.setenv("KAGGLE_USERNAME", "tester")


# ---- environment ---------------------------------------------------------------------------------
def test_kaggle_module_stays_torch_free():
    code = "import sys, wsdm_helpers.kaggle; assert 'torch' not in sys.modules, 'torch was imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_environment_kaggle_colab_local(monkeypatch, tmp_path):
    monkeypatch.setattr(kaggle, "_importable", lambda module: False)
    assert kaggle.environment() == "local"
    assert kaggle.input_dir() == Path.cwd() and kaggle.working_dir() == Path.cwd()
    monkeypatch.setenv("COLAB_RELEASE_TAG", "release-colab_20250101")
    assert kaggle.environment() == "colab"
    assert kaggle.input_dir() == Path("/content") == kaggle.working_dir()
    monkeypatch.setenv("KAGGLE_KERNEL_RUN_TYPE", "Batch")
    assert kaggle.environment() == "kaggle"
    assert (kaggle.input_dir(), kaggle.working_dir()) == (kaggle.KAGGLE_INPUT, Path("/kaggle/working"))
    monkeypatch.setenv("WSDM_INPUT_DIR", str(tmp_path / "in"))
    monkeypatch.setenv("WSDM_WORKING_DIR", str(tmp_path / "out"))
    assert (kaggle.input_dir(), kaggle.working_dir()) == (tmp_path / "in", tmp_path / "out")


def test_environment_kaggle_from_input_folder(monkeypatch, tmp_path):
    (tmp_path / "kaggle-input").mkdir()
    monkeypatch.setattr(kaggle, "KAGGLE_INPUT", tmp_path / "kaggle-input")
    assert kaggle.environment() == "kaggle"


def test_offline_install_command_runs_the_wheelhouse_installer():
    assert offline_install_command("/kaggle/input/wsdm-helpers-wheels") == (
        "python /kaggle/input/wsdm-helpers-wheels/install.py")


def test_default_packages_pin_what_trained_the_adapters():
    import importlib.metadata

    assert default_packages() == [f"peft=={importlib.metadata.version('peft')}"]


def _wheelhouse_for(folder: Path, python_version: str) -> Path:
    """A wheelhouse folder as `wsdm bundle wheels` lays it out, targeting ``python_version``."""
    import shutil

    from wsdm_helpers.kaggle import install_wheelhouse

    folder.mkdir()
    shutil.copyfile(install_wheelhouse.__file__, folder / "install.py")
    (folder / "manifest.json").write_text(json.dumps({"kind": "wheelhouse", "target": {
        "python_version": python_version, "torch": "2.5.1"}}))
    (folder / "requirements.txt").write_text("wsdm-package-that-does-not-exist==1.0\n")
    return folder


def test_installer_refuses_another_python_before_pip_runs(tmp_path):
    wheelhouse = _wheelhouse_for(tmp_path / "wheels", "3.9")
    done = subprocess.run([sys.executable, str(wheelhouse / "install.py")], capture_output=True, text=True)
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert done.returncode == 2
    assert f"built for Python 3.9, but this notebook runs Python {running}" in done.stderr
    assert f"--python-version {running}" in done.stderr  # the fix
    assert "wsdm-package-that-does-not-exist" not in done.stdout + done.stderr  # pip never ran
    assert "Traceback" not in done.stderr


def test_installer_runs_pip_offline_on_the_matching_python(tmp_path):
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    wheelhouse = _wheelhouse_for(tmp_path / "wheels", running)
    done = subprocess.run([sys.executable, str(wheelhouse / "install.py")], capture_output=True, text=True,
                          env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
    assert done.returncode != 0  # the one requirement is in no wheelhouse: pip itself says so
    assert "wsdm-package-that-does-not-exist" in done.stdout + done.stderr


def test_linux_platforms_cover_older_glibc_wheels():
    tags = linux_platforms("2.31")
    assert "manylinux_2_24_x86_64" in tags and "manylinux2014_x86_64" in tags and "manylinux1_x86_64" in tags
    assert "manylinux_2_32_x86_64" not in tags
    assert "manylinux2014_x86_64" not in linux_platforms("2.12")


# ---- metadata: the Kaggle CLI's documented fields --------------------------------------------------
def test_dataset_metadata_has_the_documented_fields():
    meta = {"title": "WSDM helpers wheels", "id": "tester/wsdm-helpers-wheels", "licenses": [{"name": "apache-2.0"}]}
    assert check_dataset_metadata(meta) == []


@pytest.mark.parametrize("change, message", [
    ({"id": "tester/WSDM_wheels"}, "lowercase letters, digits"),
    ({"id": "tester/ab"}, "3-50"),
    ({"id": "tester/" + "a" * 51}, "3-50"),
    ({"id": "tester/-wheels"}, "no leading or trailing hyphen"),
    ({"id": "wsdm-helpers-wheels"}, "owner/slug"),
    ({"id": "USERNAME/wsdm-helpers-wheels"}, "placeholder"),
    ({"title": "WSDM"}, "6-50 characters"),
    ({"title": "W" * 51}, "6-50 characters"),
    ({"subtitle": "too short"}, "20-80 characters"),
    ({"licenses": [{"name": "apache-2.0"}, {"name": "CC0-1.0"}]}, "exactly one"),
    ({"licenses": {"name": "apache-2.0"}}, "exactly one"),
    ({"licenses": [{"name": "MIT"}]}, "not one Kaggle knows"),
    ({"keywords": "nlp"}, "list of strings"),
])
def test_dataset_metadata_rules(change, message):
    meta = {"title": "WSDM helpers wheels", "id": "tester/wsdm-helpers-wheels",
            "licenses": [{"name": "CC0-1.0"}], **change}
    problems = check_dataset_metadata(meta)
    assert len(problems) == 1 and message in problems[0], problems


def test_dataset_metadata_missing_keys():
    assert check_dataset_metadata({}) == [f"required key {k!r} is missing" for k in ("title", "id", "licenses")]


def test_kernel_metadata_is_offline_gpu_notebook():
    meta = kernel_metadata("tester", "WSDM inference", "inference.ipynb", competitions=[COMPETITION],
                           datasets=["wsdm-helpers-wheels", "other/wsdm-adapter"],
                           models=["google/gemma-2/transformers/gemma-2-9b-it/2"])
    assert meta["id"] == "tester/wsdm-inference" and meta["title"] == "WSDM inference"
    assert (meta["language"], meta["kernel_type"], meta["code_file"]) == ("python", "notebook", "inference.ipynb")
    assert meta["enable_internet"] is False and meta["enable_gpu"] is True and meta["enable_tpu"] is False
    assert meta["is_private"] is True
    assert meta["dataset_sources"] == ["tester/wsdm-helpers-wheels", "other/wsdm-adapter"]
    assert meta["competition_sources"] == ["wsdm-cup-multilingual-chatbot-arena"]
    assert meta["model_sources"] == ["google/gemma-2/transformers/gemma-2-9b-it/2"]
    assert meta["kernel_sources"] == []
    assert check_kernel_metadata(meta) == []


@pytest.mark.parametrize("change, message", [
    ({"title": "WSDM scoring"}, "slugifies to 'wsdm-scoring'"),
    ({"title": "WSDM", "id": "tester/wsdm"}, "at least 5 characters"),
    ({"enable_internet": True}, "enable_internet must be written as false"),
    ({"enable_gpu": "true"}, "enable_gpu must be true or false"),
    ({"language": "julia"}, "language 'julia'"),
    ({"kernel_type": "app"}, "kernel_type 'app'"),
    ({"code_file": "/home/me/inference.ipynb"}, "relative to the kernel folder"),
    ({"dataset_sources": ["tester/wsdm_adapter"]}, "dataset_sources: slug 'wsdm_adapter'"),
    ({"competition_sources": ["owner/competition"]}, "is not of the form slug"),
    ({"model_sources": ["google/gemma-2/transformers/2b"]}, "owner/model/framework/variation/version"),
    ({"model_sources": ["google/gemma-2/transformers/2b/latest"]}, "version number"),
])
def test_kernel_metadata_rules(change, message):
    meta = {**kernel_metadata("tester", "WSDM inference", "inference.ipynb"), **change}
    problems = check_kernel_metadata(meta)
    assert len(problems) == 1 and message in problems[0], problems


def test_kernel_metadata_internet_key_must_be_present_and_code_file_exist(tmp_path):
    meta = kernel_metadata("tester", "WSDM inference", "inference.ipynb")
    del meta["enable_internet"]
    assert any("enable_internet" in p for p in check_kernel_metadata(meta))
    meta["enable_internet"] = False
    assert check_kernel_metadata(meta, tmp_path) == [f"code_file 'inference.ipynb' is not in {tmp_path}"]


def test_slugify_matches_kaggle():
    assert slugify("WSDM Inference (Gemma-2 9B) v2") == "wsdm-inference-gemma-2-9b-v2"


def test_username_from_parameter_or_environment(monkeypatch):
    assert resolve_username() == "tester"
    assert resolve_username("Alice") == "alice"
    monkeypatch.delenv("KAGGLE_USERNAME")
    with pytest.raises(BundleError, match="--username NAME or set KAGGLE_USERNAME"):
        resolve_username()
    with pytest.raises(BundleError, match="profile URL"):
        resolve_username("bad name")


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_dataset_templates_are_valid_and_match_the_fallbacks(name):
    folder = REPO / "kaggle_datasets" / name
    template = json.loads((folder / "dataset-metadata.json").read_text())
    assert template["id"] == f"USERNAME/{name}"
    assert template["title"] == DATASETS[name]["title"]
    assert template["licenses"] == [{"name": DATASETS[name]["license"]}]
    assert (folder / "README.md").is_file()
    filled = dataset_from_template(name, "tester")
    assert filled["id"] == f"tester/{name}" and filled["description"].startswith(f"# {name}")
    assert check_dataset_metadata(filled) == []


def test_dataset_fallback_without_a_source_checkout(monkeypatch):
    monkeypatch.setattr("wsdm_helpers.kaggle.common.project_root", lambda: None)
    meta = dataset_from_template("wsdm-adapter", "tester", slug="wsdm-adapter-qwen", title="WSDM adapter qwen")
    assert meta == {"title": "WSDM adapter qwen", "id": "tester/wsdm-adapter-qwen",
                    "licenses": [{"name": "apache-2.0"}]}
    assert project_root() == REPO


# ---- build-machine paths ---------------------------------------------------------------------------
@pytest.mark.parametrize("text, found", [
    ("source: /home/alice/models/gemma", "/home/alice/models/gemma"),
    ('{"base_model_name_or_path": "/tmp/pytest-3/base"}', "/tmp/pytest-3/base"),
    ("train_path: /Users/bob/data/train.parquet", "/Users/bob/data/train.parquet"),
    ("path: /content/drive/MyDrive/x", "/content/drive/MyDrive/x"),
    (r'"C:\\Users\\bob\\model"', r"C:\\Users\\bob\\model"),
    ("source: /kaggle/input/gemma-2/transformers/2b/1", None),
    ("see https://example.org/home/page and ../data/train.parquet", None),
    ("output_dir: runs/demo", None),
])
def test_build_path_pattern(text, found):
    match = BUILD_PATH_RE.search(text)
    assert (match.group(0) if match else None) == found


# ---- bundles ---------------------------------------------------------------------------------------
def _run_dir(root: Path, source: str = "/tmp/build/base-model", weights: str = "adapter_model.safetensors") -> Path:
    """A finished LoRA run in the contract's layout; the adapter is a real safetensors file of rank 4 (the
    run-folder checks read its header), the other weight files are stand-ins."""
    (root / "adapter").mkdir(parents=True)
    (root / "tokenizer").mkdir()
    (root / "checkpoints" / "checkpoint-2").mkdir(parents=True)
    config = {"name": "tiny", "data": {"train_path": "/home/alice/data/train.parquet", "fold": 0},
              "model": {"source": source, "num_labels": 2}, "train": {"output_dir": "/home/alice/runs/tiny"}}
    (root / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (root / "adapter" / "adapter_config.json").write_text(json.dumps(
        {"base_model_name_or_path": source, "peft_type": "LORA", "r": 4}))
    if weights.endswith(".safetensors"):
        from safetensors.numpy import save_file

        save_file({"base_model.model.layers.0.q_proj.lora_A.weight": np.zeros((4, 8), np.float32)},
                  str(root / "adapter" / weights))
    else:
        (root / "adapter" / weights).write_bytes(b"\0" * 64)
    (root / "adapter" / "README.md").write_text(f"---\nbase_model: {source}\nlibrary_name: peft\n---\n")
    (root / "tokenizer" / "tokenizer.json").write_text('{"model": {"vocab": {"/home": 5}}}')
    (root / "metrics.json").write_text('{"accuracy": 0.61}')
    (root / "log_history.json").write_text("[]")
    (root / "checkpoints" / "checkpoint-2" / "optimizer.pt").write_bytes(b"pickle")
    return root


def test_bundle_adapter_packs_a_portable_run(tmp_path):
    run = _run_dir(tmp_path / "run")
    base = "/kaggle/input/gemma-2/transformers/gemma-2-9b-it/2"
    report = bundle_adapter(run, tmp_path / "bundle", base_model=base)
    out = tmp_path / "bundle"
    assert sorted(f["path"] for f in report.files) == [
        "adapter/adapter_config.json", "adapter/adapter_model.safetensors", "config.yaml", "metrics.json",
        "tokenizer/tokenizer.json"]
    config = yaml.safe_load((out / "config.yaml").read_text())
    assert config["model"]["source"] == base
    assert config["data"]["train_path"] == "train.parquet" and config["train"]["output_dir"] == "tiny"
    assert json.loads((out / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == base
    meta = json.loads((out / "dataset-metadata.json").read_text())
    assert meta["id"] == "tester/wsdm-adapter" and check_dataset_metadata(meta) == []
    manifest = json.loads((out / MANIFEST).read_text())
    assert (manifest["kind"], manifest["weights"], manifest["base_model"]) == ("adapter", "adapter", base)
    assert "5 files" in report.to_text() and "checks passed" in report.to_text()
    assert check_bundle(out).total_size == report.total_size


def test_bundle_adapter_without_base_model_points_at_the_local_backbone(tmp_path):
    with pytest.raises(BundleError) as error:
        bundle_adapter(_run_dir(tmp_path / "run"), tmp_path / "bundle")
    message = str(error.value)
    assert "config.yaml holds absolute paths of the build machine" in message
    assert "line 6: /tmp/build/base-model" in message and "--base-model" in message
    assert "adapter_config.json" not in message  # rewritten to the backbone's folder name


def test_bundle_check_refuses_a_relative_model_source(tmp_path):
    with pytest.raises(BundleError, match=r"config.yaml: model.source='models/base' is a relative path.*"
                                          r"--base-model /kaggle/input/"):
        bundle_adapter(_run_dir(tmp_path / "run"), tmp_path / "bundle", base_model="models/base")
    report = bundle_adapter(_run_dir(tmp_path / "run2", source="pypi:gemma3-270m"), tmp_path / "bundle2")
    assert check_bundle(report.root).files


def test_bundle_adapter_refuses_a_pickled_adapter(tmp_path):
    run = _run_dir(tmp_path / "run", source="pypi:gemma3-270m", weights="adapter_model.bin")
    with pytest.raises(BundleError, match=r"adapter/adapter_model.bin: pickle file \(.bin\).*safetensors"):
        bundle_adapter(run, tmp_path / "bundle")


def test_bundle_adapter_refuses_a_symlink(tmp_path):
    run = _run_dir(tmp_path / "run", source="pypi:gemma3-270m")
    (tmp_path / "elsewhere.json").write_text("{}")
    (run / "tokenizer" / "special_tokens_map.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(BundleError, match=r"tokenizer/special_tokens_map.json is a symlink to .*elsewhere.json"):
        bundle_adapter(run, tmp_path / "bundle")


def test_bundle_adapter_needs_a_finished_run(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(BundleError, match=r"config.yaml .* is missing(.|\n)*adapter/ \(LoRA\) or model/"):
        bundle_adapter(tmp_path / "run", tmp_path / "bundle")


@pytest.fixture
def good_bundle(tmp_path) -> Path:
    bundle_adapter(_run_dir(tmp_path / "run", source="pypi:gemma3-270m"), tmp_path / "bundle")
    return tmp_path / "bundle"


def test_check_collects_every_problem_at_once(good_bundle, tmp_path):
    (good_bundle / "model.pt").write_bytes(b"pickle")
    (good_bundle / "notes.yaml").write_text("data: /home/alice/secret/train.parquet\n")
    (tmp_path / "outside").mkdir()
    (good_bundle / "linked").symlink_to(tmp_path / "outside", target_is_directory=True)
    with pytest.raises(BundleError) as error:
        check_bundle(good_bundle)
    message = str(error.value)
    assert "(5 problems)" in message
    assert "linked is a symlink to" in message
    assert "model.pt: pickle file (.pt)" in message
    assert "notes.yaml holds absolute paths of the build machine, which do not exist on Kaggle: " \
           "line 1: /home/alice/secret/train.parquet" in message
    assert "model.pt is not listed in manifest.json" in message and "notes.yaml is not listed" in message


def test_check_detects_changed_and_missing_files(good_bundle):
    (good_bundle / "metrics.json").write_text('{"accuracy": 0.99}')
    (good_bundle / "tokenizer" / "tokenizer.json").unlink()
    with pytest.raises(BundleError) as error:
        check_bundle(good_bundle)
    assert "metrics.json differs from its manifest.json entry" in str(error.value)
    assert "tokenizer/tokenizer.json is listed in manifest.json but missing" in str(error.value)


def test_check_needs_manifest_and_valid_metadata(good_bundle, tmp_path):
    meta = json.loads((good_bundle / "dataset-metadata.json").read_text())
    (good_bundle / "dataset-metadata.json").write_text(json.dumps({**meta, "licenses": []}))
    with pytest.raises(BundleError, match="dataset-metadata.json: licenses must be a list of exactly one"):
        check_bundle(good_bundle)
    (good_bundle / MANIFEST).unlink()
    with pytest.raises(BundleError, match="manifest.json is missing"):
        check_bundle(good_bundle)
    with pytest.raises(BundleError, match="does not exist"):
        check_bundle(tmp_path / "nothing")


def test_manifest_lists_every_file_with_hash(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.txt").write_text("hello")
    (tmp_path / "dataset-metadata.json").write_text("{}")
    manifest = write_manifest(tmp_path, "test", extra_field=1)
    assert manifest["files"] == [{"path": "sub/a.txt", "size": 5, "sha256":
                                  "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824"}]
    assert manifest["extra_field"] == 1 and manifest["total_size"] == 5


def test_staged_folder_replaces_only_bundles(tmp_path):
    keep = tmp_path / "notes"
    keep.mkdir()
    (keep / "mine.txt").write_text("do not delete")
    with pytest.raises(BundleError, match="not a bundle"):
        with staged_folder(keep):
            pass
    assert (keep / "mine.txt").exists()
    out = tmp_path / "bundle"
    for content in ("first", "second"):
        with staged_folder(out, replace=content == "second") as stage:
            (stage / f"{content}.txt").write_text(content)
            write_manifest(stage, "test")
    assert sorted(p.name for p in out.iterdir()) == [MANIFEST, "second.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".partial")]


def _notebook(path: Path) -> Path:
    path.write_text(json.dumps({"cells": [{"cell_type": "code", "source": "print(1)", "metadata": {},
                                           "outputs": [], "execution_count": None}],
                                "metadata": {}, "nbformat": 4, "nbformat_minor": 5}))
    return path


def test_bundle_kernel_writes_push_ready_folder(tmp_path):
    notebook = _notebook(tmp_path / "inference.ipynb")
    report = bundle_kernel(notebook, tmp_path / "kernel", datasets=["wsdm-helpers-wheels", "wsdm-adapter"],
                           models=["google/gemma-2/transformers/gemma-2-9b-it/2"])
    meta = json.loads((tmp_path / "kernel" / "kernel-metadata.json").read_text())
    assert meta["code_file"] == "inference.ipynb" and (tmp_path / "kernel" / "inference.ipynb").is_file()
    assert meta["dataset_sources"] == ["tester/wsdm-helpers-wheels", "tester/wsdm-adapter"]
    assert meta["competition_sources"] == [COMPETITION] and meta["enable_internet"] is False
    assert [f["path"] for f in report.files] == ["inference.ipynb"]
    (tmp_path / "broken.ipynb").write_text("{not json")
    with pytest.raises(BundleError, match="not a notebook"):
        bundle_kernel(tmp_path / "broken.ipynb", tmp_path / "kernel2")


# ---- CLI -------------------------------------------------------------------------------------------
def test_cli_bundle_adapter_kernel_and_check(tmp_path, capsys):
    run = _run_dir(tmp_path / "run", source="pypi:gemma3-270m")
    assert main(["bundle", "adapter", str(run), "--out", str(tmp_path / "a"), "--slug", "wsdm-adapter-tiny",
                 "--title", "WSDM adapter tiny"]) == 0
    assert json.loads((tmp_path / "a" / "dataset-metadata.json").read_text())["id"] == "tester/wsdm-adapter-tiny"
    notebook = _notebook(tmp_path / "inference.ipynb")
    assert main(["bundle", "kernel", "--notebook", str(notebook), "--out", str(tmp_path / "k"),
                 "--dataset", "wsdm-helpers-wheels", "--dataset", "wsdm-adapter-tiny", "--username", "someone"]) == 0
    out = capsys.readouterr().out
    assert "kaggle datasets create -p" in out and "--accelerator NvidiaTeslaT4" in out
    assert main(["bundle", "check", str(tmp_path / "k")]) == 0
    os.remove(tmp_path / "k" / "inference.ipynb")
    assert main(["bundle", "check", str(tmp_path / "k")]) == 2
    assert "code_file 'inference.ipynb' is not in" in capsys.readouterr().err
