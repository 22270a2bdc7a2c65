"""The logged-in Instaloader that the `instagram` source collects with.

Kept apart from the collection because it is the one place that touches the login: the session
comes only from an Instaloader session file (`instaloader --login USER` writes one) and no
password is ever read. The loader's rate controller refuses waits longer than the params allow,
so a rate-limited run stops (and later resumes) instead of sleeping for half an hour.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import instaloader

from taglens.errors import TaglensError

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
