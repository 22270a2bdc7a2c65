"""Flow policies: which failures are retried, and that scheduled flows cannot run forever."""

from __future__ import annotations

import pytest
from prefect.states import Completed, Failed

from flows.featurize import shard_task
from flows.runners import SHARD_RETRIES, retry_unless_user_error
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
    assert training_flow.timeout_seconds == TIMEOUT_S == 12 * 3600
