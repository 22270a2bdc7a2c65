"""Image decoding and resizing shared by every consumer, so all feed the model the same pixels.

Featurize, training, batch predict and the web page all call these functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path


def decode_and_resize(data, image_size: int):
    """Decode encoded image bytes (a scalar string tensor) to float32 RGB `image_size` squared.

    The first frame of an animation is used; resizing is bilinear with antialiasing.
    """
    import tensorflow as tf

    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    return tf.cast(image, tf.float32)


def load_batch(paths: Sequence[Path | str], image_size: int):
    """Decode and resize image files into one float32 batch (for small, eager uses)."""
    import tensorflow as tf

    images = [decode_and_resize(tf.io.read_file(str(path)), image_size) for path in paths]
    return tf.stack(images)


def image_dataset(paths: Sequence[Path | str], image_size: int, batch_size: int):
    """A tf.data pipeline that reads, decodes and resizes in parallel and prefetches batches."""
    import tensorflow as tf

    dataset = tf.data.Dataset.from_tensor_slices([str(path) for path in paths])
    dataset = dataset.map(
        lambda path: decode_and_resize(tf.io.read_file(path), image_size),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    return dataset.batch(batch_size).prefetch(tf.data.AUTOTUNE)
