"""Checks on an uploaded photo before it reaches the model: byte size, type and pixel count.

Every refusal is an `UploadError` with the HTTP status and a message that tells the user what to
do, so the web app can answer with a 4xx JSON `detail` and keep serving.
"""

from __future__ import annotations

import logging
from typing import BinaryIO

from taglens.data.images import NormalizedImage, RejectedImage, normalize_image
from taglens.params import IngestParams

logger = logging.getLogger(__name__)

SUPPORTED_TEXT = "JPEG, PNG, GIF, BMP, WebP or TIFF"
_CHUNK = 256 * 1024


class UploadError(ValueError):
    """An upload the app refuses.

    Attributes:
        status_code: the HTTP status to answer with.
        detail: what is wrong and what to do, for the user.
        reason: a short name for the metrics (`taglens.serving.web.metrics.REASONS`).
    """

    def __init__(self, status_code: int, detail: str, reason: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail
        self.reason = reason


def too_large_message(max_bytes: int) -> str:
    """The message for an upload over the byte limit (the same wherever it is detected)."""
    return (
        f"the file is larger than the upload limit of {_megabytes(max_bytes)} "
        "(serve.max_upload_mb): choose a smaller photo or resize it"
    )


def read_limited(source: BinaryIO, max_bytes: int) -> bytes:
    """Read a file-like upload in chunks, stopping as soon as it passes `max_bytes`.

    Raises:
        UploadError: 413 when the upload is larger than `max_bytes`.
    """
    parts: list[bytes] = []
    size = 0
    while chunk := source.read(_CHUNK):
        size += len(chunk)
        if size > max_bytes:
            raise UploadError(413, too_large_message(max_bytes), "too_large")
        parts.append(chunk)
    return b"".join(parts)


def prepare_image(data: bytes, params: IngestParams) -> NormalizedImage:
    """Validate and normalize an upload exactly as ingest does for the training images.

    `data.images.normalize_image` reads the pixel count from the header before decoding (so a
    decompression bomb is refused without allocating its pixels), applies the EXIF orientation
    and re-encodes RGB JPEG: the model then sees an upload the way it saw its training photos.

    Raises:
        UploadError: 400 empty file; 415 not an image or a mode that cannot become RGB; 422 too
            many pixels (`ingest.max_pixels`), too small (`ingest.min_side`), animated while
            `ingest.animated` is `reject`, damaged or truncated.
    """
    try:
        return normalize_image(data, params)
    except RejectedImage as exc:
        status, reason, message = _REFUSALS.get(exc.kind, _UNUSABLE)
        raise UploadError(status, message.format(detail=exc.detail), reason) from None


# RejectedImage.kind -> (status, reason for the metrics, message)
_REFUSALS = {
    "empty": (400, "empty", f"the uploaded file is empty: choose a photo ({SUPPORTED_TEXT})"),
    "not_image": (415, "not_image", f"the file is not an image: upload a photo ({SUPPORTED_TEXT})"),
    "unsupported": (
        415,
        "unsupported",
        "the image cannot be converted to RGB ({detail}): save it as JPEG",
    ),
    "too_large": (
        422,
        "too_many_pixels",
        "the image has too many pixels ({detail}): downscale it and try again",
    ),
    "too_small": (422, "too_small", "the image is too small ({detail}): use a larger photo"),
    "animated": (422, "animated", "animated images are refused ({detail}): upload a still photo"),
    "truncated": (422, "truncated", "the image is truncated ({detail}): upload the complete file"),
    "corrupt": (422, "corrupt", "the image is damaged ({detail}): export it anew and try again"),
}
_UNUSABLE = (422, "unusable", "the image cannot be used: {detail}")


def _megabytes(n_bytes: int) -> str:
    return f"{n_bytes / 1_000_000:g} MB"
