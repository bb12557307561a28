"""Output files and folders: atomic writes (a temporary sibling renamed into place), umask permissions, early checks.

:func:`check_output_file` is the one rule every command applies to its output files before any work:
not a folder, an extension that names the format written, never one of the command's own inputs.

``tempfile.mkstemp`` / ``mkdtemp`` create private (0600 / 0700) entries, and a rename keeps the mode, so
every temporary file or folder made here is given the mode a plain ``open`` / ``mkdir`` would have
under the current umask; so is everything in a folder :func:`atomic_dir` publishes (safetensors writes
its files 0600 the same way, and a copy keeps the source's mode). :func:`check_output_dir` runs before
long work, so that a read-only or full output folder fails in a second rather than after the whole job.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .errors import OutputError

log = logging.getLogger(__name__)

MIN_FREE_BYTES = 64 * 2**20  # what a submission, predictions and logs need at least
LOCK_FILE = ".wsdm-writer.lock"
COMPRESSED = (".gz", ".bz2", ".xz", ".zip", ".zst")  # names a reader would decompress; writers never compress


def umask_mode(folder: bool = False) -> int:
    """The mode ``open`` (0o666) or ``mkdir`` (0o777) gives a new entry under the current umask."""
    mask = os.umask(0o022)
    os.umask(mask)
    return (0o777 if folder else 0o666) & ~mask


def fresh_dir(parent: str | Path, name: str, suffix: str = "") -> Path:
    """A new, uniquely named hidden folder in ``parent`` with umask permissions (not mkdtemp's 0700)."""
    folder = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=suffix, dir=parent))
    folder.chmod(umask_mode(folder=True))
    return folder


def disk_free(folder: Path) -> int:
    return shutil.disk_usage(folder).free


def check_not_a_file(folder: str | Path, what: str = "output") -> Path:
    """``folder`` unless a file (or anything but a folder) already has its name."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"{what} folder {folder} is a file, not a folder. Fix: give a new or existing folder, "
                          "or move the file away")
    return folder


def check_output_dir(folder: str | Path, need_bytes: int = MIN_FREE_BYTES, what: str = "output") -> Path:
    """Create ``folder`` if needed and prove it writable with ``need_bytes`` free; OutputError otherwise."""
    folder = check_not_a_file(folder, what)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise OutputError(f"{what} folder {folder} is not writable ({exc.strerror or exc}). Fix: choose a folder "
                          "you can write to, or fix its permissions") from exc
    free = disk_free(folder)
    if free < need_bytes:
        raise OutputError(f"{what} folder {folder} has {free / 2**20:.0f} MB free, {need_bytes / 2**20:.0f} MB "
                          "needed. Fix: free disk space or choose a folder on another disk")
    return folder


def same_file(a: str | Path, b: str | Path) -> bool:
    """One file under two names: the same resolved path, or (both existing) the same inode (a hard link)."""
    a, b = Path(a), Path(b)
    if a.exists() and b.exists():
        return os.path.samefile(a, b)
    return a.resolve() == b.resolve()


def check_output_suffix(path: str | Path, formats: Mapping[str, str], what: str = "output") -> Path:
    """``path`` when its extension is one of ``formats`` (extension -> the format written under it)."""
    path = Path(path)
    if path.suffix.lower() in formats:
        return path
    base = path.with_suffix("").with_suffix("") if path.suffix.lower() in COMPRESSED else path.with_suffix("")
    named = f"ends in '{path.suffix}'" if path.suffix else "has no extension"
    written = " or ".join(dict.fromkeys(formats.values()))
    raise OutputError(f"{what} {path}: this file is written as {written} ({', '.join(formats)}), but its name "
                      f"{named}. Fix: name the output {base.name}{next(iter(formats))}")


def check_output_file(path: str | Path, formats: Mapping[str, str], what: str = "output",
                      inputs: Mapping[str, str | Path | Sequence[str | Path] | None] | None = None) -> Path:
    """Refuse, before any work, an output file that is a folder, is named for another format, or is one
    of the command's own ``inputs`` (what each is -> its path or paths; other outputs count too); then
    prove its folder writable."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{what} {path} is a folder; {what} names a file. Fix: give a file path, e.g. "
                          f"{path / ('output' + next(iter(formats)))}")
    check_output_suffix(path, formats, what)
    for name, given in (inputs or {}).items():
        for other in [given] if isinstance(given, (str, Path)) else given or ():
            if same_file(path, other):
                raise OutputError(f"{what} {path} is {name} {other}: writing it would replace that file. Fix: "
                                  f"give {what} a new file name")
    check_output_dir(path.parent, what=f"the folder of {path}")
    return path


@contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder; on success rename it onto ``path``, else delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        tmp_path.chmod(umask_mode())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextmanager
def atomic_dir(path: str | Path, suffix: str = "", replace: bool = True) -> Iterator[Path]:
    """Yield a fresh hidden sibling folder; on success it takes the place of ``path``, else it is deleted.

    With ``replace=False`` a ``path`` that exists by then (another process finished first) is kept and
    the new copy dropped.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = fresh_dir(path.parent, path.name, suffix)
    try:
        yield tmp
        if path.exists() and not replace:
            return
        _give_umask_modes(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _give_umask_modes(folder: Path) -> None:
    """Every file and folder under ``folder`` gets the umask's mode (executables keep their x bits)."""
    file_mode, dir_mode = umask_mode(), umask_mode(folder=True)
    for root, dirs, names in os.walk(folder):
        for name in dirs:
            os.chmod(os.path.join(root, name), dir_mode)
        for name in names:
            entry = os.path.join(root, name)
            if not os.path.islink(entry):
                os.chmod(entry, dir_mode if os.stat(entry).st_mode & 0o111 else file_mode)


def atomic_write_text(path: str | Path, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def atomic_write_json(path: str | Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def atomic_write_parquet(frame: Any, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)
    return Path(path)


def atomic_write_csv(frame: Any, path: str | Path) -> Path:
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, index=False)
    return Path(path)


@contextmanager
def writer_lock(folder: str | Path, what: str = "output folder") -> Iterator[Path]:
    """Hold the writer lock of ``folder``: an flock on ``FOLDER/.wsdm-writer.lock``, which holds the pid.

    A second writer gets OutputError naming the holder's pid. The kernel releases the flock of a process
    that dies, so a lock file left by a killed writer is taken over (logged with its pid)."""
    import fcntl

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_FILE
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, umask_mode())
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_pid(fd)
            os.close(fd)
            raise OutputError(f"{what} {folder} is being written by another process (pid {holder}). Fix: wait for "
                              f"it to end, or choose another {what}") from None
        if path.exists() and os.stat(path).st_ino == os.fstat(fd).st_ino:
            break
        os.close(fd)  # the holder removed the file between our open and our lock: lock the new one
    previous = _read_pid(fd)
    if previous != "unknown":
        log.warning("%s: the lock of pid %s, which is no longer running, is taken over", folder, previous)
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)
        os.close(fd)


def _read_pid(fd: int) -> str:
    return os.pread(fd, 64, 0).decode("ascii", "replace").strip() or "unknown"
