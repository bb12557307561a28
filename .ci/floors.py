"""Print pip constraints that pin the ML stack of setup.py to its floors (``make test-floors``)."""
import ast
import re
from pathlib import Path

STACK = {"torch", "transformers", "peft", "accelerate", "tokenizers"}

for node in ast.walk(ast.parse(Path(__file__).resolve().parents[1].joinpath("setup.py").read_text())):
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        match = re.fullmatch(r"([A-Za-z0-9_.-]+)>=([0-9][0-9.]*)", node.value.split(";")[0].strip())
        if match and match[1] in STACK and match[1] != "torch":  # torch: the Makefile's pinned build
            print(f"{match[1]}=={match[2]}")
