"""What the featurize stage reports: meta.json's contents and the run's summary."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from taglens.features import store as features
from taglens.features.quantize import Decision


@dataclass(frozen=True)
class FeaturizeResult:
    """meta.json's contents, and how many images this run computed or found in the store."""

    meta: dict[str, Any]
    computed: int
    cached: int

    def summary(self) -> str:
        """One line for the terminal."""
        return (
            f"featurize: {self.meta['count']} posts, {self.computed} images computed, "
            f"{self.cached} cached, dim {self.meta['dim']}"
        )


def feature_meta(
    key: features.FeatureKey,
    matrix: np.ndarray,
    views: dict,
    engine: str,
    int8: Decision | None,
) -> dict[str, Any]:
    """meta.json: which backbone, size, weights and precision made the vectors, and their shape.

    `engine` is the engine that ran (openvino when openvino-int8 fell back to FP32), and `int8`
    the INT8 decision (both accuracies and why) when `featurize.engine` was openvino-int8.
    """
    return {
        "backbone": key.backbone,
        "image_size": key.image_size,
        "weights_identity": key.weights_identity,
        "dim": int(matrix.shape[1]),
        "count": int(matrix.shape[0]),
        "store": key.dirname,
        "views": list(views),
        "precision": key.precision,
        "engine": engine,
        "int8": asdict(int8) if int8 is not None else None,
    }
