"""The scheduled deployments on a real Prefect server, and a real process worker running them.

Given a copy of the repository with the tiny params (tests/helpers/params.py), when
`flows.deploy` registers both deployments, then the server holds the documented cron schedules;
when a worker picks up a manual run of `weekly-retrain`, then the whole pipeline runs through DVC
and leaves a new MLflow run and registry version; when a stage fails, the run is FAILED with the
stage's own error in its logs. Server and worker are stopped even when a test fails.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from flows.deploy import PREDICT, PREDICT_CRON, RETRAIN, RETRAIN_CRON, DeploySettings, deploy_all
from taglens.artifacts import STAGES
from tests.helpers.params import write_tiny_params
from tests.helpers.repocopy import copy_source_tree

ROOT = Path(__file__).resolve().parents[2]
POOL = "taglens-test"
RUN_TIMEOUT = 420  # the whole tiny pipeline through a worker; about 1-2 minutes when idle


def _git(repo: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def checkout(tmp_path_factory) -> Path:
    """A copy of the repository (no data, no store) with the tiny params, committed to git."""
    repo = tmp_path_factory.mktemp("deploy") / "repo"
    copy_source_tree(repo)
    write_tiny_params(repo / "params.yaml")
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "checkout")
    return repo


@pytest.fixture(scope="module")
def deployed(checkout, prefect_server) -> dict:
    return deploy_all(DeploySettings(repo=checkout, pool=POOL))


@pytest.fixture(scope="module")
def worker(deployed, start_worker):
    # No MLFLOW_TRACKING_URI: the stages use the checkout's own mlruns/ store, as a user's would.
    return start_worker(POOL, {"MLFLOW_TRACKING_URI": None})


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("retrain_cron", "every monday", "Invalid cron string"),
        ("predict_cron", "0 25 * * *", "Invalid cron string"),
        ("timezone", "Mars/Olympus", "unknown time zone 'Mars/Olympus'"),
    ],
)
def test_bad_schedules_are_refused_before_anything_is_deployed(tmp_path, option, value, message):
    (tmp_path / "flows").mkdir()
    for name in ("training.py", "predict.py"):
        (tmp_path / "flows" / name).write_text("")
    # No server in this test: reaching it would fail with a connection error instead.
    with pytest.raises(ValueError, match=message):
        deploy_all(DeploySettings(repo=tmp_path, **{option: value}))
    with pytest.raises(ValueError, match="has no flows/training.py: pass --repo"):
        deploy_all(DeploySettings(repo=tmp_path / "elsewhere"))


def _read(deployment_id):
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment(deployment_id)
        pool = client.read_work_pool(deployment.work_pool_name)
    return deployment, pool


def _crons(deployment) -> list[tuple[str, str]]:
    return [(s.schedule.cron, s.schedule.timezone) for s in deployment.schedules if s.active]


def _run(name: str, parameters: dict | None = None):
    from prefect.deployments import run_deployment

    # No scrape retries by default here: the demo source has no network to wait for.
    parameters = {"scrape_retries": 0} if parameters is None else parameters
    return run_deployment(name, parameters=parameters, timeout=RUN_TIMEOUT, poll_interval=2)


@pytest.mark.slow
def test_deployments_have_the_documented_schedules(deployed, checkout):
    retrain, pool = _read(deployed[RETRAIN])
    assert retrain.name == RETRAIN and _crons(retrain) == [(RETRAIN_CRON, "UTC")]
    assert (pool.name, pool.type) == (POOL, "process")
    assert retrain.entrypoint == "flows/training.py:training_flow"
    assert retrain.parameters == {"repo": str(checkout), "force_stages": ["scrape"]}
    assert retrain.global_concurrency_limit.limit == 1  # two `dvc repro` would collide
    [step] = retrain.pull_steps
    assert step["prefect.deployments.steps.set_working_directory"]["directory"] == str(checkout)

    predict, _ = _read(deployed[PREDICT])
    assert predict.name == PREDICT and _crons(predict) == [(PREDICT_CRON, "UTC")]
    assert predict.work_pool_name == POOL
    assert predict.entrypoint == "flows/predict.py:batch_predict_flow"
    assert predict.parameters["input"] == str(checkout / "data/incoming")
    assert predict.parameters["output"] == str(checkout / "predictions/predictions.parquet")
    assert predict.parameters["params_path"] == str(checkout / "params.yaml")


@pytest.mark.slow
def test_deploying_again_changes_the_schedule_in_place(deployed, checkout):
    again = deploy_all(
        DeploySettings(
            repo=checkout,
            pool=POOL,
            retrain_cron="15 4 * * 0",
            timezone="Europe/Berlin",
            predict_input="/srv/photos",
        )
    )
    assert again == deployed  # the same deployments, updated
    retrain, _ = _read(again[RETRAIN])
    predict, _ = _read(again[PREDICT])
    assert _crons(retrain) == [("15 4 * * 0", "Europe/Berlin")]
    assert _crons(predict) == [(PREDICT_CRON, "Europe/Berlin")]
    assert predict.parameters["input"] == "/srv/photos"


@pytest.mark.slow
@pytest.mark.e2e
def test_a_worker_runs_the_training_deployment(worker, checkout, prefect_api):
    flow_run = _run(f"training/{RETRAIN}")
    logs = prefect_api.logs(flow_run.id, must_contain="Finished in state")
    assert flow_run.state.is_completed(), f"{flow_run.state}\n{logs[-4000:]}"

    lock = yaml.safe_load((checkout / "dvc.lock").read_text())["stages"]
    assert set(STAGES) <= set(lock)
    for stage in STAGES:
        assert f"running dvc repro --single-item {stage}" in logs
    assert "Running stage 'train'" in logs  # stage output streamed into the run log
    status = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "status"],
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
    )
    assert "Data and pipelines are up to date" in status.stdout  # the lineage `dvc repro` leaves

    import mlflow

    info = json.loads((checkout / "models/model_info.json").read_text())
    uri = f"sqlite:///{checkout / 'mlruns' / 'mlflow.db'}"
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    assert len(run.data.tags["lineage.data_version"]) == 12
    versions = client.search_model_versions("name = 'taglens'")
    assert [v.run_id for v in versions] == [info["run_id"]]

    [artifact] = prefect_api.artifacts(flow_run.id)
    metrics = json.loads((checkout / "reports/metrics.json").read_text())
    assert f"`{info['run_id']}`" in artifact.data
    assert f"| accuracy | {metrics['accuracy']:.4f} |" in artifact.data
    decision = json.loads((checkout / "reports/register.json").read_text())
    assert f"- **Decision:** {decision['decision']}" in artifact.data
    assert "## Promotion decision" in artifact.data and "not found" not in artifact.data


@pytest.mark.slow
@pytest.mark.e2e
def test_the_nightly_deployment_scores_with_the_new_champion(worker, checkout, prefect_api):
    from taglens.serving.batch.outputs import read_rows

    images = sorted((checkout / "data/raw/images").glob("*.jpg"))[:5]
    assert images, "the training deployment test must run first (it builds the champion)"
    inbox = checkout / "data/incoming"
    inbox.mkdir(parents=True)
    for image in images:
        shutil.copy(image, inbox / image.name)
    output = checkout / "predictions/nightly.csv"

    flow_run = _run(f"batch-predict/{PREDICT}", {"input": str(inbox), "output": str(output)})
    logs = prefect_api.logs(flow_run.id, must_contain="batch predict done")
    assert flow_run.state.is_completed(), f"{flow_run.state}\n{logs[-4000:]}"
    rows = list(read_rows(output))
    assert sorted(Path(row["path"]).name for row in rows) == [image.name for image in images]
    classes = yaml.safe_load((checkout / "params.yaml").read_text())["base"]["classes"]
    assert all(row["top_class"] in classes for row in rows)
    assert "version 1" in logs  # scored with the version the training run registered


@pytest.mark.slow
@pytest.mark.e2e
def test_a_failing_stage_fails_the_run_with_its_error(worker, checkout, prefect_api):
    params = yaml.safe_load((checkout / "params.yaml").read_text())
    params["model"]["weights"] = "/nonexistent/backbone.weights.h5"
    (checkout / "params.yaml").write_text(yaml.safe_dump(params))

    flow_run = _run(f"training/{RETRAIN}")
    logs = prefect_api.logs(flow_run.id, must_contain="/nonexistent/backbone.weights.h5")
    assert flow_run.state.is_failed(), f"{flow_run.state}\n{logs[-4000:]}"
    assert "stage 'featurize' failed" in flow_run.state.message
    assert "no weights file at /nonexistent/backbone.weights.h5" in logs
    assert "running dvc repro --single-item clean" not in logs  # stopped at the failing stage


STUBBORN = """
import signal, subprocess, sys, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
if sys.argv[1:] == ["parent"]:  # like a worker whose flow-run process left its process group
    subprocess.Popen([sys.executable, "-c", __doc__, "child"], start_new_session=True)
time.sleep(120)
"""


def test_stopping_ends_processes_that_ignore_sigterm_and_left_the_group(stop_process_group):
    import psutil

    code = f'"""{STUBBORN}"""\n{STUBBORN}'
    proc = subprocess.Popen([sys.executable, "-c", code, "parent"], start_new_session=True)
    deadline = time.monotonic() + 30
    while not psutil.Process(proc.pid).children() and time.monotonic() < deadline:
        time.sleep(0.1)
    [child] = psutil.Process(proc.pid).children()
    started = time.monotonic()
    stop_process_group(proc, timeout=1)
    assert proc.poll() is not None
    child.wait(timeout=5)
    assert not child.is_running() and time.monotonic() - started < 10
