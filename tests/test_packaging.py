"""The package installs next to Colab's preinstalled stack without replacing any of it."""

from pathlib import Path

import pytest
from packaging.requirements import Requirement

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def oldest_versions() -> dict[str, str]:
    """tests/oldest-versions.txt (what `make test-colab` installs) as name -> version."""
    lines = (ROOT / "tests/oldest-versions.txt").read_text().splitlines()
    pins = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return {pin.name: str(pin.specifier).removeprefix("==") for pin in pins}


def requirements(group=None):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    raw = project["dependencies"] if group is None else project["optional-dependencies"][group]
    return [Requirement(r) for r in raw]


def test_core_dependencies_never_pull_tensorflow():
    names = {r.name for r in requirements()}
    assert not names & {"tensorflow", "tensorflow-cpu", "tf-keras"}


def lower_bound(req: Requirement) -> str:
    (bound,) = [spec.version for spec in req.specifier if spec.operator == ">="]
    return bound


def test_every_lower_bound_is_the_version_make_test_colab_installs():
    oldest = oldest_versions()
    for req in requirements() + requirements("cpu"):
        assert req.name in oldest, f"{req.name} has no pinned oldest version in tests/oldest-versions.txt"
        assert req.specifier.contains(oldest[req.name]), f"{req} excludes the tested {oldest[req.name]}"
        # 3.10 and 3.10.0 are the same bound; padding the shorter one compares them
        bound, pinned = lower_bound(req).split("."), oldest[req.name].split(".")
        assert bound + ["0"] * (len(pinned) - len(bound)) == pinned, f"{req}'s lower bound is not what is tested"


def test_tensorflow_extras_admit_colab_and_the_newest_release():
    tested = oldest_versions()["tensorflow-cpu"]
    for group, name in (("cpu", "tensorflow-cpu"), ("gpu", "tensorflow")):
        (req,) = requirements(group)
        assert req.name == name and req.specifier.contains(tested) and req.specifier.contains("2.21.0")
