"""How every image taglens reads is decoded, and which images it accepts and stores.

Image decoding shared by every consumer, so all feed the model the same pixels.

Featurize, training, batch predict and the web page call the TensorFlow functions; batch predict,
which reads files as they were sent, also turns them upright (`upright`, from the header's EXIF
orientation) and has Pillow decode the formats TensorFlow reads wrongly or not at all
(`upright_png`: TIFF, BMP). The Pillow functions are the one way any code opens an image with
Pillow: only the documented formats, the size from the header before any pixel is decoded, and
large images decoded reduced where they are stored (`normalize_image`).

One image decoded, checked and re-encoded as the normalized JPEG that taglens stores and serves.

Ingest, the web page and the pyfunc model all pass every image through `normalize_image`, so
training and serving see the same pixels and refuse the same files (empty, not an image,
truncated, a decompression bomb, too small, animated when that is refused) with one-line
reasons grouped by `RejectedImage.kind`.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np
from PIL import ExifTags, Image, ImageOps

from taglens.params import IngestParams


def decode_and_resize(data, image_size: int):
    """Decode encoded image bytes (a scalar string tensor) to float32 RGB `image_size` squared.

    The first frame of an animation is used; resizing is bilinear with antialiasing. The EXIF
    orientation is not applied (`upright` does) and TIFF cannot be read (`upright_png` can).
    """
    import tensorflow as tf

    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.image.resize(image, (image_size, image_size), antialias=True)
    return tf.cast(image, tf.float32)


# Pillow's transpose for each EXIF orientation (ImageOps.exif_transpose), on (H, W, C) arrays.
_UPRIGHT = {
    2: lambda pixels: pixels[:, ::-1],  # FLIP_LEFT_RIGHT
    3: lambda pixels: pixels[::-1, ::-1],  # ROTATE_180
    4: lambda pixels: pixels[::-1],  # FLIP_TOP_BOTTOM
    5: lambda pixels: pixels.transpose(1, 0, 2),  # TRANSPOSE
    6: lambda pixels: np.rot90(pixels, 3),  # ROTATE_270 (rot90 turns counter-clockwise)
    7: lambda pixels: np.rot90(pixels.transpose(1, 0, 2), 2),  # TRANSVERSE
    8: lambda pixels: np.rot90(pixels, 1),  # ROTATE_90
}


def upright(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """(H, W, C) pixels turned as their EXIF `orientation` (1-8) says: Pillow's `exif_transpose`.

    A photo read as it was sent (batch predict) is turned after it is decoded and resized to a
    square: the same pixels, up to rounding, as turning it first, at a fraction of the cost,
    and none for the upright photos that are most of them.
    """
    turn = _UPRIGHT.get(int(orientation))
    return pixels if turn is None else np.ascontiguousarray(turn(pixels))


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


# --- Pillow side: what may be opened, and at what cost ------------------------------------------

# The formats the page, ingest, batch predict and the pyfunc document. Pillow would otherwise try
# every plugin it has (PSD, ICNS, FITS, PCX, SGI, ...): more parsers for a stranger's bytes to hit.
ALLOWED_FORMATS = ("JPEG", "PNG", "GIF", "BMP", "WEBP", "TIFF")
FORMATS_TEXT = "JPEG, PNG, GIF, BMP, WebP or TIFF"
# What TensorFlow's decode_image reads as Pillow does. Batch predict has Pillow decode the other
# allowed formats (`upright_png`): TIFF, which TensorFlow cannot read, and BMP, whose paletted and
# 1-bit variants it reads with wrong colours or refuses; and any image with transparency.
TENSORFLOW_FORMATS = frozenset({"JPEG", "PNG", "GIF", "WEBP"})
ALPHA_MODES = frozenset({"RGBA", "LA", "PA", "RGBa", "La"})  # Pillow modes with an alpha channel
# Modes Image.reduce refuses: they are converted (cheaply, per pixel) before reducing.
_NO_REDUCE = ("1", "P")


def open_image(source: bytes | BinaryIO | Path | str):
    """Open an image lazily (header only) with Pillow, allowing only `ALLOWED_FORMATS`.

    Raises:
        PIL.UnidentifiedImageError: not an image of an allowed format.
        PIL.Image.DecompressionBombError: over Pillow's own (twice its warning) pixel limit.
    """
    from PIL import Image

    if isinstance(source, bytes | bytearray):
        source = io.BytesIO(source)
    return Image.open(source, formats=ALLOWED_FORMATS)


class ImageHeader(NamedTuple):
    """What an image file's header says: its size, its EXIF orientation and its format."""

    width: int
    height: int
    orientation: int  # EXIF orientation 1-8 (1: upright as stored, also when absent or invalid)
    format: str  # one of ALLOWED_FORMATS
    transparent: bool = False  # has pixels `_to_rgb` puts on white (an alpha channel or key)


