"""What every data source yields: encoded image bytes with the post's metadata."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SourceItem:
    """One candidate image before ingest has decoded and accepted it.

    Attributes:
        id: Stable identifier (shortcode for Instagram, a file-derived id otherwise).
        label: The class: the hashtag searched or the folder name.
        data: Encoded image bytes in any format Pillow reads.
        origin: Where it came from (path or URL), for messages and rejected.jsonl.
        sha256: The hash the source's metadata states for `data`, if any: ingest rejects the
            item when the bytes do not match it.

    """

    id: str
    label: str
    data: bytes
    origin: str
    caption: str = ""
    hashtags: tuple[str, ...] = ()
    likes: int | None = None
    comments: int | None = None
    date: str | None = None
    owner: str | None = None
    sha256: str | None = None
