"""The version floors in setup.py hold for the environment the suite runs in.

A floor below what the code needs lets pip keep an older library that then fails at run time (for
example transformers 5.1 has no ``train_sampling_strategy``). ``make test-floors`` runs the training
and inference tests on exactly these floors.
"""
import importlib.util
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

FLOORS_SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "floors.py"


def _requirements() -> list[Requirement]:
    reqs = [Requirement(text) for text in metadata.requires("wsdm_helpers") or []]
    extras = metadata.metadata("wsdm_helpers").get_all("Provides-Extra") or []
    return [r for r in reqs
            if r.marker is None or any(r.marker.evaluate({"extra": e}) for e in [""] + extras)]


def test_every_floor_is_met_by_the_installed_versions():
    problems = []
    for req in _requirements():
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            continue  # an extra this environment does not install
        if not req.specifier.contains(installed, prereleases=True):
            problems.append(f"{req.name} {installed} does not satisfy {req}")
    assert not problems, problems


@pytest.mark.parametrize("name", ["torch", "transformers", "peft", "accelerate", "tokenizers"])
def test_the_ml_stack_has_a_floor(name):
    assert any(r.name == name and r.specifier for r in _requirements()), f"setup.py gives {name} no floor"


def _setup_floors() -> dict[str, str]:
    """setup.py's floors as .ci/floors.py reads them (the checkout's, not the installed metadata)."""
    spec = importlib.util.spec_from_file_location("floors", FLOORS_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.floors()


def test_floors_cover_what_the_code_uses():
    """bitsandbytes: what the installed transformers refuses to load 4/8-bit models below; torch 2.5:
    torch.OutOfMemoryError (inference.py); transformers 5.6: gradient accumulation divided once
    (tests/test_training.py::test_gradient_accumulation_gives_the_loss_and_gradient_of_the_whole_batch)."""
    pytest.importorskip("torch")
    from transformers.utils import BITSANDBYTES_MIN_VERSION

    floors = _setup_floors()
    needs = {"bitsandbytes": BITSANDBYTES_MIN_VERSION, "torch": "2.6", "transformers": "5.6"}
    low = {name: (floors.get(name), need) for name, need in needs.items()
           if name not in floors or Version(floors[name]) < Version(need)}
    assert not low, f"setup.py floor below what the code needs (floor, need): {low}"
