"""One notebook session as Kaggle (or Colab) runs it: no network, a read-only input tree, a fresh image.

Each session is its own process under ``unshare -n -m`` (root): a network namespace with only its
loopback interface (up: the Jupyter kernel talks over it), and a mount namespace in which the rehearsal's tree is bind-mounted at ``/kaggle``
(``input/`` read-only) or at ``/content`` for Colab, and the image's venv is overlaid with an empty
upper layer, so whatever a session installs is gone at the next one, as on Kaggle. ``working/`` is
emptied before every session; what it holds afterwards is the session's output, copied aside so a
later session can attach it as an input dataset.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import MissingResourceError

MOUNT_SCRIPT = r"""
set -e
ip link set lo up  # loopback only: the Jupyter kernel talks to papermill over 127.0.0.1, as on Kaggle
mount --make-rprivate /
mount --bind "$TREE" "$MOUNT_AT"
if [ -d "$TREE/input" ]; then mount --bind "$TREE/input" "$MOUNT_AT/input"; mount -o remount,bind,ro "$MOUNT_AT/input"; fi
mount -t overlay overlay -o "lowerdir=$VENV,upperdir=$UPPER,workdir=$OVERLAY_WORK" "$VENV"
cd "$WORKDIR"
set +e
"$@"
rc=$?
"$VENV/bin/python" -m pip list --format json > "$VERSIONS" 2>/dev/null
exit $rc
"""


@dataclass
class SessionResult:
    name: str
    image: str
    seconds: float
    returncode: int
    log: Path
    output: Path
    files: list[str] = field(default_factory=list)
    versions: dict[str, str] = field(default_factory=dict)
    checks: list[str] = field(default_factory=list)


def require_root_namespaces() -> None:
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("ip") is None:
        raise MissingResourceError("the rehearsal runs each session under `unshare -n -m`: it needs root, "
                                   "util-linux's unshare and iproute2's ip")


def _clean_env(extra: dict[str, str], venv: Path, home: Path) -> dict[str, str]:
    """What a notebook process sees: the image's PATH, Kaggle's variables, no pip configuration of ours."""
    return {"PATH": f"{venv}/bin:/usr/local/bin:/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8",
            "PIP_CONFIG_FILE": os.devnull, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PYTHONUNBUFFERED": "1",
            "MPLBACKEND": "Agg", "TOKENIZERS_PARALLELISM": "false", **extra}


def run_session(name: str, image: str, venv: Path, tree: Path, argv: list[str], *, env: dict[str, str],
                logs: Path, mount_at: str = "/kaggle", workdir: str = "/kaggle/working",
                working: str | None = "working", timeout: float = 1800) -> SessionResult:
    """Run ``argv`` as one fresh session of ``image`` with ``tree`` mounted at ``mount_at``.

    ``working`` (a folder of ``tree``) is emptied before the session and copied to ``logs/outputs/NAME``
    after it: the session's output. Colab's ``/content`` is reset by the caller instead (``None``).
    Paths are made absolute first: the session runs in ``workdir``, where a relative one means nothing.
    """
    venv, tree, logs = venv.resolve(), tree.resolve(), logs.resolve()
    if working is not None:
        if (tree / working).exists():
            shutil.rmtree(tree / working)
        (tree / working).mkdir(parents=True)
    Path(mount_at).mkdir(exist_ok=True)  # an empty mount point on the host; the tree appears only inside
    logs.mkdir(parents=True, exist_ok=True)
    log, versions = logs / f"{name}.log", logs / f"{name}.versions.json"
    with tempfile.TemporaryDirectory(prefix=f"wsdm-session-{name}-") as tmp:
        upper, work, home = Path(tmp) / "upper", Path(tmp) / "work", Path(tmp) / "home"
        for folder in (upper, work, home):
            folder.mkdir()
        variables = {"TREE": str(tree), "MOUNT_AT": mount_at, "VENV": str(venv), "UPPER": str(upper),
                     "OVERLAY_WORK": str(work), "WORKDIR": workdir, "VERSIONS": str(versions)}
        command = ["unshare", "-n", "-m", "sh", "-c", MOUNT_SCRIPT, "session", *argv]
        started = time.monotonic()
        with log.open("w") as out:
            out.write(f"$ {shlex.join(argv)}\n")
            out.flush()
            done = subprocess.run(command, env={**_clean_env(env, venv, home), **variables}, stdout=out,
                                  stderr=subprocess.STDOUT, timeout=timeout)
        seconds = time.monotonic() - started
    output = logs / "outputs" / name
    if output.exists():
        shutil.rmtree(output)
    shutil.copytree(tree / (working or "."), output, symlinks=True)
    files = sorted(p.relative_to(output).as_posix() for p in output.rglob("*") if p.is_file())
    listed = json.loads(versions.read_text()) if versions.is_file() and versions.stat().st_size else []
    return SessionResult(name, image, seconds, done.returncode, log, output, files,
                         {item["name"].lower().replace("_", "-"): item["version"] for item in listed})
