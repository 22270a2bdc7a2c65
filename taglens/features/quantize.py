"""INT8: NNCF quantization of a model's OpenVINO graph, kept only if it keeps accuracy.

`quantize(model, calibration, validation, max_drop=...)` converts a Keras model (pixels in) to
OpenVINO, quantizes it with `nncf.quantize_with_accuracy_control` (calibrated on `calibration`
pixels; layers whose quantization costs validation accuracy are reverted to FP32 one group at a
time), then measures both models on `validation` itself. The INT8 model is kept only if its
accuracy is within `max_drop` (absolute) of FP32's; otherwise the decision is FP32, with a
warning naming both accuracies. The validation metric is the caller's (`Validation.correct`):
featurize scores a logistic regression on backbone vectors, train scores the served classifier.

Every decision is cached on disk under `<cache>/int8/<key>/` (`decision.json`, and the INT8
model as OpenVINO IR when kept), keyed by what decides it (the caller's `identity`: model,
weights, calibration and validation images, settings), so a run re-quantizes nothing it has
decided before, whether the answer was INT8 or FP32.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from taglens.atomic import atomic_write_json
from taglens.errors import TaglensError

if TYPE_CHECKING:
    import keras

logger = logging.getLogger(__name__)

INT8 = "int8"
FP32 = "fp32"
DECISION_FILE = "decision.json"
MODEL_XML = "model.xml"
_BATCH = 32  # images per inference call while validating
# The colour view (taglens.features.views) counts pixels into bins: quantizing its arithmetic
# moved whole pixels between bins (cosine 0.71 to the FP32 histograms on flowers photos), and it
# costs nothing in FP32. It is left out of quantization wherever the layer appears, and so is
# the head's colour block computed from it (`colour_input`).
IGNORED = (r".*/colour(_input)?(_\d+)?/.*",)


class QuantizeError(TaglensError):
    """Quantization cannot run on these inputs (a setting or data problem the user fixes)."""


@dataclass(frozen=True)
class Validation:
    """Labelled validation images and how a model's outputs on them are scored.

    `correct(outputs, indices)` returns one bool per index: whether the model's outputs for
    `pixels[indices]` (a dict of arrays for a dict-output model) are right.
    """

    pixels: np.ndarray  # (N, S, S, 3) uint8 or float32, 0..255 RGB
    correct: Callable[[Any, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Decision:
    """What a quantization decided: the precision kept, both accuracies, and why."""

    precision: str  # INT8 or FP32
    fp32_accuracy: float
    int8_accuracy: float
    max_drop: float
    validation_images: int
    calibration_images: int
    reason: str

    @property
    def drop(self) -> float:
        """How much validation accuracy INT8 lost (negative: it gained)."""
        return self.fp32_accuracy - self.int8_accuracy


def cache_key(identity: dict[str, Any]) -> str:
    """A short stable hash of what decides a quantization, with the tool versions."""
    from importlib import metadata

    tools = {name: metadata.version(name) for name in ("nncf", "openvino")}
    recipe = {"ignored": IGNORED, "drop_type": "absolute"}  # how this module quantizes
    text = json.dumps({**identity, "tools": tools, "recipe": recipe}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def cached_decision(folder: Path) -> Decision | None:
    """The decision stored in `folder`, or None when there is none (or it is unreadable)."""
    path = Path(folder) / DECISION_FILE
    if not path.is_file():
        return None
    try:
        decision = Decision(**json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, TypeError) as exc:
        logger.warning("ignoring unreadable quantization decision %s (%s)", path, exc)
        return None
    if decision.precision == INT8 and not (Path(folder) / MODEL_XML).is_file():
        return None  # the model was removed: decide again
    return decision


def _ov_forward(compiled: Any, keys: tuple[str, ...] | None) -> Callable[[np.ndarray], Any]:
    """A compiled OpenVINO model as a callable on float32 batches (a dict for dict outputs)."""
    from taglens.features.engines import output_names

    names = output_names(compiled.outputs, keys)

    def forward(images: np.ndarray) -> Any:
        result = compiled(np.ascontiguousarray(images, dtype=np.float32))
        arrays = {name: np.array(result[i]) for i, name in enumerate(names)}
        return next(iter(arrays.values())) if keys is None else arrays

    return forward


def accuracy(
    forward: Callable[[np.ndarray], Any], validation: Validation, indices: np.ndarray | None = None
) -> float:
    """The share of `validation` images (or of `indices` among them) the model gets right."""
    indices = np.arange(len(validation.pixels)) if indices is None else np.asarray(indices)
    if not len(indices):
        return 0.0
    right = []
    for start in range(0, len(indices), _BATCH):
        part = indices[start : start + _BATCH]
        outputs = forward(validation.pixels[part].astype("float32"))
        right.append(np.asarray(validation.correct(outputs, part), dtype=bool))
    return float(np.concatenate(right).mean())


def quantize(
    model: keras.Model,
    calibration: np.ndarray,
    validation: Validation,
    *,
    max_drop: float,
    max_iterations: int,
    folder: Path,
) -> Decision:
    """Quantize `model` to INT8 with accuracy control; keep it only within `max_drop` of FP32.

    Args:
        model: a Keras model on raw pixels (preprocessing inside).
        calibration: (N, S, S, 3) training pixels, 0..255, for the activation statistics.
        validation: labelled validation pixels and their scoring.
        max_drop: the most validation accuracy (absolute) INT8 may lose.
        max_iterations: the most layer groups accuracy control reverts to FP32 before giving up.
        folder: where the decision (and the INT8 model, when kept) is written.

    Returns:
        The decision; `folder/model.xml` holds the INT8 model when it is INT8.

    Raises:
        QuantizeError: no calibration or no validation images.
    """
    if not len(calibration) or not len(validation.pixels):
        raise QuantizeError(
            f"INT8 needs training images to calibrate on and validation images to check "
            f"accuracy on, got {len(calibration)} and {len(validation.pixels)}: add photos, or "
            "set featurize.engine: openvino"
        )
    import nncf
    import openvino as ov
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    from taglens.features.engines import no_usage_reports, output_keys, traced

    no_usage_reports()
    keys = output_keys(model)
    converted = ov.convert_model(traced(model).get_concrete_function())
    core = ov.Core()
    config = {"INFERENCE_PRECISION_HINT": "f32"}
    fp32 = accuracy(_ov_forward(core.compile_model(converted, "CPU", config), keys), validation)

    def to_input(index: int) -> np.ndarray:
        return validation.pixels[[index]].astype("float32")

    def validate(compiled: Any, items: Any) -> tuple[float, None]:
        indices = np.fromiter(items, dtype=np.int64)
        return accuracy(_ov_forward(compiled, keys), validation, indices), None

    pixels = np.asarray(calibration)
    calibration_set = nncf.Dataset(range(len(pixels)), lambda i: pixels[[i]].astype("float32"))
    validation_set = nncf.Dataset(range(len(validation.pixels)), to_input)
    logger.info(
        "quantizing %s to INT8: %d calibration images, accuracy control on %d validation images "
        "(FP32 accuracy %.3f, max drop %g)",
        model.name,
        len(pixels),
        len(validation.pixels),
        fp32,
        max_drop,
    )
    quantized = nncf.quantize_with_accuracy_control(
        converted,
        calibration_set,
        validation_set,
        validate,
        max_drop=max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        subset_size=len(pixels),
        ignored_scope=nncf.IgnoredScope(patterns=list(IGNORED), validate=False),
        advanced_accuracy_restorer_parameters=AdvancedAccuracyRestorerParameters(
            max_num_iterations=max_iterations
        ),
    )
    int8 = accuracy(_ov_forward(core.compile_model(quantized, "CPU", config), keys), validation)
    decision = decide(
        fp32,
        int8,
        max_drop=max_drop,
        validation_images=len(validation.pixels),
        calibration_images=len(pixels),
    )
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if decision.precision == INT8:
        # IR files first, the decision last: a decision without its model is decided again
        ov.save_model(quantized, folder / MODEL_XML, compress_to_fp16=False)
    atomic_write_json(folder / DECISION_FILE, asdict(decision))
    return decision


def decide(
    fp32: float, int8: float, *, max_drop: float, validation_images: int, calibration_images: int
) -> Decision:
    """INT8 when its validation accuracy is within `max_drop` of FP32's, else FP32 and why."""
    kept = fp32 - int8 <= max_drop + 1e-12
    verdict = "within" if kept else "beyond"
    reason = (
        f"INT8 validation accuracy {int8:.3f} against FP32's {fp32:.3f} on {validation_images} "
        f"images: a drop of {fp32 - int8:+.3f}, {verdict} featurize.int8.max_drop {max_drop:g}"
    )
    return Decision(
        INT8 if kept else FP32, fp32, int8, max_drop, validation_images, calibration_images, reason
    )


def report(decision: Decision) -> None:
    """Log the decision: information when INT8 is kept, a warning that says why when not."""
    if decision.precision == INT8:
        logger.info("keeping the INT8 model: %s", decision.reason)
    else:
        logger.warning("using FP32, not INT8: %s", decision.reason)


def load_int8(folder: Path) -> Any:
    """The INT8 OpenVINO model a kept decision stored in `folder` (an `openvino.Model`)."""
    import openvino as ov

    return ov.Core().read_model(Path(folder) / MODEL_XML)