def read_header(path: Path | str) -> ImageHeader:
    """Size and EXIF orientation of an image file, read from its header only (no pixels decoded).

    Raises:
        ValueError: the file is not an image of an allowed format or cannot be read.
    """
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            warnings.simplefilter("ignore", UserWarning)  # corrupt EXIF: read as upright
            with open_image(Path(path)) as image:
                transparent = image.mode in ALPHA_MODES or (
                    image.mode == "P" and "transparency" in image.info
                )
                return ImageHeader(*image.size, exif_orientation(image), image.format, transparent)
    except Image.DecompressionBombError as exc:
        raise ValueError(str(exc).split(" could")[0]) from None
    except Image.UnidentifiedImageError:
        raise ValueError(f"not an image in an allowed format ({FORMATS_TEXT})") from None
    except (OSError, SyntaxError, ValueError) as exc:  # Pillow's header parsers raise these
        raise ValueError(f"unreadable image header: {exc}") from None


def exif_orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8) of an opened image; 1 when it has none or an invalid one.

    Reads only what was parsed with the header: a PNG's own `getexif` decodes every pixel to
    look for an EXIF chunk after the image data (rare; ingest's `exif_transpose` still sees it).
    """
    try:
        # The base class's method, not the PNG plugin's: no pixel is decoded before the
        # caller has compared the size with its pixel limit.
        value = int(Image.Image.getexif(image).get(ExifTags.Base.Orientation, 1))
    except Exception as exc:  # a broken EXIF block should not cost the photo
        logger.debug("ignoring unreadable EXIF orientation: %s", exc)
        return 1
    return value if 1 <= value <= 8 else 1


def upright_png(path: Path | str) -> bytes:
    """An image TensorFlow cannot decode faithfully, upright, 8-bit RGB, lossless PNG.

    TIFF and BMP, and any transparency: TensorFlow drops it where ingest puts it on white. Its
    first frame, as `decode_and_resize` takes; decoded whole, so the caller checks its size
    first (`read_header`). Raises what Pillow raises for a damaged file.
    """
    with warnings.catch_warnings():
        # the caller has held the pixel count to its own limit; Pillow's UserWarnings (corrupt
        # EXIF, odd TIFF tags) describe a file that is then decoded or refused anyway
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.simplefilter("ignore", UserWarning)
        with open_image(Path(path)) as image:
            image.seek(0)
            image.load()
            rgb = _to_rgb(ImageOps.exif_transpose(image))
    buffer = io.BytesIO()
    rgb.save(buffer, format="PNG", compress_level=1)  # read back at once: speed over size
    return buffer.getvalue()


def reduction_factor(size: tuple[int, int], max_side: int, min_side: int = 1) -> int:
    """The largest integer factor that keeps the longer side >= `max_side` (1: no reduction).

    The shorter side is kept >= `min_side` too, so a reduced image is never refused as too small.
    """
    factor = max(1, max(size) // max_side)
    return max(1, min(factor, min(size) // max(1, min_side)))


def draft_large(image, max_side: int, min_side: int = 1) -> None:
    """Ask a JPEG decoder to decode at a reduced scale (1/2 .. 1/8) before any pixel is loaded.

    JPEG's DCT scaling decodes a 40 MP photo at 1/4 scale with 1/16 of the memory and time. Other
    formats ignore it; `reduce_large` then shrinks them after loading.
    """
    if image.format == "JPEG" and reduction_factor(image.size, max_side, min_side) > 1:
        factor = reduction_factor(image.size, max_side, min_side)
        target = (-(-image.width // factor), -(-image.height // factor))
        image.draft(image.mode, target)


def reduce_large(image, max_side: int, min_side: int = 1):
    """Shrink a loaded image by an integer factor (box filter) so its longer side is < 2x max_side.

    Called before any mode conversion, whose cost grows with the pixel count (a 16-bit image
    converted through float arrays costs about 25 bytes per pixel).
    """
    factor = reduction_factor(image.size, max_side, min_side)
    if factor == 1:
        return image
    if image.mode in _NO_REDUCE:
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    elif image.mode.startswith("I;16"):
        image = sixteen_bit_to_gray(image)
    return image.reduce(factor)


def sixteen_bit_to_gray(image):
    """A 16-bit grayscale image as 8-bit `L` (65535 -> 255, rounded), a few rows at a time.

    Converting the whole array at once through float64 took about 1 GB for a 40 MP image.
    """
    import numpy as np
    from PIL import Image

    pixels = np.asarray(image)
    gray = np.empty(pixels.shape, dtype=np.uint8)
    step = max(1, (1 << 20) // max(1, pixels.shape[1]))  # about 1 M pixels per chunk
    for top in range(0, pixels.shape[0], step):
        rows = pixels[top : top + step].astype(np.uint32)
        gray[top : top + step] = (rows * 2 + 257) // 514  # round(x / 257) in integers
    return Image.fromarray(gray, mode="L")


logger = logging.getLogger(__name__)

_JPEG_MAX_SIDE = 65_500  # the JPEG format's limit; Pillow fails to save anything wider
_BACKGROUND = (255, 255, 255)  # transparent pixels become white, as most viewers show them


class RejectedImage(ValueError):
    """An image ingest refuses; `kind` groups the reasons in the report."""

    def __init__(self, kind: str, detail: str):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind
        self.detail = detail


@dataclass(frozen=True)
class NormalizedImage:
    """A decoded, oriented RGB image re-encoded as JPEG."""

    jpeg: bytes
    sha256: str
    width: int
    height: int


def _to_rgb(image: Image.Image) -> Image.Image:
    """Convert any Pillow mode to 8-bit RGB, scaling high bit depths instead of clipping them."""
    mode = image.mode
    if mode == "RGB":
        return image
    if mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
        mode = image.mode
    if mode in ALPHA_MODES:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, _BACKGROUND)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if mode.startswith("I;16"):
        return sixteen_bit_to_gray(image).convert("RGB")  # 16-bit to 8-bit: 65535 -> 255
    if mode in ("I", "F"):
        pixels = np.asarray(image, dtype=np.float64)
        if pixels.size and pixels.max() > 255:
            top = 65535.0 if pixels.max() <= 65535 else float(pixels.max())
            pixels = pixels * (255.0 / top)
        elif mode == "F" and pixels.size and pixels.max() <= 1.0:
            pixels = pixels * 255.0  # float images in 0..1
        gray = np.clip(np.rint(pixels), 0, 255).astype(np.uint8)
        return Image.fromarray(gray, mode="L").convert("RGB")
    return image.convert("RGB")  # L, 1, CMYK, YCbCr, LAB, HSV


def _failure_kind(exc: Exception) -> str:
    """The rejection kind of a decoder failure: `truncated` when the decoder says so."""
    return "truncated" if "truncated" in str(exc).lower() else "corrupt"


def normalize_image(data: bytes, params: IngestParams) -> NormalizedImage:
    """Decode encoded image bytes and return the normalized JPEG that ingest stores.

    Raises:
        RejectedImage: the bytes are empty, not an image, truncated, too large, too small,
            animated while `ingest.animated` is `reject`, or in a mode that cannot become RGB.
    """
    if not data:
        raise RejectedImage("empty", "zero-byte file")
    with warnings.catch_warnings():
        # The pixel limit is checked below against ingest.max_pixels, and Pillow's UserWarnings
        # (corrupt EXIF, odd TIFF tags) describe files that are then accepted or refused anyway.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        warnings.simplefilter("ignore", UserWarning)
        try:
            image = open_image(data)
        except Image.DecompressionBombError as exc:
            raise RejectedImage("too_large", str(exc).split(" could")[0]) from None
        except Image.UnidentifiedImageError:
            detail = f"not an image in a supported format ({FORMATS_TEXT})"
            raise RejectedImage("not_image", detail) from None
        except Exception as exc:  # any decoder failure is a refusal, never fatal
            raise RejectedImage(_failure_kind(exc), f"cannot open: {exc}") from None
        width, height = image.size
        if width * height > params.max_pixels:
            raise RejectedImage(
                "too_large",
                f"{width}x{height} = {width * height} pixels > ingest.max_pixels "
                f"{params.max_pixels} (possible decompression bomb)",
            )
        if max(width, height) > _JPEG_MAX_SIDE:
            raise RejectedImage(
                "too_large",
                f"{width}x{height}: a side over {_JPEG_MAX_SIDE} pixels cannot be stored as JPEG",
            )
        try:
            frames = getattr(image, "n_frames", 1)  # walks every frame: a damaged one fails here
        except Exception as exc:
            detail = f"cannot read the frames of {image.format}: {exc}"
            raise RejectedImage(_failure_kind(exc), detail) from None
        if frames > 1 and params.animated == "reject":
            raise RejectedImage("animated", f"{frames} frames and ingest.animated is 'reject'")
        try:
            image.seek(0)
            # Large images are decoded at a reduced scale (JPEG) or reduced right after loading,
            # before any mode conversion: decoding cost then stays bounded by ingest.max_side.
            draft_large(image, params.max_side, params.min_side)
            image.load()
            image = reduce_large(image, params.max_side, params.min_side)
        except Exception as exc:
            detail = f"cannot decode {image.format}: {exc}"
            raise RejectedImage(_failure_kind(exc), detail) from None
        try:
            # In place: without an orientation to apply, the copying form copies every pixel
            # anyway (about a fifth of the page's normalization of a 640 px photo)
            ImageOps.exif_transpose(image, in_place=True)
        except Exception as exc:  # a broken EXIF block should not cost the photo
            logger.debug("ignoring unreadable EXIF orientation: %s", exc)
    if min(image.size) < params.min_side:
        raise RejectedImage(
            "too_small",
            f"{image.width}x{image.height}: shorter side < ingest.min_side {params.min_side}",
        )
    try:
        rgb = _to_rgb(image)
    except Exception as exc:
        detail = f"cannot convert mode {image.mode} to RGB: {exc}"
        raise RejectedImage("unsupported", detail) from None
    buffer = io.BytesIO()
    rgb.save(buffer, format="JPEG", quality=params.jpeg_quality)
    jpeg = buffer.getvalue()
    return NormalizedImage(jpeg, hashlib.sha256(jpeg).hexdigest(), rgb.width, rgb.height)
