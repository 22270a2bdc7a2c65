"""The `demo` source: a synthetic, deterministic image set for the paper's ten classes.

Every image is drawn here from `base.seed`; no third-party photo is involved. Each class has its
own palette and motif, so even random-weight features separate them, and a small share of images
is drawn in another class's style (label noise) so the outlier rule has something to find.
Captions carry the class hashtag plus related and generic tags, so hashtag statistics have input.
"""

from __future__ import annotations

import io
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta

import numpy as np
from PIL import Image, ImageDraw

from taglens.data.sources.base import SourceItem
from taglens.params import DemoSourceParams

NOISE_SHARE = 0.05  # share of images drawn in another class's style
_EPOCH = datetime(2024, 1, 1, tzinfo=UTC)

# Related hashtags per class (the class tag itself is always added), and tags any post may carry.
RELATED_TAGS: dict[str, tuple[str, ...]] = {
    "animals": ("dog", "cat", "pets", "wildlife", "cute", "puppy"),
    "art": ("painting", "drawing", "artist", "illustration", "sketch", "abstract"),
    "fashion": ("style", "outfit", "ootd", "model", "streetstyle", "dress"),
    "fitness": ("gym", "workout", "training", "fit", "motivation", "health"),
    "flowers": ("flower", "garden", "rose", "bloom", "spring", "floral"),
    "food": ("foodie", "yummy", "delicious", "dinner", "foodporn", "homemade"),
    "instagood": ("photooftheday", "picoftheday", "instadaily", "happy", "fun", "love"),
    "nature": ("landscape", "mountains", "sky", "hiking", "outdoors", "travel"),
    "selfie": ("me", "smile", "selfietime", "girl", "face", "portrait"),
    "sports": ("football", "soccer", "basketball", "game", "team", "sport"),
}
GENERIC_TAGS = ("instagood", "photooftheday", "love", "beautiful", "picoftheday")


def _rgb(rng: np.random.Generator, base: tuple[int, int, int], spread: int = 25) -> tuple:
    return tuple(int(np.clip(c + rng.integers(-spread, spread + 1), 0, 255)) for c in base)


