"""The served model in INT8: train quantizes it when featurize's vectors were INT8.

A head trained on INT8 vectors is served on an INT8 backbone. Train quantizes the whole served
model (backbone, head, views) with `taglens.features.quantize`, calibrated on the first
`featurize.int8.calibration_images` training photos and checked on the first `validation_images`
validation photos with the served classifier's own accuracy (its top class against the label).
Kept, it is written beside model.keras as `model-int8.xml` / `.bin` (OpenVINO IR) and the model
serves on `openvino-int8`; otherwise the model serves on `openvino` in FP32, with a warning that
gives both accuracies. Either way model_info.json records the precision and the decision.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from taglens import artifacts
from taglens.features import quantize
from taglens.features.engines import INT8_ENGINE

if TYPE_CHECKING:
    import keras

    from taglens.params import Int8Params
    from taglens.training.run import TrainConfig
    from taglens.training.splits import Split

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ServedPrecision:
    """The engine the served model is recorded with, its precision, and the INT8 decision."""

    engine: str
    precision: str
    decision: quantize.Decision | None


def served_engine(engine: str, feature_precision: str) -> str:
    """The engine a model trained on `feature_precision` vectors serves on, before quantizing.

    openvino-int8 with FP32 vectors (featurize's INT8 model lost too much accuracy) serves on
    openvino: the head learned FP32 vectors.
    """
    if engine == INT8_ENGINE and feature_precision != quantize.INT8:
        return "openvino"
    return engine


def quantize_served(
    model: keras.Model, settings: Int8Params, train: Split, val: Split, raw: Path, out: Path
) -> ServedPrecision:
    """Quantize the served model; write models/model-int8.* when INT8 is kept.

    Raises:
        QuantizeError: no training or validation photos.
    """
    import openvino as ov

    from taglens.features.int8_backbone import pixels_of

    for stale in (artifacts.INT8_MODEL.at(out), artifacts.INT8_WEIGHTS.at(out)):
        stale.unlink(missing_ok=True)
    size = int(model.input_shape[1])
    calibration = pixels_of(
        [raw / image for image in train.rows["image"].head(settings.calibration_images)], size
    )
    count = min(settings.validation_images, len(val.labels))
    pixels = pixels_of([raw / image for image in val.rows["image"].head(count)], size)
    labels = np.asarray(val.labels[:count])

    def correct(outputs: Any, indices: np.ndarray) -> np.ndarray:
        # the served model's dict, or the bare probabilities of a single-output model
        probabilities = outputs["probabilities"] if isinstance(outputs, dict) else outputs
        return np.argmax(probabilities, axis=1) == labels[indices]

    with tempfile.TemporaryDirectory() as tmp:
        decision = quantize.quantize(
            model,
            calibration,
            quantize.Validation(pixels, correct),
            max_drop=settings.max_drop,
            max_iterations=settings.max_iterations,
            folder=Path(tmp),
        )
        quantize.report(decision)
        if decision.precision != quantize.INT8:
            return ServedPrecision("openvino", quantize.FP32, decision)
        ov.save_model(
            quantize.load_int8(Path(tmp)), artifacts.INT8_MODEL.at(out), compress_to_fp16=False
        )
    return ServedPrecision(INT8_ENGINE, quantize.INT8, decision)


def served_precision(
    config: TrainConfig,
    model: Any,
    precision: str,
    splits: dict[str, Split],
    raw: Path,
    out: Path,
) -> ServedPrecision:
    """The engine the served model records: quantized to INT8 when its features were INT8."""
    if precision != "int8":
        for stale in (artifacts.INT8_MODEL.at(out), artifacts.INT8_WEIGHTS.at(out)):
            stale.unlink(missing_ok=True)
        return ServedPrecision(served_engine(config.engine, precision), precision, None)
    return quantize_served(model, config.int8, splits["train"], splits["val"], raw, out)
