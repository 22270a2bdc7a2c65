"""Request ids and the access log: JSON lines with the id, echoed, never an upload's name."""

from __future__ import annotations

import io
import json
import logging
import re

import pytest
from fastapi.testclient import TestClient
from web_helpers import RecordingPredictor

from taglens.serving.web import create_app
from taglens.serving.web.request_log import JSON_FIELDS, request_id_from, use_log_format

SECRET_NAME = "holiday-at-the-clinic.jpg"


@pytest.fixture
def logged(caplog):
    """taglens' records at INFO, through a handler of the root logger, in a chosen format."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(logging.Filter("taglens"))  # not the test client's own records
    root = logging.getLogger()
    caplog.set_level(logging.INFO)
    root.addHandler(handler)
    yield lambda log_format: use_log_format(log_format, [handler]) or stream
    root.removeHandler(handler)


def _client(params):
    app = create_app(
        RecordingPredictor(),
        {"name": "taglens", "version": "4"},
        200_000,
        ingest=params.ingest,
        serve=params.serve,
    )
    return TestClient(app)


def _post(client, data, headers=None):
    files = {"file": (SECRET_NAME, data, "image/jpeg")}
    return client.post("/predict", files=files, headers=headers or {})


def test_json_log_lines_carry_the_request_id_from_the_header(tiny_params, jpeg, logged):
    # given JSON logs
    stream = logged("json")
    with _client(tiny_params) as client:
        # when a client sends its own request id with a photo, and a bad upload without one
        answer = _post(client, jpeg, {"X-Request-ID": "order-42.retry_1"})
        refused = _post(client, b"not an image")
    # then the id is echoed, and the other request got a new one
    assert answer.status_code == 200 and refused.status_code == 415
    assert answer.headers["x-request-id"] == "order-42.retry_1"
    assert re.fullmatch(r"[0-9a-f]{32}", refused.headers["x-request-id"])
    # and every line is one JSON object with the same fields
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert lines and all(tuple(line)[: len(JSON_FIELDS)] == JSON_FIELDS for line in lines)
    access = [line for line in lines if line["logger"] == "taglens.serving.web.request_log"]
    assert [(a["method"], a["path"], a["status"]) for a in access] == [
        ("POST", "/predict", 200),
        ("POST", "/predict", 415),
    ]
    assert [a["request_id"] for a in access] == [
        "order-42.retry_1",
        refused.headers["x-request-id"],
    ]
    assert all(a["level"] == "INFO" and 0 < a["duration_ms"] < 30_000 for a in access)
    # the app's own records written during a request carry its id too
    predicted = [line for line in lines if line["message"].startswith("predicted ")]
    assert [line["request_id"] for line in predicted] == ["order-42.retry_1"]
    assert predicted[0]["path"] == "/predict" and predicted[0]["status"] is None
    # and neither the upload's name nor its bytes reach the log
    assert SECRET_NAME not in stream.getvalue()
    assert "not an image" not in stream.getvalue().replace("the file is not an image", "")


@pytest.mark.parametrize(
    "sent",
    ["x" * 65, "has space", "<script>", "id\u00e9", ""],
)
def test_an_unsafe_request_id_is_replaced(sent, tiny_params, logged):
    stream = logged("json")
    with _client(tiny_params) as client:
        response = client.get("/health", headers={"X-Request-ID": sent.encode("utf-8")})
    given = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", given) and given != sent
    [access] = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert access["request_id"] == given
    assert not sent or sent not in stream.getvalue().replace(given, "")


def test_text_logs_name_the_request_on_its_access_line(tiny_params, jpeg, logged):
    stream = logged("text")
    with _client(tiny_params) as client:
        refused = client.get("/health", headers={"host": "evil.example", "X-Request-ID": "abc"})
    assert refused.status_code == 400 and refused.headers["x-request-id"] == "abc"
    assert re.fullmatch(r"GET /health 400 \d+\.\d ms \(request abc\)\n", stream.getvalue())


def test_a_path_cannot_forge_a_log_line(tiny_params, logged):
    stream = logged("text")
    with _client(tiny_params) as client:
        assert client.get("/health%0A2026-01-01 INFO forged").status_code == 404
    assert stream.getvalue().count("\n") == 1
    assert "GET /health%0A2026-01-01%20INFO%20forged 404 " in stream.getvalue()


def test_an_unhandled_error_answers_500_with_the_request_id(tiny_params, jpeg, logged, monkeypatch):
    # given JSON logs and an error nothing handles (logging fails after the prediction), which
    # Starlette answers in its outermost middleware, outside the one that sets request ids
    stream = logged("json")

    def fail(*args, **kwargs):
        raise RuntimeError("disk full while logging")

    client = TestClient(_client(tiny_params).app, raise_server_exceptions=False)
    monkeypatch.setattr("taglens.serving.web.app.logger.info", fail)
    # when a client sends its own id, and another client none
    with client:
        named = _post(client, jpeg, {"X-Request-ID": "order-7"})
        unnamed = _post(client, jpeg)
    # then both are 500s that carry their request's id, as every other answer does
    assert named.status_code == unnamed.status_code == 500
    assert named.json() == {"detail": "internal error; see the server log"}
    assert named.headers["x-request-id"] == "order-7"
    assert re.fullmatch(r"[0-9a-f]{32}", unnamed.headers["x-request-id"])
    # and the error record and the access line carry the same id, so the complaint is found
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    errors = [line for line in lines if line["level"] == "ERROR"]
    assert [line["request_id"] for line in errors] == ["order-7", unnamed.headers["x-request-id"]]
    assert all("RuntimeError: disk full while logging" in line["exception"] for line in errors)
    access = [(line["request_id"], line["status"]) for line in lines if line["status"]]
    assert access == [("order-7", 500), (unnamed.headers["x-request-id"], 500)]


def test_request_ids_are_kept_only_when_safe():
    assert request_id_from(b"a:b-c_d.e") == "a:b-c_d.e"
    assert request_id_from(b"a" * 64) == "a" * 64
    assert request_id_from(None) != request_id_from(None)
    assert len(request_id_from(b"a b")) == 32


def test_an_unknown_log_format_is_refused():
    with pytest.raises(ValueError, match="log format must be one of text, json, got 'xml'"):
        use_log_format("xml", [])
