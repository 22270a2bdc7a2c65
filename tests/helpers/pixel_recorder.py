"""A stand-in model for batch predict that keeps the pixels it was handed."""

from __future__ import annotations

from typing import Any

import numpy as np


class PixelRecorder:
    """Answers every photo alike and keeps its pixels, in the order the job handed them over."""

    def __init__(self, image_size: int = 8):
        self.image_size = image_size
        self.pixels: list[np.ndarray] = []

    def predict_pixels(self, batch: np.ndarray) -> list[dict[str, Any]]:
        self.pixels.extend(np.array(image) for image in batch)
        answer = {"top_class": "x", "top_probability": 1.0, "probabilities": {}, "hashtags": []}
        return [dict(answer) for _ in batch]
