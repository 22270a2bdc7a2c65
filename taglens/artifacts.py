"""The files the stages hand each other: each one's stage, path and reader, and one error.

The folders are dvc.yaml's layout (the command lines' defaults); a stage reads an upstream file
through the reader here, so a missing file always says which stage to run, in one wording.

Only light format modules are imported here (posts; pandas on use), so that naming an artifact
never makes a stage depend on the feature store or the model code (dvc.yaml deps).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taglens.data.posts import POSTS_FILE, Post
from taglens.data.posts import read_posts as read_posts_file
from taglens.errors import TaglensError

if TYPE_CHECKING:
    import pandas as pd

RAW_DIR = Path("data/raw")
FEATURES_DIR = Path("data/features")
CLEAN_DIR = Path("data/clean")
MODELS_DIR = Path("models")
REPORTS_DIR = Path("reports")
EVALUATE_DIR = REPORTS_DIR / "evaluate"  # evaluate's plots and per-class table


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


POSTS = Artifact("scrape", RAW_DIR, POSTS_FILE)
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
DRIFT_REFERENCE = Artifact("train", MODELS_DIR, "drift_reference.json")  # optional: lifecycle.drift
# optional: the served model quantized to INT8 (OpenVINO IR), with featurize.engine: openvino-int8
INT8_MODEL = Artifact("train", MODELS_DIR, "model-int8.xml")
INT8_WEIGHTS = Artifact("train", MODELS_DIR, "model-int8.bin")
TRAIN_REPORT = Artifact("train", REPORTS_DIR, "train.json")
HISTORY = Artifact("train", REPORTS_DIR, "history.csv")
METRICS = Artifact("evaluate", REPORTS_DIR, "metrics.json")
PER_CLASS = Artifact("evaluate", EVALUATE_DIR, "per_class.json")
# each test image right or wrong, by sha256: the promotion gate's paired evidence
PER_IMAGE = Artifact("evaluate", EVALUATE_DIR, "per_image.json")
CONFUSION = Artifact("evaluate", REPORTS_DIR, "confusion.csv")
DECISION = Artifact("register", REPORTS_DIR, "register.json")


def read_json_object(artifact: Artifact, folder: Path | str) -> dict[str, Any]:
    """A JSON object a stage wrote (model_info.json, metrics.json, register.json, ...).

    Raises:
        MissingArtifactError: the file is absent.
        TaglensError: it is not a JSON object (the message names the stage to re-run).
    """
    path = artifact.require(folder)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise TaglensError(
            f"{path} is not valid JSON ({exc}): re-run the {artifact.stage} stage"
        ) from None
    if not isinstance(data, dict):
        raise TaglensError(f"{path} must hold a JSON object: re-run the {artifact.stage} stage")
    return data


def read_model_info(models: Path | str) -> dict[str, Any]:
    """models/model_info.json: classes, image size, backbone, run id, params of the model."""
    return read_json_object(MODEL_INFO, models)


def read_feature_meta(features: Path | str) -> dict[str, Any]:
    """data/features/meta.json: backbone, image size and weights of the cached vectors."""
    return read_json_object(FEATURE_META, features)


def read_posts(raw: Path | str) -> list[Post]:
    """data/raw/posts.jsonl: the accepted posts, in the order featurize stacked them.

    Raises:
        MissingArtifactError: scrape has not run.
        TaglensError: the file holds no post (scrape accepted no image).
    """
    path = POSTS.require(raw)
    posts = read_posts_file(path)
    if not posts:
        raise TaglensError(f"{path} holds no posts: scrape accepted no images")
    return posts


def read_manifest(clean: Path | str) -> pd.DataFrame:
    """data/clean/manifest.csv as written (train_data.read_manifest checks its contents)."""
    import pandas as pd

    path = MANIFEST.require(clean)
    return pd.read_csv(path, dtype={"id": str, "sha256": str, "image": str, "label": str})
