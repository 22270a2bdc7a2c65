"""Which Instagram posts are collected (login, rate limits, resumable listing) and what is kept.

The logged-in Instaloader that the `instagram` source collects with.

Kept apart from the collection because it is the one place that touches the login: the session
comes only from an Instaloader session file (`instaloader --login USER` writes one) and no
password is ever read. The loader's rate controller refuses waits longer than the params allow,
so a rate-limited run stops (and later resumes) instead of sleeping for half an hour.

What the `instagram` source reads of a post, what it keeps, and how that is de-identified.

A post's shortcode names its page (instagram.com/p/SHORTCODE) and so its account: it is never
stored. The post id and the image's file name are a keyed hash of it (`post_id`, keyed with the
owner-hash salt), the owner is a keyed hash of the owner id (`owner_hash`), and @mentions are
removed from stored captions (`strip_mentions`). Every rule that decides what of a post reaches
the cache is here, so a privacy review reads one module; the collection that walks the listings
is in `instagram`.

The `instagram` source: collect posts by hashtag with Instaloader into a resumable collection.

Collected posts are appended one by one to `<cache>/collected.jsonl` and their images kept under
`<cache>/media/`, so a killed or rate-limited run resumes where it stopped: Instaloader's
resumable iteration restarts the listing at the saved page, posts already collected (by hashtag
and post id) are skipped, and finished images are never downloaded again.

Each run keeps collecting: per hashtag it takes the posts newer than the newest one already held
(at most `posts_per_hashtag` per run), so a weekly re-scrape adds the week's posts. The cut-off
is saved in `<cache>/runs/<tag>.json` when a hashtag's run starts and removed when it ends, so a
resumed run keeps the cut-off it started with. `keep_days` keeps a rolling window: posts older
than that many days before a hashtag's newest post are left out of the data (and their images
deleted from the cache).

The logged-in loader and what of a post is stored, de-identified, are further down this module.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import instaloader
import requests
from instaloader import exceptions as ie
from instaloader.nodeiterator import FrozenNodeIterator, resumable_iteration

from taglens.atomic import append_jsonl, atomic_write_bytes, atomic_write_text, read_jsonl
from taglens.data.posts import hashtags_in, naive_utc, normalize_hashtag
from taglens.data.sources.base import SourceItem
from taglens.errors import TaglensError
from taglens.params import InstagramSourceParams
from taglens.progress import progress_bar

SESSION_ENV = "TAGLENS_INSTAGRAM_SESSION"
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
    session_file: Path | None,
    max_wait: float,
    *,
    polite: bool = True,
    sleep: Callable[[float], None] = time.sleep,
) -> instaloader.Instaloader:
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
        sleep=polite,
        quiet=True,
        iphone_support=False,
        save_metadata=False,
        rate_controller=lambda context: BoundedRateController(context, max_wait, sleep),
    )
    username = session_file.name.removeprefix("session-")
    try:
        loader.load_session_from_file(username, str(session_file))
    except Exception as exc:  # a pickle of the wrong shape can raise almost anything
        raise InstagramLoginError(
            f"{session_file} is not an instaloader session file ({type(exc).__name__}): "
            f"{HOW_TO_LOGIN}"
        ) from None
    return loader


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


def owner_hash(owner_id: Any, salt: str) -> str:
    """De-identify an owner id: a keyed hash that cannot be reversed without the salt."""
    return hmac.new(salt.encode(), str(owner_id).encode(), hashlib.sha256).hexdigest()[:32]


def post_id(shortcode: str, salt: str) -> str:
    """The stored id of a post: a keyed hash of its shortcode (which would name its account)."""
    return hmac.new(salt.encode(), f"post:{shortcode}".encode(), hashlib.sha256).hexdigest()[:32]


def media_path(post: instaloader.Post, salt: str) -> str:
    """Where the post's image is cached, relative to the cache: named by the hashed post id."""
    return f"media/{post_id(post.shortcode, salt)}.jpg"


# An Instagram handle: letters, digits, `_` and inner `.`; not preceded by a word character, so
# e-mail addresses stay as they are.
_MENTION = re.compile(r"(?<![\w.@])@[A-Za-z0-9_](?:[A-Za-z0-9_.]*[A-Za-z0-9_])?")


def strip_mentions(caption: str) -> str:
    """A caption without @mentions (other people's accounts), spacing tidied where they were."""
    stripped = _MENTION.sub("", caption or "")
    return re.sub(r"[ \t]{2,}", " ", stripped).strip() if stripped != caption else stripped


def row_id(row: dict[str, Any], salt: str | None) -> str:
    """The post id of a collected row; rows from before ids were hashed hold the shortcode."""
    if "post_id" in row:
        return row["post_id"]
    if not salt:
        raise TaglensError(
            "the Instagram cache holds rows from an older taglens (raw shortcodes): "
            "set the owner-hash salt so they can be hashed, or delete the cache"
        )
    return post_id(row["shortcode"], salt)


