"""Hostile images: formats outside the documented list, and images that cost too much to decode."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

from taglens.data.images import ALLOWED_FORMATS, RejectedImage, normalize_image, read_header
from taglens.serving.web.upload import UploadError, prepare_image
from tests.helpers.params import tiny_params, tiny_params_path
from tests.helpers.paths import ROOT

PARAMS = tiny_params().ingest


def _encoded(fmt: str, mode: str = "RGB", size: tuple[int, int] = (64, 48)) -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size, 90).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt", ["TGA", "PCX", "SGI", "ICO", "PPM", "IM", "DDS", "QOI"])
def test_a_format_outside_the_list_is_refused_before_decoding(fmt, tmp_path):
    # Given an image Pillow can read, in a format the project does not document
    try:
        data = _encoded(fmt)
    except (KeyError, OSError, ValueError):
        pytest.skip(f"this Pillow cannot write {fmt}")
    assert Image.open(io.BytesIO(data)).format not in ALLOWED_FORMATS  # Pillow itself reads it

    # When ingest (and uploads, which share it) and batch predict's header check meet it
    with pytest.raises(RejectedImage) as refused:
        normalize_image(data, PARAMS)
    path = tmp_path / "photo.jpg"
    path.write_bytes(data)
    with pytest.raises(ValueError, match="allowed format"):
        read_header(path)

    # Then it is refused as not an image of a supported format (a web upload: 415)
    assert refused.value.kind == "not_image"
    assert "JPEG, PNG, GIF, BMP, WebP or TIFF" in refused.value.detail
    with pytest.raises(UploadError) as upload:
        prepare_image(data, PARAMS)
    assert upload.value.status_code == 415


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF"])
def test_every_listed_format_is_still_accepted(fmt):
    image = normalize_image(_encoded(fmt), PARAMS)
    assert (image.width, image.height) == (64, 48)


_PEAK = textwrap.dedent(
    """
    import json, resource, sys
    from pathlib import Path
    from taglens.data.images import normalize_image
    from taglens.params import load_params
    params = load_params(Path(sys.argv[2])).ingest
    data = Path(sys.argv[1]).read_bytes()
    normalize_image(data[:64] + data[64:], params)  # warm up imports and lazy plugin loading
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    image = normalize_image(data, params)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"mb": (after - before) / 1024, "size": [image.width, image.height]}))
    """
)


def _decode_cost(path, tmp_path) -> dict:
    """Peak memory growth (MB) of one normalize_image call, in a fresh process."""
    warm = tmp_path / "warm.png"
    Image.new("RGB", (64, 64)).save(warm)
    script = tmp_path / "peak.py"
    script.write_text(_PEAK.replace("data[:64] + data[64:]", f"Path({str(warm)!r}).read_bytes()"))
    result = subprocess.run(
        [sys.executable, str(script), str(path), str(tiny_params_path())],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    return json.loads(result.stdout)


def test_a_16_bit_png_under_the_pixel_cap_is_decoded_in_bounded_memory(tmp_path):
    # Given a small file: a 36 MP 16-bit grayscale PNG (under ingest.max_pixels of 40 MP)
    ramp = np.tile(np.linspace(0, 65535, 6000, dtype=np.uint16), (6000, 1))
    path = tmp_path / "deep.png"
    Image.fromarray(ramp).save(path)
    assert Image.open(path).mode == "I;16"
    assert path.stat().st_size < 5_000_000 and 6000 * 6000 < PARAMS.max_pixels

    # When ingest normalizes it
    cost = _decode_cost(path, tmp_path)

    # Then it is reduced before conversion: the peak stays far from the ~1 GB a float64 pass took
    assert cost["mb"] < 250, cost
    assert PARAMS.max_side <= max(cost["size"]) < 2 * PARAMS.max_side


def test_a_huge_jpeg_is_decoded_at_a_reduced_scale(tmp_path):
    # Given a 36 MP JPEG (about 108 MB of RGB pixels at full scale)
    path = tmp_path / "huge.jpg"
    Image.new("RGB", (9000, 4000), (30, 140, 60)).save(path, quality=80)

    # When ingest normalizes it
    cost = _decode_cost(path, tmp_path)

    # Then the decoder worked at 1/4 scale: stored 2250x1000, and the peak is a fraction of 108 MB
    assert cost["size"] == [2250, 1000], cost
    assert cost["mb"] < 60, cost


def test_a_reduced_image_is_never_made_too_small():
    # A long thin strip: reducing to max_side would make its short side shorter than min_side
    strip = _encoded("PNG", size=(PARAMS.max_side * 4, PARAMS.min_side * 2))
    image = normalize_image(strip, PARAMS)
    assert image.height >= PARAMS.min_side and image.width == PARAMS.max_side * 2
