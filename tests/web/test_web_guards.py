"""Hostile input for real: floods, foreign Host names, cross-origin posts, slow uploads, headers."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest
from fastapi.testclient import TestClient
from web_helpers import RecordingPredictor

from taglens.params import ParamsError, load_params
from taglens.serving.web import create_app
from taglens.serving.web.guards import API_CSP, html_csp

LIMIT = 200_000


def _app(predictor, params, **serve_changes):
    serve = params.serve.model_copy(update=serve_changes)
    return create_app(
        predictor, {"name": "m", "version": "1"}, LIMIT, ingest=params.ingest, serve=serve
    )


def _files(data: bytes) -> dict:
    return {"file": ("a.jpg", data, "image/jpeg")}


class Blocked(RecordingPredictor):
    """A model that holds every forward pass until released."""

    def __init__(self) -> None:
        super().__init__()
        self.busy, self.release = threading.Event(), threading.Event()

    def predict_pixels(self, batch):
        self.busy.set()
        self.release.wait(20)
        return super().predict_pixels(batch)


def test_a_flood_gets_503_with_retry_after_and_the_page_still_answers(tiny_params, jpeg):
    # given a server that admits 4 uploads at once and a model that is stuck
    model = Blocked()
    app = _app(
        model, tiny_params, max_pending=4, retry_after_s=7, batch_max_size=2, batch_max_wait_ms=0.0
    )

    async def scenario():
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            admitted = [
                asyncio.create_task(client.post("/predict", files=_files(jpeg))) for _ in range(4)
            ]
            while not model.busy.is_set():
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.1)
            # when 12 more arrive while those 4 are in progress
            flood = await asyncio.gather(
                *(client.post("/predict", files=_files(jpeg)) for _ in range(12))
            )
            page, health = await client.get("/"), await client.get("/health")
            model.release.set()
            return flood, page, health, await asyncio.gather(*admitted)

    flood, page, health, admitted = asyncio.run(scenario())
    app.state.slot.current.batcher.close()
    # then each of them is refused at once with 503 and when to retry
    assert [r.status_code for r in flood] == [503] * 12
    assert {r.headers["retry-after"] for r in flood} == {"7"}
    busy = "the server is busy (4 photos in progress, serve.max_pending)"
    assert busy in flood[0].json()["detail"]
    assert all(r.headers["x-content-type-options"] == "nosniff" for r in flood)
    # the page and health answered during the flood, and the admitted four were scored
    assert page.status_code == 200 and health.status_code == 200
    assert [r.status_code for r in admitted] == [200] * 4
    assert model.decoded == 4 and sum(model.calls) == 4  # the flood never reached the model


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8000", "127.0.0.2", "[::2]:80"])
def test_a_foreign_host_header_is_refused(tiny_params, jpeg, host):
    stub = RecordingPredictor()
    with TestClient(_app(stub, tiny_params), base_url="http://127.0.0.1") as client:
        page = client.get("/", headers={"host": host})
        upload = client.post("/predict", files=_files(jpeg), headers={"host": host})
        for response in (page, upload):
            assert response.status_code == 400
            assert "serve.allowed_hosts" in response.json()["detail"]
            assert response.headers["x-content-type-options"] == "nosniff"
    assert stub.calls == [] and stub.decoded == 0


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.1:8000", "localhost:8000", "LOCALHOST"])
def test_allowed_host_names_with_any_port_are_served(tiny_params, host):
    with TestClient(_app(RecordingPredictor(), tiny_params)) as client:
        assert client.get("/health", headers={"host": host}).status_code == 200


@pytest.mark.parametrize(
    "origin", ["http://evil.example", "null", "http://127.0.0.1:9999", "https://127.0.0.1:8000"]
)
def test_a_cross_origin_post_is_refused(tiny_params, jpeg, origin):
    stub = RecordingPredictor()
    with TestClient(_app(stub, tiny_params), base_url="http://127.0.0.1:8000") as client:
        response = client.post("/predict", files=_files(jpeg), headers={"origin": origin})
        assert response.status_code == 403
        assert "cross-origin POST refused" in response.json()["detail"]
        # a GET from elsewhere (a link) is fine; so are the page's own and Origin-less posts
        assert client.get("/health", headers={"origin": origin}).status_code == 200
        own = client.post(
            "/predict", files=_files(jpeg), headers={"origin": "http://127.0.0.1:8000"}
        )
        assert own.status_code == 200
        assert client.post("/predict", files=_files(jpeg)).status_code == 200
    assert stub.calls == [1, 1]


def test_an_upload_that_never_finishes_is_cut_off(tiny_params):
    # given a client that sends the start of a multipart body, then nothing
    stub = RecordingPredictor()
    app = _app(stub, tiny_params, upload_timeout_s=0.3)
    sent: list[dict] = []
    parts = [b'--xx\r\nContent-Disposition: form-data; name="file"; filename="a.jpg"\r\n\r\n']

    async def receive():
        if parts:
            return {"type": "http.request", "body": parts.pop(), "more_body": True}
        await asyncio.sleep(3600)

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
        "client": ("127.0.0.1", 1),
        "server": ("127.0.0.1", 80),
        "headers": [
            (b"host", b"127.0.0.1"),
            (b"content-type", b"multipart/form-data; boundary=xx"),
        ],
    }
    asyncio.run(asyncio.wait_for(app(scope, receive, send), 60))
    # then it is answered 408 after the timeout, and the model never saw it
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert start["status"] == 408
    assert b"serve.upload_timeout_s" in body
    assert stub.calls == []


def test_every_response_carries_nosniff_and_a_csp(tiny_params, jpeg, monkeypatch):
    class Crashing(RecordingPredictor):
        def predict_pixels(self, batch):
            return [{"unexpected": 1} for _ in batch]  # answers that are no Prediction

    answers = {}
    with TestClient(_app(RecordingPredictor(), tiny_params)) as client:
        answers["page"] = client.get("/")
        answers["health"] = client.get("/health")
        answers["prediction"] = client.post("/predict", files=_files(jpeg))
        answers["script"] = client.get("/static/app.js")
        answers["stylesheet"] = client.get("/static/app.css")
        answers["missing static file"] = client.get("/static/nothing.js")
        answers["missing route"] = client.get("/nothing")
        answers["wrong method"] = client.get("/predict")
        answers["not an image"] = client.post("/predict", files=_files(b"text"))
        answers["too large"] = client.post("/predict", files=_files(b"x" * (LIMIT + 1)))
        answers["no file field"] = client.post("/predict", data={"x": "1"})
        answers["docs"] = client.get("/docs")
        answers["schema"] = client.get("/openapi.json")
        answers["foreign host"] = client.get("/", headers={"host": "evil.example"})
        evil = {"origin": "http://evil.example"}
        answers["cross origin"] = client.post("/predict", files=_files(jpeg), headers=evil)
    with TestClient(_app(Crashing(), tiny_params), raise_server_exceptions=False) as client:
        answers["model crash"] = client.post("/predict", files=_files(jpeg))
    # an error nothing handles (here: logging fails after the prediction) is Starlette's 500
    with TestClient(
        _app(RecordingPredictor(), tiny_params), raise_server_exceptions=False
    ) as client:
        monkeypatch.setattr("taglens.serving.web.app.logger.info", _raise)
        answers["unhandled error"] = client.post("/predict", files=_files(jpeg))
    statuses = {name: r.status_code for name, r in answers.items()}
    assert statuses == {
        "page": 200,
        "health": 200,
        "prediction": 200,
        "script": 200,
        "stylesheet": 200,
        "missing static file": 404,
        "missing route": 404,
        "wrong method": 405,
        "not an image": 415,
        "too large": 413,
        "no file field": 422,
        "docs": 200,
        "schema": 200,
        "foreign host": 400,
        "cross origin": 403,
        "model crash": 500,
        "unhandled error": 500,
    }
    for name, response in answers.items():
        assert response.headers.get("x-content-type-options") == "nosniff", name
        assert response.headers.get("content-security-policy"), name
    assert answers["page"].headers["content-security-policy"].startswith("default-src 'self'")
    assert answers["health"].headers["content-security-policy"] == API_CSP
    assert answers["model crash"].json()["detail"].startswith("the model could not score")
    assert answers["unhandled error"].json() == {"detail": "internal error; see the server log"}
    # the offline docs page may run exactly its own inline script, nothing else inline
    docs_csp = answers["docs"].headers["content-security-policy"]
    assert docs_csp == html_csp(answers["docs"].content)
    assert "'sha256-" in docs_csp and "'unsafe-inline'" not in docs_csp.split("style-src")[0]


def _raise(*args, **kwargs):
    raise RuntimeError("disk full while logging")


def test_serve_params_keep_room_for_the_page(tmp_path):
    from tests.helpers.params import write_tiny_params

    bad = write_tiny_params(tmp_path / "params.yaml", {"serve.limit_concurrency": 10})
    with pytest.raises(ParamsError, match=r"limit_concurrency \(10\) must be above max_pending"):
        load_params(bad)
