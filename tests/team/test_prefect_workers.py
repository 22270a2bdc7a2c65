"""Two Prefect workers on the team's work pool take the two scheduled deployments' runs at once.

Both deployments of flows/deploy.py go to the services' process pool, served by two workers
(one run each at a time). A weekly-retrain run (on a stand-in pipeline of instant stages, so the
test is about the workers, not training) and a nightly batch-predict run (the real flow, scoring
with a champion on the team's MLflow server) are started together: each worker takes one, both
complete, every stage ran once and every image was scored exactly once.
"""

from __future__ import annotations

import csv
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image

from tests.flows.test_training_flow import DVC_YAML, STUB
from tests.helpers.params import write_tiny_params
from tests.helpers.paths import ROOT
from tests.helpers.repocopy import copy_source_tree

pytestmark = [pytest.mark.slow]

RUN_TIMEOUT = 600


def _stub_pipeline(repo: Path) -> Path:
    repo.mkdir()
    (repo / "stub.py").write_text(STUB)
    shutil.copy(ROOT / "stages" / "run.sh", repo / "run.sh")
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (repo / "params.yaml").write_text(yaml.safe_dump({"version": 1}))
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    subprocess.run([str(Path(sys.executable).parent / "dvc"), "init", "-q"], cwd=repo, check=True)
    return repo


def _inbox(folder: Path, count: int) -> list[Path]:
    folder.mkdir()
    rng = np.random.default_rng(7)
    paths = []
    for number in range(count):
        path = folder / f"photo-{number}.png"
        Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def _registered_champion(name: str, models: Path, params) -> str:
    import mlflow

    from taglens.lifecycle.gate import Evaluation
    from taglens.lifecycle.promotion import register_model
    from taglens.lifecycle.registry import Registry
    from taglens.model.pyfunc import log_taglens_model
    from taglens.tracking import configure_tracking

    configure_tracking(params.base.experiment)
    with mlflow.start_run() as run:
        logged = log_taglens_model(
            models, ingest=params.ingest, max_upload_mb=params.serve.max_upload_mb
        )
    register_model(
        Registry(name, models / "promotions.jsonl"),
        logged.model_uri,
        run.info.run_id,
        Evaluation({"accuracy": 0.5, "n_test": 30, "test_fingerprint": 1}),
        params.register,
    )
    return f"models:/{name}@champion"


def _wait_final(flow_run_ids: list, timeout: float) -> dict:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while True:
            runs = {run_id: client.read_flow_run(run_id) for run_id in flow_run_ids}
            if all(run.state.is_final() for run in runs.values()):
                return runs
            if time.monotonic() > deadline:
                pytest.fail(
                    f"runs not finished after {timeout} s: "
                    f"{[(r.name, r.state.type) for r in runs.values()]}"
                )
            time.sleep(2)


def test_two_workers_each_take_one_of_two_runs_started_together(
    tmp_path, team_services, team_mlflow, tiny_models_dir, tiny_params, services_folder
):
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.deploy import PREDICT, RETRAIN, DeploySettings, deploy_all
    from taglens.params import load_params

    # Given both deployments on the services' pool, a champion on the server, a stand-in
    # pipeline to retrain and an inbox of photos
    checkout = copy_source_tree(tmp_path / "checkout")
    write_tiny_params(checkout / "params.yaml")
    model_uri = _registered_champion("workers-model", tiny_models_dir, tiny_params)
    pool = load_params(ROOT / "params.yaml").team.pool
    stub = _stub_pipeline(tmp_path / "stub")
    photos = _inbox(tmp_path / "inbox", 6)
    output = tmp_path / "scores.csv"
    with temporary_settings(updates={PREFECT_API_URL: team_services.prefect_api_url}):
        deploy_all(DeploySettings(repo=checkout, pool=pool, model_uri=model_uri, paused=True))

        # When one run of each is started at the same moment
        retrain = run_deployment(
            f"training/{RETRAIN}",
            timeout=0,
            parameters={"repo": str(stub), "force_stages": [], "push_data": False},
        )
        predict = run_deployment(
            f"batch-predict/{PREDICT}",
            timeout=0,
            parameters={"input": str(tmp_path / "inbox"), "output": str(output)},
        )
        runs = _wait_final([retrain.id, predict.id], RUN_TIMEOUT)

    # Then both complete
    for run in runs.values():
        assert run.state.is_completed(), f"{run.name}: {run.state.type} {run.state.message}"
    # And each worker ran exactly one of them (a worker may also try to submit the other and be
    # told it is taken: only the run's own "View at .../flow-run/ID" line says where it ran)
    logs = [(services_folder / "logs" / f"prefect-worker-{n}.log").read_text() for n in (1, 2)]
    taken = [{str(r) for r in (retrain.id, predict.id) if f"/flow-run/{r}" in log} for log in logs]
    assert sorted(map(len, taken)) == [1, 1] and taken[0] != taken[1], taken
    # And every stand-in stage ran once, every photo was scored once, none lost
    for stage in ("scrape", "featurize", "clean", "train", "evaluate", "register"):
        assert (stub / f"attempts-{stage}.txt").read_text() == "1", stage
    with open(output, newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert sorted(Path(row["path"]).name for row in rows) == sorted(p.name for p in photos)
    assert all(not row["error"] and row["model_name"] == "workers-model" for row in rows)
