"""Request ids and the access log: one line per request, readable text or one JSON object.

Every request gets an id: the client's `X-Request-ID` when it is short and made of safe
characters (letters, digits, `.`, `_`, `:`, `-`; at most 64), else a new random one. The id is
echoed in the answer's `X-Request-ID` header and carried by every log record written while the
request is handled (a context variable, which anyio hands to the decode threads too), so a
client's complaint can be found in the log. With `serve.log_format: json` each record is one
JSON object per line: `time, level, logger, message, request_id, method, path, status,
duration_ms` (null where a record has no such value).

Only the method and the path are logged, never the query string, upload names or contents;
the path is logged percent-encoded, so a request cannot write a line break or a fake field into
a text log.
"""

from __future__ import annotations

import contextvars
import json
import logging
import re
import time
import urllib.parse
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

logger = logging.getLogger(__name__)

REQUEST_ID_HEADER = "X-Request-ID"
LOG_FORMATS = ("text", "json")
_HEADER_KEY = REQUEST_ID_HEADER.lower().encode()  # ASGI header names are lower-case bytes
# Where RequestLog leaves the id in the request's scope, for answers written outside it.
_SCOPE_KEY = "taglens.request_id"
_PATH_SAFE = "/:@!$&'()*+,;=-._~"  # RFC 3986 path characters: kept as they are
_SAFE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# The fields a JSON line always has, in order (the request's ones null outside a request).
JSON_FIELDS = (
    "time",
    "level",
    "logger",
    "message",
    "request_id",
    "method",
    "path",
    "status",
    "duration_ms",
)


@dataclass(frozen=True)
class RequestContext:
    """The request being handled: what each log record written meanwhile carries."""

    request_id: str
    method: str
    path: str


_current: contextvars.ContextVar[RequestContext | None] = contextvars.ContextVar(
    "taglens_request", default=None
)


def request_id_of(scope: dict) -> str | None:
    """The id `RequestLog` gave this request (None if it has not seen it).

    Starlette answers an unhandled error in its outermost middleware, outside `RequestLog`,
    after the request's context has ended: that answer takes its id from here.
    """
    return scope.get(_SCOPE_KEY)


def request_id_from(header: bytes | None) -> str:
    """The client's request id if it is safe to log and echo, else a new random one."""
    if header is not None:
        sent = header.decode("latin-1")
        if _SAFE_ID.fullmatch(sent):
            return sent
    return uuid.uuid4().hex


class RequestLog:
    """ASGI middleware: give each request its id, echo it, and log one access line at its end.

    The outermost middleware, so refusals by the guards are logged and carry the id too.
    """

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:  # noqa: D102
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        sent_id = dict(scope.get("headers") or []).get(_HEADER_KEY)
        path = urllib.parse.quote(scope["path"], safe=_PATH_SAFE)
        context = RequestContext(request_id_from(sent_id), scope["method"], path)
        token = _current.set(context)
        scope[_SCOPE_KEY] = context.request_id
        status = [500]

        async def identified_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = [
                    (key, value)
                    for key, value in message.get("headers", [])
                    if key.lower() != _HEADER_KEY
                ]
                headers.append((_HEADER_KEY, context.request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, identified_send)
        finally:
            duration_ms = round((time.perf_counter() - start) * 1000, 3)
            logger.info(
                "%s %s %d %.1f ms (request %s)",
                context.method,
                context.path,
                status[0],
                duration_ms,
                context.request_id,
                extra={"status": status[0], "duration_ms": duration_ms},
            )
            _current.reset(token)


class RequestContextFilter(logging.Filter):
    """Attach the current request's id, method and path to every record (None outside one)."""

    def filter(self, record: logging.LogRecord) -> bool:  # noqa: D102
        context = _current.get()
        for name in ("request_id", "method", "path"):
            if not hasattr(record, name):
                setattr(record, name, getattr(context, name) if context else None)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per record, with `JSON_FIELDS` (and `exception` when there is one)."""

    def format(self, record: logging.LogRecord) -> str:  # noqa: D102
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in JSON_FIELDS[4:]:
            line[name] = getattr(record, name, None)
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


def use_log_format(log_format: str, handlers: Iterable[logging.Handler] | None = None) -> None:
    """Write records as `log_format` (`text` or `json`) through `handlers` (default: the root's).

    Both formats get the request context attached; `json` also replaces the formatter.

    Raises:
        ValueError: an unknown format.
    """
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    for handler in logging.getLogger().handlers if handlers is None else handlers:
        if not any(isinstance(known, RequestContextFilter) for known in handler.filters):
            handler.addFilter(RequestContextFilter())
        if log_format == "json":
            handler.setFormatter(JsonFormatter())