def _draw_animals(d: ImageDraw.ImageDraw, s: int, rng: np.random.Generator) -> None:
    d.rectangle([0, 0, s, s], fill=_rgb(rng, (196, 120, 50)))
    for _ in range(int(rng.integers(8, 16))):  # spots of a fur pattern
        x = rng.integers(0, s)
        y = rng.integers(0, s)
        r = rng.integers(s // 20, s // 8)
        d.ellipse([x - r, y - r, x + r, y + r], fill=_rgb(rng, (60, 35, 15)))


def _draw_art(d: ImageDraw.ImageDraw, s: int, rng: np.random.Generator) -> None:
    d.rectangle([0, 0, s, s], fill=_rgb(rng, (245, 245, 240), 8))
    for _ in range(int(rng.integers(6, 12))):  # bold strokes in saturated colours
        color = tuple(int(c) for c in rng.choice([0, 255], size=3))
        points = [tuple(int(v) for v in rng.integers(0, s, size=2)) for _ in range(3)]
        d.line(points, fill=color, width=int(rng.integers(s // 30, s // 12)))


def _draw_fashion(d: ImageDraw.ImageDraw, s: int, rng: np.random.Generator) -> None:
    width = int(rng.integers(s // 12, s // 6))
    colors = [_rgb(rng, (220, 80, 160)), _rgb(rng, (110, 40, 140))]
    for i, x in enumerate(range(0, s, width)):  # vertical stripes
        d.rectangle([x, 0, x + width, s], fill=colors[i % 2])


def _draw_fitness(d: ImageDraw.ImageDraw, s: int, rng: np.random.Generator) -> None:
    d.rectangle([0, 0, s, s], fill=_rgb(rng, (200, 200, 205), 10))
    for _ in range(int(rng.integers(2, 4))):  # dumbbells: a bar with two plates
        y = int(rng.integers(s // 6, s - s // 6))
        d.rectangle([s // 6, y - 3, s - s // 6, y + 3], fill=(40, 40, 40))
        for x in (s // 6, s - s // 6):
            d.rectangle([x - s // 16, y - s // 8, x + s // 16, y + s // 8], fill=(20, 20, 20))


def _draw_flowers(d: ImageDraw.ImageDraw, s: int, rng: np.random.Generator) -> None:
    d.rectangle([0, 0, s, s], fill=_rgb(rng, (60, 140, 60)))
    for _ in range(int(rng.integers(1, 4))):  # petals round a yellow centre
        cx, cy = rng.integers(s // 4, 3 * s // 4, size=2)
        r = int(rng.integers(s // 12, s // 7))
        petal = _rgb(rng, (230, 60, 90), 40)
        for a in np.linspace(0, 2 * np.pi, 7)[:-1]:
            px = cx + 1.6 * r * np.cos(a)
            py = cy + 1.6 * r * np.sin(a)
            d.ellipse([px - r, py - r, px + r, py + r], fill=petal)
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(250, 210, 40))


def _draw_food(d: ImageDraw.ImageDraw, s: int, rng: np.random.Generator) -> None:
    d.rectangle([0, 0, s, s], fill=_rgb(rng, (120, 80, 45)))
    m = int(rng.integers(s // 12, s // 6))
    d.ellipse([m, m, s - m, s - m], fill=(245, 245, 245))  # a plate
    for _ in range(int(rng.integers(5, 10))):
        x, y = rng.integers(s // 3, 2 * s // 3, size=2)
        r = int(rng.integers(s // 20, s // 10))
        d.ellipse([x - r, y - r, x + r, y + r], fill=_rgb(rng, (200, 120, 30), 60))


def _draw_instagood(d: ImageDraw.ImageDraw, s: int, rng: np.random.Generator) -> None:
    top = _rgb(rng, (250, 120, 60))
    bottom = _rgb(rng, (120, 40, 160))
    for y in range(s):  # a sunset gradient
        t = y / max(s - 1, 1)
        d.line(
            [(0, y), (s, y)],
            fill=tuple(int(a + (b - a) * t) for a, b in zip(top, bottom, strict=True)),
        )
    r = int(rng.integers(s // 8, s // 5))
    cx = s // 2
    cy = s // 2
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(255, 240, 200))


def _draw_nature(d: ImageDraw.ImageDraw, s: int, rng: np.random.Generator) -> None:
    horizon = int(rng.integers(s // 2, 3 * s // 4))
    d.rectangle([0, 0, s, horizon], fill=_rgb(rng, (120, 180, 240)))
    d.rectangle([0, horizon, s, s], fill=_rgb(rng, (50, 120, 40)))
    for _ in range(int(rng.integers(1, 4))):  # mountains
        x = int(rng.integers(0, s))
        h = int(rng.integers(s // 5, s // 2))
        d.polygon(
            [(x - h, horizon), (x, horizon - h), (x + h, horizon)], fill=_rgb(rng, (90, 90, 100))
        )


def _draw_selfie(d: ImageDraw.ImageDraw, s: int, rng: np.random.Generator) -> None:
    d.rectangle([0, 0, s, s], fill=_rgb(rng, (70, 90, 110)))
    w = int(s * rng.uniform(0.28, 0.36))
    h = int(s * rng.uniform(0.36, 0.44))
    cx = s // 2 + int(rng.integers(-s // 12, s // 12))
    cy = s // 2
    d.ellipse([cx - w, cy - h, cx + w, cy + h], fill=_rgb(rng, (230, 190, 160)))  # a face
    for ex in (cx - w // 2, cx + w // 2):
        d.ellipse(
            [ex - s // 30, cy - h // 4 - s // 30, ex + s // 30, cy - h // 4 + s // 30],
            fill=(30, 30, 30),
        )
    d.arc([cx - w // 2, cy, cx + w // 2, cy + h // 2], 20, 160, fill=(150, 40, 40), width=3)


def _draw_sports(d: ImageDraw.ImageDraw, s: int, rng: np.random.Generator) -> None:
    d.rectangle([0, 0, s, s], fill=_rgb(rng, (40, 160, 60)))
    for x in range(s // 8, s, s // 4):  # pitch lines
        d.line([(x, 0), (x, s)], fill=(250, 250, 250), width=max(1, s // 64))
    r = int(rng.integers(s // 12, s // 8))
    cx, cy = rng.integers(r, s - r, size=2)
    d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=(250, 250, 250), outline=(0, 0, 0), width=2)


PAINTERS = {
    "animals": _draw_animals, "art": _draw_art, "fashion": _draw_fashion,
    "fitness": _draw_fitness, "flowers": _draw_flowers, "food": _draw_food,
    "instagood": _draw_instagood, "nature": _draw_nature, "selfie": _draw_selfie,
    "sports": _draw_sports,
}  # fmt: skip


def draw_image(style: str, size: int, rng: np.random.Generator) -> Image.Image:
    """Draw one image in a class's style (classes without a painter get a hashed flat colour)."""
    image = Image.new("RGB", (size, size))
    painter = PAINTERS.get(style)
    if painter is None:
        color = tuple(int(b) for b in np.frombuffer(style.encode()[:3].ljust(3, b"\x80"), "u1"))
        ImageDraw.Draw(image).rectangle([0, 0, size, size], fill=color)
    else:
        painter(ImageDraw.Draw(image), size, rng)
    return image


def make_caption(label: str, rng: np.random.Generator) -> tuple[str, tuple[str, ...]]:
    """A caption with the class hashtag, two or three related tags and maybe a generic one."""
    related = RELATED_TAGS.get(label, ())
    count = min(len(related), int(rng.integers(2, 4)))
    tags = [label, *rng.choice(related, size=count, replace=False).tolist()] if related else [label]
    if rng.random() < 0.5:
        tags.append(str(rng.choice(GENERIC_TAGS)))
    tags = list(dict.fromkeys(tags))
    caption = "A moment worth sharing " + " ".join(f"#{tag}" for tag in tags)
    return caption, tuple(tags)


def generate_demo(
    params: DemoSourceParams, classes: Sequence[str], seed: int
) -> Iterator[SourceItem]:
    """Yield `images_per_class` synthetic posts per class, identical for the same seed."""
    for class_index, label in enumerate(classes):
        rng = np.random.default_rng([seed, class_index])
        for number in range(params.images_per_class):
            style = label
            if rng.random() < NOISE_SHARE:  # label noise for the outlier rule to find
                style = str(rng.choice([c for c in classes if c != label]))
            image = draw_image(style, params.image_size, rng)
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            caption, tags = make_caption(label, rng)
            likes = int(rng.lognormal(4.0 + 0.1 * len(tags), 0.8))
            yield SourceItem(
                id=f"demo-{label}-{number:05d}",
                label=label,
                data=buffer.getvalue(),
                origin=f"demo://{label}/{number}",
                caption=caption,
                hashtags=tags,
                likes=likes,
                comments=int(rng.poisson(likes / 20)),
                date=(_EPOCH + timedelta(hours=int(rng.integers(0, 24 * 365)))).isoformat(),
                owner=None,
            )
