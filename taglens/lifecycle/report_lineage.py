"""Which model a report was written for: register must not gate one model on another's metrics."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from taglens.errors import TaglensError

logger = logging.getLogger(__name__)

RUN_KEY = "model_run_id"  # written into metrics.json by the evaluate stage


def check_metrics_run(metrics: Path | str, run_id: str) -> None:
    """Refuse a metrics.json that evaluate wrote for another train run than `run_id`.

    After a failed or skipped evaluate, metrics.json can be the previous model's: registering the
    new model with it would promote (or keep out) a model on numbers it never earned.

    Raises:
        ValueError: metrics.json names another run (the message says how to fix it).
    """
    metrics = Path(metrics)
    try:
        stated = json.loads(metrics.read_text(encoding="utf-8")).get(RUN_KEY)
    except (OSError, ValueError, AttributeError):
        return  # missing or malformed: read_metrics reports it in its own words
    if not stated:
        logger.warning("%s names no %s (written before evaluate recorded it): cannot check that "
                       "it belongs to run %s", metrics, RUN_KEY, run_id)  # fmt: skip
        return
    if stated != run_id:
        raise TaglensError(
            f"{metrics} holds the metrics of train run {stated}, but model_info.json is run "
            f"{run_id}: run the evaluate stage for this model (`dvc repro evaluate`) first"
        )
