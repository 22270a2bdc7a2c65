"""The `instagram` source: collect posts by hashtag with Instaloader into a resumable collection.

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

The logged-in loader is built by `instagram_loader`; what of a post is stored, de-identified,
is decided in `instagram_posts`.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator, Sequence
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
from taglens.data.sources.instagram_loader import HOW_TO_LOGIN, InstagramLoginError, RateLimitStop
from taglens.data.sources.instagram_posts import (
    image_url,
    media_path,
    owner_salt,
    post_id,
    post_row,
    row_id,
    strip_mentions,
)
from taglens.params import InstagramSourceParams
from taglens.progress import progress_bar

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
