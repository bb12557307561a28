"""Print pip constraints that pin the ML stack of setup.py to its floors (``make test-floors``)."""
import ast
import re
from pathlib import Path

STACK = {"torch", "transformers", "peft", "accelerate", "tokenizers"}
SETUP = Path(__file__).resolve().parents[1] / "setup.py"


def floors() -> dict[str, str]:
    """Every ``name>=version`` requirement of setup.py (install_requires and extras), by package name."""
    found = {}
    for node in ast.walk(ast.parse(SETUP.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)", node.value.split(";")[0].strip())
            if match:
                found[match[1]] = match[2]
    return found


if __name__ == "__main__":
    for name, version in floors().items():
        if name in STACK and name != "torch":  # torch: the Makefile's pinned build
            print(f"{name}=={version}")
