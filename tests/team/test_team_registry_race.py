"""Two clones register at once against the team's MLflow server: one champion, each version once.

The clones stand for two machines: each has its own checkout, its own reports/ (so no local
file can coordinate them) and reaches the registry only through the server's URL. The guard is
the registry lock for a shared registry: the lock model on the MLflow server, or PostgreSQL's
advisory lock when TAGLENS_LOCK_DB names the database.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from taglens.lifecycle.registry import LOCK_DB_ENV, lock_model_name
from tests.helpers.evidence import clone_with_trained_run
from tests.helpers.stages import stage_env

pytestmark = [pytest.mark.slow]


@pytest.mark.parametrize("lock", ["mlflow-server", "postgres-advisory"])
def test_two_clones_racing_leave_the_better_model_champion_each_version_once(
    lock, tmp_path, team_services, team_mlflow, tiny_models_dir, tiny_params
):
    import mlflow

    from taglens.lifecycle.registry import Registry
    from taglens.tracking import configure_tracking

    # Given two clones, each with an evaluated train run logged to the server, one better
    configure_tracking(tiny_params.base.experiment)
    model_name = f"race-{lock}"
    classes = tiny_params.base.classes
    clones = {
        name: clone_with_trained_run(tmp_path, name, model_name, tiny_models_dir, acc, classes)
        for name, acc in (("worse", False), ("better", True))
    }
    extra = {"MLFLOW_TRACKING_URI": team_mlflow}
    if lock == "postgres-advisory":
        extra[LOCK_DB_ENV] = team_services.postgres_uri
    env = stage_env(**extra)
    if lock == "mlflow-server":
        env.pop(LOCK_DB_ENV, None)

    # When both register at the same moment (the worse one first, so a race would crown it)
    procs = {}
    for name in ("worse", "better"):
        clone, _ = clones[name]
        procs[name] = subprocess.Popen(
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
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    for name, proc in procs.items():
        output = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, f"{name}: {output}"

    # Then the better run's version is champion and each run has exactly one version
    client = mlflow.MlflowClient()
    versions = client.search_model_versions(f"name='{model_name}'")
    by_run = {v.run_id: v for v in versions}
    assert len(versions) == 2 and set(by_run) == {run for _, run in clones.values()}
    better = by_run[clones["better"][1]]
    assert client.get_model_version_by_alias(model_name, "champion").version == better.version
    decisions = {
        name: json.loads((clone / "reports/register.json").read_text())["decision"]
        for name, (clone, _) in clones.items()
    }
    assert decisions["better"] == "champion"
    # And the registry's own history (not a local file) has one register event per version
    history = Registry(model_name, tmp_path / "unused.jsonl").history()
    registered = sorted(row["version"] for row in history if row["event"] == "register")
    assert registered == sorted(str(v.version) for v in versions)
    assert not (tmp_path / "unused.jsonl").exists()
    # And the lock is released: no lock model left on the server
    assert model_name + ".lock" == lock_model_name(model_name)
    assert not client.search_registered_models(f"name = '{lock_model_name(model_name)}'")
