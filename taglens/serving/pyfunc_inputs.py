"""What the served pyfunc accepts: base64 image bytes by default, file paths only on opt-in.

A caller of `mlflow models serve` is a stranger to the serving machine. By default a request
value is decoded as base64 (in-process callers may pass raw `bytes`); a value is read as a file
path only when the serving process sets `TAGLENS_PYFUNC_IMAGE_ROOT` to a folder, and then only
for regular files that resolve (symlinks followed) inside that folder and are no larger than the
byte cap. Missing, outside and oversized paths get the same refusal, so a caller cannot probe
which files exist. Every image then goes through `data.normalize.normalize_image`, the checks and
normalisation uploads and training images get (pixel cap, formats, minimum side).

Serving-side settings (environment of the process that loads the model):

- `TAGLENS_PYFUNC_IMAGE_ROOT`: the folder paths may name (unset: paths are refused).
- `TAGLENS_PYFUNC_MAX_MB`: the largest image accepted, base64 or file (default 20).
- `TAGLENS_PYFUNC_MAX_ROWS`: the most images in one request (default 64).
"""

from __future__ import annotations

import base64
import binascii
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from taglens import artifacts
from taglens.data.normalize import RejectedImage, normalize_image
from taglens.errors import TaglensError
from taglens.params import IngestParams

ROOT_ENV = "TAGLENS_PYFUNC_IMAGE_ROOT"
MAX_MB_ENV = "TAGLENS_PYFUNC_MAX_MB"
MAX_ROWS_ENV = "TAGLENS_PYFUNC_MAX_ROWS"
# Serving-side defaults: a served model travels without params.yaml, so they live here.
DEFAULT_MAX_MB = 20.0
DEFAULT_MAX_ROWS = 64
INGEST_FILE = (
    artifacts.LOGGED_INGEST
)  # the ingest params logged with the model (see log_taglens_model)
# For models logged before ingest.json existed: Pillow's decompression-bomb threshold, no minimum
# side, first frames only, quality as ingest stores.
LEGACY_INGEST = IngestParams(
    max_pixels=89_478_485, min_side=1, max_side=2048, animated="first_frame", jpeg_quality=95
)


@dataclass(frozen=True)
class InputPolicy:
    """The limits one serving process applies to request values."""

    ingest: IngestParams
    root: Path | None = None
    max_bytes: int = int(DEFAULT_MAX_MB * 1_000_000)
    max_rows: int = DEFAULT_MAX_ROWS

    @classmethod
    def from_env(cls, ingest: IngestParams, environ: dict[str, str] | None = None) -> InputPolicy:
        """The policy the serving process's environment asks for.

        Raises:
            TaglensError: a setting is not a number, or the root is not a folder.
        """
        env = os.environ if environ is None else environ
        root = env.get(ROOT_ENV, "").strip()
        if root and not Path(root).is_dir():
            raise TaglensError(
                f"{ROOT_ENV}={root} is not a folder: set it to the folder of the "
                "images clients may name, or unset it to accept base64 only"
            )
        try:
            max_mb = float(env.get(MAX_MB_ENV) or DEFAULT_MAX_MB)
            max_rows = int(env.get(MAX_ROWS_ENV) or DEFAULT_MAX_ROWS)
        except ValueError:
            raise TaglensError(f"{MAX_MB_ENV} and {MAX_ROWS_ENV} must be numbers") from None
        if max_mb <= 0 or max_rows < 1:
            raise TaglensError(f"{MAX_MB_ENV} must be > 0 and {MAX_ROWS_ENV} >= 1")
        return cls(
            ingest, Path(root).resolve() if root else None, int(max_mb * 1_000_000), max_rows
        )

    def images(self, values: list[Any]) -> list[bytes]:
        """Validate a request's values and return each image normalized as ingest stores it.

        Raises:
            ValueError: too many rows, or a value is refused (its index and the reason named).
        """
        if len(values) > self.max_rows:
            raise ValueError(
                f"{len(values)} images in one request; at most {self.max_rows} "
                f"({MAX_ROWS_ENV}): split the request"
            )
        out = []
        for index, value in enumerate(values):
            data = self.image_bytes(value, index)
            try:
                out.append(normalize_image(data, self.ingest).jpeg)
            except RejectedImage as exc:
                raise ValueError(f"image {index} refused: {exc}") from None
        return out

    def image_bytes(self, value: Any, index: int = 0) -> bytes:
        """Turn one request value (bytes, base64 text, or an allowed path) into encoded bytes.

        Raises:
            ValueError: the value is refused; the message names its index and what to send.
        """
        if isinstance(value, bytes | bytearray | np.bytes_):
            return self._capped(bytes(value), index)
        if not isinstance(value, str) or not value.strip():
            raise ValueError(f"image {index}: expected base64 text, got {value!r:.60}")
        text = value.strip()
        if self.root is not None and _looks_like_path(text):
            return self._read_path(text, index)
        if len(text) * 3 // 4 > self.max_bytes + 3:
            raise ValueError(self._too_large(index))
        try:
            return base64.b64decode(text, validate=True)
        except (binascii.Error, ValueError):
            where = f"a file under {ROOT_ENV} or " if self.root else ""
            raise ValueError(
                f"image {index}: {text[:40]!r} is not {where}base64-encoded image bytes: send the "
                "base64 of the image file"
                + (
                    ""
                    if self.root
                    else f" (file paths are read only when the server sets {ROOT_ENV})"
                )
            ) from None

    def _capped(self, data: bytes, index: int) -> bytes:
        if len(data) > self.max_bytes:
            raise ValueError(self._too_large(index))
        return data

    def _too_large(self, index: int) -> str:
        return (
            f"image {index} is larger than {self.max_bytes / 1e6:g} MB ({MAX_MB_ENV}): "
            "send a smaller image"
        )

    def _read_path(self, text: str, index: int) -> bytes:
        """Read a file that resolves inside the root, refusing anything else the same way."""
        refusal = (
            f"image {index}: {text[:60]!r} is not a readable image file under the "
            f"server's {ROOT_ENV} of at most {self.max_bytes / 1e6:g} MB"
        )
        assert self.root is not None
        try:
            resolved = (self.root / text).resolve(strict=True)  # an absolute text replaces root
            if not resolved.is_relative_to(self.root):
                raise ValueError(refusal)  # outside, directly or through a symlink
            fd = os.open(resolved, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except (OSError, RuntimeError):  # missing, unreadable, a symlink loop
            raise ValueError(refusal) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode) or info.st_size > self.max_bytes:
                raise ValueError(refusal)  # a folder, a device, a FIFO, or too large
            with os.fdopen(fd, "rb") as handle:
                fd = -1
                data = handle.read(self.max_bytes + 1)
        finally:
            if fd >= 0:
                os.close(fd)
        return self._capped(data, index)


def _looks_like_path(text: str) -> bool:
    """A value holding a `.` (a file suffix) is a path: the base64 alphabet has no `.`.

    A value that fails as a path is refused rather than decoded, so a caller learns nothing about
    which paths exist.
    """
    return len(text) < 4096 and "." in text
