"""The whole pipeline through `dvc repro` on a copy of the repository with the tiny params."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from taglens.artifacts import STAGES
from tests.helpers.params import write_tiny_params
from tests.helpers.repocopy import copy_source_tree
from tests.helpers.stages import dvc_ok as _dvc
from tests.helpers.stages import run_ok as _run

pytestmark = [pytest.mark.slow, pytest.mark.e2e]


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory, request) -> Path:
    """A repo copy with the tiny params, after one full `dvc repro`."""
    repo = tmp_path_factory.mktemp("e2e") / "repo"
    copy_source_tree(repo)
    write_tiny_params(repo / "params.yaml")
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
    for path in (
        "data/raw/posts.jsonl",
        "data/features/features.npz",
        "data/clean/manifest.csv",
        "models/model.keras",
        "models/model_info.json",
        "reports/metrics.json",
        "reports/register.json",
        "dvc.lock",
    ):
        assert (pipeline_repo / path).is_file(), path
    posts = (pipeline_repo / "data/raw/posts.jsonl").read_text().splitlines()
    params = yaml.safe_load((pipeline_repo / "params.yaml").read_text())
    assert len(posts) == 10 * params["scrape"]["demo"]["images_per_class"]


def test_metrics_are_numbers_in_unit_range(pipeline_repo):
    metrics = json.loads((pipeline_repo / "reports/metrics.json").read_text())
    for key in (
        "accuracy",
        "top3_accuracy",
        "macro_f1",
        "hashtag_precision_at_1",
        "hashtag_recall_at_5",
        "hashtag_accuracy_at_5",
    ):
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
    # MLflow's own git tag (no hand-made duplicate) and the datasets at the DVC data version
    head = _run(["git", "rev-parse", "HEAD"], pipeline_repo).stdout.strip()
    assert run.data.tags["mlflow.source.git.commit"] == head and "git_commit" not in run.data.tags
    lock = yaml.safe_load((pipeline_repo / "dvc.lock").read_text())
    [clean_out] = [o for o in lock["stages"]["clean"]["outs"] if o["path"] == "data/clean"]
    digests = {i.dataset.name: i.dataset.digest for i in run.inputs.dataset_inputs}
    assert digests == dict.fromkeys(("train", "val", "test"), clean_out["md5"])
    assert "accuracy" in run.data.metrics
    history = client.get_metric_history(info["run_id"], "val_loss")
    assert len(history) >= 1
    versions = client.search_model_versions("name='taglens'")
    assert len(versions) == 1
    assert versions[0].run_id == info["run_id"]
    # the run and its version carry one lineage record, the data named by DVC's hashes
    run_lineage = {k: v for k, v in run.data.tags.items() if k.startswith("lineage.")}
    assert run_lineage["lineage.data.clean"] == clean_out["md5"]
    version_lineage = {k: v for k, v in versions[0].tags.items() if k.startswith("lineage.")}
    assert version_lineage == {**run_lineage, "lineage.run_id": info["run_id"]}


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


def test_log_photos_leaves_the_model_alone(pipeline_repo):
    # base.log_photos only decides which photo sheets clean and evaluate upload: turning it on
    # must not retrain (minutes, or hours with fine-tuning) nor register a new version.
    # `dvc status` says which stages a repro would run, without running them.
    params_path = pipeline_repo / "params.yaml"
    text = params_path.read_text()
    params_path.write_text(text.replace("  log_photos: false", "  log_photos: true", 1))
    try:
        assert params_path.read_text() != text
        status = json.loads(_dvc(pipeline_repo, "status", "--json").stdout)
    finally:
        params_path.write_text(text)
    assert set(status) == {"clean", "evaluate"}, status


def _bare_env(repo: Path) -> dict[str, str]:
    """A shell where the virtual environment is not activated: only the system's PATH."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("VIRTUAL_ENV", "PYTHONPATH", "MLFLOW_TRACKING_URI", "TAGLENS_PYTHON")
    }
    env["PATH"] = os.pathsep.join(["/usr/local/bin", "/usr/bin", "/bin"])
    return env


