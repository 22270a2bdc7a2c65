"""The services module on loopback: every service answers, and `taglens services` sees them."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest

pytestmark = [pytest.mark.slow]


def test_every_service_answers_on_loopback(team_services, services_folder):
    import psycopg
    from distributed import Client

    # PostgreSQL holds MLflow's tables (the server migrated its schema into it)
    uri = team_services.postgres_uri.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(uri) as connection:
        tables = {
            row[0]
            for row in connection.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
            )
        }
    assert {"experiments", "runs", "registered_models", "model_versions"} <= tables
    # MLflow and Prefect answer on 127.0.0.1; the pool has the two workers
    for url in (f"{team_services.mlflow_url}/health", f"{team_services.prefect_api_url}/health"):
        assert url.startswith("http://127.0.0.1:")
        with urllib.request.urlopen(url, timeout=10) as answer:
            assert answer.status == 200
    with Client(team_services.dask_address, timeout=10) as client:
        workers = client.scheduler_info(n_workers=-1)["workers"]
    assert len(workers) == 2 and all(w.startswith("tcp://127.0.0.1:") for w in workers)
    state = json.loads((services_folder / "services.json").read_text())
    assert {k: len(v) for k, v in state["pids"].items()} == {
        "postgres": 1,
        "mlflow": 1,
        "prefect": 1,
        "prefect-worker": 2,
        "dask-scheduler": 1,
        "dask-worker": 2,
    }
    assert sorted(p.name for p in (services_folder / "logs").iterdir()) == sorted(
        f"{name}.log"
        for name in (
            "postgres",
            "mlflow",
            "prefect",
            "prefect-worker-1",
            "prefect-worker-2",
            "dask-scheduler",
            "dask-worker-1",
            "dask-worker-2",
        )
    )


def test_status_command_lists_every_service_running_and_the_exports(team_services, services_folder):
    result = subprocess.run(
        [sys.executable, "-m", "taglens.services", "status", "--folder", str(services_folder)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    for name in (
        "postgres",
        "mlflow",
        "prefect",
        "prefect-worker",
        "dask-scheduler",
        "dask-worker",
    ):
        assert any(line.split() == [name, "running"] for line in lines), result.stdout
    assert f"export MLFLOW_TRACKING_URI={team_services.mlflow_url}" in lines
    assert f"export PREFECT_API_URL={team_services.prefect_api_url}" in lines


def test_a_second_start_in_the_same_folder_is_refused(team_services, services_folder):
    from taglens.services import ServiceError, Services
    from tests.helpers.servers import team_params

    with pytest.raises(ServiceError, match="already run from"):
        Services(team_params(), services_folder).start()
