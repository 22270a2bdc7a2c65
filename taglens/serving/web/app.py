"""The FastAPI app behind the web page: `POST /predict`, `GET /health`, `GET /metrics`, the page.

The model is handed in already loaded (once, at start) and held in a `ModelSlot`; when the app
follows an alias (`models:/NAME@champion`), a new version is loaded beside it and swapped in
while the page answers (`model_slot`). An upload is decoded in a bounded pool of worker
threads, then waits a few milliseconds for other uploads and goes through the model in one
batch with them (`batching`); the event loop only moves bytes, so the page and `/health` answer
at once however busy the model is. The middleware in `taglens.serving.web.guards` bounds the
work in progress (503 with Retry-After beyond it), checks Host and Origin, and sets the security
headers on every response; around it, every request gets an id and an access-log line
(`request_log`) and is counted in the Prometheus metrics (`metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Annotated, Any

import anyio
import numpy as np
from fastapi import FastAPI, File, HTTPException, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from taglens.data.images import NormalizedImage
from taglens.params import IngestParams, ServeParams
from taglens.serving.model_ref import ModelRef
from taglens.serving.web.batching import Overloaded
from taglens.serving.web.guards import (
    API_CSP,
    Admission,
    BodyLimit,
    BrowserGuard,
    SecurityHeaders,
    overloaded_response,
)
from taglens.serving.web.metrics import CONTENT_TYPE, RequestMetrics, WebMetrics, note_rejection
from taglens.serving.web.model_slot import (
    ChampionFollower,
    ModelSlot,
    ModelSource,
    Predictor,
    ServedModel,
)
from taglens.serving.web.request_log import REQUEST_ID_HEADER, RequestLog, request_id_of
from taglens.serving.web.schemas import ERROR_RESPONSES, Health, Prediction
from taglens.serving.web.upload import (
    SUPPORTED_TEXT,
    UploadError,
    prepare_image,
    read_limited,
    too_large_message,
)

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
# Multipart framing (boundary, part headers) around the file; the file itself is checked exactly.
MULTIPART_SLACK_BYTES = 64 * 1024
# The page loads nothing from elsewhere; blob: is the preview of the chosen photo.
PAGE_CSP = (
    "default-src 'self'; img-src 'self' blob: data:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; object-src 'none'; base-uri 'none'; frame-ancestors 'none'"
)


def create_app(
    predictor: Predictor,
    model_label: ModelRef | Mapping[str, Any],
    max_upload_bytes: int,
    *,
    ingest: IngestParams,
    serve: ServeParams,
    follow: ModelSource | None = None,
) -> FastAPI:
    """Build the web app around an already loaded model.

    Args:
        predictor: the loaded model (`decode` and `predict_pixels`, as HashtagPredictor has).
        model_label: the model's registered name and version, reported with every answer.
        max_upload_bytes: the largest photo accepted (`serve.max_upload_mb`), in bytes.
        ingest: the ingest params: uploads are validated and normalized exactly like the
            training images (`ingest.max_pixels` is the decompression-bomb limit).
        serve: batching, admission, timeouts, the allowed host names, and how often a followed
            alias is polled (`serve.follow_seconds`; 0 never polls).
        follow: the alias the loaded model came from, when it should be followed: every
            `serve.follow_seconds` a new version it names replaces the model (`model_slot`).
            None serves `predictor` until the app stops.
    """
    if max_upload_bytes <= 0:
        raise ValueError(f"max_upload_bytes must be positive, got {max_upload_bytes}")
    metrics = WebMetrics()
    slot = ModelSlot(predictor, ModelRef.of(model_label), serve, metrics)
    follower = None
    if follow is not None and serve.follow_seconds > 0:
        follower = ChampionFollower(follow, slot, serve.follow_seconds, metrics)
    # Decoding is CPU work like the forward pass: the limiter is taken before a worker thread
    # is, so a flood of uploads queues here (bounded by Admission) instead of in threads.
    decode_limiter = anyio.CapacityLimiter(serve.decode_threads)
    page = (STATIC_DIR / "index.html").read_bytes()  # served from memory: never waits on a thread

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        polling = asyncio.create_task(follower.run()) if follower is not None else None
        try:
            yield
        finally:
            if polling is not None:
                polling.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await polling
            slot.close()

    app = FastAPIOffline(
        title="taglens",
        summary="Suggest Instagram hashtags for a photo.",
        version="1",
        description="Upload a photo to `POST /predict`; the answer ranks hashtags for it.",
        lifespan=lifespan,
    )
    # Added innermost first: a request meets RequestLog, RequestMetrics, SecurityHeaders,
    # BrowserGuard, Admission, BodyLimit.
    app.add_middleware(
        BodyLimit,
        max_body_bytes=max_upload_bytes + MULTIPART_SLACK_BYTES,
        message=too_large_message(max_upload_bytes),
        timeout_s=serve.upload_timeout_s,
    )
    app.add_middleware(
        Admission, paths={"/predict"}, limit=serve.max_pending, retry_after_s=serve.retry_after_s
    )
    app.add_middleware(BrowserGuard, allowed_hosts=serve.allowed_hosts)
    app.add_middleware(SecurityHeaders)
    app.add_middleware(RequestMetrics, metrics=metrics)
    app.add_middleware(RequestLog)
    app.state.slot = slot
    app.state.follower = follower
    app.state.metrics = metrics

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError) -> JSONResponse:
        note_rejection(request.scope, exc.reason)
        logger.info("refused upload (%d): %s", exc.status_code, exc.detail)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        note_rejection(request.scope, "busy")
        return overloaded_response(serve.max_pending, serve.retry_after_s)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        note_rejection(request.scope, "no_file_field")
        detail = "send the photo as multipart/form-data in a form field named 'file'"
        return JSONResponse({"detail": detail, "errors": _plain(exc.errors())}, status_code=422)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        # Starlette answers unhandled errors outside the middleware: set the headers here too,
        # the request id included, so the client's complaint can be found in the log.
        request_id = request_id_of(request.scope)
        logger.error(
            "unhandled error on %s (request %s)",
            request.url.path,
            request_id,
            exc_info=exc,
            extra={"request_id": request_id},
        )
        headers = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": API_CSP}
        if request_id is not None:
            headers[REQUEST_ID_HEADER] = request_id
        return JSONResponse(
            {"detail": "internal error; see the server log"}, status_code=500, headers=headers
        )

    def decode(served: ServedModel, upload: UploadFile) -> tuple[NormalizedImage, np.ndarray]:
        data = read_limited(upload.file, max_upload_bytes)
        image = prepare_image(data, ingest)
        return image, served.predictor.decode([image.jpeg])[0]

    @app.post(
        "/predict",
        response_model=Prediction,
        responses=ERROR_RESPONSES,
        summary="Rank hashtags for one photo",
    )
    async def predict(
        file: Annotated[UploadFile, File(description=f"the photo: {SUPPORTED_TEXT}")],
    ) -> Response:
        """Classify the photo and rank hashtags for it."""
        # The model is taken once: this upload is decoded and scored by the same model (its
        # image size), and its answer names that model's version, even if a swap comes between.
        with slot.using() as served:
            try:
                served.decoding += 1
                try:
                    image, pixels = await anyio.to_thread.run_sync(
                        decode, served, file, limiter=decode_limiter
                    )
                finally:
                    served.decoding -= 1  # and joins the queue in this same step, without an await
                prediction, body = await served.batcher.submit(pixels)
            except (UploadError, Overloaded):
                raise
            except Exception:
                logger.exception("prediction failed for an upload")
                raise HTTPException(
                    status_code=500,
                    detail="the model could not score this photo; see the server log",
                ) from None
        logger.info(
            "predicted %s (%.3f) for a %dx%d photo",
            prediction.top_class,
            prediction.top_probability,
            image.width,
            image.height,
        )
        return Response(body, media_type="application/json")  # validated: a Prediction

    @app.get("/health", response_model=Health, summary="Is the server up, and with which model")
    async def health() -> Health:
        """Report that the server is up and which model answers now."""
        return Health(status="ok", model=slot.current.info, max_upload_bytes=max_upload_bytes)

    # Not in the OpenAPI schema: it documents the photo API; /metrics is for the scraper.
    @app.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        """The server's metrics in the Prometheus text format."""
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        headers = {"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"}
        return Response(page, media_type="text/html; charset=utf-8", headers=headers)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _plain(errors: Any) -> list[dict[str, Any]]:
    """Validation errors without their (possibly binary, unserializable) input values."""
    return [{key: error.get(key) for key in ("type", "loc", "msg")} for error in errors]
