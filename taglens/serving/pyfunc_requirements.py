"""The pip requirements logged with the pyfunc: what a served model needs, at installed versions.

The version ranges live only in pyproject.toml. A model is logged with the exact versions of the
environment that trained it (as MLflow's own inference would pin them, without its 8-13 s
subprocess: NOTES.md), and tests/unit/test_pyfunc_requirements.py checks that every pin falls
inside pyproject's range for that package.
"""

from __future__ import annotations

from importlib import metadata

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


def pip_requirements(packages: tuple[str, ...] = SERVING_PACKAGES) -> list[str]:
    """`NAME==VERSION` for each package, at the version installed here.

    Raises:
        metadata.PackageNotFoundError: a package is not installed (the environment is not the
            one pyproject.toml describes).
    """
    return [f"{name}=={metadata.version(name)}" for name in packages]
