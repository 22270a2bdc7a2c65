"""Which source scrape reads (`scrape.source`), and which of its items enter data/raw.

The configured source as items for ingest: generated demo photos, a folder, or Instagram.

Ingest for every source: decode, validate and normalize images, dedupe, and write data/raw.

Each candidate image is decoded with Pillow before it is accepted (`taglens.data.images`,
the same checks the servers apply). Accepted images are stored as normalized RGB JPEGs named
by the sha256 of the stored bytes; refused files are listed with a one-line reason; exact
duplicates (same stored sha256) are kept once: the first one seen wins, and sources yield in a
fixed order (the class order of params, then file or post order), so the winning class is the
one listed first.
"""

from __future__ import annotations

import hashlib
import logging
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from taglens import artifacts
from taglens.atomic import atomic_write_bytes, atomic_write_jsonl
from taglens.data.images import NormalizedImage, RejectedImage, normalize_image
from taglens.data.posts import (
    Post,
    hashtags_in,
    normalize_hashtag,
    write_posts,
)
from taglens.data.sources.base import SourceItem
from taglens.errors import TaglensError
from taglens.params import PAPER_CLASSES, BaseParams, IngestParams, ScrapeParams


@dataclass(frozen=True)
class OpenedSource:
    """The items a source yields, how many when known (for the progress bar), and its notes.

    `notes` may grow while `items` is iterated (the folder source notes what it skips).
    """

    items: Iterable[SourceItem]
    total: int | None
    notes: list[str]


def open_source(
    base: BaseParams,
    scrape: ScrapeParams,
    *,
    out: Path,
    session_file: Path | None = None,
    cache: Path | None = None,
) -> OpenedSource:
    """Open `scrape.source` for ingest into `out`.

    Args:
        base: the classes (each a hashtag searched, for instagram) and the seed (demo).
        scrape: the source and its settings.
        out: the raw data directory; the instagram collection defaults to `instagram` beside it.
        session_file: Instaloader session file; defaults to TAGLENS_INSTAGRAM_SESSION.
        cache: the instagram collection directory, kept between runs so they resume.

    Raises:
        TaglensError: unusable source settings or a missing login.
    """
    if scrape.source == "demo":
        from taglens.data.sources.demo import generate_demo

        classes = base.classes or PAPER_CLASSES
        return OpenedSource(
            generate_demo(scrape.demo, classes, base.seed),
            scrape.demo.images_per_class * len(classes),
            [],
        )
    if scrape.source == "folder":
        from taglens.data.sources.folder import FolderSource

        folder = FolderSource(Path(scrape.folder or ""), base.classes)
        return OpenedSource(folder, len(folder), folder.notes)  # the same list: notes grow
    return _instagram(
        base, scrape, session_file=session_file, cache=cache or Path(out).parent / "instagram"
    )


def _instagram(
    base: BaseParams, scrape: ScrapeParams, *, session_file: Path | None, cache: Path
) -> OpenedSource:
    # imports instaloader only when it is used
    from taglens.data.sources import instagram

    settings = scrape.instagram
    unknown = [
        t for t in settings.hashtags if base.classes and normalize_hashtag(t) not in base.classes
    ]
    if unknown:
        raise TaglensError(
            f"scrape.instagram.hashtags {unknown} are not in base.classes: each hashtag searched "
            "is a class, so add them to base.classes or remove them"
        )
    salt = instagram.owner_salt(settings)
    session_env = os.environ.get(instagram.SESSION_ENV)
    session = session_file or (Path(session_env) if session_env else None)
    loader = instagram.make_loader(session, settings.max_wait_seconds)
    collection = instagram.collect(loader, settings, cache=cache, salt=salt)
    notes = list(collection.notes)
    notes.append(
        f"instagram: {sum(collection.per_tag.values())} posts collected in {cache} "
        f"({collection.downloaded} images downloaded now, {collection.failed} failed, "
        f"{collection.videos_skipped} videos skipped)"
    )
    return OpenedSource(instagram.collected_items(cache, settings), None, notes)


logger = logging.getLogger(__name__)


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


def _post(item: SourceItem, image: NormalizedImage, source: str) -> Post:
    """The post record of an accepted item; hashtags come from the item, else from its caption."""
    tags = (normalize_hashtag(tag) for tag in item.hashtags)
    hashtags = tuple(dict.fromkeys(tag for tag in tags if tag)) or hashtags_in(item.caption)
    return Post(
        id=item.id,
        label=item.label,
        image=f"{artifacts.RAW_IMAGES}/{image.sha256}.jpg",
        sha256=image.sha256,
        width=image.width,
        height=image.height,
        caption=item.caption,
        hashtags=hashtags,
        likes=item.likes,
        comments=item.comments,
        date=item.date,
        owner=item.owner,
        source=source,
    )


def ingest(
    items: Iterable[SourceItem], params: IngestParams, *, out: Path, source: str
) -> IngestReport:
    """Normalize every item, store accepted images and write posts.jsonl and rejected.jsonl.

    Images already present under `out/images` (same sha256) are not rewritten, so re-running
    after an interruption only does the work that is left. Files that are not in the final
    posts are removed at the end so `out/` holds exactly what posts.jsonl lists.
    """
    images = out / artifacts.RAW_IMAGES
    images.mkdir(parents=True, exist_ok=True)
    report = IngestReport()
    posts: list[Post] = []
    rejected: list[dict[str, str]] = []
    kept: dict[str, Post] = {}
    for item in items:
        try:
            if item.sha256 and hashlib.sha256(item.data).hexdigest() != item.sha256:
                raise RejectedImage(
                    "sha256_mismatch",
                    "the file's bytes do not match the sha256 "
                    "its metadata states (changed or replaced since)",
                )
            image = normalize_image(item.data, params)
        except RejectedImage as exc:
            report.rejected[exc.kind] += 1
            rejected.append({"path": item.origin, "reason": str(exc)})
            logger.info("rejected %s: %s", item.origin, exc)
            continue
        if image.sha256 in kept:
            first = kept[image.sha256]
            report.duplicates.append(
                {
                    "sha256": image.sha256,
                    "kept_id": first.id,
                    "kept_label": first.label,
                    "dropped_id": item.id,
                    "dropped_label": item.label,
                    "path": item.origin,
                }
            )
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
    write_posts(artifacts.POSTS.at(out), posts)
    atomic_write_jsonl(artifacts.REJECTED.at(out), rejected)
    # Only now, with the new posts.jsonl in place: until here the old one still finds its images.
    for stale in images.glob("*.jpg"):
        if stale.stem not in kept:
            stale.unlink()  # left by an earlier run with other inputs
    return report
