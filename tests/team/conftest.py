"""The team's services for real on loopback: PostgreSQL, MLflow, Prefect and workers, Dask.

One set per session (taglens.services, the same module `taglens services start` runs), on free
ports, stopped when the session ends even after failures; the teardown fails the session if a
process outlived the stop. Skipped with a reason when PostgreSQL is not installed
(`make team-deps` installs it).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from taglens.services import POSTGRES_BIN, Endpoints, Services
from tests.helpers.paths import ROOT
from tests.helpers.servers import stop_when_leaving, team_params


@pytest.fixture(scope="session")
def team_services(tmp_path_factory) -> Iterator[Endpoints]:
    """Start every team service once; yield where they answer."""
    if not (POSTGRES_BIN / "initdb").is_file():
        pytest.skip(f"PostgreSQL not installed at {POSTGRES_BIN}: run `make team-deps`")
    services = Services(team_params(), tmp_path_factory.mktemp("services"), code=ROOT)
    endpoints = services.start()
    try:
        yield endpoints
    finally:
        pids = [
            pid for group in (services.read_state() or endpoints).pids.values() for pid in group
        ]
        services.stop()
        import psutil

        alive = [
            pid
            for pid in pids
            if psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        ]
        assert not alive, f"services still running after stop: {alive}"


@pytest.fixture
def team_mlflow(team_services, monkeypatch) -> str:
    """This process logs to the services' MLflow server (as every client of the team does)."""
    import mlflow

    fallback = os.environ["MLFLOW_TRACKING_URI"]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", team_services.mlflow_url)
    mlflow.set_tracking_uri(team_services.mlflow_url)
    mlflow.set_registry_uri(team_services.mlflow_url)
    yield team_services.mlflow_url
    mlflow.set_tracking_uri(fallback)
    mlflow.set_registry_uri(fallback)


@pytest.fixture
def services_folder(team_services) -> Path:
    """Where the session's services keep their pids and logs."""
    return Path(team_services.folder)


@pytest.fixture(scope="module")
def own_services(tmp_path_factory) -> Iterator:
    """Start services of the module's own (some groups), for tests that kill or restart one.

    Call it with the groups (`own_services("postgres", "mlflow")`) and `team:` changes; returns
    the Services and their Endpoints. Everything started is stopped when the module ends, so
    the session's services (`team_services`) are never the ones a test hurts.
    """
    if not (POSTGRES_BIN / "initdb").is_file():
        pytest.skip(f"PostgreSQL not installed at {POSTGRES_BIN}: run `make team-deps`")
    started: list[Services] = []

    def start(*groups: str, **changes) -> tuple[Services, Endpoints]:
        params = team_params().model_copy(update=changes)
        services = Services(params, tmp_path_factory.mktemp("own-services"), code=ROOT)
        started.append(services)
        return services, services.start(groups)

    try:
        yield start
    finally:
        for services in reversed(started):
            services.stop()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """Stop the team_services fixture's servers when this worker leaves the folder's tests."""
    stop_when_leaving(item, nextitem, "team_services")
