"""The tracking side restarted under a client: the MLflow server, then PostgreSQL beneath it.

These tests restart services, so they run on a PostgreSQL and an MLflow server of this module's
own (`own_services`); the session's services (`team_services`) only lend the Prefect server.

- **The MLflow server restarted between train and register.** While it is down, register stops
  within seconds with one line and registers nothing (taglens.tracking pings the
  server before any work). Once it is back on the same port and database, register registers
  the run, and a second run finds it registered: one version, one history event.
- **PostgreSQL restarted during a batch-scoring run.** Scoring itself reads no database (the
  champion is pinned and loaded before the first image); what the outage hits is the run's
  MLflow run at the end, through the MLflow server. Its SQLAlchemy pool pings each connection
  before use (`pool_pre_ping`), and the MLflow client retries a server error with backoff
  (`MLFLOW_HTTP_REQUEST_MAX_RETRIES`, `MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR`), so the run completes
  once PostgreSQL is back. Prefect's state is not in PostgreSQL (the Prefect server keeps its
  own database), so the flow run's state is untouched.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.helpers.evidence import clone_with_trained_run
from tests.helpers.params import write_tiny_params
from tests.helpers.paths import ROOT
from tests.helpers.stages import stage_env
from tests.team.test_prefect_workers import _inbox, _registered_champion

pytestmark = [pytest.mark.slow]

PHOTOS = 120


@pytest.fixture(scope="module")
def tracking(own_services):
    """This module's own PostgreSQL and MLflow server (the tests restart them)."""
    return own_services("postgres", "mlflow")


@pytest.fixture
def own_mlflow(tracking, monkeypatch) -> str:
    """This process logs to the module's MLflow server."""
    import mlflow

    url = tracking[1].mlflow_url
    fallback = mlflow.get_tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", url)
    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    yield url
    mlflow.set_tracking_uri(fallback)
    mlflow.set_registry_uri(fallback)


def _register(clone: Path, url: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "stages.register",
            "--params",
            "params.yaml",
            "--raw",
            "data/raw",
            "--clean",
            "data/clean",
        ],
        cwd=clone,
        env=stage_env(MLFLOW_TRACKING_URI=url),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_mlflow_server_restarted_between_train_and_register(
    tmp_path, tracking, own_mlflow, tiny_models_dir, tiny_params
):
    import mlflow

    from taglens.lifecycle.registry import Registry
    from taglens.tracking import configure_tracking

    # Given a train run logged to the server, with the evidence evaluate writes
    services, _ = tracking
    configure_tracking(tiny_params.base.experiment)
    name = "restart-mlflow"
    clone, run_id = clone_with_trained_run(
        tmp_path, "clone", name, tiny_models_dir, True, tiny_params.base.classes
    )

    # When the MLflow server is down for its restart as register starts
    services.stop(only=["mlflow"])
    started = time.monotonic()
    down = _register(clone, own_mlflow)
    seconds = time.monotonic() - started

    # Then register stops within seconds with one line, and nothing was registered
    assert down.returncode == 2, down.stdout + down.stderr
    lines = down.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the MLflow tracking server at"), lines
    assert "does not answer" in lines[0] and own_mlflow in lines[0]
    assert seconds < 60, seconds
    assert not (clone / "reports" / "register.json").exists()

    # When the server is back (same port, same database) and register runs, then runs again
    services.start(only=["mlflow"])
    first = _register(clone, own_mlflow)
    again = _register(clone, own_mlflow)

    # Then the run is registered once: one version, champion, one history event
    assert first.returncode == 0, first.stdout + first.stderr
    assert again.returncode == 0, again.stdout + again.stderr
    assert f"{name} version 1: champion" in first.stdout
    assert f"{name} version 1: champion" in again.stdout
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name = '{name}'")
    assert [(v.version, v.run_id) for v in versions] == [("1", run_id)]
    assert client.get_model_version_by_alias(name, "champion").version == "1"
    history = Registry(name, tmp_path / "unused.jsonl").history()
    assert [(row["event"], row["version"]) for row in history] == [("register", "1")]
    local_copy = (clone / "reports" / "promotions.jsonl").read_text().splitlines()
    assert len(local_copy) == 1


def _rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_postgres_restarted_during_batch_scoring(
    tmp_path, tracking, own_mlflow, team_services, tiny_models_dir, tiny_params
):
    import mlflow

    # Given a champion on the module's MLflow server and an inbox of photos
    services, _ = tracking
    name = "restart-postgres"
    params = write_tiny_params(
        tmp_path / "params.yaml", {"register.model_name": name, "predict.batch_size": 2}
    )
    _registered_champion(name, tiny_models_dir, tiny_params)
    photos = _inbox(tmp_path / "inbox", PHOTOS)
    output = tmp_path / "scores.csv"
    env = stage_env(MLFLOW_TRACKING_URI=own_mlflow, PREFECT_API_URL=team_services.prefect_api_url)

    # When a batch-scoring run is under way (rows are being written) and PostgreSQL stops,
    # stays down until the scoring is over, then starts again
    argv = [
        sys.executable,
        "-m",
        "flows.predict",
        "--input",
        str(tmp_path / "inbox"),
        "--output",
        str(output),
        "--params",
        str(params),
    ]
    job = subprocess.Popen(
        argv, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    deadline = time.monotonic() + 240
    while not _rows(output) and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    rows_at_stop = len(_rows(output))
    server_log = services.logs / "mlflow.log"
    log_at_stop = server_log.stat().st_size
    services.stop(only=["postgres"])
    while len(_rows(output)) < PHOTOS and job.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    time.sleep(3)  # the run reaches its MLflow run with the database still down
    services.start(only=["postgres"])
    log = job.communicate(timeout=300)[0]

    # Then the outage came mid-run, and the run completed once the database was back
    assert 0 < rows_at_stop < PHOTOS, rows_at_stop
    assert job.returncode == 0, log[-3000:]
    # And every photo has exactly one row, none lost or doubled, each scored
    rows = _rows(output)
    assert sorted(Path(row["path"]).name for row in rows) == sorted(p.name for p in photos)
    assert all(not row["error"] and row["model_name"] == name for row in rows)
    # And the outage was met: the server refused the run's MLflow run while the database was
    # down (503), and the client's retry created it once the database was back
    with open(server_log, "rb") as handle:
        handle.seek(log_at_stop)
        creates = [
            line
            for line in handle.read().decode(errors="replace").splitlines()
            if '"POST /api/2.0/mlflow/runs/create' in line
        ]
    assert creates and all(" 503 " in line for line in creates[:-1]), creates
    assert len(creates) >= 2 and " 200 " in creates[-1], creates
    # And the run's MLflow run was written through the restarted database, with every photo
    runs = mlflow.search_runs(
        experiment_names=[tiny_params.base.experiment],
        filter_string="tags.model_name = '" + name + "'",
        output_format="list",
    )
    assert [run.data.metrics["scored"] for run in runs] == [PHOTOS]
