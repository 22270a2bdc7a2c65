"""The cheap views featurize caches: the mirror image and the colour histograms."""

from __future__ import annotations

import numpy as np
import pytest

from taglens.features.views import COLOUR_DIM, colour_layer, mirror_layer, view_extractor


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
    flipped = np.asarray(view_extractor(extractor, "flip")(images))
    np.testing.assert_array_equal(flipped, images[:, :, ::-1].reshape(2, -1))
    np.testing.assert_array_equal(np.asarray(mirror_layer()(images)), images[:, :, ::-1])
    with pytest.raises(ValueError, match="unknown feature view"):
        view_extractor(extractor, "rotate")
