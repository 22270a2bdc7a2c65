"""What the registered pyfunc does when served: which request values it accepts, limits, engine.

`mlflow models predict` and `mlflow models serve` then suggest hashtags with no user code.

Request format: a DataFrame with one string column `image`; each value is the base64 encoding of
the image file's bytes (in-process callers may also pass raw `bytes`), or a file path when the
serving side allows paths under a folder (`InputPolicy`, which also caps sizes and rows and
validates each image as ingest does). An optional `top_k` param (1..30)
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

Request values: base64 image bytes by default, file paths only on opt-in.

A caller of `mlflow models serve` is a stranger to the serving machine. By default a request
value is decoded as base64 (in-process callers may pass raw `bytes`); a value is read as a file
path only when the serving process sets `TAGLENS_PYFUNC_IMAGE_ROOT` to a folder, and then only
for regular files that resolve (symlinks followed) inside that folder and are no larger than the
byte cap. Missing, outside and oversized paths get the same refusal, so a caller cannot probe
which files exist. Every image then goes through `data.images.normalize_image`, the checks and
normalisation uploads and training images get (pixel cap, formats, minimum side).

Serving-side settings (environment of the process that loads the model):

- `TAGLENS_PYFUNC_IMAGE_ROOT`: the folder paths may name (unset: paths are refused).
- `TAGLENS_PYFUNC_MAX_MB`: the largest image accepted, base64 or file (default: the model's
  `serve.max_upload_mb`, the web page's limit, recorded when it was logged).
- `TAGLENS_PYFUNC_MAX_ROWS`: the most images in one request (default 64).

How the model is logged, and loaded back in-process: `taglens.model.pyfunc`. This module's
path and `TaglensModel`'s name are stored in every logged model (`pyfunc_entry.py`): never move
them.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import json
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np

from taglens import artifacts
from taglens.data.images import RejectedImage, normalize_image
from taglens.errors import TaglensError
from taglens.features.engines import ENGINE_PARAM, precision_of
from taglens.model.predictor import HashtagPredictor
from taglens.model.pyfunc import ARTIFACT_KEY, INPUT_COLUMN, MAX_UPLOAD_KEY
from taglens.params import IngestParams

logger = logging.getLogger(__name__)

ROOT_ENV = "TAGLENS_PYFUNC_IMAGE_ROOT"
MAX_MB_ENV = "TAGLENS_PYFUNC_MAX_MB"
MAX_ROWS_ENV = "TAGLENS_PYFUNC_MAX_ROWS"
# Serving-side default: a served model travels without params.yaml, so it lives here.
DEFAULT_MAX_ROWS = 64
# The byte cap of a model logged before serve.max_upload_mb was recorded with it.
UNRECORDED_MAX_MB = 20.0
# the ingest params logged with the model (see taglens.model.pyfunc.log_taglens_model)
INGEST_FILE = artifacts.LOGGED_INGEST


@dataclass(frozen=True)
class InputPolicy:
    """The limits one serving process applies to request values."""

    ingest: IngestParams
    root: Path | None = None
    max_bytes: int = int(UNRECORDED_MAX_MB * 1_000_000)
    max_rows: int = DEFAULT_MAX_ROWS

    @classmethod
    def from_env(
        cls,
        ingest: IngestParams,
        environ: dict[str, str] | None = None,
        max_mb: float = UNRECORDED_MAX_MB,
    ) -> InputPolicy:
        """The policy the serving process's environment asks for.

        `max_mb` is the model's recorded `serve.max_upload_mb`; TAGLENS_PYFUNC_MAX_MB overrides it.

        Raises:
            TaglensError: a setting is not a number, or the root is not a folder.
        """
        env = os.environ if environ is None else environ
        root = env.get(ROOT_ENV, "").strip()
        if root and not Path(root).is_dir():
            raise TaglensError(
                f"{ROOT_ENV}={root} is not a folder: set it to the folder of the "
                "images clients may name, or unset it to accept base64 only"
            )
        try:
            max_mb = float(env.get(MAX_MB_ENV) or max_mb)
            max_rows = int(env.get(MAX_ROWS_ENV) or DEFAULT_MAX_ROWS)
        except ValueError:
            raise TaglensError(f"{MAX_MB_ENV} and {MAX_ROWS_ENV} must be numbers") from None
        if max_mb <= 0 or max_rows < 1:
            raise TaglensError(f"{MAX_MB_ENV} must be > 0 and {MAX_ROWS_ENV} >= 1")
        return cls(
            ingest, Path(root).resolve() if root else None, int(max_mb * 1_000_000), max_rows
        )

    def images(self, values: list[Any]) -> list[bytes]:
        """Validate a request's values and return each image normalized as ingest stores it.

        Raises:
            ValueError: too many rows, or a value is refused (its index and the reason named).
        """
        if len(values) > self.max_rows:
            raise ValueError(
                f"{len(values)} images in one request; at most {self.max_rows} "
                f"({MAX_ROWS_ENV}): split the request"
            )
        out = []
        for index, value in enumerate(values):
            data = self.image_bytes(value, index)
            try:
                out.append(normalize_image(data, self.ingest).jpeg)
            except RejectedImage as exc:
                raise ValueError(f"image {index} refused: {exc}") from None
        return out

    def image_bytes(self, value: Any, index: int = 0) -> bytes:
        """Turn one request value (bytes, base64 text, or an allowed path) into encoded bytes.

        Raises:
            ValueError: the value is refused; the message names its index and what to send.
        """
        if isinstance(value, bytes | bytearray | np.bytes_):
            return self._capped(bytes(value), index)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"image {index}: expected base64 text, got {value!r:.60}")
        text = value.strip()
        if self.root is not None and _looks_like_path(text):
            return self._read_path(text, index)
        if len(text) * 3 // 4 > self.max_bytes + 3:
            raise ValueError(self._too_large(index))
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            where = f"a file under {ROOT_ENV} or " if self.root else ""
            raise ValueError(
                f"image {index}: {text[:40]!r} is not {where}base64-encoded image bytes: send the "
                "base64 of the image file"
                + (
                    ""
                    if self.root
                    else f" (file paths are read only when the server sets {ROOT_ENV})"
                )
            ) from None

    def _capped(self, data: bytes, index: int) -> bytes:
        if len(data) > self.max_bytes:
            raise ValueError(self._too_large(index))
        return data

    def _too_large(self, index: int) -> str:
        return (
            f"image {index} is larger than {self.max_bytes / 1e6:g} MB ({MAX_MB_ENV}): "
            "send a smaller image"
        )

    def _read_path(self, text: str, index: int) -> bytes:
        """Read a file that resolves inside the root, refusing anything else the same way."""
        refusal = (
            f"image {index}: {text[:60]!r} is not a readable image file under the "
            f"server's {ROOT_ENV} of at most {self.max_bytes / 1e6:g} MB"
        )
        assert self.root is not None
        try:
            resolved = (self.root / text).resolve(strict=True)  # an absolute text replaces root
            if not resolved.is_relative_to(self.root):
                raise ValueError(refusal)  # outside, directly or through a symlink
            fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except (OSError, RuntimeError):  # missing, unreadable, a symlink loop
            raise ValueError(refusal) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > self.max_bytes:
                raise ValueError(refusal)  # a folder, a device, a FIFO, or too large
            with os.fdopen(fd, "rb") as handle:
                fd = -1
                data = handle.read(self.max_bytes + 1)
        finally:
            if fd >= 0:
                os.close(fd)
        return self._capped(data, index)


def _looks_like_path(text: str) -> bool:
    """A value holding a `.` (a file suffix) is a path: the base64 alphabet has no `.`.

    A value that fails as a path is refused rather than decoded, so a caller learns nothing about
    which paths exist.
    """
    return len(text) < 4096 and "." in text


ENGINE_ENV = "TAGLENS_ENGINE"  # set by the serving process: overrides the recorded engine


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
        (`InputPolicy`).
        """
        folder = Path(context.artifacts[ARTIFACT_KEY])
        recorded = (context.model_config or {}).get(ENGINE_PARAM)
        self.predictor = on_served_engine(HashtagPredictor.from_dir(folder), recorded)
        if not (folder / INGEST_FILE).is_file():
            raise TaglensError(
                f"this model was logged before {INGEST_FILE} existed, so nothing says which "
                "images it accepts: re-register it (run the train and register stages)"
            )
        raw = json.loads((folder / INGEST_FILE).read_text(encoding="utf-8"))
        recorded_mb = (context.model_config or {}).get(MAX_UPLOAD_KEY) or UNRECORDED_MAX_MB
        self.inputs = InputPolicy.from_env(
            IngestParams.model_validate(raw), max_mb=float(recorded_mb)
        )

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
    from taglens.features.engines import INT8_ENGINE, EngineError, on_engine

    engine = (environ if environ is not None else os.environ).get(ENGINE_ENV) or recorded
    engine = engine or "tensorflow"
    try:
        served = on_engine(predictor, engine)
    except EngineError as exc:
        if engine == "tensorflow":
            raise
        logger.warning("%s: serving on tensorflow instead", exc)
        served, engine = on_engine(predictor, "tensorflow"), "tensorflow"
    if predictor.info.get("precision") == "int8" and engine != INT8_ENGINE:
        # batch predict and the page serve such a model on its INT8 model (model_ref.load)
        logger.warning(
            "this model's head was trained on INT8 vectors but serves on %s: its answers differ "
            "from batch predict's and the page's; serve it on %s",
            engine,
            INT8_ENGINE,
        )
    return served
