"""Ingest: a corpus of bad and awkward files through the folder source, and the normalizer."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from taglens.atomic import read_jsonl
from taglens.data.images import RejectedImage, normalize_image
from taglens.data.ingest import ingest
from taglens.data.posts import read_posts
from taglens.data.sources.base import SourceItem
from taglens.data.sources.folder import FolderSource
from taglens.params import IngestParams

PARAMS = IngestParams(
    max_pixels=4_000_000, min_side=32, max_side=2048, animated="first_frame", jpeg_quality=90
)


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **kwargs)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims a huge size (a decompression bomb's signature), with no data."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 10))


def exif_rotated_jpeg() -> bytes:
    """64 wide x 32 high, red left half, with EXIF orientation 6 (display rotated 90 degrees CW)."""
    image = Image.new("RGB", (64, 32), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 32, 32))
    exif = Image.Exif()
    exif[0x0112] = 6
    return encode(image, "JPEG", quality=95, exif=exif.tobytes())


def gray16() -> Image.Image:
    ramp = np.tile(np.linspace(0, 65535, 64), (48, 1)).astype(np.uint16)
    image = Image.fromarray(ramp)
    assert image.mode == "I;16"
    return image


def palette_with_transparency() -> bytes:
    image = Image.new("P", (40, 40), 0)
    image.putpalette([0, 0, 0, 200, 30, 30] + [0] * 762)
    image.paste(1, (0, 0, 20, 40))  # left half colour 1 (red), right half colour 0 (transparent)
    return encode(image, "PNG", transparency=0)


def animated_gif() -> bytes:
    frames = [Image.new("RGB", (40, 40), color) for color in [(0, 200, 0), (0, 0, 200)]]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)


def good_jpeg(color=(10, 120, 200), size=(64, 48)) -> bytes:
    return encode(Image.new("RGB", size, color), "JPEG", quality=92)


def noisy_jpeg() -> bytes:
    pixels = np.random.default_rng(0).integers(0, 255, (128, 128, 3), dtype=np.uint8)
    return encode(Image.fromarray(pixels), "JPEG", quality=90)


@pytest.fixture
def corpus(tmp_path) -> Path:
    root = tmp_path / "photos"
    files = {
        "food/ok.jpg": good_jpeg(),
        "food/zero.jpg": b"",
        "food/truncated.jpg": good_jpeg((200, 10, 10), (256, 256))[:400],
        "food/cut_short.jpg": noisy_jpeg()[:-3000],
        "food/text.jpg": b"this is a shopping list, not a photo\n",
        "food/cmyk.jpg": encode(Image.new("CMYK", (50, 40), (0, 255, 255, 0)), "JPEG"),
        "food/gray16.png": encode(gray16(), "PNG"),
        "food/palette.png": palette_with_transparency(),
        "art/animated.gif": animated_gif(),
        "art/huge.png": png_header_only(100_000, 100_000),
        "art/rotated.jpg": exif_rotated_jpeg(),
        "art/tiny.png": encode(Image.new("RGB", (20, 80), (9, 9, 9)), "PNG"),
        "art/copy_of_ok.jpg": good_jpeg(),  # the same photo filed under a second class
        "art/rgba.png": encode(Image.new("RGBA", (40, 40), (0, 0, 0, 0)), "PNG"),
    }
    for name, data in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


def test_bad_file_corpus_accepted_rejected_and_why(corpus, tmp_path):
    out = tmp_path / "raw"
    report = ingest(FolderSource(corpus, ["food", "art"]), PARAMS, out=out, source="folder")

    posts = {p.id: p for p in read_posts(out / "posts.jsonl")}
    assert set(posts) == {
        "food/ok.jpg",
        "food/cmyk.jpg",
        "food/gray16.png",
        "food/palette.png",
        "art/animated.gif",
        "art/rotated.jpg",
        "art/rgba.png",
    }
    rejected = {Path(r["path"]).name: r["reason"] for r in read_jsonl(out / "rejected.jsonl")}
    assert set(rejected) == {
        "zero.jpg",
        "truncated.jpg",
        "cut_short.jpg",
        "text.jpg",
        "huge.png",
        "tiny.png",
    }
    assert rejected["zero.jpg"].startswith("empty:")
    assert rejected["truncated.jpg"].startswith("truncated:")
    assert rejected["cut_short.jpg"].startswith("truncated:")
    assert rejected["text.jpg"].startswith("not_image:")
    assert rejected["huge.png"].startswith("too_large:") and "10000000000" in rejected["huge.png"]
    assert rejected["tiny.png"].startswith("too_small:") and "20x80" in rejected["tiny.png"]

    assert report.accepted == 7
    assert dict(report.rejected) == {
        "empty": 1,
        "truncated": 2,
        "not_image": 1,
        "too_large": 1,
        "too_small": 1,
    }
    assert [(d["kept_id"], d["dropped_id"], d["dropped_label"]) for d in report.duplicates] == [
        ("food/ok.jpg", "art/copy_of_ok.jpg", "art")
    ]
    assert report.per_class == {"food": 4, "art": 3}

    # What the accepted ones became: RGB JPEGs named by the sha256 of their stored bytes.
    for post in posts.values():
        data = (out / post.image).read_bytes()
        assert post.image == f"images/{post.sha256}.jpg"
        import hashlib

        assert hashlib.sha256(data).hexdigest() == post.sha256
        with Image.open(io.BytesIO(data)) as image:
            assert (image.format, image.mode) == ("JPEG", "RGB")
            assert image.size == (post.width, post.height)
    assert (posts["art/rotated.jpg"].width, posts["art/rotated.jpg"].height) == (32, 64)
    assert sorted(p.name for p in (out / "images").iterdir()) == sorted(
        f"{p.sha256}.jpg" for p in posts.values()
    )


def test_exif_orientation_is_applied():
    image = Image.open(io.BytesIO(normalize_image(exif_rotated_jpeg(), PARAMS).jpeg))
    # Rotating 90 degrees clockwise puts the red (left) half on top.
    top, bottom = image.getpixel((16, 8)), image.getpixel((16, 56))
    assert top[0] > 200 and top[2] < 60
    assert bottom[2] > 200 and bottom[0] < 60


@pytest.mark.parametrize("orientation", [None, 1, 3, 6, 8])
def test_normalized_bytes_are_those_of_the_copying_transpose(orientation):
    # The normalizer applies the EXIF orientation in place; the copying form gave these bytes
    image = Image.fromarray(np.random.default_rng(0).integers(0, 255, (48, 80, 3), np.uint8))
    exif = Image.Exif()
    if orientation is not None:
        exif[0x0112] = orientation
    data = encode(image, "JPEG", quality=85, exif=exif.tobytes())
    with Image.open(io.BytesIO(data)) as opened:
        opened.load()
        upright = ImageOps.exif_transpose(opened).convert("RGB")
    expected = encode(upright, "JPEG", quality=PARAMS.jpeg_quality)

    normalized = normalize_image(data, PARAMS)

    assert normalized.jpeg == expected
    assert (normalized.width, normalized.height) == upright.size


def test_sixteen_bit_gray_is_scaled_not_clipped():
    image = Image.open(io.BytesIO(normalize_image(encode(gray16(), "PNG"), PARAMS).jpeg))
    row = np.asarray(image)[24, :, 0].astype(int)
    assert row[0] <= 3 and row[-1] >= 252
    assert 110 <= row[32] <= 145  # the middle of the ramp stays mid-grey


def test_palette_transparency_becomes_white_and_cmyk_becomes_rgb():
    palette = Image.open(io.BytesIO(normalize_image(palette_with_transparency(), PARAMS).jpeg))
    assert palette.getpixel((5, 20))[0] > 180 and palette.getpixel((5, 20))[1] < 70
    assert min(palette.getpixel((35, 20))) > 240
    cmyk = encode(Image.new("CMYK", (50, 40), (0, 255, 255, 0)), "JPEG")
    red = Image.open(io.BytesIO(normalize_image(cmyk, PARAMS).jpeg)).getpixel((25, 20))
    assert red[0] > 200 and red[1] < 60 and red[2] < 60


def test_animated_first_frame_or_reject():
    first = Image.open(io.BytesIO(normalize_image(animated_gif(), PARAMS).jpeg))
    assert first.getpixel((20, 20))[1] > 150  # the first frame is green
    with pytest.raises(RejectedImage) as refused:
        normalize_image(animated_gif(), PARAMS.model_copy(update={"animated": "reject"}))
    assert refused.value.kind == "animated" and "2 frames" in str(refused.value)


def test_max_pixels_is_the_params_limit():
    data = good_jpeg(size=(300, 200))
    assert normalize_image(data, PARAMS).width == 300
    with pytest.raises(RejectedImage, match="too_large: 300x200 = 60000 pixels"):
        normalize_image(data, PARAMS.model_copy(update={"max_pixels": 50_000}))


def test_normalized_bytes_are_deterministic():
    data = encode(gray16(), "PNG")
    assert normalize_image(data, PARAMS).sha256 == normalize_image(data, PARAMS).sha256


def test_rerun_cleans_stale_images_and_keeps_posts_consistent(tmp_path):
    out = tmp_path / "raw"
    first = [
        SourceItem(id=f"a{i}", label="art", data=good_jpeg((i * 40, 5, 5)), origin=f"m{i}")
        for i in range(3)
    ]
    ingest(first, PARAMS, out=out, source="demo")
    assert len(list((out / "images").iterdir())) == 3
    report = ingest(first[:1], PARAMS, out=out, source="demo")
    assert report.accepted == 1
    assert len(list((out / "images").iterdir())) == 1
    assert [p.id for p in read_posts(out / "posts.jsonl")] == ["a0"]


def test_caption_hashtags_and_bad_metadata(tmp_path):
    items = [
        SourceItem(
            id="c", label="food", data=good_jpeg(), origin="x", caption="Lunch! #Food #yum #food"
        ),
        SourceItem(
            id="h",
            label="food",
            data=good_jpeg((1, 2, 3)),
            origin="y",
            hashtags=("#Pasta", "pasta", "Dinner"),
        ),
        SourceItem(id="bad", label="food", data=good_jpeg((9, 9, 90)), origin="z", likes=-4),
    ]
    report = ingest(items, PARAMS, out=tmp_path, source="folder")
    posts = {p.id: p for p in read_posts(tmp_path / "posts.jsonl")}
    assert posts["c"].hashtags == ("food", "yum")
    assert posts["h"].hashtags == ("pasta", "dinner")
    assert report.rejected == {"bad_metadata": 1}
    assert json.dumps(report.to_dict())  # JSON-ready
    assert "accepted 2 images in 1 classes" in report.summary()


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "GIF", "WEBP", "TIFF", "BMP"])
def test_mangled_files_are_refused_or_accepted_never_fatal(fmt):
    rng = np.random.default_rng(len(fmt))
    pixels = rng.integers(0, 255, (48, 48, 3), dtype=np.uint8)
    original = encode(Image.fromarray(pixels), fmt)
    outcomes = {"accepted": 0, "rejected": 0}
    for _ in range(60):
        data = bytearray(original)
        for position in rng.integers(0, len(data), size=int(rng.integers(1, 12))):
            data[position] = int(rng.integers(0, 256))
        cut = int(rng.integers(len(data) // 3, len(data) + 1))
        try:
            result = normalize_image(bytes(data[:cut]), PARAMS)
        except RejectedImage as exc:
            assert exc.kind in {
                "truncated",
                "corrupt",
                "not_image",
                "too_large",
                "too_small",
                "unsupported",
                "animated",
            }
            outcomes["rejected"] += 1
        else:
            assert result.jpeg[:2] == b"\xff\xd8" and result.width >= 32
            outcomes["accepted"] += 1
    assert sum(outcomes.values()) == 60 and outcomes["rejected"] > 0
