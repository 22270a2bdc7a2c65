"""The training flow: scrape -> featurize -> clean -> train -> evaluate -> register, through DVC.

Each stage is one Prefect task that runs `dvc repro --single-item <stage>` in the repository, so
dvc.lock and the DVC cache are updated and unchanged stages are skipped exactly as with
`dvc repro`. Only scrape retries (with exponential backoff): its failures are mostly the network.
A stage that exits with 2 reported a user error (a bad param, a missing input), and DVC's own
errors (an invalid dvc.yaml) cannot be fixed by waiting either: neither is retried.
When the repository has a default DVC remote (.dvc/config), the flow then `dvc push`es what the
run produced, and, when params.yaml's `team.git_branch` names a branch, commits dvc.lock and
params.yaml and pushes them to it (flows/handoff.py): another clone then runs
`git pull && dvc pull` and has exactly this run's outputs. Run it by hand with
`python -m flows.training [REPO]`.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.tasks import exponential_backoff

from flows.handoff import commit_and_push, team_settings
from flows.runners import retry_unless_user_error
from flows.stagerun import StageError, StageResult, check_repo, push, run_stage
from taglens.artifacts import DECISION, METRICS, MODEL_INFO, STAGES, read_optional
from taglens.errors import TaglensError
from taglens.lineage import DATA_VERSION, TAG_PREFIX, repo_data_tags
from taglens.run_reports import training_markdown

logger = logging.getLogger(__name__)

# A weekly retrain still going after this long is stuck: on 2 cores a full real-photo run is
# 1-2 hours (featurize dominates) and Instagram may impose 30-minute waits; fail it so the next
# week's run is not blocked behind it (the deployment runs one at a time).
TIMEOUT_S = 12 * 3600
ARTIFACT_KEY = "training-report"


@task(name="stage", retries=0)
def stage_task(stage: str, repo: str, force: bool = False) -> dict[str, Any]:
    """Run one DVC stage, streaming its output into the Prefect run log."""
    result: StageResult = run_stage(stage, Path(repo), force=force, log=get_run_logger())
    return asdict(result)


@task(name="push", retries=2, retry_delay_seconds=60)
def push_task(repo: str) -> str | None:
    """Share what the run produced: `dvc push` to the default remote, when one is configured.

    Retried: a remote is usually across a network. Pushing again only sends what is missing.
    """
    return push(Path(repo), log=get_run_logger())


@task(name="handoff", retries=2, retry_delay_seconds=60)
def handoff_task(repo: str, pushed_to: str | None) -> dict[str, Any] | None:
    """Commit dvc.lock and params.yaml and push them to `team.git_branch` (when it is set).

    Runs after `dvc push` (`pushed_to`: the remote it pushed to), so a clone that pulls the
    commit finds its data in the remote; with no remote there is nothing to hand off.
    """
    root = Path(repo)
    team = team_settings(root / "params.yaml")
    if team is None or team.git_branch is None:
        get_run_logger().info("team.git_branch is null: dvc.lock is not committed")
        return None
    if pushed_to is None:
        get_run_logger().warning(
            "team.git_branch is %s, but no DVC remote received this run's data: dvc.lock is not "
            "committed (a clone that pulled it could not `dvc pull` its data). Set a default "
            "remote (`dvc remote add -d NAME URL`) to hand runs off",
            team.git_branch,
        )
        return None
    done = commit_and_push(root, team.git_branch, team.git_remote, log=get_run_logger())
    return {"commit": done.commit, "branch": done.branch, "remote": done.remote}


@task(name="report", retries=0)
def report_task(repo: str, stages: list[dict[str, Any]]) -> dict[str, Any]:
    """Publish the markdown run report: metrics, promotion decision, the DVC data version."""
    log = get_run_logger()
    root = Path(repo)
    metrics = read_optional(METRICS, root / METRICS.default)
    decision = read_optional(DECISION, root / DECISION.default)
    model_info = read_optional(MODEL_INFO, root / MODEL_INFO.default)
    data_tags = repo_data_tags(root)
    run_id = (model_info or {}).get("run_id")
    if run_id and data_tags:
        # The train stage tags its run with the same record; the report only reads it.
        log.info("MLflow run %s: data version %s", run_id, data_tags[TAG_PREFIX + DATA_VERSION])
    markdown = training_markdown(
        metrics=metrics,
        decision=decision,
        model_info=model_info,
        data_tags=data_tags,
        stages=stages,
    )
    create_markdown_artifact(
        markdown=markdown, key=ARTIFACT_KEY, description="Metrics, promotion decision, lineage"
    )
    return {"run_id": run_id, "metrics": metrics, "decision": decision, "data": data_tags}


@flow(name="training", timeout_seconds=TIMEOUT_S)
def training_flow(
    repo: str = ".",
    force_stages: list[str] | None = None,
    scrape_retries: int = 3,
    scrape_retry_delay_seconds: float = 60.0,
    push_data: bool = True,
) -> dict[str, Any]:
    """Reproduce the whole pipeline through DVC and report what the run did.

    Args:
        repo: the taglens checkout (holds dvc.yaml, params.yaml); default the current directory.
        force_stages: stages to re-run even when unchanged (the weekly retrain forces `scrape`
            to collect new posts; later stages then run only if the data changed).
        scrape_retries: how often a failed scrape is retried (never for a user error).
        scrape_retry_delay_seconds: the first retry's delay; each next one doubles it.
        push_data: `dvc push` the results when the repository has a default DVC remote, then
            commit and push dvc.lock and params.yaml to `team.git_branch` when it is set, so
            another machine can `git pull && dvc pull` exactly what this run produced.

    Returns:
        The stages' results, the remote pushed to (or None), the git hand-off (or None), the
        evaluation metrics, the
        promotion decision and the MLflow run id.
    """
    root = check_repo(Path(repo))
    force = set(force_stages or ())
    unknown = force - set(STAGES)
    if unknown:
        raise TaglensError(f"force_stages has unknown stages {sorted(unknown)}; use {list(STAGES)}")
    results: list[dict[str, Any]] = []
    for stage in STAGES:
        runner = stage_task.with_options(name=stage, task_run_name=stage)
        if stage == "scrape" and scrape_retries > 0:
            runner = runner.with_options(
                retries=scrape_retries,
                retry_delay_seconds=exponential_backoff(backoff_factor=scrape_retry_delay_seconds)(
                    scrape_retries
                ),
                retry_condition_fn=retry_unless_user_error,
            )
        results.append(runner(stage, str(root), force=stage in force))
    pushed_to = push_task(str(root)) if push_data else None
    handoff = handoff_task(str(root), pushed_to) if push_data else None
    report = report_task(str(root), results)
    return {"stages": results, "pushed_to": pushed_to, "handoff": handoff, **report}


def main(argv: list[str] | None = None) -> int:
    """Run the training flow once, here (a temporary Prefect server starts if none is set)."""
    from taglens.cli import run_main, setup_logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", nargs="?", default=".", help="the taglens checkout")
    parser.add_argument(
        "--force",
        action="append",
        default=[],
        metavar="STAGE",
        help="re-run STAGE even if unchanged (repeatable)",
    )
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        summary = training_flow(repo=args.repo, force_stages=args.force)
        for stage in summary["stages"]:
            print(f"{stage['stage']:<10} {'ran' if stage['ran'] else 'skipped (unchanged)'}")
        decision = summary["decision"] or {}
        if summary["pushed_to"]:
            print(f"pushed to DVC remote {summary['pushed_to']}")
        if summary["handoff"]:
            handoff = summary["handoff"]
            print(
                f"git: {handoff['commit'] or 'nothing new'} pushed to {handoff['remote']} "
                f"{handoff['branch']}"
            )
        print(
            f"MLflow run {summary['run_id']}: {decision.get('decision', 'no decision')}"
            f" {decision.get('reason', '')}".rstrip()
        )
        return 0

    return run_main(body, extra_errors=(StageError,))


if __name__ == "__main__":
    raise SystemExit(main())
