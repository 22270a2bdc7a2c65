"""Helpers for the web app tests: photos, bad uploads, and a stand-in model for error paths."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def photo_bytes(size: int = 96, fmt: str = "JPEG", seed: int = 0) -> bytes:
    """A small colourful photo-like image (gradients plus noise), encoded."""
    rng = np.random.default_rng(seed)
    ramp = np.linspace(0, 255, size)
    pixels = np.stack(np.broadcast_arrays(ramp[None, :], ramp[:, None], ramp[::-1][None, :]), -1)
    pixels = np.clip(pixels + rng.normal(0, 20, pixels.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, format=fmt)
    return buffer.getvalue()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height pixels: a decompression bomb in 60 bytes."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 16))


def real_bomb_png(side: int = 8000) -> bytes:
    """A real, complete 1-bit PNG of side x side pixels that compresses to a few kilobytes."""
    buffer = io.BytesIO()
    Image.new("1", (side, side)).save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


class RecordingPredictor:
    """Stand-in model for paths that must never reach it; counts calls and answers fixed values.

    `calls` holds the batch size of each forward pass; `decoded` the images decoded.
    """

    classes = ["cats", "dogs"]
    image_size = 8

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.decoded = 0

    def decode(self, images: list[bytes]) -> np.ndarray:
        self.decoded += len(images)
        return np.zeros((len(images), self.image_size, self.image_size, 3), np.float32)

    def predict_pixels(self, batch: np.ndarray) -> list[dict]:
        self.calls.append(len(batch))
        return [
            {
                "top_class": "dogs",
                "top_probability": np.float32(0.75),
                "probabilities": {"cats": np.float32(0.25), "dogs": np.float32(0.75)},
                "hashtags": [
                    {"tag": "dogs", "score": 0.7, "posts": 3, "engagement": 1.2, "why": "class"},
                    {"tag": "puppy", "score": 0.4, "posts": 2, "engagement": None},
                ],
            }
            for _ in batch
        ]


def metric_samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Prometheus text -> {(sample name, frozenset of label items): value}."""
    from prometheus_client.parser import text_string_to_metric_families

    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def metric(
    samples: dict[tuple[str, frozenset], float], sample: str, /, **labels: str
) -> float | None:
    """The value of one sample (None if it is absent)."""
    return samples.get((sample, frozenset(labels.items())))


class VersionedPredictor(RecordingPredictor):
    """A stand-in model whose answers say which one it is (its top class is `tag`)."""

    def __init__(self, tag: str) -> None:
        super().__init__()
        self.tag = tag

    def predict_pixels(self, batch: np.ndarray) -> list[dict]:
        answers = super().predict_pixels(batch)
        for answer in answers:
            answer["top_class"] = self.tag
        return answers
