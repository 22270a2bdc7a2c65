"""The configured source as items for ingest: generated demo photos, a folder, or Instagram."""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from taglens.data.posts import normalize_hashtag
from taglens.data.sources.base import SourceItem
from taglens.errors import TaglensError
from taglens.params import PAPER_CLASSES, BaseParams, ScrapeParams


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
    from taglens.data.sources import instagram, instagram_loader, instagram_posts

    settings = scrape.instagram
    unknown = [
        t for t in settings.hashtags if base.classes and normalize_hashtag(t) not in base.classes
    ]
    if unknown:
        raise TaglensError(
            f"scrape.instagram.hashtags {unknown} are not in base.classes: each hashtag searched "
            "is a class, so add them to base.classes or remove them"
        )
    salt = instagram_posts.owner_salt(settings)
    session_env = os.environ.get(instagram_loader.SESSION_ENV)
    session = session_file or (Path(session_env) if session_env else None)
    loader = instagram_loader.make_loader(session, settings.max_wait_seconds)
    collection = instagram.collect(loader, settings, cache=cache, salt=salt)
    notes = list(collection.notes)
    notes.append(
        f"instagram: {sum(collection.per_tag.values())} posts collected in {cache} "
        f"({collection.downloaded} images downloaded now, {collection.failed} failed, "
        f"{collection.videos_skipped} videos skipped)"
    )
    return OpenedSource(instagram.collected_items(cache, settings), None, notes)
