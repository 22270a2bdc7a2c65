"""Build a data/raw directory (images/<sha256>.jpg + posts.jsonl) the way scrape writes it."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

from PIL import Image

from taglens.data.posts import POSTS_FILE, Post, write_posts


def jpeg_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.convert("RGB").save(buffer, format="JPEG", quality=95)
    return buffer.getvalue()


def add_post(raw: Path, label: str, data: bytes, post_id: str) -> Post:
    """Store encoded bytes under images/<sha256>.jpg and return the post describing them."""
    sha = hashlib.sha256(data).hexdigest()
    path = raw / "images" / f"{sha}.jpg"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    with Image.open(path) as image:
        width, height = image.size
    return Post(
        id=post_id,
        label=label,
        image=f"images/{sha}.jpg",
        sha256=sha,
        width=width,
        height=height,
        source="test",
    )


Colour = tuple[int, int, int]


def solid_raw(raw: Path, colours: dict[str, list[Colour]], size: int = 40) -> list[Post]:
    """One solid-colour image per entry, labelled by its key; posts.jsonl written in that order."""
    posts = []
    for label, values in colours.items():
        for i, colour in enumerate(values):
            data = jpeg_bytes(Image.new("RGB", (size, size), colour))
            posts.append(add_post(raw, label, data, f"{label}-{i}"))
    write_posts(raw / POSTS_FILE, posts)
    return posts
