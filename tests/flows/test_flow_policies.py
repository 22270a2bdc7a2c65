"""Flow policies: which failures are retried, and that scheduled flows cannot run forever."""

from __future__ import annotations

import time
from collections import deque
from pathlib import Path

import pytest
from prefect import flow, task
from prefect.states import Completed, Failed

from flows import training as training_module
from flows.featurize import shard_task
from flows.runners import SHARD_RETRIES, retry_unless_user_error, shard_results
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


@task
def _shard(seconds: float, value: str) -> str:
    time.sleep(seconds)
    if value == "bad":
        raise TaglensError("shard bad cannot be computed")
    return value


@task
def _last_shard() -> int:
    """A shard still running while the others finish: how many tasks the scheduler then holds
    (its own only, once the others' results are released; polled for up to 20 s)."""
    from distributed import get_client

    time.sleep(0.5)  # the others are done by now
    return _held_keys(get_client(), 1, timeout=20)


def _held_keys(client, want: int, timeout: float = 10.0) -> int:
    """The scheduler's task count, polled until it is `want` (releases reach it asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        held = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
        if held == want or time.monotonic() > deadline:
            return held
        time.sleep(0.1)


@pytest.mark.slow
def test_shard_results_are_collected_as_shards_finish_and_leave_nothing_on_a_worker(
    prefect_server,
):
    from prefect_dask import DaskTaskRunner

    runner = DaskTaskRunner(
        cluster_kwargs={
            "n_workers": 1,
            "threads_per_worker": 3,
            "processes": False,
            "protocol": "tcp",
            "host": "127.0.0.1",
            "dashboard_address": "127.0.0.1:0",
        }
    )

    @flow(task_runner=runner)
    def ordered(values: list[tuple[float, str]]) -> tuple[list, int]:
        futures = [_shard.submit(seconds, value) for seconds, value in values]
        client = futures[0].wrapped_future.client
        try:
            results = shard_results(futures)
        except TaglensError as error:
            results = [str(error)]
        # a result the scheduler still held would be computed again if its worker died
        return results, _held_keys(client, 0)

    @flow(task_runner=runner)
    def first_submitted_finishes_last() -> list:
        last = _last_shard.submit()
        return shard_results([last, _shard.submit(0.0, "a"), _shard.submit(0.0, "b")])

    # Given shards that finish in the reverse of their submission order
    # Then their results come back in submission order, and no result stays on the cluster
    assert ordered([(0.6, "a"), (0.3, "b"), (0.0, "c")]) == (["a", "b", "c"], 0)
    # And a shard that fails raises its own error, and the others' results are released too
    assert ordered([(0.0, "bad"), (0.5, "a")]) == (["shard bad cannot be computed"], 0)
    # And the shards that finish early are collected (released) while the first one still runs
    assert first_submitted_finishes_last() == [1, "a", "b"]


def test_a_stage_stopped_mid_run_leaves_nothing_running(tmp_path):
    # Given a command that starts a child and does not pass signals on (as `dvc repro` starts
    # run.sh and the stage), streamed by the flow until its log gives up (a timeout, a crash)
    import logging

    import psutil

    from flows.stagerun import _stream

    started = tmp_path / "child.pid"
    command = ["sh", "-c", f"sleep 120 & echo $! > {started}; echo started; wait"]

    class GivingUp(logging.Logger):
        def info(self, message, *args, **kwargs):
            if "started" in str(args):
                raise RuntimeError("the flow run timed out")

    # When the streaming stops with an error
    with pytest.raises(RuntimeError, match="timed out"):
        _stream(command, tmp_path, {"PATH": "/usr/bin:/bin"}, "x", deque(maxlen=5), GivingUp("x"))

    # Then the command's child is stopped too, not left running as an orphan
    child = int(started.read_text())

    def running() -> bool:
        try:
            return psutil.Process(child).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            return False

    deadline = time.monotonic() + 10
    while running():
        assert time.monotonic() < deadline, "the child of the stopped command still runs"
        time.sleep(0.1)
