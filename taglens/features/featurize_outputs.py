"""What the featurize stage reports: meta.json's contents and the run's summary."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from taglens.features import store as features


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
