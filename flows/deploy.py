"""Register the scheduled deployments on a Prefect server: weekly retrain, nightly batch predict.

Both run on a `process` work pool: a `prefect worker start --pool taglens` on the machine that holds
the checkout picks up their runs and executes them in the checkout's directory. Deploying again
with other values updates the deployments in place (that is how a schedule is changed). Their
runs send a heartbeat every `team.heartbeat_s`, and the server gets an automation that marks a
run Crashed after `team.crashed_after_s` without one (its worker's machine lost). Needs
`PREFECT_API_URL` to name the server; see docs/prefect.md.

    python -m flows.deploy [--repo .] [--pool taglens] [--retrain-cron "0 3 * * 1"] ...
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from prefect import flow
from prefect.schedules import Cron

from taglens.errors import TaglensError

logger = logging.getLogger(__name__)

POOL = "taglens"
RETRAIN = "weekly-retrain"
RETRAIN_CRON = "0 3 * * 1"  # Mondays 03:00
PREDICT = "nightly-batch-predict"
PREDICT_CRON = "0 2 * * *"  # every day 02:00
TRAINING_ENTRYPOINT = "flows/training.py:training_flow"
PREDICT_ENTRYPOINT = "flows/predict.py:batch_predict_flow"
CRASH_AUTOMATION = "taglens: mark silent flow runs crashed"
HEARTBEAT = "prefect.flow-run.heartbeat"
FINAL_STATES = ("Completed", "Failed", "Cancelled", "Crashed")


@dataclass(frozen=True)
class DeploySettings:
    """Everything the two deployments need; the defaults are the documented schedules."""

    repo: Path
    pool: str = POOL
    timezone: str = "UTC"
    retrain_cron: str = RETRAIN_CRON
    predict_cron: str = PREDICT_CRON
    predict_input: str = "data/incoming"  # relative paths are taken inside the checkout
    predict_output: str = "predictions/predictions.parquet"  # resumed: re-runs add new images
    model_uri: str | None = None  # None: the batch flow's default (the champion model)
    paused: bool = False
    # team.heartbeat_s and team.crashed_after_s: each run beats every heartbeat_s, and one silent
    # for crashed_after_s is marked Crashed (None: Prefect's heartbeat, no automation changed)
    heartbeat_s: int | None = None
    crashed_after_s: float | None = None


def ensure_process_pool(name: str) -> None:
    """Create the process work pool unless it exists (a pool of another type is an error)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            pool = client.read_work_pool(name)
        except ObjectNotFound:
            client.create_work_pool(WorkPoolCreate(name=name, type="process"))
            logger.info("created process work pool %s", name)
            return
    if pool.type != "process":
        raise TaglensError(
            f"work pool {name!r} exists with type {pool.type!r}: pass --pool with another name "
            "(these deployments need a 'process' pool)"
        )


def ensure_crash_detection(crashed_after_s: float) -> UUID:
    """Create or update the automation that marks a flow run Crashed when its heartbeats stop.

    A run whose process dies with its worker (a machine lost, a SIGKILL) can report nothing: it
    would stay Running (a "zombie"), holding its deployment's one concurrency slot. Deployment
    runs send a heartbeat every `PREFECT_FLOWS_HEARTBEAT_FREQUENCY` seconds (`deploy_all` sets
    `team.heartbeat_s`; Prefect's default is 180 s); after one, the server expects another
    heartbeat or a final state within `crashed_after_s`, else it sets the run Crashed
    (Prefect's documented zombie-run automation). The next run then resumes from what the
    killed one kept. The rule covers every flow run on the server that sends heartbeats.

    Returns:
        The automation's id.
    """
    from datetime import timedelta

    from prefect.automations import Automation
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import EventTrigger, Posture
    from prefect.events.schemas.events import ResourceSpecification

    wanted = Automation(
        name=CRASH_AUTOMATION,
        description="A flow run that sends no heartbeat for team.crashed_after_s is Crashed.",
        trigger=EventTrigger(
            after={HEARTBEAT},
            expect={HEARTBEAT, *(f"prefect.flow-run.{state}" for state in FINAL_STATES)},
            match=ResourceSpecification({"prefect.resource.id": ["prefect.flow-run.*"]}),
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=crashed_after_s),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"no heartbeat for {crashed_after_s:g} s: its worker or machine is gone",
            )
        ],
    )
    try:
        existing = Automation.read(name=CRASH_AUTOMATION)
    except ValueError:  # not there yet
        created = wanted.create()
        logger.info("created automation %r (%g s)", CRASH_AUTOMATION, crashed_after_s)
        return created.id
    wanted.id = existing.id
    wanted.update()
    return existing.id


def _inside(repo: Path, location: str) -> str:
    """A location as the worker sees it: relative paths are anchored in the checkout."""
    if "://" in location:
        return location
    path = Path(location).expanduser()
    return str(path if path.is_absolute() else repo / path)