def _bare_dvc(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """`.venv/bin/dvc ARGS` as the README writes it, from a shell without the venv on PATH."""
    result = subprocess.run(
        [".venv/bin/dvc", *args],
        cwd=repo,
        env=_bare_env(repo),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert result.returncode == 0, f"dvc {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


def _experiments(shown: list[dict]) -> dict[float, dict]:
    """`dvc exp show --json` rows by train.learning_rate: {rate: {"name", "metrics"}}."""
    found = {}
    for baseline in shown:
        for experiment in baseline.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                data = rev.get("data") or {}
                rate = data["params"]["params.yaml"]["data"]["train"]["learning_rate"]
                metrics = {path: entry["data"] for path, entry in data["metrics"].items()}
                found[rate] = {"name": rev.get("name"), "metrics": metrics}
    return found


def test_experiments_and_commits_compare_their_metrics(pipeline_repo):
    # Given the pipeline committed with its dvc.lock (the reports are in the DVC cache) and the
    # README's setup: a .venv in the checkout, not activated
    repo = pipeline_repo
    (repo / ".venv").symlink_to(Path(sys.prefix), target_is_directory=True)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], repo)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "baseline"], repo)
    assert ".venv" not in _run(["git", "ls-files"], repo).stdout.split()

    # When two experiments run with different learning rates
    for rate in ("0.01", "0.0005"):
        _bare_dvc(repo, "exp", "run", "-S", f"train.learning_rate={rate}")

    # Then `dvc exp show --json` lists both, each with its own metrics
    shown = json.loads(_bare_dvc(repo, "exp", "show", "--json").stdout)
    experiments = _experiments(shown)
    assert {0.01, 0.0005} <= set(experiments), experiments
    fast, slow = experiments[0.01]["metrics"], experiments[0.0005]["metrics"]
    for metrics in (fast, slow):
        assert 0.0 <= metrics["reports/metrics.json"]["accuracy"] <= 1.0
        assert metrics["reports/train.json"]
    assert fast["reports/train.json"] != slow["reports/train.json"]

    # And once the last experiment is committed, `dvc metrics diff` between the two commits
    # shows what changed (both commits' reports come from the DVC cache, not the workspace)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "add", "-A"], repo)
    _run(["git", "-c", "user.email=t@t", "-c", "user.name=t", "commit", "-qm", "lr 0.0005"], repo)
    diff = json.loads(_bare_dvc(repo, "metrics", "diff", "HEAD~1", "HEAD", "--json").stdout)
    changed = {
        (path, key)
        for path, entries in diff.items()
        for key, entry in entries.items()
        if entry.get("diff")
    }
    assert any(path == "reports/train.json" for path, _ in changed), diff
    params = json.loads(_bare_dvc(repo, "params", "diff", "HEAD~1", "HEAD", "--json").stdout)
    rate = params["params.yaml"]["train.learning_rate"]
    assert (rate["old"], rate["new"]) == (0.002, 0.0005)
    # And every plot, declared once, has both commits: the confusion matrix as a confusion plot,
    # the learning curves as lines, the PNGs as images
    plots = json.loads(_bare_dvc(repo, "plots", "diff", "HEAD~1", "HEAD", "--json").stdout)
    kinds = {name: sorted({e["type"] for e in entries}) for name, entries in plots["data"].items()}
    assert kinds == {
        "learning curves": ["vega"],
        "confusion matrix": ["vega"],
        "reports/history.png": ["image"],
        "reports/evaluate/confusion.png": ["image"],
        "reports/evaluate/misclassified.png": ["image"],
        "reports/clean/distances.png": ["image"],
    }
    [confusion] = plots["data"]["confusion matrix"]
    assert '"mark": "rect"' in json.dumps(confusion["content"])  # the confusion template's cells
    assert {row["rev"] for row in confusion["content"]["data"]["values"]} == {"HEAD~1", "HEAD"}
    images = plots["data"]["reports/evaluate/confusion.png"]
    assert sorted(rev for e in images for rev in e["revisions"]) == ["HEAD", "HEAD~1"]
