"""The whole pipeline through `dvc repro` on a copy of the repository with the tiny params."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.repocopy import copy_source_tree

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

STAGES = ("scrape", "featurize", "clean", "train", "evaluate", "register")


def _env(repo: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("MLFLOW_TRACKING_URI", None)  # the copy's own mlruns/ store, as a user would have
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    return env


def _run(args: list[str], repo: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    result = subprocess.run(
        args, cwd=repo, env=_env(repo), capture_output=True, text=True, timeout=timeout
    )
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    return _run([str(Path(sys.executable).parent / "dvc"), *args], repo)


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory, request) -> Path:
    """A repo copy with the tiny params, after one full `dvc repro`."""
    root = Path(__file__).resolve().parents[2]
    repo = tmp_path_factory.mktemp("e2e") / "repo"
    copy_source_tree(repo)
    shutil.copy(root / "tests/fixtures/params.yaml", repo / "params.yaml")
    _run(["git", "init", "-q"], repo)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], repo)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "init"], repo)
    result = _dvc(repo, "repro")
    (repo / "first_repro.log").write_text(result.stdout + result.stderr)
    return repo


def test_every_stage_ran_and_left_its_outputs(pipeline_repo):
    log = (pipeline_repo / "first_repro.log").read_text()
    for stage in STAGES:
        assert f"Running stage '{stage}'" in log
    for path in ("data/raw/posts.jsonl", "data/features/features.npz", "data/clean/manifest.csv",
                 "models/model.keras", "models/model_info.json", "reports/metrics.json",
                 "reports/register.json", "dvc.lock"):  # fmt: skip
        assert (pipeline_repo / path).is_file(), path
    posts = (pipeline_repo / "data/raw/posts.jsonl").read_text().splitlines()
    params = yaml.safe_load((pipeline_repo / "params.yaml").read_text())
    assert len(posts) == 10 * params["scrape"]["demo"]["images_per_class"]


def test_metrics_are_numbers_in_unit_range(pipeline_repo):
    metrics = json.loads((pipeline_repo / "reports/metrics.json").read_text())
    for key in ("accuracy", "top3_accuracy", "macro_f1", "hashtag_precision_at_1",
                "hashtag_recall_at_5", "hashtag_accuracy_at_5"):  # fmt: skip
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["n_test"] > 0
    assert metrics["top3_accuracy"] >= metrics["accuracy"]


def test_mlflow_has_the_finished_run_and_a_registered_version(pipeline_repo):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{pipeline_repo / 'mlruns' / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    info = json.loads((pipeline_repo / "models/model_info.json").read_text())
    run = client.get_run(info["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["train.learning_rate"] == "0.001"
    assert run.data.params["model.backbone"] == "vgg19"
    assert "accuracy" in run.data.metrics
    history = client.get_metric_history(info["run_id"], "val_loss")
    assert len(history) >= 1
    versions = client.search_model_versions("name='taglens'")
    assert len(versions) == 1
    assert versions[0].run_id == info["run_id"]


def test_second_repro_has_nothing_to_do(pipeline_repo):
    result = _dvc(pipeline_repo, "repro")
    assert "Running stage" not in result.stdout
    assert "up to date" in result.stdout.lower()


def test_learning_rate_change_reruns_only_train_evaluate_register(pipeline_repo):
    params_path = pipeline_repo / "params.yaml"
    text = params_path.read_text()
    params_path.write_text(text.replace("  learning_rate: 0.001\n", "  learning_rate: 0.002\n", 1))
    assert params_path.read_text() != text
    result = _dvc(pipeline_repo, "repro")
    ran = {stage for stage in STAGES if f"Running stage '{stage}'" in result.stdout}
    assert ran == {"train", "evaluate", "register"}, result.stdout
