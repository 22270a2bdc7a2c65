"""Register the scheduled deployments on a Prefect server: weekly retrain, nightly batch predict.

Both run on a `process` work pool: a `prefect worker start --pool taglens` on the machine that holds
the checkout picks up their runs and executes them in the checkout's directory. Deploying again
with other values updates the deployments in place (that is how a schedule is changed). Needs
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
    return (repo, Cron(settings.retrain_cron, timezone=settings.timezone),
            Cron(settings.predict_cron, timezone=settings.timezone))  # fmt: skip


def retrain_parameters(repo: Path) -> dict:
    """Scrape is forced so new posts are collected; DVC re-runs later stages only on change."""
    return {"repo": str(repo), "force_stages": ["scrape"]}


def predict_parameters(repo: Path, settings: DeploySettings) -> dict:
    """The batch flow's inputs, anchored in the checkout, with the checkout's params file."""
    parameters = {"input": _inside(repo, settings.predict_input),
                  "output": _inside(repo, settings.predict_output),
                  "params_path": str(repo / "params.yaml")}  # fmt: skip
    if settings.model_uri:
        parameters["model_uri"] = settings.model_uri
    return parameters


RETRAIN_DESCRIPTION = ("Collect new posts and retrain through DVC; the register stage decides "
                       "whether the new model becomes champion.")  # fmt: skip
PREDICT_DESCRIPTION = "Score the images under `input` with the champion model into `output`."


def deploy_all(settings: DeploySettings) -> dict[str, UUID]:
    """Create or update both deployments; return their ids by name.

    Raises:
        TaglensError: the checkout has no flows to deploy, or the pool has the wrong type.
    """
    repo, retrain_schedule, predict_schedule = checked_schedules(settings)
    ensure_process_pool(settings.pool)
    common = {"work_pool_name": settings.pool, "build": False, "push": False,
              "print_next_steps": False, "ignore_warnings": True,
              "paused": settings.paused}  # fmt: skip
    ids: dict[str, UUID] = {}
    training = flow.from_source(source=str(repo), entrypoint=TRAINING_ENTRYPOINT)
    ids[RETRAIN] = training.deploy(
        name=RETRAIN, schedules=[retrain_schedule], parameters=retrain_parameters(repo),
        # One run at a time: two `dvc repro` in one checkout would collide.
        concurrency_limit=1, description=RETRAIN_DESCRIPTION, tags=["taglens", "training"],
        **common,
    )  # fmt: skip
    predict = flow.from_source(source=str(repo), entrypoint=PREDICT_ENTRYPOINT)
    ids[PREDICT] = predict.deploy(
        name=PREDICT, schedules=[predict_schedule],
        parameters=predict_parameters(repo, settings), concurrency_limit=1,
        description=PREDICT_DESCRIPTION, tags=["taglens", "predict"], **common,
    )  # fmt: skip
    for name, deployment_id in ids.items():
        logger.info("deployment %s: %s", name, deployment_id)
    return ids


def add_schedule_options(parser: argparse.ArgumentParser) -> None:
    """The options `flows.deploy` and `flows.schedule` share (the schedules and locations)."""
    default = DeploySettings(repo=Path("."))
    parser.add_argument("--repo", type=Path, default=Path("."), help="the taglens checkout")
    parser.add_argument("--timezone", default=default.timezone, help="IANA zone of the crons")
    parser.add_argument("--retrain-cron", default=default.retrain_cron,
                        help=f"weekly retrain schedule (default {default.retrain_cron!r})")
    parser.add_argument("--predict-cron", default=default.predict_cron,
                        help=f"batch predict schedule (default {default.predict_cron!r})")
    parser.add_argument("--predict-input", default=default.predict_input,
                        help="images the nightly run scores (relative: inside the checkout)")
    parser.add_argument("--predict-output", default=default.predict_output,
                        help="where the scores go (.csv, .jsonl or .parquet; resumed)")
    parser.add_argument("--model-uri", default=None, help="default: the champion model")
    parser.add_argument("--paused", action="store_true", help="create the schedules paused")


def settings_from(args: argparse.Namespace, **extra: str) -> DeploySettings:
    """DeploySettings from the parsed shared options."""
    return DeploySettings(
        repo=args.repo, timezone=args.timezone, retrain_cron=args.retrain_cron,
        predict_cron=args.predict_cron, predict_input=args.predict_input,
        predict_output=args.predict_output, model_uri=args.model_uri, paused=args.paused,
        **extra,
    )  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Parse options and deploy both flows."""
    from taglens.cli import run_main, setup_logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_schedule_options(parser)
    parser.add_argument("--pool", default=POOL, help=f"process work pool name (default {POOL})")
    args = parser.parse_args(argv)
    setup_logging()
    settings = settings_from(args, pool=args.pool)

    def body() -> int:
        for name, deployment_id in deploy_all(settings).items():
            print(f"{name}: {deployment_id}")
        return 0

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
