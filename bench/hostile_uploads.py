"""The hostile uploads of the web soak, each with the 4xx docs/web.md documents for it.

Built from the served params (`ingest` limits, `serve.max_upload_mb`), so a bomb is always over
`ingest.max_pixels` and an oversized file always over the upload limit, and from the fuzz
regression corpus (`tests/reliability/corpus/upload_image`: inputs that once crashed the checks).
`bench/soak_web.py` mixes them with good photos.
"""

from __future__ import annotations

import io
import math
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from taglens.params import Params

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT / "tests" / "reliability" / "corpus" / "upload_image"
# The multipart framing the app allows beyond the file (app.MULTIPART_SLACK_BYTES): a declared
# body larger than limit + this is refused before it is read.
_FRAMING = 64 * 1024
_STREAM_CHUNK = 256 * 1024


@dataclass(frozen=True)
class Hostile:
    """One hostile upload and its documented answer.

    Attributes:
        kind: a short name for the results table.
        data: the file's bytes.
        status: the status docs/web.md ("What is refused") gives for it.
        words: what the answer's `detail` must contain.
        streamed: send the body chunked, without a Content-Length (the size is then found
            while it arrives, not from the header).
    """

    kind: str
    data: bytes
    status: int
    words: str
    streamed: bool = False

    def body(self) -> bytes | Iterator[bytes]:
        """What the client sends as the file: the bytes, or chunks of them when streamed."""
        if not self.streamed:
            return self.data
        return (self.data[i : i + _STREAM_CHUNK] for i in range(0, len(self.data), _STREAM_CHUNK))


def png_header_bomb(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels, with almost no data (60 bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(b"\0" * 16))


def png_real_bomb(side: int) -> bytes:
    """A complete, valid grayscale PNG of side x side black pixels that compresses to KBs."""
    packer = zlib.compressobj(9)
    row = b"\x00" * (side + 1)  # filter byte + pixels
    idat = b"".join(packer.compress(row) for _ in range(side)) + packer.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", idat)
        + _chunk(b"IEND", b"")
    )


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _encoded(fmt: str, size: tuple[int, int], mode: str = "RGB") -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new(mode, size, 90).save(buffer, format=fmt)
    return buffer.getvalue()


def hostile_uploads(params: Params, photo: bytes) -> list[Hostile]:
    """Every hostile upload for a server running with `params`; `photo` is a good JPEG to damage.

    Raises:
        ValueError: `photo` is too short to be cut into a truncated one.
    """
    if len(photo) < 1024:
        raise ValueError(f"the good photo to truncate has only {len(photo)} bytes (need >= 1024)")
    ingest = params.ingest
    limit = int(params.serve.max_upload_mb * 1_000_000)
    bomb_side = math.isqrt(ingest.max_pixels) + 1  # one side more than the pixel cap allows
    oversized = b"\xff\xd8\xff\xe0" + bytes(limit + 1 - 4)  # a JPEG start, one byte too many
    uploads = [
        Hostile("empty", b"", 400, "the uploaded file is empty"),
        Hostile("text_file", b"hello, I am a text file\n" * 40, 415, "the file is not an image"),
        Hostile(
            "pdf",
            b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n" * 20,
            415,
            "the file is not an image",
        ),
        Hostile("tga_unlisted_format", _encoded("TGA", (64, 48)), 415, "the file is not an image"),
        Hostile("truncated_jpeg", photo[: len(photo) // 2], 422, "the image is truncated"),
        Hostile(
            "too_small", _encoded("JPEG", (ingest.min_side - 1, 64)), 422, "the image is too small"
        ),
        Hostile(
            "bomb_png_header",
            png_header_bomb(100_000, 100_000),
            422,
            "the image has too many pixels",
        ),
        Hostile("bomb_png_real", png_real_bomb(bomb_side), 422, "the image has too many pixels"),
        Hostile("oversized_by_one_byte", oversized, 413, "larger than the upload limit"),
        Hostile(
            "oversized_declared", oversized + bytes(_FRAMING), 413, "larger than the upload limit"
        ),
        Hostile(
            "oversized_streamed",
            oversized + bytes(_FRAMING),
            413,
            "larger than the upload limit",
            streamed=True,
        ),
    ]
    for path in sorted(CORPUS.glob("*")):  # past crashes: damaged GIFs, a too-wide PNG
        uploads.append(Hostile(f"corpus/{path.name}", path.read_bytes(), 422, "the image "))
    return uploads
