"""The INT8 backbone featurize runs: calibrated on training photos, checked on validation photos.

With `featurize.engine: openvino-int8`, featurize quantizes its views model (the backbone, the
mirror and the colour histogram in one graph) with `taglens.features.quantize` before it fills
the stores. Featurize runs before clean, yet it can take clean's own split: a photo's side is a
pure function of its content (`taglens.features.split`: its owner or sha256, `base.seed` and
`clean.val_fraction` / `clean.test_fraction`), so the photos featurize calls training and
validation photos are exactly the ones clean will. The first `featurize.int8.calibration_images`
training photos (in split-hash order: stable as photos are added) calibrate, the first
`validation_images` validation photos check accuracy; test photos are never looked at.

The accuracy checked is a logistic regression's: fitted once on the FP32 vectors of the
calibration photos, then scored on each candidate model's vectors of the validation photos. It
holds the classifier fixed, so it also counts how far INT8 moves the vectors away from what an
FP32-trained head expects, and it is cheap enough to run at every accuracy-control step.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from taglens.features import quantize
from taglens.features.engines import INT8_ENGINE, default_cache_dir, use_int8
from taglens.features.split import group_key, side_of, unit_position
from taglens.features.views import IMAGE, build_views_model

if TYPE_CHECKING:
    import keras

    from taglens.data.posts import Post
    from taglens.params import CleanParams, FeaturizeParams, ModelParams

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Int8Backbone:
    """What featurize runs: the precision decided, the engine for it, and its model factory."""

    decision: quantize.Decision
    folder: Path  # the cached decision and, when INT8 was kept, the INT8 model
    outputs: tuple[str, ...]  # the views model's outputs the INT8 model was quantized with

    @property
    def engine(self) -> str:
        """openvino-int8 when INT8 was kept, else openvino (the FP32 fallback)."""
        return INT8_ENGINE if self.decision.precision == quantize.INT8 else "openvino"

    def model_factory(self, model: ModelParams, seed: int) -> Callable[[tuple[str, ...]], Any]:
        """Build the views model with every output, on the INT8 model when INT8 was kept.

        The INT8 model computes all outputs at once; the stores take only what they lack.
        """

        def build(_outputs: tuple[str, ...]) -> keras.Model:
            views = build_views_model(model, seed, self.outputs)
            if self.decision.precision == quantize.INT8:
                use_int8(views, quantize.load_int8(self.folder))
            return views

        return build


def calibration_and_validation(
    posts: Sequence[Post], clean: CleanParams, seed: int, calibration: int, validation: int
) -> tuple[list[Post], list[Post]]:
    """The training photos that calibrate and the validation photos that check, as clean splits.

    Each side is taken in order of the photos' split positions (a keyed hash), so the choice is
    the same whatever order the posts come in, and adding photos changes it little.
    """
    placed = []
    seen: set[str] = set()
    for post in posts:
        if post.sha256 in seen:
            continue
        seen.add(post.sha256)
        position = unit_position(group_key(post.sha256, post.owner), seed)
        placed.append((side_of(position, clean.val_fraction, clean.test_fraction), position, post))
    placed.sort(key=lambda item: (item[1], item[2].sha256))
    train = [post for side, _, post in placed if side == "train"][:calibration]
    val = [post for side, _, post in placed if side == "val"][:validation]
    return train, val


def prepare(
    model: ModelParams,
    params: FeaturizeParams,
    clean: CleanParams,
    *,
    seed: int,
    weights_identity: str,
    posts: Sequence[Post],
    raw: Path,
    cache_dir: Path | None = None,
) -> Int8Backbone:
    """Decide INT8 or FP32 for featurize's views model: from the cache, else by quantizing.

    Args:
        model: the backbone params.
        params: featurize params (`views`, `int8`).
        clean: the split fractions (clean's own, so the same photos are training photos).
        seed: `base.seed` (the split and random weights).
        weights_identity: the backbone weights' identity (part of the cache key).
        posts: every post featurize runs.
        raw: the folder the posts' images are relative to.
        cache_dir: where decisions are kept (default `default_cache_dir()`/int8).

    Raises:
        QuantizeError: too few labelled training or validation photos to calibrate and check.
    """
    settings = params.int8
    outputs = (IMAGE, *params.views)
    train, val = calibration_and_validation(
        posts, clean, seed, settings.calibration_images, settings.validation_images
    )
    labels = sorted({post.label for post in train})
    if len(labels) < 2 or not val:
        raise quantize.QuantizeError(
            f"featurize.engine: {INT8_ENGINE} checks accuracy on the split clean makes, and it "
            f"holds {len(train)} training photos of {len(labels)} class(es) and {len(val)} "
            "validation photos: it needs two classes and some validation photos (add photos or "
            "raise clean.val_fraction), or set featurize.engine: openvino"
        )
    identity = {
        "what": "featurize views model",
        "backbone": model.backbone,
        "image_size": model.image_size,
        "weights": weights_identity,
        "outputs": outputs,
        "calibration": [post.sha256 for post in train],
        "validation": [(post.sha256, post.label) for post in val],
        "labels": [post.label for post in train],
        "max_drop": settings.max_drop,
        "max_iterations": settings.max_iterations,
    }
    folder = Path(cache_dir or default_cache_dir() / "int8") / quantize.cache_key(identity)
    decision = quantize.cached_decision(folder)
    if decision is None:
        decision = _quantize(model, seed, outputs, train, val, settings, raw, folder)
    else:
        logger.info("INT8 decision cached in %s", folder)
    quantize.report(decision)
    return Int8Backbone(decision, folder, outputs)


def _quantize(
    model: ModelParams,
    seed: int,
    outputs: tuple[str, ...],
    train: list[Post],
    val: list[Post],
    settings: Any,
    raw: Path,
    folder: Path,
) -> quantize.Decision:
    """Quantize the views model with accuracy control on a logistic regression's accuracy."""
    from sklearn.linear_model import LogisticRegression

    from taglens.features.engines import compile_forward

    views = build_views_model(model, seed, outputs)
    calibration = pixels_of([raw / post.image for post in train], model.image_size)
    pixels = pixels_of([raw / post.image for post in val], model.image_size)
    forward = compile_forward(views, "openvino", jit_compile=False)
    fp32 = np.concatenate(
        [
            _vectors(forward(calibration[start : start + 32].astype("float32")))
            for start in range(0, len(calibration), 32)
        ]
    )
    classifier = LogisticRegression(max_iter=1000).fit(fp32, [post.label for post in train])
    truth = np.array([post.label for post in val])

    def correct(outputs: Any, indices: np.ndarray) -> np.ndarray:
        return classifier.predict(_vectors(outputs)) == truth[indices]

    return quantize.quantize(
        views,
        calibration,
        quantize.Validation(pixels, correct),
        max_drop=settings.max_drop,
        max_iterations=settings.max_iterations,
        folder=folder,
    )


def _vectors(outputs: Any) -> np.ndarray:
    """The image's own backbone vectors among a views model's outputs."""
    return np.asarray(outputs[IMAGE] if isinstance(outputs, dict) else outputs, dtype="float64")


def pixels_of(paths: Sequence[Path], image_size: int) -> np.ndarray:
    """Image files decoded and resized as featurize does, kept as uint8 (a quarter the memory)."""
    from taglens.data.images import image_dataset

    batches = [np.asarray(batch) for batch in image_dataset(paths, image_size, 64)]
    return np.clip(np.rint(np.concatenate(batches)), 0, 255).astype("uint8")
