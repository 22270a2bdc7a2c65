"""Serve both scheduled flows from this one process: the one-machine setup, no worker needed.

`prefect.serve` registers the weekly retrain and the nightly batch predict as deployments of this
process and runs each scheduled run here, as a subprocess, until stopped (Ctrl-C pauses the
schedules). It needs a Prefect server for the schedules (`make prefect-server`, then
`PREFECT_API_URL`); `make schedule` does both. Many machines use the server, a work pool and
workers instead (`flows.deploy`, docs/prefect.md): the deployments and parameters are the same.

    python -m flows.schedule [--repo .] [--retrain-cron "0 3 * * 1"] ...
"""

from __future__ import annotations

import argparse
import logging
from typing import Any

from flows.deploy import (
    PREDICT,
    PREDICT_DESCRIPTION,
    RETRAIN,
    RETRAIN_DESCRIPTION,
    DeploySettings,
    add_schedule_options,
    checked_schedules,
    predict_parameters,
    retrain_parameters,
    settings_from,
)

logger = logging.getLogger(__name__)


def served_deployments(settings: DeploySettings) -> list[Any]:
    """The two deployments `prefect.serve` runs, with the same names and parameters as deployed.

    Raises:
        TaglensError: the checkout has no flows, or the time zone is unknown.
    """
    from flows.predict import batch_predict_flow
    from flows.training import training_flow

    repo, retrain_schedule, predict_schedule = checked_schedules(settings)
    common = {"paused": settings.paused, "concurrency_limit": 1}
    return [
        training_flow.to_deployment(
            name=RETRAIN,
            schedules=[retrain_schedule],
            parameters=retrain_parameters(repo),
            description=RETRAIN_DESCRIPTION,
            tags=["taglens", "training"],
            **common,
        ),
        batch_predict_flow.to_deployment(
            name=PREDICT,
            schedules=[predict_schedule],
            parameters=predict_parameters(repo, settings),
            description=PREDICT_DESCRIPTION,
            tags=["taglens", "predict"],
            **common,
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    """Parse options, then serve both deployments until interrupted."""
    from taglens.cli import run_main, setup_logging

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_schedule_options(parser)
    args = parser.parse_args(argv)
    setup_logging()

    def body() -> int:
        from prefect import serve

        serve(*served_deployments(settings_from(args)))
        return 0

    return run_main(body)


if __name__ == "__main__":
    raise SystemExit(main())
