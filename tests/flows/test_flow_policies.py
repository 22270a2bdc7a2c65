"""Flow policies: which failures are retried, and that scheduled flows cannot run forever."""

from __future__ import annotations

from pathlib import Path

import pytest
from prefect.states import Completed, Failed

from flows import training as training_module
from flows.featurize import shard_task
from flows.runners import SHARD_RETRIES, retry_unless_user_error
from flows.stagerun import USER_ERROR_EXIT, StageError
from flows.training import TIMEOUT_S, training_flow
from taglens.errors import TaglensError
from taglens.params import ParamsError


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (OSError("worker lost"), True),
        (RuntimeError("killed"), True),
        (TaglensError("image 3 is not an image"), False),
        (ParamsError("featurize.batch_size must be >= 1"), False),
        # a DVC stage: its command crashed (retried), rejected its input, or DVC itself failed
        (StageError("scrape", 1, ["connection reset"], stage_exit=1), True),
        (StageError("scrape", 1, ["bad param"], stage_exit=USER_ERROR_EXIT), False),
        (StageError("scrape", 1, ["invalid dvc.yaml"], stage_exit=None), False),
    ],
)
def test_a_shard_is_retried_unless_the_user_must_fix_something(error, retried):
    state = Failed(data=error)
    assert retry_unless_user_error(None, None, state) is retried


def test_a_completed_state_is_not_retried():
    assert retry_unless_user_error(None, None, Completed(data=1)) is False


def test_featurize_shards_retry_and_the_weekly_retrain_has_a_timeout():
    assert shard_task.retries == SHARD_RETRIES > 0
    assert shard_task.retry_condition_fn is retry_unless_user_error
    # the training flow's scrape stage retries by the same rule (flows/training.py)
    source = Path(training_module.__file__).read_text(encoding="utf-8")
    assert source.count("retry_condition_fn=retry_unless_user_error") == 1
    assert training_flow.timeout_seconds == TIMEOUT_S == 12 * 3600
