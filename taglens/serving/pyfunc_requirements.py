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


# What each `featurize.engine` needs beyond SERVING_PACKAGES (TensorFlow builds the Keras model
# for every engine). Without them an environment MLflow builds from the requirements serves on
# TensorFlow with only a warning. ONNX Runtime runs what tf2onnx converts, which needs onnx.
ENGINE_PACKAGES: dict[str, tuple[str, ...]] = {
    "tensorflow": (),
    "openvino": ("openvino",),
    "onnxruntime": ("onnxruntime", "tf2onnx", "onnx"),
    "openvino-int8": ("openvino",),  # runs the INT8 model train wrote: no NNCF needed to serve
}


def serving_packages(engine: str | None = None) -> tuple[str, ...]:
    """SERVING_PACKAGES plus what `engine` runs on (None: a model that serves on tensorflow).

    Raises:
        ValueError: an engine this table does not know.
    """
    if engine is None:
        return SERVING_PACKAGES
    if engine not in ENGINE_PACKAGES:
        known = ", ".join(ENGINE_PACKAGES)
        raise ValueError(f"featurize.engine must be one of {known}, got {engine!r}")
    return SERVING_PACKAGES + ENGINE_PACKAGES[engine]


def pip_requirements(engine: str | None = None) -> list[str]:
    """`NAME==VERSION` for each package a model on `engine` needs, at the version installed here.

    Raises:
        ValueError: an unknown engine.
        metadata.PackageNotFoundError: a package is not installed (the environment is not the
            one pyproject.toml describes).
    """
    return [f"{name}=={metadata.version(name)}" for name in serving_packages(engine)]