def _comments(post: instaloader.Post) -> int | None:
    # Read the listing's own fields: `Post.comments` fetches the whole post when they are absent.
    node = post._node  # noqa: SLF001
    for key in ("edge_media_to_comment", "edge_media_to_parent_comment"):
        if isinstance(node.get(key), dict) and isinstance(node[key].get("count"), int):
            return node[key]["count"]
    return node["comments"] if isinstance(node.get("comments"), int) else None


def image_url(post: instaloader.Post) -> str:
    """The listing's image URL; carousels from the `top` listing carry it on their first slide."""
    try:
        return post.url
    except KeyError:
        return next(post.get_sidecar_nodes(0, 0)).display_url


def post_row(post: instaloader.Post, tag: str, salt: str, media: str) -> dict[str, Any]:
    """The de-identified row of a post as the collection stores it (one line of its JSONL)."""
    try:
        owner = owner_hash(post.owner_id, salt)
    except (ie.InstaloaderException, KeyError):
        owner = None
    try:
        likes = int(post.likes)
    except (ie.InstaloaderException, KeyError, TypeError):
        likes = None
    return {
        "post_id": post_id(post.shortcode, salt),
        "label": tag,
        "caption": strip_mentions(post.caption or ""),
        "likes": likes,
        "comments": _comments(post),
        "date": post.date_utc.isoformat(),
        "owner": owner,
        "media": media,
    }


logger = logging.getLogger(__name__)

COLLECTED_FILE = "collected.jsonl"
RUNS_DIR = "runs"  # per-hashtag cut-off of the run in progress (kept until the run ends)


def _save_frozen(frozen: FrozenNodeIterator, path: str) -> None:
    atomic_write_text(path, json.dumps(frozen._asdict()))


def _load_frozen(_context: Any, path: str) -> FrozenNodeIterator:
    return FrozenNodeIterator(**json.loads(Path(path).read_text(encoding="utf-8")))


@dataclass
class Collection:
    """What one collection run did."""

    per_tag: Counter = field(default_factory=Counter)  # posts held per hashtag, old and new
    new_per_tag: Counter = field(default_factory=Counter)  # posts this run added
    downloaded: int = 0
    failed: int = 0
    videos_skipped: int = 0
    complete: bool = True
    notes: list[str] = field(default_factory=list)


