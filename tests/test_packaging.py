"""The package installs next to Colab's preinstalled stack without replacing any of it."""

from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
# Colab's GPU runtime, as its published package list showed in August 2026.
COLAB = {"keras": "3.13.2", "numpy": "2.1.3", "matplotlib": "3.10.0", "ipywidgets": "7.7.1", "tensorflow": "2.20.0"}


def requirements(group=None):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    raw = project["dependencies"] if group is None else project["optional-dependencies"][group]
    return [Requirement(r) for r in raw]


def test_core_dependencies_never_pull_tensorflow():
    names = {r.name for r in requirements()}
    assert not names & {"tensorflow", "tensorflow-cpu", "tf-keras"}


def test_colab_versions_satisfy_every_core_range():
    for req in requirements():
        if req.name in COLAB:
            assert req.specifier.contains(COLAB[req.name]), f"{req} would replace Colab's {req.name} {COLAB[req.name]}"


def test_tensorflow_extras_admit_colab_and_the_newest_release():
    for group, name in (("cpu", "tensorflow-cpu"), ("gpu", "tensorflow")):
        (req,) = requirements(group)
        assert req.name == name and req.specifier.contains("2.20.0") and req.specifier.contains("2.21.0")
