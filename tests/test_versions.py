"""The version floors in setup.py hold for the environment the suite runs in.

A floor below what the code needs lets pip keep an older library that then fails at run time (for
example transformers 5.1 has no ``train_sampling_strategy``). ``make test-floors`` runs the training
and inference tests on exactly these floors.
"""
from importlib import metadata

import pytest
from packaging.requirements import Requirement


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
