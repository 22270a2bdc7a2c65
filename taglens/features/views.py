"""Cheap extra views of an image, cached by featurize beside the backbone vectors.

- `flip`: the backbone's vector of the horizontally mirrored image. Training uses it as extra
  rows; prediction averages the two views (test-time augmentation), in evaluate and in serving.
- `colour`: a joint RGB histogram of the whole image and of its centre. Pooled backbone features
  keep little colour (ImageNet classes rarely depend on it), yet tags such as #red or #yellow do;
  the tag rankers read it, and the head may too (`train.colour`,
  `taglens.training.views_choice.choose_colour`). It costs a few microseconds per image.
- `crops`: the mean of the backbone's vectors of five crops at the backbone's input size (the
  centre and the four corners) of the image enlarged so its side is `CROP_SCALE` times the
  input: the standard multi-crop test-time views (Krizhevsky et al., 2012; Szegedy et al.,
  2015), zoomed in on the subject. It costs five more forward passes per image. Train may
  average it with the image (and mirror) at prediction when that wins on validation
  (`taglens.training.views_choice`); the served model then computes it the same way.

`views_model` puts the image's own vector and every view into one model with one output per
view, so featurize runs them all in one forward call per batch on `featurize.engine`. With the
mirror, the image and its mirror go through the backbone as one batch of 2B images
(`image_and_mirror`); the served model (`taglens.model.full_model.assemble`) builds its
flip average with the same function.
"""

from __future__ import annotations

import json
import threading
from typing import TYPE_CHECKING, Any, get_args

from taglens.params.features import ModelParams, View

if TYPE_CHECKING:
    import keras


VIEWS: tuple[str, ...] = get_args(View)
IMAGE = "vectors"  # the output of views_model that holds the image's own backbone vector
COLOUR_BINS = 4  # per channel: 4 x 4 x 4 joint bins, coarse enough for a 64-row histogram
COLOUR_DIM = 2 * COLOUR_BINS**3  # whole image, then its centre (where the subject usually is)
# The crops view's enlargement: crops keep 1/1.15 of each side (76% of the area), the usual
# resize-then-crop ratio of ImageNet evaluation (256 -> 224 is 1.14). Part of the view's
# definition, like COLOUR_BINS: changing it changes what the crops store holds.
CROP_SCALE = 1.15
N_CROPS = 5  # the centre and the four corners

_LAYERS: dict[str, type] = {}