def _date(row: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(row["date"])


def _cutoff(cache: Path, tag: str, rows: list[dict[str, Any]]) -> datetime | None:
    """Collect only posts newer than this: the newest held when the hashtag's run started."""
    path = cache / RUNS_DIR / f"{tag}.json"
    if path.is_file():  # a run that was stopped: resume with the cut-off it started with
        saved = json.loads(path.read_text(encoding="utf-8"))["after"]
        return None if saved is None else datetime.fromisoformat(saved)
    held = [_date(row) for row in rows if row["label"] == tag]
    after = max(held) if held else None
    atomic_write_text(path, json.dumps({"after": after.isoformat() if after else None}))
    return after


def collect(
    loader: instaloader.Instaloader, params: InstagramSourceParams, *, cache: Path, salt: str
) -> Collection:
    """Collect, per hashtag, up to `posts_per_hashtag` posts newer than the newest already held.

    A stopped run (rate limit, lost connection, Ctrl-C) resumes at the saved page with the same
    cut-off; posts already held are skipped. With `keep_days`, images of posts that left the
    rolling window are deleted from the cache afterwards.

    Raises:
        InstagramLoginError: Instagram refused the session (expired or logged out).
    """
    not_iso = "scrape.instagram.{} must be an ISO date, got {!r}"
    window = (
        naive_utc(params.since, not_iso.format("since", params.since)),
        naive_utc(params.until, not_iso.format("until", params.until)),
    )
    rows = read_jsonl(cache / COLLECTED_FILE)
    seen = {(row["label"], row_id(row, salt)) for row in rows}
    result = Collection(per_tag=Counter(row["label"] for row in rows))
    for tag in dict.fromkeys(normalize_hashtag(t) for t in params.hashtags):
        after = _cutoff(cache, tag, rows)
        result.new_per_tag[tag] = sum(
            1 for row in rows if row["label"] == tag and (after is None or _date(row) > after)
        )  # posts an interrupted run of this cut-off already added count towards its cap
        bar = progress_bar(
            total=params.posts_per_hashtag,
            initial=result.new_per_tag[tag],
            desc=f"#{tag}",
            unit="post",
        )
        try:
            _collect_tag(
                loader,
                params,
                tag,
                window,
                after,
                cache=cache,
                salt=salt,
                seen=seen,
                result=result,
                bar=bar,
            )
            (cache / RUNS_DIR / f"{tag}.json").unlink(missing_ok=True)  # this run is done
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
            (cache / RUNS_DIR / f"{tag}.json").unlink(missing_ok=True)
            result.notes.append(f"#{tag}: Instagram has no such hashtag; skipped")
        # KeyError, IndexError, TypeError: Instagram changed the shape of a response.
        except (
            ie.InstaloaderException,
            ie.AbortDownloadException,
            requests.RequestException,
            KeyError,
            IndexError,
            TypeError,
        ) as exc:
            result.complete = False
            result.notes.append(
                f"#{tag}: stopped by {type(exc).__name__}: {exc}; "
                "run the same command again to resume"
            )
        finally:
            bar.close()
    if params.keep_days is not None:
        _prune_media(cache, params)
    for note in result.notes:
        logger.warning(note)
    return result


def _collect_tag(
    loader: instaloader.Instaloader,
    params: InstagramSourceParams,
    tag: str,
    window: tuple[datetime | None, datetime | None],
    after: datetime | None,
    *,
    cache: Path,
    salt: str,
    seen: set[tuple[str, str]],
    result: Collection,
    bar: Any,
) -> None:
    """Walk one hashtag's listing (resumably) until this run's cap, older posts, or its end."""
    if result.new_per_tag[tag] >= params.posts_per_hashtag:
        return  # an interrupted run had reached its cap: nothing to request
    since, until = window
    hashtag = instaloader.Hashtag.from_name(loader.context, tag)
    posts = hashtag.get_top_posts() if params.order == "top" else hashtag.get_posts_resumable()

    def resume_path(magic: str) -> str:
        return str(cache / "resume" / f"{tag}_{magic}.json")

    with resumable_iteration(
        loader.context, posts, load=_load_frozen, save=_save_frozen, format_path=resume_path
    ):
        for post in posts:
            date = post.date_utc
            if (since and date < since) or (after and date <= after):
                if params.order == "recent":
                    return  # newest first: everything after this is older still (or held)
                continue
            if (tag, post_id(post.shortcode, salt)) in seen:
                continue  # resuming repeats the post that was in progress
            if params.skip_videos and post.is_video:
                result.videos_skipped += 1
                continue
            if until and date >= until:
                continue
            media = media_path(post, salt)
            if _fetch(loader, post, cache / media, result):
                append_jsonl(cache / COLLECTED_FILE, post_row(post, tag, salt, media))
                seen.add((tag, post_id(post.shortcode, salt)))
                result.per_tag[tag] += 1
                result.new_per_tag[tag] += 1
                bar.update(1)
                if result.new_per_tag[tag] >= params.posts_per_hashtag:
                    return  # this run's cap: stop before pulling another page


def in_window(rows: list[dict[str, Any]], keep_days: int | None) -> list[dict[str, Any]]:
    """The rows within `keep_days` of the newest post of their hashtag (all when None)."""
    if keep_days is None:
        return rows
    newest: dict[str, datetime] = {}
    for row in rows:
        newest[row["label"]] = max(_date(row), newest.get(row["label"], _date(row)))
    return [row for row in rows if _date(row) >= newest[row["label"]] - timedelta(days=keep_days)]


def _prune_media(cache: Path, params: InstagramSourceParams) -> None:
    """Delete the images of posts that left the rolling window (their rows stay, as seen)."""
    rows = read_jsonl(cache / COLLECTED_FILE)
    keep = {row["media"] for row in in_window(rows, params.keep_days)}
    gone = [row["media"] for row in rows if row["media"] not in keep]
    for media in gone:
        (cache / media).unlink(missing_ok=True)
    if gone:
        logger.info(
            "instagram: %d posts older than keep_days=%d left the window",
            len(gone),
            params.keep_days,
        )


def _fetch(
    loader: instaloader.Instaloader, post: instaloader.Post, target: Path, result: Collection
) -> bool:
    """Download the post's image unless an earlier run did; a failure is logged and skipped."""
    if target.is_file():
        return True
    try:
        data = loader.context.get_raw(image_url(post)).content
    except (ie.InstaloaderException, requests.RequestException, KeyError, StopIteration) as exc:
        result.failed += 1
        logger.warning("skipping a post: image download failed: %s", exc)  # no shortcode in logs
        return False
    atomic_write_bytes(target, data)
    result.downloaded += 1
    return True


def collected_items(cache: Path, params: InstagramSourceParams) -> Iterator[SourceItem]:
    """The collected posts as SourceItems, hashtag by hashtag, within the rolling window."""
    rows = in_window(read_jsonl(cache / COLLECTED_FILE), params.keep_days)
    legacy = any("post_id" not in row for row in rows)
    salt = owner_salt(params) if legacy else None
    tags: Sequence[str] = list(dict.fromkeys(normalize_hashtag(t) for t in params.hashtags))
    for tag in tags:
        for row in [r for r in rows if r["label"] == tag]:
            path = cache / row["media"]
            caption = strip_mentions(row["caption"])
            yield SourceItem(
                id=row_id(row, salt),
                label=tag,
                data=path.read_bytes() if path.is_file() else b"",
                origin=str(path),
                caption=caption,
                hashtags=hashtags_in(caption),
                likes=row["likes"],
                comments=row["comments"],
                date=row["date"],
                owner=row["owner"],
            )
