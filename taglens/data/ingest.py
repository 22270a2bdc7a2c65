"""Ingest for every source: decode, validate and normalize images, dedupe, and write data/raw.

Each candidate image is decoded with Pillow before it is accepted. Accepted images are stored as
normalized RGB JPEGs named by the sha256 of the stored bytes; refused files are listed with a
one-line reason; exact duplicates (same stored sha256) are kept once: the first one seen wins,
and sources yield in a fixed order (the class order of params, then file or post order), so the
winning class is the one listed first.
"""

from __future__ import annotations

import hashlib
import io
import logging
import warnings
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps
from pydantic import ValidationError

from taglens.atomic import atomic_write_bytes, atomic_write_jsonl
from taglens.data.images import (
    FORMATS_TEXT,
    draft_large,
    open_image,
    reduce_large,
    sixteen_bit_to_gray,
)
from taglens.data.posts import (
    IMAGES_DIR,
    POSTS_FILE,
    REJECTED_FILE,
    Post,
    hashtags_in,
    normalize_hashtag,
    write_posts,
)
from taglens.data.sources.base import SourceItem
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


@dataclass
class IngestReport:
    """What an ingest accepted, refused and dropped as duplicates."""

    accepted: int = 0
    per_class: Counter = field(default_factory=Counter)
    rejected: Counter = field(default_factory=Counter)
    duplicates: list[dict[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The JSON form written to reports/ingest.json (a DVC metric)."""
        return {
            "accepted": self.accepted,
            "accepted_per_class": dict(sorted(self.per_class.items())),
            "rejected": sum(self.rejected.values()),
            "rejected_by_reason": dict(sorted(self.rejected.items())),
            "duplicates": len(self.duplicates),
            "duplicate_items": self.duplicates,
            "notes": self.notes,
        }

    def summary(self) -> str:
        """A short human-readable summary for the terminal."""
        reasons = ", ".join(f"{kind} {count}" for kind, count in sorted(self.rejected.items()))
        lines = [
            f"accepted {self.accepted} images in {len(self.per_class)} classes",
            f"rejected {sum(self.rejected.values())}" + (f" ({reasons})" if reasons else ""),
            f"duplicates dropped {len(self.duplicates)}",
        ]
        return "\n".join(lines + self.notes)


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
            kind = "truncated" if "truncated" in str(exc).lower() else "corrupt"
            raise RejectedImage(kind, f"cannot open: {exc}") from None
        width, height = image.size
        if width * height > params.max_pixels:
            raise RejectedImage(
                "too_large",
                f"{width}x{height} = {width * height} pixels > ingest.max_pixels "
                f"{params.max_pixels} (possible decompression bomb)",
            )
        if max(width, height) > _JPEG_MAX_SIDE:
            raise RejectedImage(
                "too_large", f"{width}x{height}: a side over {_JPEG_MAX_SIDE} pixels cannot be "
                "stored as JPEG",
            )  # fmt: skip
        try:
            frames = getattr(image, "n_frames", 1)  # walks every frame: a damaged one fails here
        except Exception as exc:
            kind = "truncated" if "truncated" in str(exc).lower() else "corrupt"
            raise RejectedImage(kind, f"cannot read the frames of {image.format}: {exc}") from None
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
            kind = "truncated" if "truncated" in str(exc).lower() else "corrupt"
            raise RejectedImage(kind, f"cannot decode {image.format}: {exc}") from None
        try:
            image = ImageOps.exif_transpose(image)
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


def _post(item: SourceItem, image: NormalizedImage, source: str) -> Post:
    """The post record of an accepted item; hashtags come from the item, else from its caption."""
    tags = (normalize_hashtag(tag) for tag in item.hashtags)
    hashtags = tuple(dict.fromkeys(tag for tag in tags if tag)) or hashtags_in(item.caption)
    return Post(
        id=item.id, label=item.label, image=f"{IMAGES_DIR}/{image.sha256}.jpg",
        sha256=image.sha256, width=image.width, height=image.height, caption=item.caption,
        hashtags=hashtags, likes=item.likes, comments=item.comments, date=item.date,
        owner=item.owner, source=source,
    )  # fmt: skip


def ingest(
    items: Iterable[SourceItem], params: IngestParams, *, out: Path, source: str
) -> IngestReport:
    """Normalize every item, store accepted images and write posts.jsonl and rejected.jsonl.

    Images already present under `out/images` (same sha256) are not rewritten, so re-running
    after an interruption only does the work that is left. Files that are not in the final
    posts are removed at the end so `out/` holds exactly what posts.jsonl lists.
    """
    images = out / IMAGES_DIR
    images.mkdir(parents=True, exist_ok=True)
    report = IngestReport()
    posts: list[Post] = []
    rejected: list[dict[str, str]] = []
    kept: dict[str, Post] = {}
    for item in items:
        try:
            if item.sha256 and hashlib.sha256(item.data).hexdigest() != item.sha256:
                raise RejectedImage("sha256_mismatch", "the file's bytes do not match the sha256 "
                                    "its metadata states (changed or replaced since)")  # fmt: skip
            image = normalize_image(item.data, params)
        except RejectedImage as exc:
            report.rejected[exc.kind] += 1
            rejected.append({"path": item.origin, "reason": str(exc)})
            logger.info("rejected %s: %s", item.origin, exc)
            continue
        if image.sha256 in kept:
            first = kept[image.sha256]
            report.duplicates.append(
                {"sha256": image.sha256, "kept_id": first.id, "kept_label": first.label,
                 "dropped_id": item.id, "dropped_label": item.label, "path": item.origin}
            )  # fmt: skip
            continue
        target = images / f"{image.sha256}.jpg"
        try:
            post = _post(item, image, source)
        except ValidationError as exc:
            first = exc.errors()[0]
            reason = f"bad_metadata: {'.'.join(map(str, first['loc']))}: {first['msg']}"
            report.rejected["bad_metadata"] += 1
            rejected.append({"path": item.origin, "reason": reason})
            continue
        if not target.exists():
            atomic_write_bytes(target, image.jpeg)
        kept[image.sha256] = post
        posts.append(post)
        report.accepted += 1
        report.per_class[item.label] += 1
    write_posts(out / POSTS_FILE, posts)
    atomic_write_jsonl(out / REJECTED_FILE, rejected)
    # Only now, with the new posts.jsonl in place: until here the old one still finds its images.
    for stale in images.glob("*.jpg"):
        if stale.stem not in kept:
            stale.unlink()  # left by an earlier run with other inputs
    return report
