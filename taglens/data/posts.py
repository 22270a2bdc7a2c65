"""What a post record holds, how a hashtag is normalised, and how data/raw/posts.jsonl is read.

Later stages read only this record, so they never care where the data came from.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from taglens import artifacts
from taglens.atomic import atomic_write_jsonl, read_jsonl
from taglens.errors import TaglensError

POSTS_FILE = artifacts.POSTS.name  # data/raw's posts file (artifacts names it)
_HASHTAG = re.compile(r"#(\w+)", re.UNICODE)
SHA256_PATTERN = r"^[0-9a-f]{64}$"


def inside_folder(value: str) -> str:
    """Check that a stored `image` path stays inside its data folder (relative, no `..`).

    A posts file is data, possibly from someone else: an absolute path or `../` would make the
    stages read (and hash, and show on contact sheets) any file the process can reach.

    Raises:
        ValueError: the path is absolute, climbs out with `..`, or uses a drive or backslashes.
    """
    posix = PurePosixPath(value)
    if (
        posix.is_absolute()
        or ".." in posix.parts
        or "\\" in value
        or PureWindowsPath(value).drive
        or "\0" in value
    ):
        raise ValueError(f"must be a path relative to the data folder, without '..': {value!r}")
    return value


ImagePath = Annotated[str, Field(min_length=1), AfterValidator(inside_folder)]


class Post(BaseModel):
    """One accepted image with its metadata.

    `image` is relative to the raw data directory; `sha256` is the hash of the stored image
    file, which is what features, splits and batch predictions are keyed on.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    id: str = Field(min_length=1)  # shortcode for Instagram, a stable file-derived id otherwise
    label: str = Field(min_length=1)  # the class (the hashtag searched or the folder name)
    image: ImagePath
    sha256: str = Field(pattern=SHA256_PATTERN)
    width: int = Field(ge=1)
    height: int = Field(ge=1)
    caption: str = ""
    hashtags: tuple[str, ...] = ()
    likes: int | None = Field(default=None, ge=0)
    comments: int | None = Field(default=None, ge=0)
    date: str | None = None  # ISO 8601, UTC
    owner: str | None = None  # salted hash of the owner id; never a username
    source: str = Field(min_length=1)


def normalize_hashtag(tag: str) -> str:
    """Lower-case a hashtag and strip its `#`: `#Food` and `food` are the same tag."""
    return tag.strip().lstrip("#").strip().lower()


def hashtags_in(caption: str) -> tuple[str, ...]:
    """The normalized hashtags of a caption, first occurrence order, without repeats."""
    seen: dict[str, None] = {}
    for match in _HASHTAG.finditer(caption or ""):
        seen.setdefault(normalize_hashtag(match.group(1)), None)
    return tuple(seen)


def naive_utc(value: str | None, error: str) -> datetime | None:
    """Parse an ISO 8601 date into naive UTC, the form post dates are stored and compared in.

    Args:
        value: the date as written (None passes through).
        error: the message raised when `value` is not an ISO 8601 date.

    Raises:
        TaglensError: `value` is not an ISO 8601 date.
    """
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise TaglensError(error) from None
    if moment.tzinfo is not None:
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


def write_posts(path: Path, posts: list[Post]) -> Path:
    """Write posts atomically as JSON lines."""
    return atomic_write_jsonl(path, (post.model_dump(mode="json") for post in posts))


def read_posts(path: Path) -> list[Post]:
    """Read and validate posts.jsonl.

    Raises:
        ValueError: a line does not match the schema (its line number and field are named).

    """
    posts = []
    for number, row in enumerate(read_jsonl(path), start=1):
        try:
            posts.append(Post.model_validate(row))
        except ValidationError as exc:
            first = exc.errors()[0]
            field = ".".join(str(p) for p in first["loc"]) or "record"
            raise TaglensError(f"{path}:{number}: {field}: {first['msg']}") from None
    return posts


def read_raw_posts(raw: Path | str) -> list[Post]:
    """data/raw/posts.jsonl: the accepted posts, in the order featurize stacked them.

    Raises:
        MissingArtifactError: scrape has not run.
        TaglensError: the file holds no post (scrape accepted no image).
    """
    path = artifacts.POSTS.require(raw)
    posts = read_posts(path)
    if not posts:
        raise TaglensError(f"{path} holds no posts: scrape accepted no images")
    return posts
