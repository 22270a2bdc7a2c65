"""The cheap views featurize caches: the mirror image and the colour histograms."""

from __future__ import annotations

import numpy as np
import pytest

from taglens.features.views import (
    COLOUR_DIM,
    IMAGE,
    colour_layer,
    crops_mean,
    mirror_layer,
    views_model,
)


def test_colour_histogram_counts_each_pixel_once_in_its_bin():
    images = np.zeros((2, 8, 8, 3), "float32")
    images[1] = 255.0
    images[1, 2:6, 2:6] = (255.0, 0.0, 0.0)  # a red centre on white
    histogram = np.asarray(colour_layer()(images))
    assert histogram.shape == (2, COLOUR_DIM)
    np.testing.assert_allclose(histogram.sum(axis=1), 2.0)  # whole image + centre, each sums to 1
    assert histogram[0, 0] == 1.0  # black: bin (0, 0, 0)
    red, white = 3 * 16, 63
    assert histogram[1, red] == pytest.approx(16 / 64)
    assert histogram[1, white] == pytest.approx(48 / 64)
    assert histogram[1, 64 + red] == 1.0  # the centre is all red


def test_mirror_view_runs_the_extractor_on_the_flipped_image():
    import keras

    inputs = keras.Input((4, 4, 3))
    extractor = keras.Model(inputs, keras.layers.Flatten()(inputs))
    images = np.arange(2 * 4 * 4 * 3, dtype="float32").reshape(2, 4, 4, 3)
    both = views_model(extractor, (IMAGE, "flip"), 4)(images)
    np.testing.assert_array_equal(np.asarray(both[IMAGE]), images.reshape(2, -1))
    np.testing.assert_array_equal(np.asarray(both["flip"]), images[:, :, ::-1].reshape(2, -1))
    alone = views_model(extractor, ("flip",), 4)(images)
    np.testing.assert_array_equal(np.asarray(alone["flip"]), images[:, :, ::-1].reshape(2, -1))
    np.testing.assert_array_equal(np.asarray(mirror_layer()(images)), images[:, :, ::-1])
    with pytest.raises(ValueError, match="unknown feature views"):
        views_model(extractor, ("rotate",), 4)
    with pytest.raises(ValueError, match="need the backbone"):
        views_model(None, (IMAGE, "colour"), 4)
    assert set(views_model(None, ("colour",), 4)(images)) == {"colour"}


@pytest.mark.parametrize("engine", ["tensorflow", "openvino"])
@pytest.mark.parametrize("backbone", ["vgg19", "mobilenet"])
def test_one_forward_call_of_2b_images_gives_the_per_view_vectors(backbone, engine):
    """The image and its mirror as one batch of 2B: the vectors of two separate passes."""
    from taglens.features.backbones import build_feature_extractor
    from taglens.features.engines import compile_forward
    from taglens.params import ModelParams

    params = ModelParams(backbone=backbone, image_size=32, weights=None)
    extractor = build_feature_extractor(params, 7)
    pixels = np.random.default_rng(1).uniform(0, 255, (6, 32, 32, 3)).astype("float32")
    # today's per-view results: the extractor on the images, then on the mirror images
    image = np.asarray(extractor(pixels, training=False))
    mirror = np.asarray(extractor(pixels[:, :, ::-1], training=False))
    colour = np.asarray(colour_layer()(pixels))
    model = views_model(extractor, (IMAGE, "flip", "colour"), 32)
    got = compile_forward(model, engine, jit_compile=False, batch_size=6)(pixels)
    shapes = {name: got[name].shape for name in got}
    assert shapes == {IMAGE: image.shape, "flip": mirror.shape, "colour": (6, COLOUR_DIM)}
    assert relative_difference(got[IMAGE], image) < 1e-5
    assert relative_difference(got["flip"], mirror) < 1e-5
    np.testing.assert_allclose(got["colour"], colour, atol=1e-6)
    assert relative_difference(got["flip"], image) > 1e-2  # random pixels: the mirror differs


def test_crops_view_is_the_mean_of_five_crops_of_the_enlarged_image():
    """Centre and corners of the image resized to 1.15x, cut to the input side, then averaged."""
    import keras

    from taglens.features.views import _layer_classes

    size = 20
    pixels = np.random.default_rng(3).uniform(0, 255, (2, size, size, 3)).astype("float32")
    crops = np.asarray(_layer_classes()["FiveCrops"]()(pixels))
    assert crops.shape == (5 * 2, size, size, 3)
    big = np.asarray(keras.ops.image.resize(pixels, (23, 23), interpolation="bilinear"))
    # order: every image's centre crop, then top-left, top-right, bottom-left, bottom-right
    np.testing.assert_allclose(crops[0:2], big[:, 1:21, 1:21], atol=1e-4)
    np.testing.assert_allclose(crops[2:4], big[:, 0:20, 0:20], atol=1e-4)
    np.testing.assert_allclose(crops[4:6], big[:, 0:20, 3:23], atol=1e-4)
    np.testing.assert_allclose(crops[6:8], big[:, 3:23, 0:20], atol=1e-4)
    np.testing.assert_allclose(crops[8:10], big[:, 3:23, 3:23], atol=1e-4)
    inputs = keras.Input((size, size, 3))
    extractor = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))
    got = np.asarray(views_model(extractor, (IMAGE, "crops"), size)(pixels)["crops"])
    want = crops.mean(axis=(1, 2)).reshape(5, 2, 3).mean(axis=0)
    np.testing.assert_allclose(got, want, rtol=1e-5)
    # a zoom: not the image's own vector
    assert np.abs(got - pixels.mean(axis=(1, 2))).max() > 0.1
    model = keras.Model(inputs, crops_mean(extractor, inputs))
    np.testing.assert_allclose(np.asarray(model(pixels)), want, rtol=1e-5)


@pytest.mark.parametrize("engine", ["tensorflow", "openvino"])
def test_crops_view_on_an_engine_matches_keras(engine):
    """featurize computes the crops view on featurize.engine: the same vectors as Keras."""
    from taglens.features.backbones import build_feature_extractor
    from taglens.features.engines import compile_forward
    from taglens.params import ModelParams

    extractor = build_feature_extractor(
        ModelParams(backbone="mobilenet", image_size=32, weights=None), 7
    )
    pixels = np.random.default_rng(1).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    model = views_model(extractor, (IMAGE, "flip", "crops"), 32)
    want = {name: np.asarray(value) for name, value in model(pixels).items()}
    got = compile_forward(model, engine, jit_compile=False, batch_size=4)(pixels)
    assert got["crops"].shape == want[IMAGE].shape
    assert relative_difference(got["crops"], want["crops"]) < 1e-4
    assert relative_difference(got[IMAGE], want[IMAGE]) < 1e-4
    assert relative_difference(got["crops"], want[IMAGE]) > 1e-3


def relative_difference(got: np.ndarray, want: np.ndarray) -> float:
    """The largest row-wise |got - want| / |want| (vector norms)."""
    got, want = np.asarray(got, "float64"), np.asarray(want, "float64")
    scale = np.maximum(np.linalg.norm(want, axis=1), 1e-30)
    return float(np.max(np.linalg.norm(got - want, axis=1) / scale))
