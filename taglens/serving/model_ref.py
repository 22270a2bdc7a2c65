"""The model reference: which model a job or server uses, how it is loaded, what it reports.

Batch predict (stage and flow), the web server and the benchmarks resolve a `--model-uri` here,
with one set of rules:

- no URI means the champion, `models:/<register.model_name>@champion`;
- a directory holding the train stage's `model.keras` is loaded from disk as is, with no MLflow
  store, and reported as `ModelRef(<its absolute path>, "unregistered@<train run id>")`: the
  folder a retrain rewrites holds another model, which the resume key and the page tell apart;
- `models:/NAME@ALIAS` is pinned once, when resolved, to the version the alias points at, so a
  promotion made while a job or server runs cannot change its model half-way;
  `models:/NAME/VERSION` is checked to exist; both report `ModelRef(NAME, VERSION)`;
- any other MLflow URI (`runs:/ID/model`, `models:/m-...`) is loaded as given and reported as
  `ModelRef(<the URI>, "unregistered")`.

Only an alias can come to name another model later (`follows_alias`): a long-running server
that follows one resolves it again, now and then, with these same rules.

Loading takes the engine (`featurize.engine`), as featurize runs the backbone. A model train
quantized (trained on INT8 vectors: model_info.json `precision: int8`) runs on its INT8 model
whatever FP32 engine is asked for, since its head learned INT8 vectors; a log line says so.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taglens.features.engines import INT8_ENGINE, on_engine
from taglens.lifecycle.gate import CHAMPION
from taglens.model.predictor import INFO_FILE, MODEL_FILE, HashtagPredictor
from taglens.model.pyfunc import ModelNotFoundError, load_logged

logger = logging.getLogger(__name__)

UNREGISTERED = "unregistered"  # the version reported for a model outside the registry
_REGISTERED = re.compile(r"models:/(?P<name>[^/@]+)(?:/(?P<version>\d+)|@(?P<alias>[^/@]+))")


@dataclass(frozen=True)
class ModelRef:
    """The model a job or server uses, by registered name and version.

    Written into every scored row (part of the resume key) and reported by the web page with
    every answer.
    """

    name: str
    version: str

    @classmethod
    def of(cls, ref: ModelRef | Mapping[str, Any]) -> ModelRef:
        """Accept a ModelRef or a mapping with `name` and `version`."""
        if isinstance(ref, ModelRef):
            return ref
        return cls(name=str(ref["name"]), version=str(ref["version"]))


@dataclass(frozen=True)
class ResolvedModel:
    """A model URI pinned for one job: `uri` loads exactly the model `ref` names."""

    uri: str
    ref: ModelRef

    @property
    def is_local(self) -> bool:
        """Whether the model is a models/ directory on disk (no MLflow store needed)."""
        return local_models_dir(self.uri) is not None


def champion_uri(model_name: str) -> str:
    """The URI of the registered model's champion."""
    return f"models:/{model_name}@{CHAMPION}"


def local_models_dir(uri: str | None) -> Path | None:
    """The directory (absolute) if `uri` is a models/ directory the train stage wrote, else None."""
    if not uri or uri.startswith(("models:/", "runs:/")):
        return None
    local = Path(uri).expanduser()
    return local.resolve() if (local / MODEL_FILE).is_file() else None


def local_version(models_dir: Path) -> str:
    """The version a models/ directory is reported with: its train run, which a retrain changes.

    `unregistered@` and the first 12 characters of model_info.json's `run_id` (of its sha256
    when it names none).
    """
    try:
        info = (models_dir / INFO_FILE).read_bytes()
        run_id = json.loads(info).get("run_id")
    except (OSError, ValueError):
        return UNREGISTERED
    return f"{UNREGISTERED}@{(run_id or hashlib.sha256(info).hexdigest())[:12]}"


def follows_alias(model_uri: str | None) -> bool:
    """Whether `model_uri` (None: the champion) names an alias, which may come to name another."""
    if model_uri is None:
        return True
    registered = _REGISTERED.fullmatch(model_uri)
    return registered is not None and registered["alias"] is not None


def resolve(model_uri: str | None, model_name: str) -> ResolvedModel:
    """Pin `model_uri` (default: the champion of `model_name`) to one model (rules above).

    Registry URIs need the MLflow tracking store configured first; a local directory does not.

    Raises:
        ModelNotFoundError: the registered model, alias or version does not exist (the message
            says how to train and register one).
    """
    uri = model_uri or champion_uri(model_name)
    local = local_models_dir(uri)
    if local is not None:
        return ResolvedModel(str(local), ModelRef(str(local), local_version(local)))
    registered = _REGISTERED.fullmatch(uri)
    if registered is None:
        return ResolvedModel(uri, ModelRef(uri, UNREGISTERED))
    name = registered["name"]
    version = _registered_version(name, registered["alias"], registered["version"])
    return ResolvedModel(f"models:/{name}/{version}", ModelRef(name, version))


def _registered_version(name: str, alias: str | None, version: str | None) -> str:
    """The version `alias` points at now, or `version` once it is known to exist."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        if alias is not None:
            return str(MlflowClient().get_model_version_by_alias(name, alias).version)
        return str(MlflowClient().get_model_version(name, str(version)).version)
    except MlflowException:
        missing = f"no {alias} yet" if alias is not None else f"no version {version}"
        raise ModelNotFoundError(
            f"{missing} for registered model {name!r}: run `dvc repro` (train, evaluate and "
            "register) or `python -m stages.register promote VERSION` to make one, or pass "
            "--model-uri with an existing version (models:/NAME/VERSION) or a models/ directory"
        ) from None


def load(uri: str, engine: str) -> HashtagPredictor:
    """Load a resolved URI (a models/ directory or an MLflow model URI) to run on `engine`.

    Raises:
        ModelNotFoundError: MLflow has no such model, or it is not a taglens model.
        FileNotFoundError: a local models directory lacks a file.
        EngineError: the engine is not installed or cannot run the model.
    """
    local = local_models_dir(uri)
    predictor = HashtagPredictor.from_dir(local) if local is not None else load_logged(uri)
    if predictor.info.get("precision") == "int8" and engine != INT8_ENGINE:
        logger.info(
            "%s was trained on INT8 vectors: serving it on %s, not %s", uri, INT8_ENGINE, engine
        )
        engine = INT8_ENGINE
    logger.info("loaded %s on %s", uri, engine)
    return on_engine(predictor, engine)


_MODELS: dict[tuple[str, str | None, str], Any] = {}


_MODELS_LOCK = threading.Lock()


def load_cached(uri: str, tracking_uri: str | None, engine: str):
    """Load a pinned model once per process (a Dask worker keeps it for all its shards).

    `tracking_uri` is the store of the process that resolved the URI: a remote worker loads from it.
    """
    key = (uri, tracking_uri, engine)
    with _MODELS_LOCK:
        if key not in _MODELS:
            if tracking_uri:
                import mlflow

                mlflow.set_tracking_uri(tracking_uri)
                mlflow.set_registry_uri(tracking_uri)
            _MODELS[key] = load(uri, engine)
        return _MODELS[key]
