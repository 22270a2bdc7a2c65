"""The cached features joined with the clean split: what train and evaluate read, checked once."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from taglens import artifacts
from taglens.errors import TaglensError
from taglens.features import split
from taglens.features.backbones import weights_identity
from taglens.features.split import MANIFEST_COLUMNS, SPLITS
from taglens.features.store import view_array
from taglens.features.views import VIEWS
from taglens.params import ModelParams

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Split:
    """One split: manifest rows and, when features were joined, their vectors and label indices."""

    rows: pd.DataFrame
    vectors: np.ndarray
    labels: np.ndarray
    views: dict[str, np.ndarray] = field(default_factory=dict)  # views name -> vectors


def manifest_classes(clean: Path) -> tuple[str, ...]:
    """The sorted labels of data/clean/manifest.csv: the classes when base.classes is null."""
    return tuple(sorted(split.read_manifest(clean)["label"].unique()))


def read_manifest(clean: Path, classes: tuple[str, ...] | list[str]) -> pd.DataFrame:
    """Read data/clean/manifest.csv and check its columns, splits and labels.

    Raises:
        MissingArtifactError: no manifest (run the clean stage).
        TaglensError: missing columns, unknown splits or labels outside `classes`.
    """
    path = artifacts.MANIFEST.at(clean)
    table = split.read_manifest(clean)
    missing = [c for c in MANIFEST_COLUMNS if c not in table.columns]
    if missing:
        raise TaglensError(f"{path} lacks columns {missing}: re-run the clean stage")
    bad_split = sorted(set(table["split"]) - set(SPLITS))
    if bad_split:
        raise TaglensError(f"{path} has unknown splits {bad_split}; expected {list(SPLITS)}")
    unknown = sorted(set(table["label"]) - set(classes))
    if unknown:
        raise TaglensError(
            f"{path} has labels {unknown} that are not in base.classes {list(classes)}: "
            "add them to base.classes or re-run scrape and clean with the same classes"
        )
    return table


def check_feature_meta(features: Path, model: ModelParams, seed: int) -> dict:
    """Check that the cached features were computed by the backbone that `model` describes.

    Raises:
        MissingArtifactError: no meta.json (run featurize).
        TaglensError: the features came from another backbone, size or weights.
    """
    meta = artifacts.read_feature_meta(features)
    expected = {
        "backbone": model.backbone,
        "image_size": model.image_size,
        "weights_identity": weights_identity(model, seed),
    }
    for key, value in expected.items():
        if meta.get(key) != value:
            raise TaglensError(
                f"the cached features were made with {key}={meta.get(key)!r} but params say "
                f"{value!r}: re-run the featurize stage (dvc repro featurize)"
            )
    return meta


def load_splits(
    features: Path, manifest: pd.DataFrame, classes: tuple[str, ...] | list[str]
) -> dict[str, Split]:
    """Join the manifest with features.npz by sha256 and return train/val/test splits.

    Raises:
        MissingArtifactError: no features.npz.
        TaglensError: a manifest image has no cached vector.
    """
    path = artifacts.FEATURES.require(features)
    with np.load(path, allow_pickle=False) as npz:
        shas = [str(s) for s in npz["sha256"]]
        vectors = np.asarray(npz["vectors"], dtype="float32")
        views = {
            view: np.asarray(npz[view_array(view)], dtype="float32")
            for view in VIEWS
            if view_array(view) in npz.files
        }
    row_of = {sha: i for i, sha in enumerate(shas)}
    missing = [sha for sha in manifest["sha256"] if sha not in row_of]
    if missing:
        raise TaglensError(
            f"{len(missing)} manifest images have no cached features (first {missing[0][:12]}): "
            "re-run featurize and clean so they describe the same images"
        )
    index = {name: i for i, name in enumerate(classes)}
    splits = {}
    for name in SPLITS:
        rows = manifest[manifest["split"] == name].reset_index(drop=True)
        picks = np.array([row_of[sha] for sha in rows["sha256"]], dtype=int)
        splits[name] = Split(
            rows=rows,
            vectors=_take(vectors, picks),
            labels=np.array([index[label] for label in rows["label"]], dtype=int),
            views={view: _take(array, picks) for view, array in views.items()},
        )
    return splits


def _take(array: np.ndarray, picks: np.ndarray) -> np.ndarray:
    return array[picks] if len(picks) else np.zeros((0, array.shape[1]), "float32")