def _layer_classes() -> dict[str, type]:
    """Define (once) the serializable Keras layers the views need."""
    if _LAYERS:
        return _LAYERS
    import keras

    @keras.saving.register_keras_serializable(package="taglens")
    class MirrorImage(keras.layers.Layer):
        """Flip images (N, H, W, C) left to right."""

        def call(self, images):
            return keras.ops.flip(images, axis=2)

    @keras.saving.register_keras_serializable(package="taglens")
    class ColourHistogram(keras.layers.Layer):
        """RGB pixels 0..255 (N, H, W, 3) -> joint histograms of the image and its centre."""

        def __init__(self, bins: int = COLOUR_BINS, **kwargs):
            super().__init__(**kwargs)
            self.bins = bins

        def _histogram(self, pixels):
            ops = keras.ops
            levels = ops.clip(ops.floor(pixels * (self.bins / 256.0)), 0, self.bins - 1)
            index = ops.cast(
                levels[..., 0] * self.bins**2 + levels[..., 1] * self.bins + levels[..., 2], "int32"
            )
            one_hot = ops.one_hot(ops.reshape(index, (ops.shape(index)[0], -1)), self.bins**3)
            return ops.mean(one_hot, axis=1)

        def call(self, images):
            pixels = keras.ops.cast(images, "float32")
            height = pixels.shape[1]
            width = pixels.shape[2]
            centre = pixels[:, height // 4 : height - height // 4, width // 4 : width - width // 4]
            return keras.ops.concatenate(
                [self._histogram(pixels), self._histogram(centre)], axis=-1
            )

        def get_config(self):
            return {**super().get_config(), "bins": self.bins}

    @keras.saving.register_keras_serializable(package="taglens")
    class ColourInput(keras.layers.Layer):
        """Colour histograms -> scale * sqrt(histogram): the head's colour block.

        `taglens.training.head.head_input` computes the same on cached histograms.
        """

        def __init__(self, scale: float = 1.0, **kwargs):
            super().__init__(**kwargs)
            self.scale = float(scale)

        def call(self, histograms):
            ops = keras.ops
            return ops.sqrt(ops.maximum(ops.cast(histograms, "float32"), 0.0)) * self.scale

        def get_config(self):
            return {**super().get_config(), "scale": self.scale}

    @keras.saving.register_keras_serializable(package="taglens")
    class WithMirror(keras.layers.Layer):
        """Images (N, H, W, C) -> (2N, H, W, C): the images, then their mirror images."""

        def call(self, images):
            return keras.ops.concatenate([images, keras.ops.flip(images, axis=2)], axis=0)

    @keras.saving.register_keras_serializable(package="taglens")
    class Halves(keras.layers.Layer):
        """A (2N, ...) batch -> its first N rows and its last N rows."""

        def call(self, batch):
            first, second = keras.ops.split(batch, 2, axis=0)
            return first, second

    @keras.saving.register_keras_serializable(package="taglens")
    class FiveCrops(keras.layers.Layer):
        """Images (N, S, S, C) -> (5N, S, S, C): centre, then the four corners, of the enlarged.

        The images are resized (bilinear) to `scale` times their side, then cut back to S.
        """

        def __init__(self, scale: float = CROP_SCALE, **kwargs):
            super().__init__(**kwargs)
            self.scale = scale

        def call(self, images):
            size = int(images.shape[1])
            big = int(round(size * self.scale))
            enlarged = keras.ops.image.resize(images, (big, big), interpolation="bilinear")
            far = big - size
            mid = (big - size) // 2
            corners = [(mid, mid), (0, 0), (0, far), (far, 0), (far, far)]
            return keras.ops.concatenate(
                [enlarged[:, top : top + size, left : left + size] for top, left in corners],
                axis=0,
            )

        def get_config(self):
            return {**super().get_config(), "scale": self.scale}

    @keras.saving.register_keras_serializable(package="taglens")
    class MeanOfCrops(keras.layers.Layer):
        """A (5N, D) batch of crop vectors, crop by crop -> (N, D), each image's mean."""

        def call(self, batch):
            parts = keras.ops.split(batch, N_CROPS, axis=0)
            return keras.ops.mean(keras.ops.stack(parts, axis=0), axis=0)

    _LAYERS.update(
        FiveCrops=FiveCrops,
        MeanOfCrops=MeanOfCrops,
        MirrorImage=MirrorImage,
        ColourHistogram=ColourHistogram,
        ColourInput=ColourInput,
        WithMirror=WithMirror,
        Halves=Halves,
    )
    return _LAYERS


def register_view_layers() -> None:
    """Define and register the view layers, so a saved model that uses them can be loaded."""
    _layer_classes()


def mirror_layer(**kwargs) -> keras.layers.Layer:
    """A layer that flips images left to right."""
    return _layer_classes()["MirrorImage"](**kwargs)


def colour_layer(**kwargs) -> keras.layers.Layer:
    """A layer that turns RGB pixels into `COLOUR_DIM` histogram values."""
    return _layer_classes()["ColourHistogram"](**kwargs)


def colour_input_layer(scale: float, **kwargs) -> keras.layers.Layer:
    """A layer that turns `colour_layer`'s histograms into the head's colour block."""
    return _layer_classes()["ColourInput"](scale=scale, **kwargs)


def image_and_mirror(extractor: keras.Model, inputs: keras.KerasTensor) -> tuple:
    """The extractor's outputs for the images and for their mirror images, in one call.

    The two go through the extractor as one batch of 2N images: one forward pass over a larger
    batch instead of two, with the same vectors (tests/unit/test_views.py).
    """
    classes = _layer_classes()
    both = extractor(classes["WithMirror"](name="with_mirror")(inputs))
    return classes["Halves"](name="image_and_mirror")(both)


def crops_mean(extractor: keras.Model, inputs: keras.KerasTensor) -> keras.KerasTensor:
    """The mean of the extractor's vectors of each image's five crops, in one call of 5N images.

    Featurize (the `crops` store) and the served model (`full_model.assemble`) both use it.
    """
    classes = _layer_classes()
    crops = classes["FiveCrops"](name="five_crops")(inputs)
    return classes["MeanOfCrops"](name="mean_of_crops")(extractor(crops))


def views_model(
    extractor: keras.Model | None, outputs: tuple[str, ...], image_size: int
) -> keras.Model:
    """Pixels -> a dict of the requested outputs (`IMAGE` and `VIEWS` names), one forward call.

    `extractor` may be None when only `colour` is asked for (it needs no backbone).

    Raises:
        ValueError: an unknown output name, no output, or no extractor for a backbone output.
    """
    import keras

    unknown = [name for name in outputs if name not in (IMAGE, *VIEWS)]
    if unknown or not outputs:
        raise ValueError(
            f"unknown feature views {unknown or list(outputs)}; expected some of {[IMAGE, *VIEWS]}"
        )
    if extractor is None and set(outputs) - {"colour"}:  # every other output needs the backbone
        raise ValueError(f"views {list(outputs)} need the backbone's extractor")
    inputs = keras.Input((image_size, image_size, 3), name="image")
    result = {}
    if IMAGE in outputs and "flip" in outputs:
        result[IMAGE], result["flip"] = image_and_mirror(extractor, inputs)
    elif IMAGE in outputs:
        result[IMAGE] = extractor(inputs)
    elif "flip" in outputs:
        result["flip"] = extractor(mirror_layer(name="mirror")(inputs))
    if "crops" in outputs:
        result["crops"] = crops_mean(extractor, inputs)
    if "colour" in outputs:
        result["colour"] = colour_layer(name="colour")(inputs)
    name = extractor.name if extractor is not None else "colour"
    return keras.Model(inputs, result, name=f"{name}_views")


def build_views_model(model: ModelParams, seed: int, outputs: tuple[str, ...]) -> keras.Model:
    """Pixels -> the requested outputs of `views_model`, for featurize.

    The backbone is built only when an output needs it (the colour histogram does not).
    """
    from taglens.features.backbones import build_feature_extractor

    backbone = set(outputs) - {"colour"}
    extractor = build_feature_extractor(model, seed) if backbone else None
    return views_model(extractor, tuple(outputs), model.image_size)


_VIEW_MODELS: dict[str, Any] = {}


_VIEW_MODELS_LOCK = threading.Lock()


def views_model_cached(model: dict[str, Any], seed: int, outputs: tuple[str, ...]) -> Any:
    """Build the views model once per process (a Dask worker keeps it for all its shards)."""
    key = json.dumps({"model": model, "seed": seed, "outputs": list(outputs)}, sort_keys=True)
    with _VIEW_MODELS_LOCK:
        if key not in _VIEW_MODELS:
            # build_backbone isolates Keras' seeds from the threads Prefect and Dask run here.
            _VIEW_MODELS[key] = build_views_model(ModelParams(**model), seed, tuple(outputs))
        return _VIEW_MODELS[key]
