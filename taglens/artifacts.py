"""The name, folder and writing stage of every file the stages hand each other, and the order.

Also the one "run stage X first" error. The folders are dvc.yaml's layout (the command lines'
defaults); a stage reads an upstream file through `read_json` or its owner's typed reader, so a
missing file always says which stage to run, in one wording. Every other module spells a file
name through the constants here (tests/unit/test_artifact_names.py holds that).

Nothing of the pipeline is imported here, so that naming an artifact never makes a stage depend
on another stage's code (dvc.yaml deps).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from taglens.errors import TaglensError

logger = logging.getLogger(__name__)

# The pipeline's stages in dvc.yaml's order (tests/unit/test_dvc_deps.py compares them).
STAGES = ("scrape", "featurize", "clean", "train", "evaluate", "register")

RAW_DIR = Path("data/raw")
FEATURES_DIR = Path("data/features")
CLEAN_DIR = Path("data/clean")
MODELS_DIR = Path("models")
REPORTS_DIR = Path("reports")
EVALUATE_DIR = REPORTS_DIR / "evaluate"  # evaluate's plots and per-class table
CLEAN_PLOTS_DIR = REPORTS_DIR / "clean"  # clean's plots
RAW_IMAGES = "images"  # scrape's accepted images, inside data/raw (posts name them relative)
FEATURE_STORE_DIR = "store"  # featurize's content-addressed vector cache, inside data/features
# The ingest params logged inside a pyfunc model (checked on every request): a file of the logged
# model, not a stage output; the same name as scrape's reports/ingest.json, a different file.
LOGGED_INGEST = "ingest.json"


class MissingArtifactError(TaglensError, FileNotFoundError):
    """An upstream stage's file is absent: the message names the stage that writes it."""

    def __init__(self, path: Path, stage: str) -> None:
        super().__init__(f"no {path}: run the {stage} stage first (`dvc repro {stage}`)")
        self.path = path
        self.stage = stage


@dataclass(frozen=True)
class Artifact:
    """One file a stage writes: the stage, its folder in the dvc.yaml layout, its file name."""

    stage: str
    folder: Path
    name: str

    @property
    def default(self) -> Path:
        """Its path in the dvc.yaml layout, relative to the repository."""
        return self.folder / self.name

    def at(self, folder: Path | str) -> Path:
        """Its path inside `folder` (the stage's output directory given on the command line)."""
        return Path(folder) / self.name

    def require(self, folder: Path | str) -> Path:
        """Its path inside `folder`, or MissingArtifactError naming the stage to run."""
        path = self.at(folder)
        if not path.exists():
            raise MissingArtifactError(path, self.stage)
        return path


POSTS = Artifact("scrape", RAW_DIR, "posts.jsonl")
REJECTED = Artifact("scrape", RAW_DIR, "rejected.jsonl")
INGEST_REPORT = Artifact("scrape", REPORTS_DIR, "ingest.json")
FEATURES = Artifact("featurize", FEATURES_DIR, "features.npz")
FEATURE_META = Artifact("featurize", FEATURES_DIR, "meta.json")
MANIFEST = Artifact("clean", CLEAN_DIR, "manifest.csv")
DROPPED = Artifact("clean", CLEAN_DIR, "dropped.csv")
CLEAN_REPORT = Artifact("clean", REPORTS_DIR, "clean.json")
MODEL = Artifact("train", MODELS_DIR, "model.keras")
MODEL_INFO = Artifact("train", MODELS_DIR, "model_info.json")
HASHTAGS = Artifact("train", MODELS_DIR, "hashtags.json")
RANKERS = Artifact("train", MODELS_DIR, "image_rankers.npz")  # optional: see predictor
DRIFT_REFERENCE = Artifact("train", MODELS_DIR, "drift_reference.json")  # optional: model.drift
# optional: the served model quantized to INT8 (OpenVINO IR), with featurize.engine: openvino-int8
INT8_MODEL = Artifact("train", MODELS_DIR, "model-int8.xml")
INT8_WEIGHTS = Artifact("train", MODELS_DIR, "model-int8.bin")
TRAIN_REPORT = Artifact("train", REPORTS_DIR, "train.json")
HISTORY = Artifact("train", REPORTS_DIR, "history.csv")
HISTORY_PLOT = Artifact("train", REPORTS_DIR, "history.png")
METRICS = Artifact("evaluate", REPORTS_DIR, "metrics.json")
PER_CLASS = Artifact("evaluate", EVALUATE_DIR, "per_class.json")
# each test image right or wrong, by sha256: the promotion gate's paired evidence
PER_IMAGE = Artifact("evaluate", EVALUATE_DIR, "per_image.json")
MISCLASSIFIED = Artifact("evaluate", EVALUATE_DIR, "misclassified.png")
CONFUSION = Artifact("evaluate", REPORTS_DIR, "confusion.csv")
DISTANCES = Artifact("clean", CLEAN_PLOTS_DIR, "distances.png")
DECISION = Artifact("register", REPORTS_DIR, "register.json")
# one line per registration and by-hand promotion (appended; registry.py reads it back)
PROMOTIONS = Artifact("register", REPORTS_DIR, "promotions.jsonl")
# the files every models/ folder holds, and those it may hold (see model.predictor)
MODEL_FILES = (MODEL, MODEL_INFO, HASHTAGS)
OPTIONAL_MODEL_FILES = (RANKERS, DRIFT_REFERENCE, INT8_MODEL, INT8_WEIGHTS)


def evaluated_beside(metrics: Path | str) -> Path:
    """The folder of per_class.json and per_image.json that belong with a metrics.json."""
    return Path(metrics).parent / EVALUATE_DIR.relative_to(REPORTS_DIR)


def read_json(artifact: Artifact, path: Path | str) -> dict[str, Any]:
    """The JSON object a stage wrote at `path` (any location of `artifact`).

    Raises:
        MissingArtifactError: the file is absent.
        TaglensError: it is not a JSON object (the message names the stage to re-run).
    """
    path = Path(path)
    if not path.is_file():
        raise MissingArtifactError(path, artifact.stage)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise TaglensError(
            f"{path} is not valid JSON ({exc}): re-run the {artifact.stage} stage"
        ) from None
    if not isinstance(data, dict):
        raise TaglensError(f"{path} must hold a JSON object: re-run the {artifact.stage} stage")
    return data


def read_optional(artifact: Artifact, path: Path | str) -> dict[str, Any] | None:
    """A JSON object for a report people read: None (with a warning) when missing or unreadable."""
    try:
        return read_json(artifact, path)
    except (OSError, TaglensError) as exc:
        logger.warning("cannot read %s: %s", path, exc)
        return None


def read_json_object(artifact: Artifact, folder: Path | str) -> dict[str, Any]:
    """A JSON object a stage wrote (model_info.json, metrics.json, register.json, ...).

    Raises:
        MissingArtifactError: the file is absent.
        TaglensError: it is not a JSON object (the message names the stage to re-run).
    """
    return read_json(artifact, artifact.at(folder))


def read_model_info(models: Path | str) -> dict[str, Any]:
    """models/model_info.json: classes, image size, backbone, run id, params of the model."""
    return read_json_object(MODEL_INFO, models)


def read_feature_meta(features: Path | str) -> dict[str, Any]:
    """data/features/meta.json: backbone, image size and weights of the cached vectors."""
    return read_json_object(FEATURE_META, features)
