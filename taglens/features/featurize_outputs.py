"""What the featurize stage computes beside the backbone's vectors: the views, meta.json, result."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from taglens.features import store as features
from taglens.features.views import build_view_extractor
from taglens.params import FeaturizeParams, ModelParams


@dataclass(frozen=True)
class FeaturizeResult:
    """meta.json's contents, and how many images this run computed or found in the store."""

    meta: dict[str, Any]
    computed: int
    cached: int

    def summary(self) -> str:
        """One line for the terminal."""
        return (f"featurize: {self.meta['count']} posts, {self.computed} images computed, "
                f"{self.cached} cached, dim {self.meta['dim']}")


def fill_views(
    model: ModelParams, params: FeaturizeParams, *, seed: int, key: features.FeatureKey,
    items: Sequence[tuple[str, Path]], out: Path, progress: bool,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Each `featurize.views` entry's vectors, in `items` order, filled in its own store.

    Each view has its own store, so adding a view reuses the vectors of the others.
    """
    views = {}
    for view in params.views:
        view_store = features.FeatureStore(out / features.STORE_DIR,
                                           dataclasses.replace(key, view=view))  # fmt: skip
        by_sha, _ = features.fill_store(
            view_store, list(items),
            lambda view=view: build_view_extractor(model, seed, view), batch_size=params.batch_size,
            shard_size=params.shard_size, jit_compile=params.jit_compile, progress=progress,
        )  # fmt: skip
        views[view] = np.stack([by_sha[sha] for sha, _ in items]).astype("float32")
    return views


def feature_meta(key: features.FeatureKey, matrix: np.ndarray, views: dict) -> dict[str, Any]:
    """meta.json: which backbone, size and weights made the vectors, and their shape."""
    return {
        "backbone": key.backbone,
        "image_size": key.image_size,
        "weights_identity": key.weights_identity,
        "dim": int(matrix.shape[1]),
        "count": int(matrix.shape[0]),
        "store": key.dirname,
        "views": list(views),
    }
