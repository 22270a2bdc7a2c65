"""Batch predict over an inbox holding a decompression bomb and files in unlisted formats."""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from taglens.serving.batch.outputs import read_rows
from taglens.serving.batch.scoring import predict_to_file
from taglens.serving.model_ref import ModelRef


def png_bomb(path, width: int, height: int) -> None:
    """A valid grayscale PNG of `width` x `height` black pixels, streamed (a few KB on disk)."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    packer = zlib.compressobj(9)
    row = b"\x00" * (width + 1)  # filter byte + pixels
    idat = b"".join(packer.compress(row) for _ in range(height)) + packer.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    )


@pytest.mark.slow
def test_a_bomb_in_the_inbox_is_one_error_row(tiny_models_dir, tiny_params, tmp_path):
    from taglens.model.predictor import HashtagPredictor

    # Given an inbox: three photos, a 400 MP PNG bomb (5 KB on disk; 1.2 GB as RGB), an image
    # just over the pixel cap, and a Targa image (a format Pillow reads but the project does not)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    rng = np.random.default_rng(1)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).save(inbox / f"{i}.jpg")
    png_bomb(inbox / "bomb.png", 20_000, 20_000)
    assert (inbox / "bomb.png").stat().st_size < 1_000_000
    cap = 1_000_000
    Image.new("RGB", (1001, 1000), "white").save(inbox / "over.jpg")
    Image.new("RGB", (48, 48), "red").save(inbox / "odd.bmp", format="TGA")  # a lying suffix

    # When the job scores it with the pixel cap
    out = tmp_path / "scored.jsonl"
    report = predict_to_file(
        sorted(inbox.iterdir()),
        out,
        HashtagPredictor.from_dir(tiny_models_dir),
        ModelRef("m", "1"),
        batch_size=2,
        progress=False,
        max_pixels=cap,
    )

    # Then each hostile file is one error row with its reason, and the photos are scored
    rows = {row["path"].rsplit("/", 1)[1]: row for row in read_rows(out)}
    assert (report.scored, report.errors) == (3, 3)
    assert "(400000000 pixels) exceeds limit" in rows["bomb.png"]["error"]  # Pillow's own cap
    assert "1001000 pixels > the limit" in rows["over.jpg"]["error"]
    assert "allowed format" in rows["odd.bmp"]["error"]
    assert all(
        rows[f"{i}.jpg"]["error"] is None and rows[f"{i}.jpg"]["top_class"] for i in range(3)
    )
    assert all(len(row["sha256"]) == 64 for row in rows.values())
