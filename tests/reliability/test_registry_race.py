"""Two `python -m stages.register` processes racing: the better model always ends up champion."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from reliability_kit import copy_repo, stage_env, write_params

from tests.helpers.evidence import solid_test_split, write_evidence
from tests.helpers.params import tiny_params

pytestmark = pytest.mark.slow


def _test_split(tmp_path, classes) -> tuple:
    """data/raw and data/clean holding two solid-colour test photos per class."""
    raw = tmp_path / "raw"
    clean = tmp_path / "clean"
    return raw, clean, solid_test_split(raw, clean, classes)


def _trained(tmp_path, name: str, models_src, right: bool, posts) -> tuple:
    """A models/ dir and the evidence evaluate writes for one logged MLflow run: the model is
    right on every test photo (`right`) or on none."""
    import mlflow

    from taglens.model.pyfunc import log_taglens_model

    with mlflow.start_run(run_name=f"train-{name}") as run:
        log_taglens_model(
            models_src, ingest=tiny_params().ingest, max_upload_mb=tiny_params().serve.max_upload_mb
        )
    models = tmp_path / f"models_{name}"
    shutil.copytree(models_src, models)
    info = json.loads((models / "model_info.json").read_text())
    (models / "model_info.json").write_text(json.dumps({**info, "run_id": run.info.run_id}))
    reports = tmp_path / f"reports_{name}"
    write_evidence(reports, run.info.run_id, posts, info["classes"], right)
    return run.info.run_id, models, reports


@pytest.mark.parametrize(
    "better_first", [True, False], ids=["better-starts-first", "worse-starts-first"]
)
def test_racing_registrations_leave_the_better_model_champion(
    better_first, tmp_path, fresh_mlflow, tiny_models_dir, tiny_params
):
    import mlflow

    from taglens.tracking import configure_tracking

    # Given two evaluated train runs, one clearly better, and no champion yet
    repo = copy_repo(tmp_path / "repo")
    write_params(repo, {})
    configure_tracking(tiny_params.base.experiment, store=fresh_mlflow)
    raw, clean, posts = _test_split(tmp_path, tiny_params.base.classes)
    runs = {
        name: _trained(tmp_path, name, tiny_models_dir, right, posts)
        for name, right in (("worse", False), ("better", True))
    }
    env = stage_env(repo, MLFLOW_TRACKING_URI=mlflow.get_tracking_uri())

    # When both register at the same moment
    order = ["better", "worse"] if better_first else ["worse", "better"]
    procs = {}
    for name in order:
        _, models, reports = runs[name]
        cmd = [
            sys.executable,
            "-m",
            "stages.register",
            "--params",
            "params.yaml",
            "--models",
            str(models),
            "--metrics",
            str(reports / "metrics.json"),
            "--out",
            str(reports / "register.json"),
            "--raw",
            str(raw),
            "--clean",
            str(clean),
            "--history",
            str(tmp_path / "promotions.jsonl"),
        ]
        procs[name] = subprocess.Popen(
            cmd, cwd=repo, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    for name, proc in procs.items():
        output = proc.communicate(timeout=300)[0]
        assert proc.returncode == 0, f"{name}: {output}"

    # Then the better run's version is champion, the worse one is not, each registered once
    client = mlflow.MlflowClient()
    name = tiny_params.register.model_name
    versions = client.search_model_versions(f"name='{name}'")
    by_run = {v.run_id: v for v in versions}
    assert len(versions) == 2 and len(by_run) == 2
    better = by_run[runs["better"][0]]
    worse = by_run[runs["worse"][0]]
    results = {n: json.loads((runs[n][2] / "register.json").read_text()) for n in runs}
    champion = client.get_model_version_by_alias(name, "champion")
    assert champion.version == better.version, results["better"]["reason"]
    assert results["better"]["decision"] == "champion"
    # And the promotion history has exactly one register line per version
    lines = (tmp_path / "promotions.jsonl").read_text().splitlines()
    history = [json.loads(line) for line in lines]
    registered = sorted(row["version"] for row in history if row["event"] == "register")
    assert registered == sorted([str(better.version), str(worse.version)])
    # and whichever took the lock second was paired image by image with the re-scored champion
    first, second = (row for row in history if row["event"] == "register")
    assert first["p_value"] is None and first["compared_with"] is None
    assert second["champion_rescored"] is True and second["n_paired"] == 20
    assert 0.0 <= second["p_value"] <= 1.0 and "McNemar exact p" in second["reason"]
