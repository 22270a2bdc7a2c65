"""A short soak of the web page: good photos and hostile uploads against a real uvicorn server."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from reliability_kit import ROOT

from tests.helpers.params import tiny_params_path

pytestmark = pytest.mark.slow

DURATION = float(os.environ.get("TAGLENS_SOAK_SECONDS", "25"))
CLIENTS = 4


def test_a_short_soak_answers_every_upload_as_documented(tiny_models_dir, tmp_path):
    # Given the app serving a tiny model on 127.0.0.1, and the soak's mix of uploads
    out = tmp_path / "results"
    log = tmp_path / "server.log"
    options = {
        "--models": tiny_models_dir,
        "--params": tiny_params_path(),
        "--duration": DURATION,
        "--clients": CLIENTS,
        "--warmup": 5,
        "--window": 8,
        "--sample-every": 1,
        "--photos": 8,
        "--hostile-share": 0.3,
        "--nice": 0,
        "--out": out,
        "--stem": "soak",
        "--log": log,
    }
    cmd = [sys.executable, "-m", "bench.soak_web"]
    for name, value in options.items():
        cmd += [name, str(value)]
    # When the clients upload for the soak's duration, stopping by themselves
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=DURATION + 600)
    assert (out / "soak.json").is_file(), result.stderr[-3000:]
    soak = json.loads((out / "soak.json").read_text())
    verdict = soak["verdict"]

    # Then the soak passed: every good photo answered 200 with hashtags, every hostile upload
    # its documented 4xx, no unexpected 5xx, nothing left unanswered
    assert result.returncode == 0, result.stderr[-3000:] + log.read_text()[-3000:]
    assert verdict["passed"] and all(verdict["checks"].values()), verdict
    good = soak["uploads"]["good_photo"]
    assert good["sent"] >= 20 and good["as_expected"] == good["sent"], good
    assert set(good["statuses"]) == {"200"}
    hostile = {kind: tally for kind, tally in soak["uploads"].items() if kind != "good_photo"}
    assert sum(tally["sent"] for tally in hostile.values()) >= 10
    for kind, tally in hostile.items():
        assert tally["as_expected"] == tally["sent"], (kind, tally)
        assert set(tally["statuses"]) <= {str(tally["expected"])}, (kind, tally)
        assert 400 <= tally["expected"] < 500
    statuses = verdict["statuses"]
    assert not any(s.startswith("5") and s != "503" for s in statuses) and verdict["no_answer"] == 0
    # And the server's RSS was sampled throughout, and compared across the two windows
    samples = soak["rss"]["samples"]
    assert len(samples) >= DURATION / 2, samples
    assert all(mb > 50 for _, mb, _ in samples)
    assert verdict["rss_first_window_mb"] and verdict["rss_last_window_mb"]
    assert abs(verdict["rss_change"]) <= 0.10
    # And the report says so beside the per-kind table
    table = (out / "soak.md").read_text()
    assert "Verdict: **passed**" in table and "| bomb_png_real | 422 |" in table
    assert soak["seconds"] < DURATION + 120  # bounded: it stopped by itself
