"""The pip requirements logged with the pyfunc: what a served model needs, at installed versions.

The version ranges live only in pyproject.toml. A model is logged with the exact versions of the
environment that trained it (as MLflow's own inference would pin them, without its 8-13 s
subprocess: NOTES.md), and tests/unit/test_pyfunc_requirements.py checks that every pin falls
inside pyproject's range for that package.
"""

from __future__ import annotations

from importlib import metadata

from taglens.params import ENGINES

# The distributions a served taglens model imports (the taglens package itself travels as code).
SERVING_PACKAGES = (
    "mlflow",
    "tensorflow-cpu",
    "keras",
    "numpy",
    "pillow",  # request images are checked and normalized as ingest does
    "pandas",
    "pydantic",
    "pyyaml",
)


def serving_packages(engine: str | None = None) -> tuple[str, ...]:
    """SERVING_PACKAGES plus what `engine` runs on (None: a model that serves on tensorflow).

    What each engine needs is `taglens.params.ENGINES[engine].distributions`.

    Raises:
        ValueError: an engine this table does not know.
    """
    if engine is None:
        return SERVING_PACKAGES
    if engine not in ENGINES:
        known = ", ".join(ENGINES)
        raise ValueError(f"featurize.engine must be one of {known}, got {engine!r}")
    return SERVING_PACKAGES + ENGINES[engine].distributions


def pip_requirements(engine: str | None = None) -> list[str]:
    """`NAME==VERSION` for each package a model on `engine` needs, at the version installed here.

    Raises:
        ValueError: an unknown engine.
        metadata.PackageNotFoundError: a package is not installed (the environment is not the
            one pyproject.toml describes).
    """
    return [f"{name}=={metadata.version(name)}" for name in serving_packages(engine)]
