"""Cheap extra views of an image, cached by featurize beside the backbone vectors.

- `flip`: the backbone's vector of the horizontally mirrored image. Training uses it as extra
  rows; prediction averages the two views (test-time augmentation), in evaluate and in serving.
- `colour`: a joint RGB histogram of the whole image and of its centre. Pooled backbone features
  keep little colour (ImageNet classes rarely depend on it), yet tags such as #red or #yellow do;
  the tag rankers read it. It costs a few microseconds per image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import keras

    from taglens.params import ModelParams

VIEWS = ("flip", "colour")
COLOUR_BINS = 4  # per channel: 4 x 4 x 4 joint bins, coarse enough for a 64-row histogram
COLOUR_DIM = 2 * COLOUR_BINS**3  # whole image, then its centre (where the subject usually is)

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
            height, width = pixels.shape[1], pixels.shape[2]
            centre = pixels[:, height // 4 : height - height // 4, width // 4 : width - width // 4]
            return keras.ops.concatenate(
                [self._histogram(pixels), self._histogram(centre)], axis=-1
            )

        def get_config(self):
            return {**super().get_config(), "bins": self.bins}

    _LAYERS.update(MirrorImage=MirrorImage, ColourHistogram=ColourHistogram)
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


def view_extractor(extractor: keras.Model, view: str) -> keras.Model:
    """Pixels -> the vector of one view (`flip`: the extractor on mirrored pixels; `colour`).

    Raises:
        ValueError: an unknown view.
    """
    import keras

    if view not in VIEWS:
        raise ValueError(f"unknown feature view {view!r}; expected one of {list(VIEWS)}")
    inputs = keras.Input(extractor.input_shape[1:], name="image")
    if view == "flip":
        outputs = extractor(mirror_layer(name="mirror")(inputs))
    else:
        outputs = colour_layer(name="colour")(inputs)
    return keras.Model(inputs, outputs, name=f"{extractor.name}_{view}")


def build_view_extractor(model: ModelParams, seed: int, view: str) -> keras.Model:
    """Pixels -> one view's vectors, for featurize; the colour histogram needs no backbone."""
    import keras

    from taglens.features.backbones import build_feature_extractor

    if view == "colour":
        inputs = keras.Input((model.image_size, model.image_size, 3), name="image")
        return keras.Model(inputs, colour_layer(name="colour")(inputs), name="colour")
    return view_extractor(build_feature_extractor(model, seed), view)
