"""A Prefect worker killed in the middle of a nightly scoring run: Crashed, then resumed.

The nightly batch-predict deployment runs on a pool served by one worker of this test's own
(taglens.services, on the session's Prefect server). While the run writes its rows, the worker
and the flow-run process it started are killed with SIGKILL, as when their machine is lost:
nothing is left to report the run's end. Its heartbeats stop, and the automation
`flows.deploy` creates marks it Crashed after `team.crashed_after_s` (here 45 s after 30 s
heartbeats), which frees the deployment's one concurrency slot. A new worker then takes the
next run, which skips every row the killed run wrote and scores only the rest.
"""

from __future__ import annotations

import csv
import time
import urllib.parse
from pathlib import Path

import psutil
import pytest

from tests.helpers.params import write_tiny_params
from tests.helpers.repocopy import copy_source_tree
from tests.team.test_prefect_workers import _inbox, _registered_champion, _wait_final

pytestmark = [pytest.mark.slow]

PHOTOS = 120
POOL = "faults"
HEARTBEAT_S = 30  # Prefect's minimum
CRASHED_AFTER_S = 45


def _whole_rows(path: Path) -> list[dict]:
    """The output's rows up to its last complete line (a killed writer may leave a torn one)."""
    if not path.is_file():
        return []
    text = path.read_text()
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return rows if text.endswith("\n") else rows[:-1]


def _kill_worker_mid_run(worker_pid: int, output: Path, timeout: float = 300) -> int:
    """SIGKILL the worker and its flow-run process once rows are written; rows kept."""
    deadline = time.monotonic() + timeout
    while not _whole_rows(output):
        if time.monotonic() > deadline:
            pytest.fail("the run wrote no row in time")
        time.sleep(0.02)
    worker = psutil.Process(worker_pid)
    for process in [worker, *worker.children(recursive=True)]:
        process.kill()
    psutil.wait_procs([worker], timeout=10)
    time.sleep(0.5)  # the flow-run process's last write, if any, is on disk
    return len(_whole_rows(output))


def test_a_prefect_worker_killed_mid_run_is_crashed_and_the_next_run_resumes(
    tmp_path, own_services, team_services, team_mlflow, tiny_models_dir, tiny_params
):
    import mlflow
    from prefect.automations import Automation
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deploy import CRASH_AUTOMATION, PREDICT, DeploySettings, deploy_all

    # Given the nightly deployment on a pool served by a worker of the test's own, with silent
    # runs marked Crashed, a champion on the team's server and an inbox of photos
    name = "worker-killed"
    checkout = copy_source_tree(tmp_path / "checkout")
    write_tiny_params(
        checkout / "params.yaml", {"register.model_name": name, "predict.batch_size": 2}
    )
    model_uri = _registered_champion(name, tiny_models_dir, tiny_params)
    photos = _inbox(tmp_path / "inbox", PHOTOS)
    output = tmp_path / "scores.csv"
    ports = {
        f"{key}_port": urllib.parse.urlsplit(url).port
        for key, url in (
            ("prefect", team_services.prefect_api_url),
            ("mlflow", team_services.mlflow_url),
        )
    }
    services, endpoints = own_services("prefect-worker", pool=POOL, prefect_workers=1, **ports)
    parameters = {"input": str(tmp_path / "inbox"), "output": str(output)}
    with temporary_settings(updates={PREFECT_API_URL: team_services.prefect_api_url}):
        deploy_all(
            DeploySettings(
                repo=checkout,
                pool=POOL,
                model_uri=model_uri,
                paused=True,
                heartbeat_s=HEARTBEAT_S,
                crashed_after_s=CRASHED_AFTER_S,
            )
        )
        with get_client(sync_client=True) as client:
            deployment = client.read_deployment_by_name(f"batch-predict/{PREDICT}")
        try:
            # When the worker and its flow-run process are killed while the run writes rows
            first = run_deployment(f"batch-predict/{PREDICT}", timeout=0, parameters=parameters)
            kept = _kill_worker_mid_run(endpoints.pids["prefect-worker"][0], output)
            killed = _wait_final([first.id], CRASHED_AFTER_S + 120)[first.id]
            # And a new worker takes the next run
            services.stop(only=["prefect-worker"])
            services.start(only=["prefect-worker"])
            second = run_deployment(f"batch-predict/{PREDICT}", timeout=0, parameters=parameters)
            resumed = _wait_final([second.id], 300)[second.id]
        finally:
            # other tests' deployment runs beat at Prefect's default 180 s: no 45 s rule for them
            Automation.read(name=CRASH_AUTOMATION).delete()

    # Then the deployment's runs beat every 30 s, whoever started the worker
    assert deployment.job_variables == {"env": {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": "30"}}
    # And the killed run is Crashed (by the missing heartbeats), killed mid-way
    assert killed.state.is_crashed(), f"{killed.state.type}: {killed.state.message}"
    assert "no heartbeat" in (killed.state.message or ""), killed.state.message
    assert 0 < kept < PHOTOS, kept
    # And the next run completed, skipping the rows kept and scoring only the rest
    assert resumed.state.is_completed(), f"{resumed.state.type}: {resumed.state.message}"
    runs = mlflow.search_runs(
        experiment_names=[tiny_params.base.experiment],
        filter_string=f"tags.model_name = '{name}'",
        output_format="list",
    )
    assert [(r.data.metrics["skipped"], r.data.metrics["scored"]) for r in runs] == [
        (kept, PHOTOS - kept)
    ]
    # And the output holds every photo exactly once, each scored
    rows = _whole_rows(output)
    assert sorted(Path(row["path"]).name for row in rows) == sorted(p.name for p in photos)
    assert all(not row["error"] and row["model_name"] == name for row in rows)
