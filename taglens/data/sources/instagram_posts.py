"""What the `instagram` source reads of a post, what it keeps, and how that is de-identified.

A post's shortcode names its page (instagram.com/p/SHORTCODE) and so its account: it is never
stored. The post id and the image's file name are a keyed hash of it (`post_id`, keyed with the
owner-hash salt), the owner is a keyed hash of the owner id (`owner_hash`), and @mentions are
removed from stored captions (`strip_mentions`). Every rule that decides what of a post reaches
the cache is here, so a privacy review reads one module; the collection that walks the listings
is in `instagram`.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from typing import Any

import instaloader
from instaloader import exceptions as ie

from taglens.errors import TaglensError
from taglens.params import InstagramSourceParams


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
