"""Helpers for tests that start a real server in a subprocess: a free port, waiting for health."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on (at the time of the call)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _log_tail(log_path: Path | None) -> str:
    if log_path is None or not log_path.is_file():
        return "(no log)"
    return log_path.read_text(errors="replace")[-3000:]


def wait_until_healthy(
    process: subprocess.Popen,
    url: str,
    *,
    timeout: float,
    log_path: Path | None = None,
    what: str = "server",
) -> None:
    """Poll `url` until it answers 200; fail the test with the log if the server exits or stalls."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            pytest.fail(f"{what} exited with {process.returncode}:\n{_log_tail(log_path)}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            pytest.fail(f"{what} not healthy after {timeout:.0f} s:\n{_log_tail(log_path)}")
        time.sleep(0.3)


def team_params(base: Path | None = None):
    """params.yaml's `team:` section with free loopback ports (the tests' services).

    Args:
        base: the params file to start from (default the project's).
    """
    from taglens.params import load_params
    from tests.helpers.paths import ROOT

    team = load_params(base or ROOT / "params.yaml").team
    ports = {
        key: free_port() for key in ("postgres_port", "mlflow_port", "prefect_port", "dask_port")
    }
    return team.model_copy(update=ports)


def stop_process(proc: subprocess.Popen, timeout: float = 20) -> None:
    """Stop a process started with `start_new_session=True` and everything it started."""
    from taglens.services import stop_pid_group

    if proc.poll() is None:
        stop_pid_group(proc.pid, timeout)
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()


def stop_when_leaving(item: pytest.Item, nextitem: pytest.Item | None, fixture: str) -> None:
    """Tear the session fixture `fixture` down once this process's next test is in another folder.

    The servers of a folder's session fixture (the team's services, the flows' Prefect server)
    otherwise stay up, polling and holding memory, until the session ends, on a worker that has
    moved on to other folders: pytest-xdist hands each worker whole modules in collection order,
    so a folder's modules run one after another and a later test never needs them again.
    Should one do so anyway, the fixture starts afresh. Pytest has no public call for this;
    without the internals used here the fixture simply lasts the session, as before.
    """
    if nextitem is None or Path(nextitem.path).parent == Path(item.path).parent:
        return  # the session's own teardown stops it / the folder's tests go on
    manager = getattr(item.session, "_fixturemanager", None)
    request = getattr(item, "_request", None)
    if manager is None or request is None:
        return
    for definition in manager.getfixturedefs(fixture, item) or ():
        if definition.cached_result is not None:
            definition.finish(request)
