"""The registered model: an MLflow pyfunc wrapping HashtagPredictor.

`mlflow models predict` and `mlflow models serve` then suggest hashtags with no user code.

Request format: a DataFrame with one string column `image`; each value is the base64 encoding of
the image file's bytes (in-process callers may also pass raw `bytes`), or a file path when the
serving side allows paths under a folder (see `pyfunc_inputs`, which also caps sizes and
rows and validates each image as ingest does). An optional `top_k` param (1..30)
overrides how many hashtags come back. The output is one dict per image, the same as
`HashtagPredictor.predict_bytes` plus `engine`, the runtime the model ran on, and `precision`
(int8 on openvino-int8, else fp32).

The Keras model runs on the engine the train run's `featurize.engine` named (recorded in the
pyfunc's model_config), as batch predict and the web page run it; the serving process may
choose another with TAGLENS_ENGINE. The logged pip requirements pin that engine's package, so an
environment MLflow builds from them has it. An engine that is not installed there anyway falls
back to tensorflow with a warning (and `engine` in every answer), so a model always serves.
A model train quantized (its features were INT8) records `openvino-int8` and carries its INT8
model (model-int8.xml/.bin) among its artifacts, so it serves in INT8 wherever it is served.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

from taglens.artifacts import HASHTAGS, read_json_object, read_model_info
from taglens.features.engines import ENGINE_PARAM, precision_of
from taglens.model.predictor import MODEL_FILES, OPTIONAL_FILES, HashtagPredictor
from taglens.params import IngestParams
from taglens.serving.pyfunc_inputs import INGEST_FILE, LEGACY_INGEST, InputPolicy
from taglens.serving.pyfunc_requirements import pip_requirements

logger = logging.getLogger(__name__)

INPUT_COLUMN = "image"
ARTIFACT_KEY = "models"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the whole taglens package
ENTRY_FILE = Path(__file__).with_name("pyfunc_entry.py")  # see log_taglens_model
ENGINE_ENV = "TAGLENS_ENGINE"  # set by the serving process: overrides the recorded engine
PRECISION_KEY = "featurize.precision"  # model_config: int8 (openvino-int8) or fp32
PRECISION_TAG = "precision"  # the same, as a tag on the run that logged the model
VIEWS_KEY = "train.views"  # the model_config key naming the views the model averages


class TaglensModel(mlflow.pyfunc.PythonModel):
    """The pyfunc: images in, class probabilities and ranked hashtags out."""

    # predict has no type hints on purpose (the logged signature is the schema); this tells MLflow
    # not to wrap it for hint-based validation, which would only warn about the missing hints.
    _skip_type_hint_validation = True

    def __init__(self) -> None:
        self.predictor: HashtagPredictor | None = None
        self.inputs: InputPolicy | None = None

    def load_context(self, context) -> None:
        """Load the Keras model, hashtag statistics and input limits from the model's artifacts.

        The model runs on the engine `on_served_engine` picks. The input limits are the ingest
        params logged with the model plus the serving process's own settings
        (`taglens.serving.pyfunc_inputs`).
        """
        folder = Path(context.artifacts[ARTIFACT_KEY])
        recorded = (context.model_config or {}).get(ENGINE_PARAM)
        self.predictor = on_served_engine(HashtagPredictor.from_dir(folder), recorded)
        ingest = LEGACY_INGEST
        if (folder / INGEST_FILE).is_file():
            raw = json.loads((folder / INGEST_FILE).read_text(encoding="utf-8"))
            ingest = IngestParams.model_validate(raw)
        self.inputs = InputPolicy.from_env(ingest)

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        """Predict for a DataFrame with an `image` column (base64 text, bytes, or allowed paths).

        Returns:
            One dict per row: top_class, top_probability, probabilities, hashtags, engine
            (the runtime the model ran on, so a caller sees a fallback to tensorflow) and
            precision (int8 or fp32).
        """
        import pandas as pd

        if self.predictor is None or self.inputs is None:
            raise RuntimeError("the model's artifacts are not loaded (load_context was not run)")
        if isinstance(model_input, pd.DataFrame):
            if INPUT_COLUMN not in model_input.columns:
                raise ValueError(f"expected a column {INPUT_COLUMN!r}, got {list(model_input)}")
            values = model_input[INPUT_COLUMN].tolist()
        elif isinstance(model_input, list | tuple):
            values = list(model_input)
        else:
            raise ValueError(f"expected a DataFrame with an {INPUT_COLUMN!r} column")
        predictor = self.predictor
        top_k = (params or {}).get("top_k")
        if top_k is not None and int(top_k) != predictor.params.top_k:
            update = {"top_k": int(top_k)}
            ranked = predictor.params.model_validate({**predictor.params.model_dump(), **update})
            predictor = dataclasses.replace(predictor, params=ranked)
        engine = getattr(predictor.model, "engine", "tensorflow")
        rows = predictor.predict_bytes(self.inputs.images(values))
        return [{**row, "engine": engine, "precision": precision_of(engine)} for row in rows]


def on_served_engine(
    predictor: HashtagPredictor, recorded: str | None, environ: dict[str, str] | None = None
) -> HashtagPredictor:
    """The predictor on `$TAGLENS_ENGINE`, else the `recorded` engine, else tensorflow.

    An engine that is not installed here, or cannot run this model, is logged as a warning and
    tensorflow serves instead (same outputs within 1e-4).
    """
    from taglens.features.engines import EngineError, on_engine

    engine = (environ if environ is not None else os.environ).get(ENGINE_ENV) or recorded
    engine = engine or "tensorflow"
    try:
        return on_engine(predictor, engine)
    except EngineError as exc:
        if engine == "tensorflow":
            raise
        logger.warning("%s: serving on tensorflow instead", exc)
        return on_engine(predictor, "tensorflow")


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
    ingest: IngestParams | None = None,
    engine: str | None = None,
):
    """Log `models_dir` as a taglens pyfunc into the active MLflow run.

    The Keras model, model_info.json and hashtags.json are the artifacts; the taglens package
    travels as code, so the logged model needs no taglens install to be served. `ingest`, the
    params training images were checked with, is logged as ingest.json: the served model checks
    request images with the same limits (without it, `LEGACY_INGEST`). `engine` (the train
    run's `featurize.engine`, or what train made of it: openvino-int8 when it quantized the
    model, openvino when INT8 was not kept) is recorded as the one the served model runs on,
    with its precision (model_config and the run's `precision` tag); without it the model
    serves on tensorflow.

    Returns:
        mlflow.models.model.ModelInfo of the logged model.

    Raises:
        FileNotFoundError: a model file is missing.
        RuntimeError: no MLflow run is active.
    """
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
        if ingest is not None:
            (staged / INGEST_FILE).write_text(ingest.model_dump_json(), encoding="utf-8")
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
            model_config=served_config(engine, info),
        )
    if engine:
        mlflow.set_tag(PRECISION_TAG, precision_of(engine))
    logger.info("logged taglens pyfunc %s", model_info.model_uri)
    return model_info
