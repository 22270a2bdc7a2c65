"""The pyfunc's pip requirements pin what is installed, inside pyproject.toml's ranges."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from taglens.serving.pyfunc_requirements import SERVING_PACKAGES, pip_requirements

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _project_ranges() -> dict[str, Requirement]:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    return {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}


def test_every_pin_is_an_installed_version_inside_pyprojects_range():
    ranges = _project_ranges()
    pins = [Requirement(line) for line in pip_requirements()]

    assert [canonicalize_name(pin.name) for pin in pins] == [
        canonicalize_name(name) for name in SERVING_PACKAGES]
    for pin in pins:
        (spec,) = pin.specifier
        assert spec.operator == "=="
        assert spec.version == metadata.version(pin.name)
        project = ranges.get(canonicalize_name(pin.name))
        assert project is not None, f"{pin.name} is served but not a dependency in pyproject.toml"
        assert project.specifier.contains(spec.version, prereleases=True), (
            f"{pin} is outside pyproject.toml's {project}")


def test_a_pin_outside_the_range_would_be_caught():
    ranges = _project_ranges()
    assert not ranges["mlflow"].specifier.contains("3.18.0")
    assert not ranges["tensorflow-cpu"].specifier.contains("2.20.0")
