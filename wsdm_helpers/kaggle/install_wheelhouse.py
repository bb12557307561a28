"""Install wsdm_helpers from the wheelhouse this file sits in, with no network (``python install.py``).

``wsdm bundle wheels`` copies this file into the wheelhouse as ``install.py``; the notebooks' install
cell runs it on the notebook's own interpreter. Standard library only: it runs before anything of
ours is installed. It checks the interpreter against the wheelhouse's target before pip runs (a
compiled wheel built for another Python would fail half-way), installs ``requirements.txt`` with
``--no-index`` (every version pinned; what the image already has at that version stays), then prints the
versions the notebook ends with. Exit code 2: the wheelhouse does not fit this interpreter.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPORTED = ("wsdm_helpers", "torch", "transformers", "tokenizers", "accelerate", "peft", "bitsandbytes",
            "huggingface-hub", "safetensors", "numpy", "pandas", "pyarrow", "scikit-learn")


def interpreter_problem(target: dict, running: str, torch: str | None) -> str | None:
    wanted = target.get("python_version")
    if wanted and wanted != running:
        return (f"this wheelhouse was built for Python {wanted}, but this notebook runs Python {running}: "
                f"rebuild it with `wsdm bundle wheels --python-version {running} --torch {torch or 'VERSION'} ...` "
                "(or --image NAME for a declared image) and attach the new version")
    return None


def _versions() -> dict[str, str]:
    listed = subprocess.run([sys.executable, "-m", "pip", "list", "--format", "json"], check=True,
                            capture_output=True, text=True).stdout
    found = {item["name"].lower().replace("_", "-"): item["version"] for item in json.loads(listed)}
    return {name: found.get(name.lower().replace("_", "-"), "-") for name in REPORTED}


def main() -> int:
    here = Path(__file__).resolve().parent
    target = json.loads((here / "manifest.json").read_text(encoding="utf-8")).get("target", {})
    running = f"{sys.version_info.major}.{sys.version_info.minor}"
    before = _versions()
    problem = interpreter_problem(target, running, None if before["torch"] == "-" else before["torch"])
    if problem:
        print(f"wsdm_helpers install: {problem}", file=sys.stderr)
        return 2
    carried = target.get("torch_installed", target.get("torch"))
    if carried and carried != target.get("torch") and target.get("vllm"):
        print(f"wsdm_helpers install: the wheelhouse carries vLLM {target['vllm']}, which pins torch {carried}: it "
              f"replaces this image's torch {before['torch']} (a few minutes)", flush=True)
    elif carried and carried != target.get("torch"):
        print(f"wsdm_helpers install: this image's torch {before['torch']} is below wsdm_helpers' floor: the "
              f"wheelhouse installs torch {carried} (a few minutes)", flush=True)
    elif target.get("torch") and before["torch"].split("+")[0] not in ("-", target["torch"]):
        print(f"wsdm_helpers install: note: the wheelhouse was resolved against torch {target['torch']}, this "
              f"image has torch {before['torch']}; pip checks the requirements either way", file=sys.stderr)
    command = [sys.executable, "-m", "pip", "install", "-q", "--no-compile", "--no-index", "--find-links", str(here),
               "-r", str(here / "requirements.txt")]
    print(f"wsdm_helpers install: Python {running}, {len(list(here.glob('*.whl')))} wheels in {here}", flush=True)
    done = subprocess.run(command)
    if done.returncode != 0:
        return done.returncode
    after = _versions()
    print("wsdm_helpers install: done; versions now (before -> after where pip changed them):")
    for name in REPORTED:
        change = after[name] if before[name] == after[name] else f"{before[name]} -> {after[name]}"
        print(f"  {name:16} {change}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
