"""How a models/ folder is logged as an MLflow pyfunc, and found and loaded back.

Logging: the Keras model, model_info.json, hashtags.json and the optional files are the
artifacts; the taglens package travels as code and `taglens/serving/pyfunc_entry.py` is the
model's code file (models from code: nothing is pickled), so the logged model needs no taglens
install to be served, and what it does when served is `taglens.serving.pyfunc`. The model_config
records the engine it runs on (`featurize.engine`), its precision and the views it averages; the
signature takes one string column `image` and a `top_k` param.

Requirements: a model is logged with the exact versions of the environment that trained it (as
MLflow's own inference would pin them, without its 8-13 s subprocess: NOTES.md). The version
ranges live only in pyproject.toml; tests/unit/test_pyfunc_requirements.py checks that every pin
falls inside them.

Loading back: `load_logged` loads a logged or registered model as an in-process
HashtagPredictor; `logged_model_uri` finds the model a train run logged.
"""

from __future__ import annotations

import base64
import io
import logging
import shutil
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from taglens import artifacts
from taglens.artifacts import HASHTAGS, read_json_object, read_model_info
from taglens.errors import TaglensError
from taglens.features.engines import ENGINE_PARAM, precision_of
from taglens.model.predictor import MODEL_FILES, OPTIONAL_FILES, HashtagPredictor
from taglens.params import ENGINES, IngestParams

logger = logging.getLogger(__name__)

INPUT_COLUMN = "image"
ARTIFACT_KEY = "models"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the whole taglens package
# The model's code file. Its path and its import are stored in every logged model: never move them.
ENTRY_FILE = PACKAGE_DIR / "serving" / "pyfunc_entry.py"
PRECISION_KEY = "featurize.precision"  # model_config: int8 (openvino-int8) or fp32
PRECISION_TAG = "precision"  # the same, as a tag on the run that logged the model
VIEWS_KEY = "train.views"  # the model_config key naming the views the model averages
# model_config: the largest request image the served model accepts, the web page's own limit
MAX_UPLOAD_KEY = "serve.max_upload_mb"


class ModelNotFoundError(LookupError, TaglensError):
    """No model answers to the requested URI, name, version or alias.

    A TaglensError too: like every error a user fixes by a command or a setting, entry points
    print it as one line (taglens.cli.run_main).
    """


class ModelStoreError(TaglensError):
    """The MLflow store could not be read while loading a model (it may pass: retry later)."""


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


def example_image(size: int) -> bytes:
    """Return a small PNG (a gradient) used as the logged input example."""
    from PIL import Image

    ramp = np.linspace(0, 255, size, dtype=np.uint8)
    pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], ramp[::-1][None, :]), -1)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format="PNG")
    return buffer.getvalue()


def _signature(top_k: int):
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(
        inputs=Schema([ColSpec("string", INPUT_COLUMN)]),
        params=ParamSchema([ParamSpec("top_k", "long", top_k)]),
    )


def served_config(engine: str | None, info: dict[str, Any]) -> dict[str, str] | None:
    """The pyfunc's model_config: the engine it runs on, its precision, and the views averaged.

    The views (`image`, `flip`, `crops`) are model_info.json's; the Keras model computes them
    itself, so batch predict, the web page and `mlflow models serve` average the same ones.
    """
    config = {ENGINE_PARAM: engine, PRECISION_KEY: precision_of(engine)} if engine else {}
    if info.get("views"):
        config[VIEWS_KEY] = ",".join(info["views"])
    return config or None


