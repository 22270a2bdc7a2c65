"""The FastAPI app behind the web page: `POST /predict`, `GET /health`, the page and its assets.

The model is handed in already loaded (once, at start); each prediction runs in a worker thread
so the event loop keeps answering `/health` and the page while the model works.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Protocol

from fastapi import FastAPI, File, HTTPException, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from taglens.params import IngestParams
from taglens.web.schemas import ERROR_RESPONSES, Health, ModelInfo, Prediction
from taglens.web.upload import (
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
    """What the app needs from a model (taglens.predictor.HashtagPredictor provides it)."""

    classes: Any

    def predict_bytes(self, images: list[bytes]) -> list[dict[str, Any]]:
        """One prediction dict per encoded image."""


@dataclass(frozen=True)
class ModelLabel:
    """The name and version the app reports for its model."""

    name: str
    version: str

    @classmethod
    def of(cls, label: ModelLabel | Mapping[str, Any]) -> ModelLabel:
        """Accept a ModelLabel or a mapping with `name` and `version`."""
        if isinstance(label, ModelLabel):
            return label
        return cls(name=str(label["name"]), version=str(label["version"]))


class BodyLimitMiddleware:
    """Refuse request bodies over a byte limit while they arrive, before they are all buffered.

    A declared Content-Length over the limit is answered with 413 at once; a body without one
    (chunked) is counted as it streams and stopped the moment it passes the limit.
    """

    def __init__(self, app: Any, max_body_bytes: int, message: str) -> None:
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.message = message

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:  # noqa: D102
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            response = JSONResponse({"detail": self.message}, status_code=413)
            await response(scope, receive, send)
            return
        seen = 0

        async def counting_receive() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    # FastAPI re-raises HTTPExceptions from body parsing: this becomes the 413.
                    raise HTTPException(status_code=413, detail=self.message)
            return message

        await self.app(scope, counting_receive, send)


def create_app(
    predictor: Predictor,
    model_label: ModelLabel | Mapping[str, Any],
    max_upload_bytes: int,
    *,
    ingest: IngestParams,
) -> FastAPI:
    """Build the web app around an already loaded model.

    Args:
        predictor: the loaded model (`predict_bytes(list[bytes]) -> list[dict]`).
        model_label: the model's registered name and version, reported with every answer.
        max_upload_bytes: the largest photo accepted (`serve.max_upload_mb`), in bytes.
        ingest: the ingest params: uploads are validated and normalized exactly like the
            training images (`ingest.max_pixels` is the decompression-bomb limit).
    """
    if max_upload_bytes <= 0:
        raise ValueError(f"max_upload_bytes must be positive, got {max_upload_bytes}")
    label = ModelLabel.of(model_label)
    model_info = ModelInfo(name=label.name, version=label.version)
    too_large = too_large_message(max_upload_bytes)
    # One prediction at a time: Keras models are not guaranteed thread-safe, and on a few cores
    # parallel forward passes only compete for the same CPUs.
    predict_lock = threading.Lock()

    app = FastAPIOffline(
        title="taglens",
        summary="Suggest Instagram hashtags for a photo.",
        version="1",
        description="Upload a photo to `POST /predict`; the answer ranks hashtags for it.",
    )
    app.add_middleware(
        BodyLimitMiddleware,
        max_body_bytes=max_upload_bytes + MULTIPART_SLACK_BYTES,
        message=too_large,
    )
    app.state.model_label = label

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError) -> JSONResponse:
        logger.info("refused upload (%d): %s", exc.status_code, exc.detail)
        return JSONResponse({"detail": exc.detail}, status_code=exc.status_code)

    @app.exception_handler(RequestValidationError)
    async def _bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        detail = "send the photo as multipart/form-data in a form field named 'file'"
        return JSONResponse({"detail": detail, "errors": _plain(exc.errors())}, status_code=422)

    def predict_one(data: bytes) -> dict[str, Any]:
        with predict_lock:
            return predictor.predict_bytes([data])[0]

    @app.post(
        "/predict",
        response_model=Prediction,
        responses=ERROR_RESPONSES,
        summary="Rank hashtags for one photo",
    )
    async def predict(
        file: Annotated[UploadFile, File(description=f"the photo: {SUPPORTED_TEXT}")],
    ) -> Prediction:
        """Classify the photo and rank hashtags for it."""
        data = await run_in_threadpool(read_limited, file.file, max_upload_bytes)
        image = await run_in_threadpool(prepare_image, data, ingest)
        try:
            result = await run_in_threadpool(predict_one, image.jpeg)
        except Exception:
            logger.exception("prediction failed for an upload of %d bytes", len(data))
            raise HTTPException(
                status_code=500, detail="the model could not score this photo; see the server log"
            ) from None
        logger.info(
            "predicted %s (%.3f) for a %dx%d photo",
            result["top_class"], result["top_probability"], image.width, image.height,
        )  # fmt: skip
        return Prediction(model=model_info, **result)

    @app.get("/health", response_model=Health, summary="Is the server up, and with which model")
    async def health() -> Health:
        """Report that the server is up and which model it serves."""
        return Health(status="ok", model=model_info, max_upload_bytes=max_upload_bytes)

    @app.get("/", include_in_schema=False)
    async def index() -> FileResponse:
        return FileResponse(
            STATIC_DIR / "index.html",
            headers={"Content-Security-Policy": PAGE_CSP, "Cache-Control": "no-cache"},
        )

    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    return app


def _plain(errors: Any) -> list[dict[str, Any]]:
    """Validation errors without their (possibly binary, unserializable) input values."""
    return [{key: error.get(key) for key in ("type", "loc", "msg")} for error in errors]
