"""The training flow's plumbing on a tiny stand-in pipeline (same stage names, instant commands).

Given a DVC repo whose six stages are one-line scripts, when the flow runs against the session's
real Prefect server, then every stage goes through `dvc repro` (dvc.lock updated, unchanged stages
skipped), stage output reaches the run log, scrape retries only transient failures, a failing
stage fails the flow with its own message, and the report artifact and MLflow tags appear.
The real pipeline through a worker is in test_deployments.py.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from flows.stagerun import StageError, check_repo, run_stage
from flows.training import training_flow
from taglens.artifacts import STAGES
from taglens.lineage import repo_data_tags
from taglens.run_reports import training_markdown as render_markdown
from tests.helpers.paths import ROOT

STUB = textwrap.dedent('''
    """A stand-in stage: honours `fail: STAGE`, `flaky: STAGE` in params.yaml."""
    import json, sys
    from pathlib import Path
    import yaml

    stage = sys.argv[1]
    params = yaml.safe_load(Path("params.yaml").read_text())
    attempts = Path(f"attempts-{stage}.txt")
    count = int(attempts.read_text()) + 1 if attempts.exists() else 1
    attempts.write_text(str(count))
    if params.get("fail") == stage:
        print(f"error: {stage}: params.yaml fail is set, fix it", file=sys.stderr)
        sys.exit(2)
    if params.get("flaky") == stage and count == 1:
        print(f"{stage}: connection reset by peer", file=sys.stderr)
        sys.exit(1)
    print(f"{stage} says hello", flush=True)
    outs = {"scrape": "data/raw", "featurize": "data/features", "clean": "data/clean",
            "train": "models"}
    if stage in outs:
        Path(outs[stage]).mkdir(parents=True, exist_ok=True)
        Path(outs[stage], "x.txt").write_text(f"{stage} {params['version']}")
    if stage == "train":
        import mlflow
        from taglens.tracking import configure_tracking
        configure_tracking("taglens")
        with mlflow.start_run(run_name="train") as run:
            mlflow.log_param("version", params["version"])
        Path("models/model_info.json").write_text(
            json.dumps({"run_id": run.info.run_id, "experiment": "taglens"}))
    if stage == "evaluate":
        Path("reports").mkdir(exist_ok=True)
        Path("reports/metrics.json").write_text(json.dumps({"accuracy": 0.25, "n_test": 8}))
    if stage == "register":
        Path("reports/register.json").write_text(json.dumps(
            {"decision": "champion", "model_name": "taglens", "version": "1",
             "reason": "first model"}))
''')

DVC_YAML = {
    "stages": {
        "scrape": {"cmd": "sh run.sh stub scrape", "deps": ["stub.py"], "params": ["version"],
                   "outs": ["data/raw"]},
        "featurize": {"cmd": "sh run.sh stub featurize", "deps": ["data/raw"],
                      "outs": ["data/features"]},
        "clean": {"cmd": "sh run.sh stub clean", "deps": ["data/features"], "outs": ["data/clean"]},
        "train": {"cmd": "sh run.sh stub train", "deps": ["data/clean"], "outs": ["models"]},
        "evaluate": {"cmd": "sh run.sh stub evaluate", "deps": ["models"],
                     "metrics": [{"reports/metrics.json": {"cache": False}}]},
        "register": {"cmd": "sh run.sh stub register", "deps": ["reports/metrics.json"],
                     "outs": [{"reports/register.json": {"cache": False}}]},
    }
}  # fmt: skip


def _set_params(repo: Path, **values) -> None:
    (repo / "params.yaml").write_text(yaml.safe_dump({"version": 1, **values}))


@pytest.fixture
def stub_repo(tmp_path) -> Path:
    repo = tmp_path / "stub"
    repo.mkdir()
    (repo / "stub.py").write_text(STUB)
    # The stages' launcher, as dvc.yaml uses it: it reports each command's exit code to the flow.
    shutil.copy(ROOT / "stages" / "run.sh", repo / "run.sh")
    (repo / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    _set_params(repo)
    subprocess.run(["git", "init", "-q"], cwd=repo, check=True)
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run([dvc, "init", "-q"], cwd=repo, check=True)
    return repo


def _attempts(repo: Path, stage: str) -> int:
    path = repo / f"attempts-{stage}.txt"
    return int(path.read_text()) if path.exists() else 0


def _locked_stages(repo: Path) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"]


def test_check_repo_names_what_to_pass(tmp_path):
    with pytest.raises(ValueError, match="has no dvc.yaml: pass repo="):
        check_repo(tmp_path)
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    with pytest.raises(ValueError, match="run `dvc init`"):
        check_repo(tmp_path)


def test_report_markdown_and_data_version(tmp_path):
    (tmp_path / "dvc.lock").write_text(
        yaml.safe_dump(
            {
                "schema": "2.0",
                "stages": {
                    "scrape": {"outs": [{"path": "data/raw", "hash": "md5", "md5": "aa.dir"}]},
                    "clean": {"outs": [{"path": "data/clean", "hash": "md5", "md5": "cc.dir"}]},
                    "train": {"outs": [{"path": "models", "hash": "md5", "md5": "mm.dir"}]},
                },
            }
        )
    )
    tags = repo_data_tags(tmp_path)
    assert tags["lineage.data.raw"] == "aa.dir" and tags["lineage.data.clean"] == "cc.dir"
    assert set(tags) == {"lineage.data.raw", "lineage.data.clean", "lineage.data_version"}
    assert len(tags["lineage.data_version"]) == 12
    markdown = render_markdown(
        metrics={"accuracy": 0.8125, "n_test": 16, "per_class": {"a": 1}},
        decision={
            "decision": "rejected",
            "reason": "a|b",
            "version": "3",
            "model_name": "tl",
            "compared_with": None,
        },
        model_info={"run_id": "r1", "experiment": "ex"},
        data_tags=tags,
        stages=[{"stage": "scrape", "ran": False, "seconds": 1.25}],
    )
    assert "- **Decision:** rejected (tl version 3): a\\|b" in markdown
    assert "- **MLflow run id:** `r1` (experiment `ex`)" in markdown
    assert "| accuracy | 0.8125 |" in markdown and "| n_test | 16 |" in markdown
    assert "per_class" not in markdown  # nested values stay out of the metrics table
    assert "| reason | a\\|b |" in markdown and "| compared_with | - |" in markdown
    assert f"- **Data version:** `{tags['lineage.data_version']}`" in markdown
    assert "| scrape | skipped (unchanged) | 1.2 |" in markdown


@pytest.mark.slow
def test_run_stage_runs_then_skips_and_keeps_the_error(stub_repo):
    first = run_stage("scrape", stub_repo)
    again = run_stage("scrape", stub_repo)
    assert (first.ran, again.ran) == (True, False)
    assert _attempts(stub_repo, "scrape") == 1
    assert "scrape" in _locked_stages(stub_repo)
    _set_params(stub_repo, version=2, fail="scrape")
    with pytest.raises(StageError) as caught:
        run_stage("scrape", stub_repo)
    assert caught.value.stage_exit == 2 and caught.value.is_user_error
    assert "error: scrape: params.yaml fail is set, fix it" in str(caught.value)
    assert not caught.value.may_be_transient

    (stub_repo / "dvc.yaml").write_text("stages:\n  scrape:\n    cmd: [1, 2]\n    outs: 7\n")
    with pytest.raises(StageError, match="validation failed") as caught:
        run_stage("scrape", stub_repo)
    assert caught.value.stage_exit is None and not caught.value.may_be_transient


@pytest.mark.slow
def test_flow_reproduces_through_dvc_and_reports(stub_repo, prefect_api, tmp_path):
    remote = tmp_path / "remote"
    dvc = str(Path(sys.executable).parent / "dvc")
    subprocess.run(
        [dvc, "remote", "add", "-d", "storage", str(remote)],
        cwd=stub_repo,
        check=True,
        capture_output=True,
    )
    state = training_flow(repo=str(stub_repo), return_state=True)
    assert state.is_completed(), state.message
    summary = state.result()
    assert [s["stage"] for s in summary["stages"]] == list(STAGES)
    assert all(s["ran"] for s in summary["stages"])
    assert set(_locked_stages(stub_repo)) == set(STAGES)
    assert summary["metrics"] == {"accuracy": 0.25, "n_test": 8}

    run_id = json.loads((stub_repo / "models/model_info.json").read_text())["run_id"]
    assert summary["run_id"] == run_id
    # the report reads the data version; it tags no run (the train stage tags its own)
    data_version = repo_data_tags(stub_repo)["lineage.data_version"]
    assert summary["data"]["lineage.data_version"] == data_version

    flow_run_id = state.state_details.flow_run_id
    [artifact] = prefect_api.artifacts(flow_run_id)
    assert artifact.key == "training-report" and artifact.type == "markdown"
    assert f"`{run_id}`" in artifact.data and "| accuracy | 0.2500 |" in artifact.data
    assert "- **Decision:** champion (taglens version 1): first model" in artifact.data
    logs = prefect_api.logs(flow_run_id, must_contain="register says hello")
    for stage in STAGES:
        assert f"[{stage}] {stage} says hello" in logs

    # And with a default remote configured, the run's outputs were pushed there
    assert summary["pushed_to"] == "storage"
    pushed = {p.relative_to(remote) for p in remote.rglob("*") if p.is_file()}
    assert len(pushed) >= 5, pushed  # data/raw ... models dirs and their files
    status = subprocess.run(
        [str(Path(sys.executable).parent / "dvc"), "status", "--cloud", "--json"],
        cwd=stub_repo,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(status.stdout or "{}") == {}  # nothing left to push

    # Nothing changed: a second run skips every stage, like `dvc repro`.
    lock_before = (stub_repo / "dvc.lock").read_text()
    second = training_flow(repo=str(stub_repo))
    assert [s["ran"] for s in second["stages"]] == [False] * len(STAGES)
    assert (stub_repo / "dvc.lock").read_text() == lock_before
    assert _attempts(stub_repo, "train") == 1


@pytest.mark.slow
def test_scrape_retries_transient_failures_only(stub_repo, prefect_server):
    _set_params(stub_repo, flaky="scrape")
    done = training_flow(repo=str(stub_repo), scrape_retry_delay_seconds=0)
    assert _attempts(stub_repo, "scrape") == 2 and done["stages"][0]["ran"]

    _set_params(stub_repo, version=2, fail="scrape")
    state = training_flow(repo=str(stub_repo), scrape_retry_delay_seconds=0, return_state=True)
    assert state.is_failed()
    assert _attempts(stub_repo, "scrape") == 3  # one more attempt: a bad param is not retried


@pytest.mark.slow
def test_failing_stage_fails_the_flow_with_its_error(stub_repo, prefect_api):
    _set_params(stub_repo, fail="clean")
    state = training_flow(repo=str(stub_repo), return_state=True)
    assert state.is_failed()
    assert "stage 'clean' failed" in state.message
    assert "error: clean: params.yaml fail is set, fix it" in state.message
    assert _attempts(stub_repo, "featurize") == 1 and _attempts(stub_repo, "clean") == 1
    assert _attempts(stub_repo, "train") == 0 and not (stub_repo / "models").exists()
    logs = prefect_api.logs(state.state_details.flow_run_id, must_contain="fail is set")
    assert "[clean] error: clean: params.yaml fail is set, fix it" in logs
