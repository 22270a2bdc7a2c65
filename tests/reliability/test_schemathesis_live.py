"""Schemathesis, randomized, against the web app served by uvicorn on 127.0.0.1.

Beyond "no 5xx", every answer must conform to the app's own OpenAPI schema: a documented status
code, the documented content type and headers, and a body that validates against the response
schema of that status. Requests that violate the schema must be refused with a 4xx.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import schemathesis
from hypothesis import HealthCheck, given, seed, settings
from reliability_kit import ROOT
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.helpers.params import tiny_params_path
from tests.helpers.servers import free_port, wait_until_healthy

pytestmark = pytest.mark.slow

MAX_EXAMPLES = int(os.environ.get("TAGLENS_SCHEMATHESIS_EXAMPLES", "40"))
# Random by default (a new seed each run, printed on failure); set it to replay a run.
SEED = os.environ.get("TAGLENS_SCHEMATHESIS_SEED")
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    negative_data_rejection,
]


@pytest.fixture
def live_server(tiny_models_dir, tmp_path):
    """`python -m taglens.serving.web` on a free port of 127.0.0.1, serving the tiny model."""
    port = free_port()
    log = tmp_path / "server.log"
    cmd = [
        sys.executable,
        "-m",
        "taglens.serving.web",
        "--params",
        str(tiny_params_path()),
        "--model-uri",
        str(tiny_models_dir),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with open(log, "w") as handle:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        wait_until_healthy(
            proc, f"http://127.0.0.1:{port}/health", timeout=180, log_path=log, what="the web app"
        )
        yield f"http://127.0.0.1:{port}", log
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_random_requests_get_answers_that_conform_to_the_schema(live_server):
    base_url, log = live_server
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {op.path for op in operations} >= {"/predict", "/health"}
    answered: dict[str, set[int]] = {}
    for operation in operations:

        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy())
        def check(case):
            response = case.call_and_validate(base_url=base_url, checks=CHECKS, timeout=60)
            answered.setdefault(f"{case.method} {case.path}", set()).add(response.status_code)

        if SEED is not None:
            check = seed(int(SEED))(check)
        check()
    assert answered["GET /health"] == {200}
    assert answered["POST /predict"] and max(answered["POST /predict"]) < 500
    assert "Traceback" not in log.read_text(errors="replace")
