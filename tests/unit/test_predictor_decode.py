"""The served decode runs as one traced graph: the same pixels and answers as the eager ops."""

from __future__ import annotations

import numpy as np
import pytest

from bench.web_load_kit import photo
from taglens.data.images import decode_and_resize
from taglens.errors import TaglensError
from taglens.model.predictor import HashtagPredictor
from taglens.serving.web.upload import prepare_image
from tests.helpers.params import tiny_params


def _eager(predictor: HashtagPredictor, images: list[bytes]) -> np.ndarray:
    """The decode as the page ran it before: `decode_and_resize`'s ops one by one."""
    import tensorflow as tf

    return np.stack(
        [decode_and_resize(tf.constant(d), predictor.image_size).numpy() for d in images]
    )


def test_the_page_gives_the_same_pixels_and_hashtags_as_before(tiny_models_dir):
    # Given photos as Instagram serves them (640 px JPEG), checked and normalized as uploads are
    predictor = HashtagPredictor.from_dir(tiny_models_dir)
    uploads = [prepare_image(photo(640, seed), tiny_params().ingest).jpeg for seed in range(4)]

    # When the page decodes them now (one graph) and as before (eager ops)
    now, before = predictor.decode(uploads), _eager(predictor, uploads)

    # Then the pixels are identical, so every answer is: class, probabilities and hashtags
    assert now.shape == (4, 32, 32, 3) and now.dtype == np.float32
    assert np.array_equal(now, before)
    assert predictor.predict_pixels(now) == predictor.predict_pixels(before)
    assert predictor.predict_bytes(uploads) == predictor.predict_pixels(before)
    assert all(len(answer["hashtags"]) > 0 for answer in predictor.predict_pixels(now))


def test_an_undecodable_image_is_named_without_the_graphs_internals(tiny_models_dir):
    predictor = HashtagPredictor.from_dir(tiny_models_dir)
    with pytest.raises(TaglensError) as refused:
        predictor.decode([photo(64), b"not an image at all"])
    message = str(refused.value)
    assert message.startswith("image 1 could not be decoded (JPEG, PNG, GIF, BMP or WebP")
    assert "Unknown image file format" in message
    assert "function_node" not in message and "Op:" not in message and "\n" not in message
