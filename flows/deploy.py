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
        raise ValueError(
            f"work pool {name!r} exists with type {pool.type!r}: pass --pool with another name "
            "(these deployments need a 'process' pool)"
        )


def _inside(repo: Path, location: str) -> str:
    """A location as the worker sees it: relative paths are anchored in the checkout."""
    if "://" in location:
        return location
    path = Path(location).expanduser()
    return str(path if path.is_absolute() else repo / path)


def deploy_all(settings: DeploySettings) -> dict[str, UUID]:
    """Create or update both deployments; return their ids by name.

    Raises:
        ValueError: the checkout has no flows to deploy, or the pool has the wrong type.
    """
    repo = settings.repo.expanduser().resolve()
    for entrypoint in (TRAINING_ENTRYPOINT, PREDICT_ENTRYPOINT):
        if not (repo / entrypoint.split(":")[0]).is_file():
            raise ValueError(f"{repo} has no {entrypoint.split(':')[0]}: pass --repo <checkout>")
    # Checked first: a bad cron or time zone stops here, before anything changes on the server.
    try:
        ZoneInfo(settings.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(
            f"unknown time zone {settings.timezone!r}: use an IANA name such as UTC or "
            "Europe/Berlin"
        ) from None
    retrain_schedule = Cron(settings.retrain_cron, timezone=settings.timezone)
    predict_schedule = Cron(settings.predict_cron, timezone=settings.timezone)
    ensure_process_pool(settings.pool)
    common = {"work_pool_name": settings.pool, "build": False, "push": False,
              "print_next_steps": False, "ignore_warnings": True,
              "paused": settings.paused}  # fmt: skip
    ids: dict[str, UUID] = {}
    training = flow.from_source(source=str(repo), entrypoint=TRAINING_ENTRYPOINT)
    ids[RETRAIN] = training.deploy(
        name=RETRAIN,
        schedules=[retrain_schedule],
        # Scrape is forced so new posts are collected; DVC then re-runs later stages only if
        # the data changed. One run at a time: two `dvc repro` in one checkout would collide.
        parameters={"repo": str(repo), "force_stages": ["scrape"]},
        concurrency_limit=1,
        description="Collect new posts and retrain through DVC; the register stage decides "
        "whether the new model becomes champion.",
        tags=["taglens", "training"],
        **common,
    )
    predict = flow.from_source(source=str(repo), entrypoint=PREDICT_ENTRYPOINT)
    parameters = {"input": _inside(repo, settings.predict_input),
                  "output": _inside(repo, settings.predict_output)}  # fmt: skip
    if settings.model_uri:
        parameters["model_uri"] = settings.model_uri
    if "params_path" in predict.parameters.properties:  # the checkout's params, not the cwd's
        parameters["params_path"] = str(repo / "params.yaml")
    ids[PREDICT] = predict.deploy(
        name=PREDICT,
        schedules=[predict_schedule],
        parameters=parameters,
        concurrency_limit=1,
        description="Score the images under `input` with the champion model into `output`.",
        tags=["taglens", "predict"],
        **common,
    )
    for name, deployment_id in ids.items():
        logger.info("deployment %s: %s", name, deployment_id)
    return ids


def main(argv: list[str] | None = None) -> int:
    """Parse options and deploy both flows."""
    from taglens.cli import run_main, setup_logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default = DeploySettings(repo=Path("."))
    parser.add_argument("--repo", type=Path, default=Path("."), help="the taglens checkout")
    parser.add_argument("--pool", default=default.pool, help="process work pool name")
    parser.add_argument("--timezone", default=default.timezone, help="IANA zone of the crons")
    parser.add_argument("--retrain-cron", default=default.retrain_cron)
    parser.add_argument("--predict-cron", default=default.predict_cron)
    parser.add_argument("--predict-input", default=default.predict_input)
    parser.add_argument("--predict-output", default=default.predict_output)
    parser.add_argument("--model-uri", default=None, help="default: the champion model")
    parser.add_argument("--paused", action="store_true", help="create the schedules paused")
    args = parser.parse_args(argv)
    setup_logging()
    settings = DeploySettings(
        repo=args.repo, pool=args.pool, timezone=args.timezone, retrain_cron=args.retrain_cron,
        predict_cron=args.predict_cron, predict_input=args.predict_input,
        predict_output=args.predict_output, model_uri=args.model_uri, paused=args.paused,
    )  # fmt: skip

    def body() -> int:
        for name, deployment_id in deploy_all(settings).items():
            print(f"{name}: {deployment_id}")
        return 0

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
