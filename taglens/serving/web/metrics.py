"""The web page's Prometheus metrics, served at `GET /metrics` in the Prometheus text format.

Each app has its own `CollectorRegistry` (not prometheus_client's global one), so tests and
several apps in one process never share a counter or clash on a name. The metrics:

- `taglens_http_requests_total{route, method, status}`: requests answered;
- `taglens_http_request_duration_seconds{route}`: time from request to the end of the answer;
- `taglens_batch_size`: photos per forward pass of the dynamic batcher;
- `taglens_rejections_total{reason}`: uploads and requests refused, by reason (`REASONS`);
- `taglens_model_info{name, version, engine, precision}`: the model answering now and what it
  runs on (1 for that one label set; precision int8 on openvino-int8, else fp32);
- `taglens_model_swaps_total` and `taglens_model_load_failures_total`: following `@champion`.

Routes are the app's own paths; anything else counts as `other`, so a client probing random
URLs cannot grow the number of series without end.
"""

from __future__ import annotations

import time
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    Info,
    generate_latest,
)

from taglens.features.engines import precision_of
from taglens.serving.model_ref import ModelRef

CONTENT_TYPE = CONTENT_TYPE_LATEST
# The app's fixed paths; static files count as one route.
ROUTES = frozenset({"/", "/predict", "/health", "/metrics", "/docs", "/redoc", "/openapi.json"})
STATIC_ROUTE = "/static"
OTHER_ROUTE = "other"
# The scope key a guard or handler sets to say why it refused a request (`note_rejection`).
REJECTION_KEY = "taglens.rejection"
# Why a request is refused: the label values of taglens_rejections_total.
REASONS = {
    "foreign_host": "400: the Host header is not in serve.allowed_hosts",
    "cross_origin": "403: a POST from another origin",
    "upload_timeout": "408: the body still arriving after serve.upload_timeout_s",
    "too_large": "413: over serve.max_upload_mb",
    "empty": "400: an empty file",
    "not_image": "415: not an image",
    "unsupported": "415: an image that cannot become RGB",
    "too_many_pixels": "422: over ingest.max_pixels",
    "too_small": "422: a side under ingest.min_side",
    "animated": "422: animated, with ingest.animated: reject",
    "truncated": "422: a truncated image",
    "corrupt": "422: a damaged image",
    "unusable": "422: an image refused for another reason",
    "no_file_field": "422: no multipart field named 'file'",
    "busy": "503: serve.max_pending uploads already in progress",
}
# Seconds: a page or /health answers in about a millisecond, a batch of photos in a second or so.
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def note_rejection(scope: dict[str, Any], reason: str) -> None:
    """Record in the request's ASGI scope why it is refused (one of `REASONS`)."""
    if reason not in REASONS:
        raise ValueError(f"unknown rejection reason {reason!r}; known: {', '.join(REASONS)}")
    scope[REJECTION_KEY] = reason


def route_of(path: str) -> str:
    """The route label of a request path: an app path, `/static`, or `other`."""
    if path in ROUTES:
        return path
    if path.startswith(STATIC_ROUTE + "/"):
        return STATIC_ROUTE
    return OTHER_ROUTE


class WebMetrics:
    """One app's metrics, in a registry of their own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "taglens_http_requests",
            "HTTP requests answered, by route, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "taglens_http_request_duration_seconds",
            "Time from a request's arrival to the end of its answer, by route",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.batch_size = Histogram(
            "taglens_batch_size",
            "Photos per forward pass of the dynamic batcher",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.rejections = Counter(
            "taglens_rejections",
            "Requests refused, by reason",
            ["reason"],
            registry=self.registry,
        )
        self.model = Info(
            "taglens_model", "The model answering /predict now", registry=self.registry
        )
        self.swaps = Counter(
            "taglens_model_swaps",
            "Times a new version of the followed alias replaced the model answering",
            registry=self.registry,
        )
        self.load_failures = Counter(
            "taglens_model_load_failures",
            "Versions of the followed alias that failed to load (the old model kept serving)",
            registry=self.registry,
        )

    def serving(self, ref: ModelRef, predictor: Any) -> None:
        """Report `ref` as the model answering now, with the engine and precision it runs on."""
        engine = str(getattr(getattr(predictor, "model", None), "engine", "tensorflow"))
        self.model.info(
            {
                "name": ref.name,
                "version": ref.version,
                "engine": engine,
                "precision": precision_of(engine),
            }
        )

    def render(self) -> bytes:
        """Every metric in the Prometheus text format."""
        return generate_latest(self.registry)


class RequestMetrics:
    """ASGI middleware: count every HTTP request by route and status, time it, note refusals.

    Placed outside the guards, so requests they refuse are counted too.
    """

    def __init__(self, app: Any, metrics: WebMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:  # noqa: D102
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = [500]  # if the app raises before it answers, the server answers 500

        async def observed_send(message: dict) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        finally:
            route = route_of(scope["path"])
            self.metrics.requests.labels(route, scope["method"], str(status[0])).inc()
            self.metrics.latency.labels(route).observe(time.perf_counter() - start)
            reason = scope.get(REJECTION_KEY)
            if reason is not None:
                self.metrics.rejections.labels(reason).inc()