def log_taglens_model(
    models_dir: Path,
    *,
    name: str = "model",
    ingest: IngestParams,
    max_upload_mb: float,
    engine: str | None = None,
):
    """Log `models_dir` as a taglens pyfunc into the active MLflow run.

    The Keras model, model_info.json and hashtags.json are the artifacts; the taglens package
    travels as code, so the logged model needs no taglens install to be served. `ingest`, the
    params training images were checked with, is logged as ingest.json: the served model checks
    request images with the same limits (without it, the served model refuses to load).
    `max_upload_mb` (`serve.max_upload_mb`, the web page's limit) is recorded in the model_config:
    the served model refuses larger request images too. `engine` (the train run's
    `featurize.engine`, or what train made of it: openvino-int8 when it quantized the model,
    openvino when INT8 was not kept) is recorded as the one the served model runs on, with its
    precision (model_config and the run's `precision` tag); without it the model serves on
    tensorflow.

    Returns:
        mlflow.models.model.ModelInfo of the logged model.

    Raises:
        FileNotFoundError: a model file is missing.
        RuntimeError: no MLflow run is active.
    """
    import mlflow.pyfunc
    import pandas as pd

    models_dir = Path(models_dir)
    if mlflow.active_run() is None:
        raise RuntimeError("log_taglens_model logs into the active run: call mlflow.start_run()")
    missing = [f for f in MODEL_FILES if not (models_dir / f).is_file()]
    if missing:
        raise FileNotFoundError(f"{models_dir} lacks {', '.join(missing)}: run the train stage")
    info = read_model_info(models_dir)
    top_k = read_json_object(HASHTAGS, models_dir)["params"]
    with tempfile.TemporaryDirectory() as tmp:
        staged = Path(tmp) / ARTIFACT_KEY
        staged.mkdir()
        for file in MODEL_FILES:  # only these: models/ may hold other, unrelated outputs
            shutil.copy2(models_dir / file, staged / file)
        # every logged model carries its ingest params: the served model refuses to load without
        ingest_file = staged / artifacts.LOGGED_INGEST
        ingest_file.write_text(ingest.model_dump_json(), encoding="utf-8")
        for file in OPTIONAL_FILES:
            if (models_dir / file).is_file():
                shutil.copy2(models_dir / file, staged / file)
        example = pd.DataFrame(
            {INPUT_COLUMN: [base64.b64encode(example_image(int(info["image_size"]))).decode()]}
        )
        model_info = mlflow.pyfunc.log_model(
            name=name,
            # Models from code: MLflow stores this file instead of a cloudpickle of the object.
            python_model=str(ENTRY_FILE),
            artifacts={ARTIFACT_KEY: str(staged)},
            code_paths=[str(PACKAGE_DIR)],
            signature=_signature(int(top_k["top_k"])),
            input_example=example,
            # Explicit requirements: letting MLflow infer them costs 8-13 s (NOTES.md).
            # The engine's own package too: the model must run on it where it is served.
            pip_requirements=pip_requirements(engine),
            model_config={**(served_config(engine, info) or {}), MAX_UPLOAD_KEY: max_upload_mb},
        )
    if engine:
        mlflow.set_tag(PRECISION_TAG, precision_of(engine))
    logger.info("logged taglens pyfunc %s", model_info.model_uri)
    return model_info


# MLflow error codes that mean the model, version or alias is not there (others, such as
# TEMPORARILY_UNAVAILABLE or an HTTP failure, say the store could not be read)
ABSENT_CODES = frozenset({"RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"})


def load_logged(model_uri: str) -> HashtagPredictor:
    """Load a logged or registered taglens pyfunc back as an in-process HashtagPredictor.

    Its model runs on the engine the pyfunc chose when loaded (see
    `taglens.serving.pyfunc.TaglensModel`).

    Args:
        model_uri: any MLflow model URI, e.g. `models:/taglens/3` or `runs:/ID/model`.

    Raises:
        ModelNotFoundError: the model, version or alias does not exist.
        ModelStoreError: the store or server failed otherwise (unavailable, a timeout): it may
            pass.
    """
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except MlflowException as exc:
        first = exc.message.splitlines()[0] if exc.message else exc.error_code
        if exc.error_code not in ABSENT_CODES:
            raise ModelStoreError(
                f"cannot load {model_uri}: the MLflow store failed ({exc.error_code}: {first}); "
                "check that the tracking server or database is up, then run again"
            ) from None
        raise ModelNotFoundError(
            f"cannot load {model_uri}: {first}. If there is no champion "
            "yet: run `dvc repro` or `python -m stages.register ...`"
        ) from None
    # The served wrapper (taglens.serving.pyfunc.TaglensModel) holds the loaded predictor; its
    # class is not imported here, which would point this layer up at serving.
    predictor = getattr(model.unwrap_python_model(), "predictor", None)
    if not isinstance(predictor, HashtagPredictor):
        raise ModelNotFoundError(f"{model_uri} is not a taglens model")
    return predictor


def logged_model_uri(run_id: str, name: str = "model") -> str:
    """Return the URI of the model `name` logged in run `run_id` (`models:/m-...`).

    Raises:
        ModelNotFoundError: the run does not exist or logged no such model.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from taglens.tracking import redact_uri

    try:
        run = mlflow.get_run(run_id)
    except MlflowException:
        raise ModelNotFoundError(
            f"MLflow run {run_id} not found in {redact_uri(mlflow.get_tracking_uri())}: "
            "was the train stage run against this tracking store?"
        ) from None
    models = mlflow.search_logged_models(
        experiment_ids=[run.info.experiment_id],
        filter_string=f"source_run_id = '{run_id}'",
        output_format="list",
    )
    for model in models:
        if model.name == name:
            return f"models:/{model.model_id}"
    raise ModelNotFoundError(
        f"run {run_id} logged no model named {name!r}: the train stage must call "
        "taglens.model.pyfunc.log_taglens_model inside its run"
    )
