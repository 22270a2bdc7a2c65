"""The JSON API: predictions from the tiny model, each kind of bad upload, health, docs, page."""

from __future__ import annotations

import asyncio
import io
import re
import threading
import time

import httpx
import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from web_helpers import RecordingPredictor, photo_bytes, png_header_only, real_bomb_png

from taglens.data.images import normalize_image
from taglens.serving.web import create_app
from taglens.serving.web.app import MULTIPART_SLACK_BYTES, STATIC_DIR

LIMIT = 200_000  # bytes: 0.2 MB


@pytest.fixture
def stub():
    return RecordingPredictor()


def _app(predictor, params, label=None):
    """The web app over `predictor` with the tiny params' ingest and serve sections."""
    label = label or {"name": "m", "version": "1"}
    return create_app(predictor, label, LIMIT, ingest=params.ingest, serve=params.serve)


@pytest.fixture
def client(stub, tiny_params):
    app = _app(stub, tiny_params, {"name": "taglens", "version": "7"})
    with TestClient(app) as test_client:
        yield test_client


def _post(client, data: bytes, name: str = "photo.jpg", field: str = "file"):
    return client.post("/predict", files={field: (name, data, "application/octet-stream")})


@pytest.mark.slow
def test_predict_with_tiny_model_gives_ranked_hashtags(tiny_models_dir, tiny_params, jpeg):
    # given the tiny trained model, loaded once
    from taglens.model.predictor import HashtagPredictor

    predictor = HashtagPredictor.from_dir(tiny_models_dir)
    app = _app(predictor, tiny_params, {"name": "taglens", "version": "3"})
    with TestClient(app) as client:
        # when a photo is posted
        response = _post(client, jpeg)
        # then the answer is the model's own prediction on the normalized photo
        assert response.status_code == 200, response.text
        body = response.json()
        assert body["model"] == {"name": "taglens", "version": "3"}
        probs = body["probabilities"]
        assert list(probs) == list(tiny_params.base.classes)
        assert sum(probs.values()) == pytest.approx(1.0, abs=1e-4)
        assert body["top_class"] == max(probs, key=probs.get)
        assert body["top_probability"] == pytest.approx(max(probs.values()))
        scores = [tag["score"] for tag in body["hashtags"]]
        assert len(scores) == tiny_params.hashtags.top_k
        assert scores == sorted(scores, reverse=True)
        assert all(tag["posts"] >= tiny_params.hashtags.min_support for tag in body["hashtags"])
        expected = predictor.predict_bytes([normalize_image(jpeg, tiny_params.ingest).jpeg])[0]
        assert [t["tag"] for t in body["hashtags"]] == [t["tag"] for t in expected["hashtags"]]
        assert probs == pytest.approx(expected["probabilities"], abs=1e-6)
        # and a refused upload does not stop the next one
        assert _post(client, b"not an image").status_code == 415
        again = _post(client, photo_bytes(64, "PNG", seed=1))
        assert again.status_code == 200 and len(again.json()["hashtags"]) == len(scores)


def test_health_reports_model_and_limit(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.json() == {
        "status": "ok",
        "model": {"name": "taglens", "version": "7"},
        "max_upload_bytes": LIMIT,
    }


def test_valid_upload_is_normalized_before_the_model(client, stub):
    # a PNG with transparency becomes the RGB JPEG ingest would store
    buffer = io.BytesIO()
    Image.new("RGBA", (80, 60), (200, 10, 10, 128)).save(buffer, format="PNG")
    response = _post(client, buffer.getvalue(), "red.png")
    assert response.status_code == 200
    body = response.json()
    assert body["top_class"] == "dogs" and body["top_probability"] == pytest.approx(0.75)
    assert body["hashtags"][1] == {
        "tag": "puppy",
        "score": 0.4,
        "posts": 2,
        "engagement": None,
        "why": None,
    }  # the stub model says nothing of why
    assert body["hashtags"][0]["why"] == "class"
    assert stub.calls == [1]


# Each bad upload: (bytes, status, words the message must contain).
BAD_UPLOADS = {
    "not_an_image": (b"hello, I am a text file", 415, "the file is not an image: upload a photo"),
    "empty": (b"", 400, "the uploaded file is empty"),
    "truncated": (photo_bytes(200)[:1500], 422, "the image is truncated"),
    "too_small": (photo_bytes(10), 422, "the image is too small (10x10: shorter side < "
                  "ingest.min_side 32)"),
    "bomb_header": (png_header_only(100_000, 100_000), 422, "the image has too many pixels"),
    "bomb_real": (real_bomb_png(8000), 422, "8000x8000 = 64000000 pixels > ingest.max_pixels "
                  "40000000"),
    "over_limit_exact_check": (b"x" * (LIMIT + 1), 413, "larger than the upload limit of 0.2 MB "
                               "(serve.max_upload_mb)"),
    "over_limit_early_check": (b"x" * (LIMIT + MULTIPART_SLACK_BYTES + 1), 413,
                               "larger than the upload limit of 0.2 MB"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_UPLOADS))
def test_bad_upload_is_refused_and_server_keeps_serving(client, stub, case):
    data, status, words = BAD_UPLOADS[case]
    response = _post(client, data)
    assert response.status_code == status, response.text
    detail = response.json()["detail"]
    assert isinstance(detail, str) and words in detail
    assert stub.calls == []  # refused before the model
    # the server keeps serving
    assert client.get("/health").json()["status"] == "ok"
    assert _post(client, photo_bytes(48)).status_code == 200
    assert stub.calls == [1]


def test_missing_file_field_names_the_field(client, stub, jpeg):
    response = _post(client, jpeg, field="photo")
    assert response.status_code == 422
    assert response.json()["detail"] == (
        "send the photo as multipart/form-data in a form field named 'file'"
    )
    assert response.json()["errors"][0]["loc"] == ["body", "file"]
    assert client.post("/predict", json={"file": "x"}).status_code == 422
    assert stub.calls == []


def test_model_failure_is_a_clear_500_and_server_keeps_serving(tiny_params, jpeg):
    class Broken(RecordingPredictor):
        def predict_pixels(self, batch):
            raise RuntimeError("tensor shapes do not match")

    app = _app(Broken(), tiny_params)
    with TestClient(app, raise_server_exceptions=False) as client:
        response = _post(client, jpeg)
        assert response.status_code == 500
        assert response.json() == {
            "detail": "the model could not score this photo; see the server log"
        }
        assert client.get("/health").status_code == 200


async def _call_asgi(app, headers, chunks):
    """Drive the app directly with a body of `chunks` (an iterator); return status and count."""
    sent: list[dict] = []
    pulled = 0

    async def receive():
        nonlocal pulled
        try:
            body = next(chunks)
        except StopIteration:
            return {"type": "http.request", "body": b"", "more_body": False}
        pulled += 1
        return {"type": "http.request", "body": body, "more_body": True}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/predict",
        "raw_path": b"/predict",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1"), *headers],
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
    }
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body, pulled


