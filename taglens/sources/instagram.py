"""The `instagram` source: collect posts by hashtag with Instaloader into a resumable collection.

Login comes only from an Instaloader session file (`instaloader --login USER` writes one); no
password is ever read. Collected posts are appended one by one to `<cache>/collected.jsonl` and
their images kept under `<cache>/media/`, so a killed or rate-limited run resumes where it
stopped: Instaloader's resumable iteration restarts the listing at the saved page, posts already
collected (by hashtag and shortcode) are skipped, and finished images are never downloaded again.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import instaloader
import requests
from instaloader import exceptions as ie
from instaloader.nodeiterator import FrozenNodeIterator, NodeIterator, resumable_iteration

from taglens.atomic import append_jsonl, atomic_write_bytes, atomic_write_text, read_jsonl
from taglens.errors import TaglensError
from taglens.params import InstagramSourceParams
from taglens.posts import hashtags_in, normalize_hashtag
from taglens.progress import progress_bar
from taglens.sources.base import SourceItem

logger = logging.getLogger(__name__)

SESSION_ENV = "TAGLENS_INSTAGRAM_SESSION"
COLLECTED_FILE = "collected.jsonl"
HOW_TO_LOGIN = (
    "create a session once with `instaloader --login USER` (it asks for the password itself and "
    "saves ~/.config/instaloader/session-USER), then pass that file with --session-file or the "
    f"{SESSION_ENV} environment variable"
)


class InstagramLoginError(TaglensError):
    """No usable Instaloader session: the message says how to create one."""


class RateLimitStop(Exception):  # noqa: N818 - a stop signal, not a failure
    """Instagram asked for a longer wait than scrape.instagram.max_wait_seconds allows."""

    def __init__(self, seconds: float):
        super().__init__(f"Instagram asked to wait {seconds:.0f} s")
        self.seconds = seconds


class BoundedRateController(instaloader.RateController):
    """Instaloader's rate controller, refusing any single wait longer than `max_wait` seconds."""

    def __init__(self, context: Any, max_wait: float, sleep: Callable[[float], None] = time.sleep):
        super().__init__(context)
        self.max_wait = max_wait
        self._sleep = sleep
        self.waited = 0.0

    def sleep(self, secs: float) -> None:
        """Wait as instaloader asks, or stop the collection if the wait is too long."""
        if secs > self.max_wait:
            raise RateLimitStop(secs)
        self.waited += secs
        self._sleep(secs)


