"""MLflow tracking server unreachable: train stops at once with a clear error, before any work."""

from __future__ import annotations

import http.server
import shutil
import threading
import time

import pytest
from reliability_kit import (
    PIPELINE_OVERRIDES,
    copy_repo,
    run_stage,
    stage_env,
    write_params,
)

from taglens.tracking import TrackingServerUnreachable, check_server, redact_uri
from tests.helpers.servers import free_port


@pytest.mark.slow
def test_train_with_an_unreachable_server_stops_before_training(pipeline, tmp_path):
    # Given featurized, cleaned data and a tracking URI at a closed local port
    repo = copy_repo(tmp_path / "repo", source=pipeline)
    write_params(repo, PIPELINE_OVERRIDES)
    shutil.copytree(pipeline / "data", repo / "data")
    uri = f"http://127.0.0.1:{free_port()}"

    # When train runs
    started = time.monotonic()
    result = run_stage(repo, "train", env=stage_env(repo, MLFLOW_TRACKING_URI=uri), timeout=300)
    elapsed = time.monotonic() - started

    # Then it fails within seconds (not minutes of retries) with a one-line, actionable error
    assert result.returncode == 2, result.stdout + result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert error == [
        f"error: the MLflow tracking server at {uri} does not answer ([Errno 111] Connection "
        "refused): start it, fix MLFLOW_TRACKING_URI, or unset it to log to the local mlruns/ "
        "store"
    ]
    assert "Traceback" not in result.stderr
    assert elapsed < 120, f"took {elapsed:.0f} s"
    # And no expensive work was done: no head was fitted, nothing was written
    assert "head fitted" not in result.stderr
    assert not (repo / "models").exists()
    assert not (repo / "reports" / "history.csv").exists()


class _Answer(http.server.BaseHTTPRequestHandler):
    status = 401

    def do_GET(self):  # noqa: N802 - the stdlib's name
        self.send_response(self.status)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_any_http_answer_counts_as_reachable():
    # Given a server on 127.0.0.1 that answers 401 to everything (a proxy wanting a login)
    server = http.server.HTTPServer(("127.0.0.1", 0), _Answer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        # Then the check passes, with or without credentials in the URI
        check_server(f"http://127.0.0.1:{server.server_port}")
        check_server(f"http://user:secret@127.0.0.1:{server.server_port}/mlflow")
    finally:
        server.shutdown()


def test_closed_port_fails_fast_and_the_message_hides_the_password():
    uri = f"http://alice:s3cret-token@127.0.0.1:{free_port()}"
    started = time.monotonic()
    with pytest.raises(TrackingServerUnreachable) as caught:
        check_server(uri, timeout=2)
    assert time.monotonic() - started < 5
    assert "s3cret-token" not in str(caught.value)
    assert "http://***@127.0.0.1:" in str(caught.value)


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("http://u:p@host:5000/x", "http://***@host:5000/x"),
        ("https://token@host", "https://***@host"),
        ("http://host:5000", "http://host:5000"),
        ("sqlite:////tmp/mlruns/mlflow.db", "sqlite:////tmp/mlruns/mlflow.db"),
    ],
)
def test_redact_uri(uri, shown):
    assert redact_uri(uri) == shown


def test_local_stores_are_not_pinged():
    check_server("sqlite:////nonexistent/mlflow.db")  # no exception, no network
    check_server("databricks")
