"""Pretrained backbones from keras.applications, with their preprocessing inside the model."""

from __future__ import annotations

import hashlib
import logging
import random
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from taglens.errors import TaglensError
from taglens.params.features import BACKBONES

if TYPE_CHECKING:
    import keras

    from taglens.params import ModelParams

logger = logging.getLogger(__name__)


class BackboneWeightsError(TaglensError):
    """The requested backbone weights cannot be loaded (a setting the user must fix)."""


_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)


def _preprocess_layer_class() -> type:
    import keras

    @keras.saving.register_keras_serializable(package="taglens")
    class Preprocess(keras.layers.Layer):
        """Backbone-specific pixel preprocessing, saved with the model so serving matches."""

        def __init__(self, mode: str, **kwargs):
            super().__init__(**kwargs)
            self.mode = mode

        def call(self, images):
            x = keras.ops.cast(images, "float32")
            if self.mode == "caffe":
                x = x[..., ::-1] - keras.ops.convert_to_tensor(_CAFFE_MEAN_BGR, dtype="float32")
            elif self.mode == "tf":
                x = x / 127.5 - 1.0
            return x

        def get_config(self):
            return {**super().get_config(), "mode": self.mode}

    return Preprocess


_PREPROCESS = None


def preprocess_layer(mode: str, **kwargs) -> keras.layers.Layer:
    """A serializable preprocessing layer for a backbone's `mode`."""
    global _PREPROCESS
    if _PREPROCESS is None:
        _PREPROCESS = _preprocess_layer_class()
    return _PREPROCESS(mode, **kwargs)


def resolve_weights(weights: str | None) -> str | None:
    """Check a `model.weights` value before building: a file must exist.

    Raises:
        BackboneWeightsError: a weights path that does not exist.

    """
    if weights is None or weights == "imagenet":
        return weights
    path = Path(weights).expanduser()
    if not path.is_file():
        raise BackboneWeightsError(
            f"model.weights: no weights file at {path}. Give an existing Keras weights file, "
            "'imagenet' to download ImageNet weights, or null for random weights."
        )
    return str(path)


def weights_identity(params: ModelParams, seed: int) -> str:
    """A string that changes whenever the backbone's weights would: part of the feature cache key.

    A local file is identified by its content hash, so renaming it keeps the cache valid.
    """
    if params.weights is None:
        return f"random-seed{seed}"
    if params.weights == "imagenet":
        return "imagenet"
    digest = hashlib.sha256(Path(resolve_weights(params.weights)).read_bytes()).hexdigest()
    return f"file-{digest[:16]}"


@contextmanager
def private_default_seeds(seed: int) -> Iterator[None]:
    """Give Keras' unseeded initializers their own `random.Random(seed)` while a model is built.

    Keras draws those seeds from Python's global `random`, which `set_random_seed` re-seeds; but
    in a Prefect task or on a Dask worker other threads draw from it too, mid-build, so random
    weights (`model.weights: null`) came out different from the stage's. A private generator
    seeded the same way gives the draws of an undisturbed process: the same weights everywhere.
    """
    try:
        from keras.src.random import seed_generator
    except ImportError:  # a Keras without that module: nothing to isolate
        yield
        return
    if not hasattr(seed_generator, "python_random"):
        yield
        return
    shared = seed_generator.python_random
    seed_generator.python_random = random.Random(seed)  # weights, not secrets
    try:
        yield
    finally:
        seed_generator.python_random = shared


def build_backbone(params: ModelParams, seed: int) -> keras.Model:
    """The backbone without its top, global-average pooled, on preprocessed pixels.

    Random weights (`weights: null`) are drawn from `seed`, so featurize and train build the same
    network.

    Raises:
        BackboneWeightsError: ImageNet weights could not be downloaded, or a file does not fit.

    """
    import keras

    spec = BACKBONES[params.backbone]
    weights = resolve_weights(params.weights)
    constructor = getattr(keras.applications, spec.constructor)
    shape = (params.image_size, params.image_size, 3)
    keras.utils.set_random_seed(seed)
    try:
        with private_default_seeds(seed):
            return constructor(include_top=False, weights=weights, input_shape=shape, pooling="avg")
    except Exception as exc:  # keras raises URLError, HTTPError, OSError or ValueError here
        if weights == "imagenet":
            raise BackboneWeightsError(
                f"could not download ImageNet weights for {params.backbone} ({exc}). Either set "
                "model.weights to a local weights file (for example one copied from a machine "
                "with internet), or place Keras' own file in its cache directory "
                "(~/.keras/models, or $KERAS_HOME/models) and keep model.weights: imagenet."
            ) from exc
        raise BackboneWeightsError(
            f"could not load weights {weights} into {params.backbone} at "
            f"{params.image_size}px: {exc}"
        ) from exc


def build_feature_extractor(params: ModelParams, seed: int) -> keras.Model:
    """Raw RGB pixels (0-255, image_size x image_size) to pooled backbone features."""
    import keras

    spec = BACKBONES[params.backbone]
    backbone = build_backbone(params, seed)
    backbone.trainable = False
    inputs = keras.Input((params.image_size, params.image_size, 3), name="image")
    x = preprocess_layer(spec.mode, name="preprocess")(inputs)
    features = backbone(x, training=False)
    return keras.Model(inputs, features, name=f"{params.backbone}_features")
