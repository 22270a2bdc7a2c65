"""The pyfunc's pip requirements pin what is installed, inside pyproject.toml's ranges."""

from __future__ import annotations

import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from taglens.features import engines
from taglens.model.pyfunc import (
    SERVING_PACKAGES,
    pip_requirements,
    serving_packages,
)
from taglens.params import ENGINES

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def _project_ranges() -> dict[str, Requirement]:
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    return {canonicalize_name(r.name): r for r in map(Requirement, project["dependencies"])}


@pytest.mark.parametrize("engine", [None, *engines.ENGINES])
def test_every_pin_is_an_installed_version_inside_pyprojects_range(engine):
    ranges = _project_ranges()
    pins = [Requirement(line) for line in pip_requirements(engine)]

    assert [canonicalize_name(pin.name) for pin in pins] == [
        canonicalize_name(name) for name in serving_packages(engine)
    ]
    for pin in pins:
        (spec,) = pin.specifier
        assert spec.operator == "=="
        assert spec.version == metadata.version(pin.name)
        project = ranges.get(canonicalize_name(pin.name))
        assert project is not None, f"{pin.name} is served but not a dependency in pyproject.toml"
        assert project.specifier.contains(spec.version, prereleases=True), (
            f"{pin} is outside pyproject.toml's {project}"
        )


def test_a_pin_outside_the_range_would_be_caught():
    ranges = _project_ranges()
    assert not ranges["mlflow"].specifier.contains("3.18.0")
    assert not ranges["tensorflow-cpu"].specifier.contains("2.20.0")


def test_each_engine_pins_what_it_imports_and_tensorflow_always():
    assert set(ENGINES) == set(engines.ENGINES)
    for engine in engines.ENGINES:
        packages = serving_packages(engine)
        assert packages[: len(SERVING_PACKAGES)] == SERVING_PACKAGES
        assert "tensorflow-cpu" in packages
        # the modules the engine checks for before it runs are among its pinned distributions
        assert set(ENGINES[engine].modules) <= set(ENGINES[engine].distributions)
    assert serving_packages("tensorflow") == serving_packages(None) == SERVING_PACKAGES
    assert "openvino" in serving_packages("openvino")
    assert {"onnxruntime", "tf2onnx", "onnx"} <= set(serving_packages("onnxruntime"))
    with pytest.raises(ValueError, match="featurize.engine must be one of"):
        serving_packages("tensorrt")
