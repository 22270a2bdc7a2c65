"""The serving comparison runs end to end: one tiny champion, both servers, the same answers."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from reliability_kit import ROOT

from tests.helpers.params import tiny_params_path

pytestmark = pytest.mark.slow

PHOTOS = 6


def test_taglens_and_mlflow_serve_the_champion_with_the_same_answers(tiny_models_dir, tmp_path):
    # Given a tiny model and the comparison at a few seconds per arm, on both servers
    out = tmp_path / "results"
    cmd = [
        sys.executable,
        "-m",
        "bench.serve_compare",
        "--models",
        str(tiny_models_dir),
        "--params",
        str(tiny_params_path()),
        "--servers",
        "taglens serve",
        "mlflow models serve",
        "--clients",
        "1",
        "4",
        "--duration",
        "3",
        "--repeats",
        "1",
        "--photos",
        str(PHOTOS),
        "--warmup",
        "1",
        "--no-costs",
        "--out",
        str(out),
        "--logs",
        str(tmp_path / "logs"),
    ]
    # When it registers the model as champion, serves it twice and batch-predicts the photos
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((out / "serve_compare.json").read_text())

    # Then both servers answered every request, at each client count
    assert set(result["servers"]) == {"taglens serve", "mlflow models serve"}
    for name, rows in result["servers"].items():
        assert set(rows) == {"1", "4"}, name
        for n, row in rows.items():
            assert row["requests"] >= 3 and row["errors"] == 0, (name, n, row)
            assert row["statuses"] == {"200": row["requests"]}, (name, n, row)
            assert row["server_cpu_ms_per_request"] > 0, (name, n, row)
            assert row["page"]["requests"] >= 1 and row["page"]["errors"] == 0, (name, n, row)
    # and every photo got one and the same top class and top hashtags from both
    assert result["answers"]["differing"] == []
    assert result["answers"]["photos"] == result["answers"]["same_answer"] == PHOTOS
    # and batch predict scored the same photos, giving the ceiling the ratios divide by
    assert result["ceiling"]["runs"] == 1 and result["ceiling"]["images_per_run"] == PHOTOS
    assert result["ceiling"]["img_s"] > 0
    assert set(result["ratios"]["4"]) == {"over_ceiling", "over mlflow models serve"}
    assert (out / "serve_compare.md").read_text().startswith("the model in ")