def make_loader(
    session_file: Path | None, max_wait: float, *, polite: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> instaloader.Instaloader:  # fmt: skip
    """An Instaloader logged in from a session file, with the bounded rate controller.

    Args:
        session_file: the file `instaloader --login USER` wrote (named `session-USER`).
        max_wait: longest single rate-limit wait honoured, in seconds.
        polite: keep instaloader's short random pause before each request.
        sleep: how to wait (tests pass a fake).

    Raises:
        InstagramLoginError: no session file, or not one instaloader can read.
    """
    if session_file is None:
        raise InstagramLoginError(f"the instagram source needs a login session: {HOW_TO_LOGIN}")
    session_file = Path(session_file).expanduser()
    if not session_file.is_file():
        raise InstagramLoginError(f"session file {session_file} does not exist: {HOW_TO_LOGIN}")
    loader = instaloader.Instaloader(
        sleep=polite, quiet=True, iphone_support=False, save_metadata=False,
        rate_controller=lambda context: BoundedRateController(context, max_wait, sleep),
    )  # fmt: skip
    username = session_file.name.removeprefix("session-")
    try:
        loader.load_session_from_file(username, str(session_file))
    except Exception as exc:  # a pickle of the wrong shape can raise almost anything
        raise InstagramLoginError(
            f"{session_file} is not an instaloader session file ({type(exc).__name__}): "
            f"{HOW_TO_LOGIN}"
        ) from None
    return loader


def owner_hash(owner_id: Any, salt: str) -> str:
    """De-identify an owner id: a keyed hash that cannot be reversed without the salt."""
    return hmac.new(salt.encode(), str(owner_id).encode(), hashlib.sha256).hexdigest()[:32]


def _comments(post: instaloader.Post) -> int | None:
    # Read the listing's own fields: `Post.comments` fetches the whole post when they are absent.
    node = post._node  # noqa: SLF001
    for key in ("edge_media_to_comment", "edge_media_to_parent_comment"):
        if isinstance(node.get(key), dict) and isinstance(node[key].get("count"), int):
            return node[key]["count"]
    return node["comments"] if isinstance(node.get("comments"), int) else None


def _record(post: instaloader.Post, tag: str, salt: str, media: str) -> dict[str, Any]:
    try:
        owner = owner_hash(post.owner_id, salt)
    except (ie.InstaloaderException, KeyError):
        owner = None
    try:
        likes = int(post.likes)
    except (ie.InstaloaderException, KeyError, TypeError):
        likes = None
    return {
        "shortcode": post.shortcode, "label": tag, "caption": post.caption or "",
        "likes": likes, "comments": _comments(post), "date": post.date_utc.isoformat(),
        "owner": owner, "media": media,
    }  # fmt: skip


def _save_frozen(frozen: FrozenNodeIterator, path: str) -> None:
    atomic_write_text(path, json.dumps(frozen._asdict()))


def _load_frozen(_context: Any, path: str) -> FrozenNodeIterator:
    return FrozenNodeIterator(**json.loads(Path(path).read_text(encoding="utf-8")))


def _window(value: str | None, key: str) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise TaglensError(f"scrape.instagram.{key} must be an ISO date, got {value!r}") from None
    if moment.tzinfo is not None:  # post dates are naive UTC
        moment = moment.astimezone(UTC).replace(tzinfo=None)
    return moment


@dataclass
class Collection:
    """What one collection run did."""

    per_tag: Counter = field(default_factory=Counter)
    downloaded: int = 0
    failed: int = 0
    videos_skipped: int = 0
    complete: bool = True
    notes: list[str] = field(default_factory=list)


def collect(
    loader: instaloader.Instaloader, params: InstagramSourceParams, *, cache: Path, salt: str
) -> Collection:
    """Collect up to `posts_per_hashtag` posts per hashtag into `cache`, resuming earlier work.

    Raises:
        InstagramLoginError: Instagram refused the session (expired or logged out).
    """
    window = (_window(params.since, "since"), _window(params.until, "until"))
    rows = read_jsonl(cache / COLLECTED_FILE)
    seen = {(row["label"], row["shortcode"]) for row in rows}
    result = Collection(per_tag=Counter(row["label"] for row in rows))
    for tag in dict.fromkeys(normalize_hashtag(t) for t in params.hashtags):
        if result.per_tag[tag] >= params.posts_per_hashtag:
            continue  # finished by an earlier run: no request at all
        bar = progress_bar(total=params.posts_per_hashtag, initial=result.per_tag[tag],
                           desc=f"#{tag}", unit="post")  # fmt: skip
        try:
            _collect_tag(loader, params, tag, window, cache=cache, salt=salt, seen=seen,
                         result=result, bar=bar)  # fmt: skip
        except RateLimitStop as exc:
            result.complete = False
            result.notes.append(
                f"{exc}, more than scrape.instagram.max_wait_seconds={params.max_wait_seconds:g}; "
                "stopped with what was collected. Run the same command later to resume."
            )
            break
        except ie.LoginRequiredException:
            raise InstagramLoginError(f"Instagram refused the session: {HOW_TO_LOGIN}") from None
        except ie.QueryReturnedNotFoundException:
            result.notes.append(f"#{tag}: Instagram has no such hashtag; skipped")
        # KeyError, IndexError, TypeError: Instagram changed the shape of a response.
        except (ie.InstaloaderException, ie.AbortDownloadException, requests.RequestException,
                KeyError, IndexError, TypeError) as exc:  # fmt: skip
            result.complete = False
            result.notes.append(f"#{tag}: stopped by {type(exc).__name__}: {exc}; "
                                "run the same command again to resume")  # fmt: skip
        finally:
            bar.close()
    for note in result.notes:
        logger.warning(note)
    return result


def _collect_tag(
    loader: instaloader.Instaloader, params: InstagramSourceParams, tag: str,
    window: tuple[datetime | None, datetime | None], *, cache: Path, salt: str,
    seen: set[tuple[str, str]], result: Collection, bar: Any,
) -> None:  # fmt: skip
    """Walk one hashtag's listing (resumably) until its target is reached or the listing ends."""
    since, until = window
    hashtag = instaloader.Hashtag.from_name(loader.context, tag)
    posts = hashtag.get_top_posts() if params.order == "top" else hashtag.get_posts_resumable()

    def resume_path(magic: str) -> str:
        return str(cache / "resume" / f"{tag}_{magic}.json")

    reached = False
    with resumable_iteration(loader.context, posts, load=_load_frozen, save=_save_frozen,
                             format_path=resume_path):  # fmt: skip
        for post in posts:
            if (tag, post.shortcode) in seen:
                continue  # resuming repeats the post that was in progress
            if params.skip_videos and post.is_video:
                result.videos_skipped += 1
                continue
            date = post.date_utc
            if until and date >= until:
                continue
            if since and date < since:
                if params.order == "recent":
                    return  # newest first: everything after this is older still
                continue
            if _fetch(loader, post, cache, result):
                append_jsonl(cache / COLLECTED_FILE, _record(post, tag, salt, _media(post)))
                seen.add((tag, post.shortcode))
                result.per_tag[tag] += 1
                bar.update(1)
                if result.per_tag[tag] >= params.posts_per_hashtag:
                    reached = True  # stop before pulling another page
                    break
    if reached and isinstance(posts, NodeIterator):
        # Saved after the `with`, which deletes the file it resumed from on a normal exit: a
        # larger posts_per_hashtag later continues from here instead of from the first page.
        _save_frozen(posts.freeze(), resume_path(posts.magic))


def _media(post: instaloader.Post) -> str:
    return f"media/{post.shortcode}.jpg"


def _image_url(post: instaloader.Post) -> str:
    """The listing's image URL; carousels from the `top` listing carry it on their first slide."""
    try:
        return post.url
    except KeyError:
        return next(post.get_sidecar_nodes(0, 0)).display_url


def _fetch(loader: instaloader.Instaloader, post: instaloader.Post, cache: Path,
           result: Collection) -> bool:  # fmt: skip
    """Download the post's image unless an earlier run did; a failure is logged and skipped."""
    target = cache / _media(post)
    if target.is_file():
        return True
    try:
        data = loader.context.get_raw(_image_url(post)).content
    except (ie.InstaloaderException, requests.RequestException, KeyError, StopIteration) as exc:
        result.failed += 1
        logger.warning("skipping post %s: image download failed: %s", post.shortcode, exc)
        return False
    atomic_write_bytes(target, data)
    result.downloaded += 1
    return True


def collected_items(cache: Path, params: InstagramSourceParams) -> Iterator[SourceItem]:
    """The collected posts as SourceItems, hashtag by hashtag, at most posts_per_hashtag each."""
    rows = read_jsonl(cache / COLLECTED_FILE)
    tags: Sequence[str] = list(dict.fromkeys(normalize_hashtag(t) for t in params.hashtags))
    for tag in tags:
        for row in [r for r in rows if r["label"] == tag][: params.posts_per_hashtag]:
            path = cache / row["media"]
            yield SourceItem(
                id=row["shortcode"], label=tag, data=path.read_bytes() if path.is_file() else b"",
                origin=str(path), caption=row["caption"], hashtags=hashtags_in(row["caption"]),
                likes=row["likes"], comments=row["comments"], date=row["date"], owner=row["owner"],
            )  # fmt: skip


def owner_salt(params: InstagramSourceParams) -> str:
    """The salt for owner hashes, from the environment variable the params name.

    Raises:
        ValueError: the variable is unset or empty.
    """
    salt = os.environ.get(params.owner_salt_env, "")
    if not salt:
        raise TaglensError(
            f"set {params.owner_salt_env} to a secret random string (for example the output of "
            "`python -c 'import secrets; print(secrets.token_hex(16))'`) and keep it: owner ids "
            "are stored only as hashes salted with it (scrape.instagram.owner_salt_env)"
        )
    return salt
