"""ASGI middleware that guards the app against what a stranger or a hostile page can send.

- `SecurityHeaders`: `X-Content-Type-Options: nosniff` and a Content-Security-Policy on every
  response (errors and static files included); an HTML page without its own policy gets one
  that allows exactly its own inline scripts, by hash.
- `BrowserGuard`: the Host header must name this server (DNS rebinding: a page on another site
  that points its DNS name at 127.0.0.1 still sends its own name), and a POST from a browser
  must come from this server's own origin.
- `Admission`: at most `limit` uploads in the decode+predict pipeline; one more is answered 503
  with Retry-After at once, before its body is read.
- `BodyLimit`: bodies over a byte limit are refused while they arrive (413), and a body still
  arriving after a timeout is cut off (408).

Each refusal is noted in the request's scope (`metrics.note_rejection`), so the metrics count
it by reason.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
from collections.abc import Iterable
from typing import Any

from fastapi import HTTPException
from fastapi.responses import JSONResponse

from taglens.serving.web.metrics import note_rejection

# JSON answers and anything else that is not a page: nothing may load or frame it.
API_CSP = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
# Generated HTML (the offline API docs): its own files, its inline scripts by hash; Swagger UI
# and ReDoc style elements from script, which only 'unsafe-inline' styles allow.
_HTML_CSP = (
    "default-src 'self'; script-src 'self' {hashes}; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'"
)
_INLINE_SCRIPT = re.compile(rb"<script(?![^>]*\bsrc=)[^>]*>(.*?)</script>", re.S | re.I)
_SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}


def _send_json(status: int, detail: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse({"detail": detail}, status_code=status, headers=headers)


def html_csp(body: bytes) -> str:
    """A CSP for an HTML page that allows its own files and exactly its inline scripts."""
    hashes = [
        "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(body)
    ]
    return _HTML_CSP.format(hashes=" ".join(hashes)).replace("'self' ;", "'self';")


class SecurityHeaders:
    """Add nosniff and a CSP to every HTTP response that does not carry its own CSP."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:  # noqa: D102
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        held: dict | None = None  # the start of an HTML answer, held until its body is known
        body = bytearray()

        async def secured_send(message: dict) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() != b"x-content-type-options"
                ]
                headers.append((b"x-content-type-options", b"nosniff"))
                names = {k.lower() for k, _ in headers}
                message = {**message, "headers": headers}
                if b"content-security-policy" not in names:
                    kind = dict(headers).get(b"content-type", b"")
                    if kind.startswith(b"text/html"):
                        held = message
                        return
                    headers.append((b"content-security-policy", API_CSP.encode()))
                await send(message)
            elif message["type"] == "http.response.body" and held is not None:
                body.extend(message.get("body", b""))
                if message.get("more_body"):
                    return
                held["headers"].append((b"content-security-policy", html_csp(bytes(body)).encode()))
                await send(held)
                await send({"type": "http.response.body", "body": bytes(body)})
            else:
                await send(message)

        await self.app(scope, receive, secured_send)


def _host_name(host_header: str) -> str:
    """The name part of a Host header: `[::1]:8000` -> `::1`, `localhost:8000` -> `localhost`."""
    host = host_header.strip().lower()
    if host.startswith("["):
        return host[1 : host.find("]")] if "]" in host else host
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class BrowserGuard:
    """Refuse a Host that is not an allowed name (400) and a cross-origin POST (403)."""

    def __init__(self, app: Any, allowed_hosts: Iterable[str]) -> None:
        self.app = app
        self.allowed_hosts = {name.lower() for name in allowed_hosts}

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:  # noqa: D102
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.lower(): v for k, v in scope.get("headers") or []}
        host = headers.get(b"host", b"").decode("latin-1")
        if _host_name(host) not in self.allowed_hosts:
            note_rejection(scope, "foreign_host")
            response = _send_json(
                400,
                f"unknown Host {host[:100]!r}: this server answers only to "
                f"{', '.join(sorted(self.allowed_hosts))} (serve.allowed_hosts)",
            )
            await response(scope, receive, send)
            return
        origin = headers.get(b"origin")
        if origin is not None and scope["method"] not in _SAFE_METHODS:
            own = f"{scope.get('scheme', 'http')}://{host}".lower()
            sent = origin.decode("latin-1").strip()
            if sent.lower() != own:
                note_rejection(scope, "cross_origin")
                detail = f"cross-origin {scope['method']} refused: Origin {sent[:100]!r} != {own!r}"
                await _send_json(403, detail)(scope, receive, send)
                return
        await self.app(scope, receive, send)


class Admission:
    """At most `limit` requests to `paths` at once; one more gets 503 with Retry-After."""

    def __init__(self, app: Any, paths: Iterable[str], limit: int, retry_after_s: int) -> None:
        self.app = app
        self.paths = set(paths)
        self.limit = limit
        self.retry_after_s = retry_after_s
        self.active = 0
        self.refused = 0

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:  # noqa: D102
        if scope["type"] != "http" or scope["path"] not in self.paths:
            await self.app(scope, receive, send)
            return
        if self.active >= self.limit:
            self.refused += 1
            note_rejection(scope, "busy")
            await overloaded_response(self.limit, self.retry_after_s)(scope, receive, send)
            return
        self.active += 1
        try:
            await self.app(scope, receive, send)
        finally:
            self.active -= 1


def overloaded_response(limit: int, retry_after_s: int) -> JSONResponse:
    """The 503 for a full queue: how long to wait, and which knob sets the bound."""
    return _send_json(
        503,
        f"the server is busy ({limit} photos in progress, serve.max_pending): "
        f"retry in {retry_after_s} s",
        headers={"Retry-After": str(retry_after_s)},
    )


class BodyLimit:
    """Refuse request bodies over a byte limit while they arrive, before they are all buffered.

    A declared Content-Length over the limit is answered with 413 at once; a body without one
    (chunked) is counted as it streams and stopped the moment it passes the limit. A body still
    arriving `timeout_s` after the request started is cut off with 408 (a slow upload holds a
    slot of `Admission` and must not hold it forever).
    """

    def __init__(self, app: Any, max_body_bytes: int, message: str, timeout_s: float) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.message = message
        self.timeout_s = timeout_s

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:  # noqa: D102
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            note_rejection(scope, "too_large")
            await _send_json(413, self.message)(scope, receive, send)
            return
        seen = 0
        complete = False
        deadline = time.monotonic() + self.timeout_s

        async def counting_receive() -> dict:
            nonlocal seen, complete
            if complete:  # the body is in; later receives wait for a disconnect, untimed
                return await receive()
            try:
                message = await asyncio.wait_for(receive(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                note_rejection(scope, "upload_timeout")
                # FastAPI re-raises HTTPExceptions from body parsing: these become the answer.
                raise HTTPException(
                    408,
                    f"the upload took longer than {self.timeout_s:g} s "
                    "(serve.upload_timeout_s): send it again over a faster connection",
                ) from None
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    note_rejection(scope, "too_large")
                    raise HTTPException(status_code=413, detail=self.message)
                complete = not message.get("more_body", False)
            return message

        await self.app(scope, counting_receive, send)
