"""Load test of the web app on 127.0.0.1: no errors under concurrent uploads, no memory leak."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from reliability_kit import ROOT

from tests.helpers.params import tiny_params_path

pytestmark = pytest.mark.slow

DURATION = float(os.environ.get("TAGLENS_LOAD_SECONDS", "8"))
CONCURRENCY = 4
LEAK_REQUESTS = 1000
# RSS may grow a little as allocator arenas and TF caches settle; a leak of even 10 KB per
# request would add 10 MB over the 1,000 requests.
MAX_RSS_GROWTH_MB = 40.0


def test_concurrent_uploads_get_no_errors_and_memory_stays_flat(tiny_models_dir, tmp_path):
    # Given the app serving a tiny model on 127.0.0.1
    out = tmp_path / "load.json"
    cmd = [
        sys.executable,
        "-m",
        "bench.load_web",
        "--models",
        str(tiny_models_dir),
        "--params",
        str(tiny_params_path()),
        "--duration",
        str(DURATION),
        "--concurrency",
        str(CONCURRENCY),
        "--leak",
        str(LEAK_REQUESTS),
        "--json",
        str(out),
        "--log",
        str(tmp_path / "server.log"),
    ]
    # When clients upload photos concurrently for a fixed time, then 1,000 more
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:] + (tmp_path / "server.log").read_text()
    numbers = json.loads(out.read_text())
    load, leak = numbers["load"], numbers["leak"]

    # Then every request succeeded, at a bounded latency
    assert load["errors"] == 0 and load["statuses"] == {"200": load["requests"]}, load
    assert load["requests"] >= 20, load
    assert load["seconds"] <= DURATION + 60
    assert 0 < load["p50_ms"] <= load["p99_ms"] < 20_000, load
    # And 1,000 more requests leave the server's memory flat
    assert leak["requests"] == LEAK_REQUESTS and leak["errors"] == 0, leak
    assert leak["rss_growth_mb"] < MAX_RSS_GROWTH_MB, leak
    print(json.dumps(numbers))