def _endless(chunk: bytes, total: int = 50_000_000):
    """A multipart body of about `total` bytes, made lazily (as good as endless here)."""
    yield (
        b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"'
        b"\r\nContent-Type: image/jpeg\r\n\r\n"
    )
    for _ in range(total // len(chunk)):
        yield chunk
    yield b"\r\n--xx--\r\n"


def test_upload_limit_is_enforced_while_the_body_streams(stub, tiny_params):
    # given a chunked upload that never ends (no Content-Length)
    app = _app(stub, tiny_params)
    headers = [(b"content-type", b"multipart/form-data; boundary=xx")]
    chunk = b"\xff" * 16_384
    status, body, pulled = asyncio.run(_call_asgi(app, headers, _endless(chunk)))
    # then it is stopped just past the limit, not read to the end
    assert status == 413
    assert b"larger than the upload limit of 0.2 MB" in body
    assert pulled <= (LIMIT + MULTIPART_SLACK_BYTES) // len(chunk) + 2
    assert stub.calls == []


def test_declared_oversize_body_is_refused_without_reading_it(stub, tiny_params):
    app = _app(stub, tiny_params)
    headers = [
        (b"content-type", b"multipart/form-data; boundary=xx"),
        (b"content-length", b"50000000"),
    ]
    status, body, pulled = asyncio.run(_call_asgi(app, headers, _endless(b"\0" * 1024)))
    assert (status, pulled) == (413, 0)
    assert b"serve.max_upload_mb" in body


def test_event_loop_stays_free_while_the_model_works(tiny_params, jpeg):
    # given a model that takes a while
    started, release = threading.Event(), threading.Event()

    class Slow(RecordingPredictor):
        def predict_pixels(self, batch):
            started.set()
            release.wait(10)
            return super().predict_pixels(batch)

    app = _app(Slow(), tiny_params)

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            files = {"file": ("a.jpg", jpeg, "image/jpeg")}
            predicting = asyncio.create_task(client.post("/predict", files=files))
            for _ in range(200):  # until the model is busy with it
                if started.is_set():
                    break
                await asyncio.sleep(0.05)
            assert started.is_set()
            asked = time.perf_counter()
            health = await client.get("/health")  # answered while the prediction runs
            health_seconds = time.perf_counter() - asked
            assert not predicting.done()
            release.set()
            return health, health_seconds, await predicting

    health, health_seconds, prediction = asyncio.run(scenario())
    assert health.status_code == 200 and health_seconds < 5
    assert prediction.status_code == 200 and prediction.json()["top_class"] == "dogs"


def test_openapi_and_offline_docs(client):
    spec = client.get("/openapi.json").json()
    assert set(spec["paths"]) == {"/predict", "/health"}
    form = spec["paths"]["/predict"]["post"]["requestBody"]["content"]["multipart/form-data"]
    schema = spec["components"]["schemas"][form["schema"]["$ref"].rsplit("/", 1)[-1]]
    assert schema["required"] == ["file"]
    assert {"400", "413", "415", "422"} <= set(spec["paths"]["/predict"]["post"]["responses"])
    docs = client.get("/docs")
    assert docs.status_code == 200
    assert "/static-offline-docs/swagger-ui-bundle.js" in docs.text
    assert "cdn" not in docs.text.lower()
    assert client.get("/static-offline-docs/swagger-ui-bundle.js").status_code == 200


def test_page_and_assets_are_served_with_nothing_from_elsewhere(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert page.headers["content-security-policy"].startswith("default-src 'self'")
    assert 'id="predict"' in page.text and 'id="copy"' in page.text
    for asset, kind in (("app.css", "text/css"), ("app.js", "javascript")):
        response = client.get(f"/static/{asset}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
    for path in STATIC_DIR.iterdir():
        text = path.read_text(encoding="utf-8")
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}", text), path.name


def test_create_app_rejects_a_non_positive_limit(stub, tiny_params):
    with pytest.raises(ValueError, match="max_upload_bytes must be positive"):
        create_app(
            stub,
            {"name": "m", "version": "1"},
            0,
            ingest=tiny_params.ingest,
            serve=tiny_params.serve,
        )


def test_probabilities_of_numpy_types_become_plain_json(client):
    body = _post(client, photo_bytes(40)).json()
    assert body["probabilities"] == pytest.approx({"cats": 0.25, "dogs": 0.75})
    assert isinstance(np.float64(body["top_probability"]).item(), float)
