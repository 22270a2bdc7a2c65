"""The registered model: an MLflow pyfunc wrapping HashtagPredictor.

`mlflow models predict` and `mlflow models serve` then suggest hashtags with no user code.

Request format: a DataFrame with one string column `image`; each value is the base64 encoding of
the image file's bytes (in-process callers may also pass raw `bytes`), or a file path when the
serving side allows paths under a folder (see `pyfunc_inputs`, which also caps sizes and
rows and validates each image as ingest does). An optional `top_k` param (1..30)
overrides how many hashtags come back. The output is one dict per image, the same as
`HashtagPredictor.predict_bytes`.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

from taglens.artifacts import HASHTAGS, read_json_object, read_model_info
from taglens.errors import TaglensError
from taglens.params import IngestParams
from taglens.serving.predictor import MODEL_FILES, OPTIONAL_FILES, HashtagPredictor
from taglens.serving.pyfunc_inputs import INGEST_FILE, LEGACY_INGEST, InputPolicy

logger = logging.getLogger(__name__)

INPUT_COLUMN = "image"
ARTIFACT_KEY = "models"
CHAMPION = "champion"
PACKAGE_DIR = Path(__file__).resolve().parents[1]  # the whole taglens package
ENTRY_FILE = Path(__file__).with_name("pyfunc_entry.py")  # see log_taglens_model
# Explicit requirements: letting MLflow infer them costs 8-13 s per log_model (NOTES.md).
PIP_REQUIREMENTS = [
    "mlflow==3.17.2",
    "tensorflow-cpu==2.21.*",
    "keras>=3.10,<4",
    "numpy>=2",
    "pillow>=11",  # request images are checked and normalized as ingest does
    "pandas>=2.2",
    "pydantic>=2.7",
    "pyyaml>=6",
]


class ModelNotFoundError(LookupError, TaglensError):
    """No registered model version answers to the requested name or alias.

    A ValueError too: like every error a user fixes by a command or a setting, entry points print
    it as one line (taglens.cli.run_main).
    """


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

        The input limits are the ingest params logged with the model plus the serving process's
        own settings (`taglens.serving.pyfunc_inputs`).
        """
        folder = Path(context.artifacts[ARTIFACT_KEY])
        self.predictor = HashtagPredictor.from_dir(folder)
        ingest = LEGACY_INGEST
        if (folder / INGEST_FILE).is_file():
            raw = json.loads((folder / INGEST_FILE).read_text(encoding="utf-8"))
            ingest = IngestParams.model_validate(raw)
        self.inputs = InputPolicy.from_env(ingest)

    def predict(self, context, model_input, params: dict[str, Any] | None = None):
        """Predict for a DataFrame with an `image` column (base64 text, bytes, or allowed paths).

        Returns:
            One dict per row: top_class, top_probability, probabilities, hashtags.
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
        return predictor.predict_bytes(self.inputs.images(values))


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


def log_taglens_model(models_dir: Path, *, name: str = "model",
                      ingest: IngestParams | None = None):  # fmt: skip
    """Log `models_dir` as a taglens pyfunc into the active MLflow run.

    The Keras model, model_info.json and hashtags.json are the artifacts; the taglens package
    travels as code, so the logged model needs no taglens install to be served. `ingest`, the
    params training images were checked with, is logged as ingest.json: the served model checks
    request images with the same limits (without it, `LEGACY_INGEST`).

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
            pip_requirements=PIP_REQUIREMENTS,
        )
    logger.info("logged taglens pyfunc %s", model_info.model_uri)
    return model_info


def load_predictor(model_uri: str) -> HashtagPredictor:
    """Load a logged or registered taglens model back as an in-process HashtagPredictor.

    Args:
        model_uri: any MLflow model URI, e.g. `models:/taglens@champion` or `runs:/ID/model`.

    Raises:
        ModelNotFoundError: the model, version or alias does not exist.
    """
    from mlflow.exceptions import MlflowException

    try:
        model = mlflow.pyfunc.load_model(model_uri)
    except MlflowException as exc:
        raise ModelNotFoundError(
            f"cannot load {model_uri}: {exc.message.splitlines()[0]}. If there is no champion "
            "yet: run `dvc repro` or `python -m stages.register ...`"
        ) from None
    wrapped = model.unwrap_python_model()
    if not isinstance(wrapped, TaglensModel) or wrapped.predictor is None:
        raise ModelNotFoundError(f"{model_uri} is not a taglens model")
    return wrapped.predictor


def pin_version(model_uri: str) -> tuple[str, str, str]:
    """Pin `models:/NAME@ALIAS` or `models:/NAME/VERSION` to one existing registered version.

    A job or a server that pins once keeps using that version even if the alias moves meanwhile,
    and reports the version it really used.

    Returns:
        (`models:/NAME/VERSION`, NAME, VERSION).

    Raises:
        ModelNotFoundError: the model, alias or version does not exist (the message says how to
            get one).
    """
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    ref = model_uri.removeprefix("models:/")
    name, has_alias, alias = ref.partition("@")
    if not has_alias:
        name, _, version = ref.rpartition("/")
    try:
        if has_alias:
            version = MlflowClient().get_model_version_by_alias(name, alias).version
        else:
            MlflowClient().get_model_version(name, version)
    except MlflowException:
        missing = f"no {alias} yet" if has_alias else f"no version {version}"
        raise ModelNotFoundError(
            f"{missing} for registered model {name!r}: run `dvc repro` (train, evaluate and "
            "register) or `python -m stages.register promote VERSION` to make one, or pass "
            "--model-uri with an existing version (models:/NAME/VERSION) or a models/ directory"
        ) from None
    return f"models:/{name}/{version}", name, str(version)


def load_champion(model_name: str, alias: str = CHAMPION) -> HashtagPredictor:
    """Load `models:/NAME@alias` (the champion by default) as a HashtagPredictor.

    Raises:
        ModelNotFoundError: with "no champion yet" when the model or alias does not exist.
    """
    uri, _, version = pin_version(f"models:/{model_name}@{alias}")
    logger.info("loading %s version %s (@%s)", model_name, version, alias)
    return load_predictor(uri)


def logged_model_uri(run_id: str, name: str = "model") -> str:
    """Return the URI of the model `name` logged in run `run_id` (`models:/m-...`).

    Raises:
        ModelNotFoundError: the run does not exist or logged no such model.
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    try:
        run = mlflow.get_run(run_id)
    except MlflowException:
        raise ModelNotFoundError(
            f"MLflow run {run_id} not found in {mlflow.get_tracking_uri()}: "
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
        "taglens.serving.pyfunc.log_taglens_model inside its run"
    )