def checked_schedules(settings: DeploySettings) -> tuple[Path, Cron, Cron]:
    """The checkout and both schedules, checked before anything changes on the server.

    Raises:
        TaglensError: the checkout has no flows, or the time zone is unknown.
    """
    repo = settings.repo.expanduser().resolve()
    for entrypoint in (TRAINING_ENTRYPOINT, PREDICT_ENTRYPOINT):
        if not (repo / entrypoint.split(":")[0]).is_file():
            raise TaglensError(f"{repo} has no {entrypoint.split(':')[0]}: pass --repo <checkout>")
    try:
        ZoneInfo(settings.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise TaglensError(
            f"unknown time zone {settings.timezone!r}: use an IANA name such as UTC or "
            "Europe/Berlin"
        ) from None
    return (
        repo,
        Cron(settings.retrain_cron, timezone=settings.timezone),
        Cron(settings.predict_cron, timezone=settings.timezone),
    )


def retrain_parameters(repo: Path) -> dict:
    """Scrape is forced so new posts are collected; DVC re-runs later stages only on change."""
    return {"repo": str(repo), "force_stages": ["scrape"]}


def predict_parameters(repo: Path, settings: DeploySettings) -> dict:
    """The batch flow's inputs, anchored in the checkout, with the checkout's params file."""
    parameters = {
        "input": _inside(repo, settings.predict_input),
        "output": _inside(repo, settings.predict_output),
        "params_path": str(repo / "params.yaml"),
    }
    if settings.model_uri:
        parameters["model_uri"] = settings.model_uri
    return parameters


RETRAIN_DESCRIPTION = (
    "Collect new posts and retrain through DVC; the register stage decides "
    "whether the new model becomes champion."
)
PREDICT_DESCRIPTION = "Score the images under `input` with the champion model into `output`."


def deploy_all(settings: DeploySettings) -> dict[str, UUID]:
    """Create or update both deployments; return their ids by name.

    Raises:
        TaglensError: the checkout has no flows to deploy, or the pool has the wrong type.
    """
    repo, retrain_schedule, predict_schedule = checked_schedules(settings)
    ensure_process_pool(settings.pool)
    if settings.crashed_after_s is not None:
        ensure_crash_detection(settings.crashed_after_s)
    common = {
        "work_pool_name": settings.pool,
        "build": False,
        "push": False,
        "print_next_steps": False,
        "ignore_warnings": True,
        "paused": settings.paused,
    }
    if settings.heartbeat_s is not None:
        # The flow-run process gets it from its deployment, whoever started the worker.
        frequency = {"PREFECT_FLOWS_HEARTBEAT_FREQUENCY": str(settings.heartbeat_s)}
        common["job_variables"] = {"env": frequency}
    ids: dict[str, UUID] = {}
    training = flow.from_source(source=str(repo), entrypoint=TRAINING_ENTRYPOINT)
    ids[RETRAIN] = training.deploy(
        name=RETRAIN,
        schedules=[retrain_schedule],
        parameters=retrain_parameters(repo),
        # One run at a time: two `dvc repro` in one checkout would collide.
        concurrency_limit=1,
        description=RETRAIN_DESCRIPTION,
        tags=["taglens", "training"],
        **common,
    )
    predict = flow.from_source(source=str(repo), entrypoint=PREDICT_ENTRYPOINT)
    ids[PREDICT] = predict.deploy(
        name=PREDICT,
        schedules=[predict_schedule],
        parameters=predict_parameters(repo, settings),
        concurrency_limit=1,
        description=PREDICT_DESCRIPTION,
        tags=["taglens", "predict"],
        **common,
    )
    for name, deployment_id in ids.items():
        logger.info("deployment %s: %s", name, deployment_id)
    return ids


def add_schedule_options(parser: argparse.ArgumentParser) -> None:
    """The options `flows.deploy` and `flows.schedule` share (the schedules and locations)."""
    default = DeploySettings(repo=Path("."))
    parser.add_argument("--repo", type=Path, default=Path("."), help="the taglens checkout")
    parser.add_argument("--timezone", default=default.timezone, help="IANA zone of the crons")
    parser.add_argument(
        "--retrain-cron",
        default=default.retrain_cron,
        help=f"weekly retrain schedule (default {default.retrain_cron!r})",
    )
    parser.add_argument(
        "--predict-cron",
        default=default.predict_cron,
        help=f"batch predict schedule (default {default.predict_cron!r})",
    )
    parser.add_argument(
        "--predict-input",
        default=default.predict_input,
        help="images the nightly run scores (relative: inside the checkout)",
    )
    parser.add_argument(
        "--predict-output",
        default=default.predict_output,
        help="where the scores go (.csv, .jsonl or .parquet; resumed)",
    )
    parser.add_argument("--model-uri", default=None, help="default: the champion model")
    parser.add_argument("--paused", action="store_true", help="create the schedules paused")


def settings_from(args: argparse.Namespace, **extra: object) -> DeploySettings:
    """DeploySettings from the parsed shared options."""
    return DeploySettings(
        repo=args.repo,
        timezone=args.timezone,
        retrain_cron=args.retrain_cron,
        predict_cron=args.predict_cron,
        predict_input=args.predict_input,
        predict_output=args.predict_output,
        model_uri=args.model_uri,
        paused=args.paused,
        **extra,
    )


def main(argv: list[str] | None = None) -> int:
    """Parse options and deploy both flows."""
    from taglens.cli import run_main, setup_logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_schedule_options(parser)
    parser.add_argument(
        "--pool", default=None, help="process work pool name (default: params.yaml's team.pool)"
    )
    parser.add_argument(
        "--params",
        type=Path,
        default=None,
        help="team.heartbeat_s and crashed_after_s (default: REPO/params.yaml)",
    )
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        from taglens.params import load_params

        team = load_params(args.params or args.repo / "params.yaml").team
        # the pool `taglens services start` starts its workers on, unless told another
        settings = settings_from(
            args,
            pool=args.pool or team.pool,
            heartbeat_s=team.heartbeat_s,
            crashed_after_s=team.crashed_after_s,
        )
        for name, deployment_id in deploy_all(settings).items():
            print(f"{name}: {deployment_id}")
        return 0

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
