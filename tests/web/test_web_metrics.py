"""`GET /metrics`: Prometheus counts of requests, latency, batch sizes, refusals and the model."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from web_helpers import RecordingPredictor, metric, metric_samples

from taglens.serving.web import create_app
from taglens.serving.web.metrics import REASONS, note_rejection, route_of

LIMIT = 200_000  # bytes

ON_TF = {"engine": "tensorflow", "precision": "fp32"}  # what a stand-in model runs on


def _app(params, version="7"):
    return create_app(
        RecordingPredictor(),
        {"name": "taglens", "version": version},
        LIMIT,
        ingest=params.ingest,
        serve=params.serve,
    )


def _post(client, data, name="photo.jpg"):
    return client.post("/predict", files={"file": (name, data, "application/octet-stream")})


def test_metrics_count_requests_latency_batches_rejections_and_the_model(tiny_params, jpeg):
    # given a served model
    with TestClient(_app(tiny_params)) as client:
        # when three photos are predicted, one upload is too large, one is no image, the
        # health is asked and a foreign Host is refused
        assert [_post(client, jpeg).status_code for _ in range(3)] == [200] * 3
        assert _post(client, b"x" * (LIMIT + 1)).status_code == 413
        assert _post(client, b"not an image").status_code == 415
        assert client.get("/health").status_code == 200
        assert client.get("/health", headers={"host": "evil.example"}).status_code == 400
        response = client.get("/metrics")
    # then /metrics is Prometheus text
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=")
    samples = metric_samples(response.text)
    requests = "taglens_http_requests_total"
    assert metric(samples, requests, route="/predict", method="POST", status="200") == 3
    assert metric(samples, requests, route="/predict", method="POST", status="413") == 1
    assert metric(samples, requests, route="/predict", method="POST", status="415") == 1
    assert metric(samples, requests, route="/health", method="GET", status="200") == 1
    assert metric(samples, requests, route="/health", method="GET", status="400") == 1
    # the latency histogram saw each /predict request once, all within its last bucket
    latency = "taglens_http_request_duration_seconds"
    assert metric(samples, f"{latency}_count", route="/predict") == 5
    assert metric(samples, f"{latency}_bucket", route="/predict", le="+Inf") == 5
    assert 0 < metric(samples, f"{latency}_sum", route="/predict") < 30
    # one photo at a time: three forward passes of one photo each
    assert metric(samples, "taglens_batch_size_count") == 3
    assert metric(samples, "taglens_batch_size_sum") == 3
    assert metric(samples, "taglens_batch_size_bucket", le="1.0") == 3
    # every refusal by its reason
    assert metric(samples, "taglens_rejections_total", reason="too_large") == 1
    assert metric(samples, "taglens_rejections_total", reason="not_image") == 1
    assert metric(samples, "taglens_rejections_total", reason="foreign_host") == 1
    assert sum(v for (name, _), v in samples.items() if name == "taglens_rejections_total") == 3
    # and the model answering, with no swap yet
    assert metric(samples, "taglens_model_info", name="taglens", version="7", **ON_TF) == 1
    assert metric(samples, "taglens_model_swaps_total") == 0
    assert metric(samples, "taglens_model_load_failures_total") == 0


def test_metrics_pass_the_same_host_guard_as_health(tiny_params):
    with TestClient(_app(tiny_params)) as client:
        refused = client.get("/metrics", headers={"host": "evil.example"})
        assert refused.status_code == 400 and "serve.allowed_hosts" in refused.json()["detail"]
        assert refused.headers["x-content-type-options"] == "nosniff"
        assert client.post("/metrics", headers={"origin": "http://evil.example"}).status_code == 403


def test_each_app_has_its_own_registry(tiny_params, jpeg):
    # given two apps in one process
    first, second = _app(tiny_params, "1"), _app(tiny_params, "2")
    with TestClient(first) as one, TestClient(second) as two:
        # when only the first answers a photo
        assert _post(one, jpeg).status_code == 200
        seen_by_two = metric_samples(two.get("/metrics").text)
        seen_by_one = metric_samples(one.get("/metrics").text)
    # then only its metrics count it, and each reports its own model
    predicted = {"route": "/predict", "method": "POST", "status": "200"}
    assert metric(seen_by_one, "taglens_http_requests_total", **predicted) == 1
    assert metric(seen_by_two, "taglens_http_requests_total", **predicted) is None
    assert metric(seen_by_two, "taglens_model_info", name="taglens", version="2", **ON_TF) == 1
    assert metric(seen_by_two, "taglens_model_info", name="taglens", version="1", **ON_TF) is None


@pytest.mark.parametrize(
    ("path", "route"),
    [
        ("/predict", "/predict"),
        ("/static/app.js", "/static"),
        ("/../etc/passwd", "other"),
        ("/nothing", "other"),
        ("/", "/"),
    ],
)
def test_routes_are_a_fixed_set(path, route):
    assert route_of(path) == route


def test_an_unknown_rejection_reason_is_a_bug():
    scope: dict = {}
    note_rejection(scope, "busy")
    assert scope == {"taglens.rejection": "busy"} and "busy" in REASONS
    with pytest.raises(ValueError, match="unknown rejection reason 'nope'"):
        note_rejection(scope, "nope")
