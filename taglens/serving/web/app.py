"""The FastAPI app behind the web page: `POST /predict`, `GET /health`, the page and its assets.

The model is handed in already loaded (once, at start). An upload is decoded in a bounded pool
of worker threads, then waits a few milliseconds for other uploads and goes through the model in
one batch with them (`batching`); the event loop only moves bytes, so the page and
`/health` answer at once however busy the model is. The middleware in `taglens.serving.web.guards`
bounds the work in progress (503 with Retry-After beyond it), checks Host and Origin, and sets
the security headers on every response.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Protocol

import anyio
import numpy as np
from fastapi import FastAPI, File, HTTPException, Request, Response, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from taglens.data.normalize import NormalizedImage
from taglens.params import IngestParams, ServeParams
from taglens.serving.model_ref import ModelRef
from taglens.serving.web.batching import MicroBatcher, Overloaded
from taglens.serving.web.guards import (
    API_CSP,
    Admission,
    BodyLimit,
    BrowserGuard,
    SecurityHeaders,
    overloaded_response,
)
from taglens.serving.web.schemas import ERROR_RESPONSES, Health, ModelInfo, Prediction
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


class Predictor(Protocol):
    """What the app needs from a model (taglens.serving.predictor.HashtagPredictor provides it)."""

    classes: Any

    def decode(self, images: list[bytes]) -> np.ndarray:
        """The model's float32 pixel batch (N, S, S, 3) for encoded images."""

    def predict_pixels(self, batch: np.ndarray) -> list[dict[str, Any]]:
        """One prediction dict per image of a pixel batch."""


def create_app(
    predictor: Predictor,
    model_label: ModelRef | Mapping[str, Any],
    max_upload_bytes: int,
    *,
    ingest: IngestParams,
    serve: ServeParams,
) -> FastAPI:
    """Build the web app around an already loaded model.

    Args:
        predictor: the loaded model (`decode` and `predict_pixels`, as HashtagPredictor has).
        model_label: the model's registered name and version, reported with every answer.
        max_upload_bytes: the largest photo accepted (`serve.max_upload_mb`), in bytes.
        ingest: the ingest params: uploads are validated and normalized exactly like the
            training images (`ingest.max_pixels` is the decompression-bomb limit).
        serve: batching, admission, timeouts and the allowed host names.
    """
    if max_upload_bytes <= 0:
        raise ValueError(f"max_upload_bytes must be positive, got {max_upload_bytes}")
    label = ModelRef.of(model_label)
    model_info = ModelInfo(name=label.name, version=label.version)

    def predict_batch(pixels: list[np.ndarray]) -> list[tuple[Prediction, bytes]]:
        # The answers are rendered to JSON here, in the model's thread: done in the event loop,
        # a batch of 32 answers would hold up the page and /health behind it.
        predictions = [Prediction(model=model_info, **result)
                       for result in predictor.predict_pixels(np.stack(pixels))]  # fmt: skip
        return [(prediction, prediction.model_dump_json().encode()) for prediction in predictions]

    decoding = [0]  # uploads being decoded: the ones a waiting batch may still get
    batcher = MicroBatcher(
        predict_batch,
        max_batch_size=serve.batch_max_size,
        max_wait_s=serve.batch_max_wait_ms / 1000,
        max_queue=serve.max_pending,
        upstream=lambda: decoding[0],
    )
    # Decoding is CPU work like the forward pass: the limiter is taken before a worker thread
    # is, so a flood of uploads queues here (bounded by Admission) instead of in threads.
    decode_limiter = anyio.CapacityLimiter(serve.decode_threads)
    page = (STATIC_DIR / "index.html").read_bytes()  # served from memory: never waits on a thread

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        batcher.close()

    app = FastAPIOffline(
        title="taglens",
        summary="Suggest Instagram hashtags for a photo.",
        version="1",
        description="Upload a photo to `POST /predict`; the answer ranks hashtags for it.",
        lifespan=lifespan,
    )
    # Added innermost first: a request meets SecurityHeaders, BrowserGuard, Admission, BodyLimit.
    app.add_middleware(
        BodyLimit, max_body_bytes=max_upload_bytes + MULTIPART_SLACK_BYTES,
        message=too_large_message(max_upload_bytes), timeout_s=serve.upload_timeout_s,
    )  # fmt: skip
    app.add_middleware(Admission, paths={"/predict"}, limit=serve.max_pending,
                       retry_after_s=serve.retry_after_s)  # fmt: skip
    app.add_middleware(BrowserGuard, allowed_hosts=serve.allowed_hosts)
    app.add_middleware(SecurityHeaders)
    app.state.model_label = label
    app.state.batcher = batcher

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError) -> JSONResponse:
        logger.info("refused upload (%d): %s", exc.status_code, exc.detail)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded) -> JSONResponse:
        return overloaded_response(serve.max_pending, serve.retry_after_s)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = "send the photo as multipart/form-data in a form field named 'file'"
        return JSONResponse({"detail": detail, "errors": _plain(exc.errors())}, status_code=422)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> JSONResponse:
        # Starlette answers unhandled errors outside the middleware: set the headers here too.
        logger.error("unhandled error on %s", request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal error; see the server log"}, status_code=500,
                            headers={"X-Content-Type-Options": "nosniff",
                                     "Content-Security-Policy": API_CSP})  # fmt: skip

    def decode(upload: UploadFile) -> tuple[NormalizedImage, np.ndarray]:
        data = read_limited(upload.file, max_upload_bytes)
        image = prepare_image(data, ingest)
        return image, predictor.decode([image.jpeg])[0]

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
        try:
            decoding[0] += 1
            try:
                image, pixels = await anyio.to_thread.run_sync(decode, file, limiter=decode_limiter)
            finally:
                decoding[0] -= 1  # and joins the queue in this same step, without an await
            prediction, body = await batcher.submit(pixels)
        except (UploadError, Overloaded):
            raise
        except Exception:
            logger.exception("prediction failed for an upload")
            raise HTTPException(
                status_code=500, detail="the model could not score this photo; see the server log"
            ) from None
        logger.info(
            "predicted %s (%.3f) for a %dx%d photo",
            prediction.top_class, prediction.top_probability, image.width, image.height,
        )  # fmt: skip
        return Response(body, media_type="application/json")  # validated: a Prediction

    @app.get("/health", response_model=Health, summary="Is the server up, and with which model")
    async def health() -> Health:
        """Report that the server is up and which model it serves."""
        return Health(status="ok", model=model_info, max_upload_bytes=max_upload_bytes)

    @app.get("/", include_in_schema=False)
    async def index() -> Response:
        headers = {"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"}
        return Response(page, media_type="text/html; charset=utf-8", headers=headers)

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _plain(errors: Any) -> list[dict[str, Any]]:
    """Validation errors without their (possibly binary, unserializable) input values."""
    return [{key: error.get(key) for key in ("type", "loc", "msg")} for error in errors]
