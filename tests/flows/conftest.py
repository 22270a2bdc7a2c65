"""A real Prefect server (and process workers) on 127.0.0.1 for the flow tests.

The server starts once per session in its own process group with its own PREFECT_HOME, and is
stopped (the whole group) when the session ends, even after failures. Tests that use
`prefect_server` talk to it through PREFECT_API_URL, in-process and in subprocesses.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from taglens.toolenv import TOOL_ENV
from tests.helpers.servers import free_port, stop_process, stop_when_leaving, wait_until_healthy

PREFECT = str(Path(sys.executable).parent / "prefect")
SERVER_START_TIMEOUT = 150  # a fresh server database takes 20-60 s on a busy 2-core machine


def _quiet_env(home: Path) -> dict[str, str]:
    return {**os.environ, **TOOL_ENV, "PREFECT_HOME": str(home)}


def stop_group(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a process started with `start_new_session=True` and everything it started."""
    stop_process(proc, timeout)


def _drain_prefect_clients() -> None:
    """Send the logs and events still queued in this process before the server goes away."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for service in (APILogWorker, EventsWorker):
        try:
            service.drain_all(timeout=10)
        except Exception:  # noqa: BLE001, S110 - best effort at shutdown
            pass


@pytest.fixture
def stop_process_group() -> Callable[..., None]:
    """The stopper the server and worker fixtures use, for tests of the stopper itself."""
    return stop_group


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory) -> Iterator[str]:
    """Start `prefect server start` on a free loopback port; yield its API URL."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    home = tmp_path_factory.mktemp("prefect-server")
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = _quiet_env(home)
    env.pop("PREFECT_API_URL", None)
    log_path = home / "server.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [PREFECT, "server", "start", "--host", "127.0.0.1", "--port", str(port), "--no-ui"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_until_healthy(
            proc,
            f"{url}/health",
            timeout=SERVER_START_TIMEOUT,
            log_path=log_path,
            what="prefect server",
        )
        previous = os.environ.get("PREFECT_API_URL")
        os.environ["PREFECT_API_URL"] = url  # for subprocesses (workers, CLI)
        try:
            with temporary_settings(updates={PREFECT_API_URL: url}):
                yield url
                _drain_prefect_clients()
        finally:
            if previous is None:
                os.environ.pop("PREFECT_API_URL", None)
            else:
                os.environ["PREFECT_API_URL"] = previous
    finally:
        stop_group(proc)


@pytest.fixture(scope="module")
def start_worker(prefect_server, tmp_path_factory) -> Iterator[Callable[..., subprocess.Popen]]:
    """A factory: start a process worker on a pool; its workers stop when the module ends."""
    started: list[subprocess.Popen] = []

    def start(pool: str, env_updates: dict[str, str | None] | None = None) -> subprocess.Popen:
        home = tmp_path_factory.mktemp("prefect-worker")
        env = _quiet_env(home)
        env.update(
            {
                "PREFECT_API_URL": prefect_server,
                "PREFECT_WORKER_QUERY_SECONDS": "1",
                "PREFECT_WORKER_PREFETCH_SECONDS": "5",
            }
        )
        for key, value in (env_updates or {}).items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        with open(home / "worker.log", "wb") as log:
            proc = subprocess.Popen(
                [PREFECT, "worker", "start", "--pool", pool, "--type", "process"],
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        proc.log_path = home / "worker.log"  # type: ignore[attr-defined]
        started.append(proc)
        return proc

    try:
        yield start
    finally:
        for proc in started:
            stop_group(proc)


class PrefectApi:
    """Small read-back helpers over the Prefect client (logs arrive in batches: poll for them)."""

    def logs(self, flow_run_id, must_contain: str | None = None, timeout: float = 20) -> str:
        """All log messages of a flow run and its task runs, oldest first."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId

        deadline = time.monotonic() + timeout
        while True:
            with get_client(sync_client=True) as client:
                logs = client.read_logs(
                    LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])), limit=200
                )
                text = "\n".join(log.message for log in logs)
                if len(logs) == 200:  # page on: a run log can be longer than one page
                    offset = 200
                    while batch := client.read_logs(
                        LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                        limit=200,
                        offset=offset,
                    ):
                        text += "\n" + "\n".join(log.message for log in batch)
                        offset += len(batch)
            if must_contain is None or must_contain in text or time.monotonic() > deadline:
                return text
            time.sleep(0.5)

    def artifacts(self, flow_run_id) -> list:
        """The artifacts a flow run created."""
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

        with get_client(sync_client=True) as client:
            return client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
                )
            )


@pytest.fixture(scope="session")
def prefect_api(prefect_server) -> PrefectApi:
    """Read logs and artifacts of flow runs back from the session's Prefect server."""
    return PrefectApi()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    """Stop the prefect_server fixture's servers when this worker leaves the folder's tests."""
    stop_when_leaving(item, nextitem, "prefect_server")
