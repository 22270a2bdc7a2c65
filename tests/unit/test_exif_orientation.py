"""Batch predict scores a photo stored sideways (an EXIF orientation) upright, as the page does."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import ExifTags, Image, ImageFile, ImageOps

from taglens.data.images import decode_and_resize, read_header, upright
from taglens.serving.batch.scoring import score_paths
from taglens.serving.model_ref import ModelRef
from taglens.serving.web.upload import prepare_image
from tests.helpers.params import tiny_params
from tests.helpers.pixel_recorder import PixelRecorder

ORIENTATION = ExifTags.Base.Orientation


def _asymmetric(height: int = 5, width: int = 3) -> np.ndarray:
    """An RGB array no flip or turn maps onto itself: every pixel differs."""
    values = np.arange(height * width * 3, dtype=np.int64).reshape(height, width, 3)
    return (values * 7 % 256).astype(np.uint8)


def _save(path: Path, pixels: np.ndarray, orientation: int | None) -> Path:
    image = Image.fromarray(pixels)
    if orientation is None:
        image.save(path)
    else:
        exif = Image.Exif()
        exif[ORIENTATION] = orientation
        image.save(path, exif=exif)
    return path


@pytest.mark.parametrize("orientation", range(1, 9))
def test_upright_gives_the_pixels_of_pillows_exif_transpose(orientation, tmp_path):
    # Given a photo file stored with this orientation
    stored = _asymmetric()
    path = _save(tmp_path / "photo.png", stored, orientation)

    # When the stored pixels are turned as the header says
    turned = upright(stored, read_header(path).orientation)

    # Then they are Pillow's upright photo, pixel for pixel (what ingest and the page score)
    with Image.open(path) as image:
        expected = np.asarray(ImageOps.exif_transpose(image))
    assert turned.shape == expected.shape
    assert np.array_equal(turned, expected)
    assert (orientation == 1) == np.array_equal(turned, stored)


def test_the_header_reads_the_orientation_and_treats_a_missing_or_invalid_one_as_upright(
    tmp_path,
):
    pixels = _asymmetric()
    assert read_header(_save(tmp_path / "a.jpg", pixels, 6)) == (3, 5, 6, "JPEG", False)
    assert read_header(_save(tmp_path / "b.jpg", pixels, None)) == (3, 5, 1, "JPEG", False)
    assert read_header(_save(tmp_path / "c.png", pixels, 9)) == (3, 5, 1, "PNG", False)


@pytest.mark.parametrize("orientation", [6, None])
@pytest.mark.parametrize("suffix", [".png", ".jpg", ".webp", ".tiff"])
def test_the_orientation_is_read_without_decoding_a_pixel(
    suffix, orientation, tmp_path, monkeypatch
):
    # A PNG's own getexif decodes the whole image when no EXIF came before the pixels (most
    # PNGs): the header read must not, or an image over the pixel limit would be decoded before
    # it is refused.
    path = _save(tmp_path / f"photo{suffix}", _asymmetric(), orientation)

    decoded = []
    monkeypatch.setattr(
        ImageFile.ImageFile, "load", lambda image, *args, **kwargs: decoded.append(image.format)
    )
    assert read_header(path).orientation == (orientation or 1)
    assert decoded == []


# The stored pixels that each orientation shows as the photo (Pillow checks it in the test).
_STORED_AS = {
    5: lambda photo: photo.transpose(1, 0, 2),
    6: lambda photo: np.rot90(photo, 1),
    7: lambda photo: np.rot90(photo.transpose(1, 0, 2), 2),
    8: lambda photo: np.rot90(photo, 3),
}


@pytest.mark.parametrize("orientation", sorted(_STORED_AS))
def test_batch_predict_scores_a_sideways_photo_as_the_upright_one(orientation, tmp_path):
    import tensorflow as tf

    # Given a photo saved upright, the same photo stored turned with the orientation that shows
    # it upright, and the turned pixels without that orientation
    photo = np.kron(_asymmetric(6, 4), np.ones((8, 8, 1), np.uint8))  # 48 x 32, lossless PNG
    turned = np.ascontiguousarray(_STORED_AS[orientation](photo))
    paths = [
        _save(tmp_path / "upright.png", photo, None),
        _save(tmp_path / "sideways.png", turned, orientation),
        _save(tmp_path / "sideways-no-exif.png", turned, None),
    ]
    with Image.open(paths[1]) as image:  # what ingest and the page see
        assert np.array_equal(np.asarray(ImageOps.exif_transpose(image)), photo)

    # (and a phone's JPEG stored the same way, beside its upright twin)
    paths += [
        _save(tmp_path / "upright.jpg", photo, None),
        _save(tmp_path / "sideways.jpg", turned, orientation),
    ]

    # When batch predict scores them
    predictor = PixelRecorder()
    rows = [
        row
        for batch in score_paths(
            paths, predictor, ModelRef("taglens", "1"), batch_size=2, progress=False
        )
        for row in batch
    ]

    # Then the sideways photo gets the upright photo's pixels (turned after the resize: equal up
    # to float rounding), and without its orientation it would not
    assert [row["error"] for row in rows] == [None] * 5
    upright_pixels, sideways, unturned, upright_jpeg, sideways_jpeg = predictor.pixels
    assert np.abs(sideways_jpeg - upright_jpeg).max() < 12  # JPEG's loss, not a turn
    assert np.abs(sideways_jpeg - unturned).max() > 50
    assert upright_pixels.shape == (8, 8, 3)
    assert np.abs(sideways - upright_pixels).max() < 0.01
    assert np.abs(unturned - upright_pixels).max() > 50

    # And the page, which normalizes the same upload as ingest does, sees that photo too (up to
    # its JPEG re-encoding)
    upload = prepare_image(paths[1].read_bytes(), tiny_params().ingest).jpeg
    page = decode_and_resize(tf.constant(upload), predictor.image_size).numpy()
    assert np.abs(page - sideways).max() < 12
    assert np.abs(page - unturned).max() > 50
