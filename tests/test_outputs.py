"""Outputs: umask permissions, early write/space checks, bundles that never delete a user's files."""
from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
from test_kaggle import _run_dir, no_kaggle_env  # noqa: F401 (autouse fixture)

from wsdm_helpers import io
from wsdm_helpers.cli import main
from wsdm_helpers.errors import BundleError, OutputError
from wsdm_helpers.kaggle.adapter import bundle_adapter
from wsdm_helpers.kaggle.checks import MANIFEST
from wsdm_helpers.kaggle.common import staged_folder


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_027():
    old = os.umask(0o027)
    yield
    os.umask(old)


def test_atomic_files_and_bundle_folders_get_umask_permissions(tmp_path, umask_027):
    path = io.atomic_write_text(tmp_path / "a.txt", "x")
    assert _mode(path) == 0o640
    os.umask(0o002)
    assert _mode(io.atomic_write_json(tmp_path / "b.json", {})) == 0o664
    bundle_adapter(_run_dir(tmp_path / "run", source="pypi:gemma3-270m"), tmp_path / "bundle")
    assert _mode(tmp_path / "bundle") == 0o775
    assert _mode(tmp_path / "bundle" / MANIFEST) == 0o664
    assert _mode(tmp_path / "bundle" / "config.yaml") == 0o664


def test_check_output_dir_refuses_unwritable_and_full_folders(tmp_path, monkeypatch):
    with pytest.raises(OutputError, match="not writable"):
        io.check_output_dir("/proc/wsdm-out")  # not writable even for root
    (tmp_path / "file").write_text("x")
    with pytest.raises(OutputError, match="not writable"):
        io.check_output_dir(tmp_path / "file" / "sub")
    monkeypatch.setattr(io, "disk_free", lambda folder: 10 * 2**20)
    with pytest.raises(OutputError, match=r"has 10 MB free, 64 MB needed"):
        io.check_output_dir(tmp_path / "out")
    assert list((tmp_path / "out").iterdir()) == []  # the probe file is gone


def test_bundle_never_deletes_a_users_folder_with_a_stray_manifest(tmp_path, capsys):
    """The reported loss: DIR with any manifest.json was rmtree'd."""
    user = tmp_path / "webapp"
    (user / "src").mkdir(parents=True)
    (user / "src" / "important.py").write_text("keep me")
    (user / MANIFEST).write_text(json.dumps({"name": "webapp", "files": []}))
    run = _run_dir(tmp_path / "run", source="pypi:gemma3-270m")
    for extra in ([], ["--replace"]):
        assert main(["bundle", "adapter", str(run), "--out", str(user), *extra]) == 2
        assert "not a bundle" in capsys.readouterr().err
    assert (user / "src" / "important.py").read_text() == "keep me"


def test_rebuild_needs_replace_and_keeps_foreign_files(tmp_path, capsys):
    run = _run_dir(tmp_path / "run", source="pypi:gemma3-270m")
    out = tmp_path / "bundle"
    assert main(["bundle", "adapter", str(run), "--out", str(out)]) == 0
    assert main(["bundle", "adapter", str(run), "--out", str(out)]) == 2
    assert "pass --replace" in capsys.readouterr().err
    assert main(["bundle", "adapter", str(run), "--out", str(out), "--replace"]) == 0
    (out / "notes.txt").write_text("mine")
    assert main(["bundle", "adapter", str(run), "--out", str(out), "--replace"]) == 2
    assert "holds files the earlier bundle did not write (notes.txt)" in capsys.readouterr().err
    assert (out / "notes.txt").read_text() == "mine"


def test_staged_folder_refuses_a_symlinked_target(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(BundleError, match="not a folder"):
        with staged_folder(tmp_path / "link"):
            pass


def test_run_folder_with_a_symlinked_dir_is_refused_before_copying(tmp_path):
    run = _run_dir(tmp_path / "run", source="pypi:gemma3-270m")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "x.json").write_text('{"path": "/home/alice/x"}')
    (run / "tokenizer" / "extra").symlink_to(outside, target_is_directory=True)
    with pytest.raises(BundleError, match=r"tokenizer/extra is a symlink to .*outside: copy the real"):
        bundle_adapter(run, tmp_path / "bundle")
    assert not (tmp_path / "bundle").exists()
    assert (outside / "x.json").read_text() == '{"path": "/home/alice/x"}'


def test_atomic_dir_publishes_only_a_complete_folder(tmp_path):
    from wsdm_helpers.io import atomic_dir

    target = tmp_path / "run" / "adapter"
    with atomic_dir(target) as tmp:
        (tmp / "weights").write_text("v1")
    assert (target / "weights").read_text() == "v1"
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / "weights").write_text("half")
        raise RuntimeError("killed half-way")
    assert (target / "weights").read_text() == "v1"  # the old folder stays whole
    with atomic_dir(target) as tmp:
        (tmp / "other").write_text("v2")
    assert sorted(p.name for p in target.iterdir()) == ["other"]  # replaced, no stale files mixed in
    with atomic_dir(target, replace=False) as tmp:  # someone else's complete copy wins
        (tmp / "mine").write_text("v3")
    assert sorted(p.name for p in target.iterdir()) == ["other"]
    assert sorted(p.name for p in target.parent.iterdir()) == ["adapter"]  # no temporary folders left
