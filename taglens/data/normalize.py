"""One image decoded, checked and re-encoded as the normalized JPEG that taglens stores and serves.

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
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from taglens.data.images import (
    FORMATS_TEXT,
    draft_large,
    open_image,
    reduce_large,
    sixteen_bit_to_gray,
)
from taglens.params import IngestParams

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
    if mode in ("RGBA", "LA", "PA", "RGBa", "La"):
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
