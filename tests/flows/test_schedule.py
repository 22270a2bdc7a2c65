"""`make schedule`: one process serves both deployments and runs them, no worker needed."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from flows.deploy import PREDICT, PREDICT_CRON, RETRAIN, RETRAIN_CRON
from tests.helpers.paths import ROOT
from tests.helpers.repocopy import copy_source_tree

pytestmark = pytest.mark.slow


def _forget(*names: str) -> None:
    """Delete deployments of these names: the server is shared with the deployment tests, and
    serving updates a deployment in place (keeping, for example, the work pool it had)."""
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        for name in names:
            try:
                client.delete_deployment(client.read_deployment_by_name(name).id)
            except ObjectNotFound:
                pass


def _deployment(name: str, deadline: float):
    from prefect.client.orchestration import get_client
    from prefect.exceptions import ObjectNotFound

    while True:
        try:
            with get_client(sync_client=True) as client:
                return client.read_deployment_by_name(name)
        except ObjectNotFound:
            assert time.monotonic() < deadline, f"{name} was never served"
            time.sleep(1)


def test_one_process_serves_both_schedules_and_runs_them(
    tmp_path, tiny_models_dir, prefect_server, stop_process_group, prefect_api
):
    # Given a checkout and an empty inbox, served by `python -m flows.schedule`
    repo = copy_source_tree(tmp_path / "repo")
    (repo / "inbox").mkdir()
    env = {
        **os.environ,
        "PREFECT_API_URL": prefect_server,
        "PYTHONPATH": str(ROOT),
        "PREFECT_RUNNER_POLL_FREQUENCY": "1",
    }
    cmd = [
        sys.executable,
        "-m",
        "flows.schedule",
        "--repo",
        str(repo),
        "--predict-input",
        "inbox",
        "--model-uri",
        str(tiny_models_dir),
    ]
    _forget(f"training/{RETRAIN}", f"batch-predict/{PREDICT}")
    log_path = tmp_path / "serve.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        # Then both deployments exist with the documented schedules, no work pool involved
        deadline = time.monotonic() + 240
        retrain = _deployment(f"training/{RETRAIN}", deadline)
        predict = _deployment(f"batch-predict/{PREDICT}", deadline)
        assert [s.schedule.cron for s in retrain.schedules] == [RETRAIN_CRON]
        assert [s.schedule.cron for s in predict.schedules] == [PREDICT_CRON]
        assert retrain.work_pool_name is None and predict.work_pool_name is None
        assert retrain.parameters == {"repo": str(repo), "force_stages": ["scrape"]}
        assert predict.parameters["input"] == str(repo / "inbox")

        # And a run of the predict deployment is executed by that same process
        from prefect.deployments import run_deployment

        flow_run = run_deployment(f"batch-predict/{PREDICT}", timeout=300)
        logs = prefect_api.logs(flow_run.id, must_contain="batch predict done")
        assert flow_run.state.is_completed(), f"{flow_run.state}\n{logs[-3000:]}"
        assert "no images in" in logs and "scoring 0 images" in logs
        [artifact] = prefect_api.artifacts(flow_run.id)
        assert artifact.key == "batch-predict-report" and "| images | 0 |" in artifact.data
    finally:
        stop_process_group(proc)
        print(log_path.read_text()[-3000:])


def test_deploy_targets_the_pool_params_yaml_names_unless_told_another(tmp_path, monkeypatch):
    # Given params.yaml naming another work pool (the one `taglens services start` serves)
    from flows import deploy
    from tests.helpers.params import write_tiny_params

    params = tmp_path / "params.yaml"
    write_tiny_params(params, {"team.pool": "gpu-pool"})
    seen = []
    monkeypatch.setattr(deploy, "deploy_all", lambda settings: seen.append(settings) or {})
    # When the deployments are made without --pool, then with it
    assert deploy.main(["--repo", str(tmp_path), "--params", str(params)]) == 0
    assert deploy.main(["--repo", str(tmp_path), "--params", str(params), "--pool", "x"]) == 0
    # Then they go to params.yaml's pool, then to the one asked for
    assert [settings.pool for settings in seen] == ["gpu-pool", "x"]
