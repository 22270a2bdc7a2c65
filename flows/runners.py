"""What the flows share: the Dask task runner, its shard results, the one retry rule."""

from __future__ import annotations

from typing import Any


def dask_runner(scheduler_address: str | None, n_workers: int) -> Any:
    """A `DaskTaskRunner` on a running scheduler, or on a local loopback cluster.

    Args:
        scheduler_address: a running Dask scheduler (`tcp://host:8786`); None starts a
            `LocalCluster` for the flow run and stops it afterwards.
        n_workers: worker processes of the local cluster (one thread each: TensorFlow already
            uses every core for one batch).

    Returns:
        A `prefect_dask.DaskTaskRunner`.
    """
    from prefect_dask import DaskTaskRunner

    if scheduler_address:
        return DaskTaskRunner(address=scheduler_address)
    # Loopback only, no dashboard: a local cluster must not listen on the network.
    return DaskTaskRunner(
        cluster_kwargs={
            "n_workers": n_workers,
            "threads_per_worker": 1,
            "host": "127.0.0.1",
            "dashboard_address": "127.0.0.1:0",
        }
    )


def shard_results(futures: list[Any]) -> list[Any]:
    """The results of shard tasks submitted to a Dask task runner, in submission order.

    Each result is collected as soon as its shard is done and its Dask future released. A result
    the scheduler still holds lives on the worker that computed it: when that worker dies, Dask
    computes the shard again (PrefectHQ/prefect#15442), a re-run of a task run Prefect already
    finished, which can leave the flow waiting on it.

    Raises:
        the error of the first shard to fail (after its retries), as `PrefectFuture.result`
            does.
    """
    from distributed import as_completed

    if not futures:
        return []
    index_of = {future.wrapped_future: index for index, future in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    # the task runner's client is not the process's default one: name its loop
    loop = futures[0].wrapped_future.client.loop
    try:
        for done in as_completed(list(index_of), loop=loop):
            index = index_of[done]
            results[index] = futures[index].result()
            done.release()
    finally:  # a failed shard leaves the others' results held on their workers otherwise
        for pending in index_of:
            pending.release()  # releasing twice is harmless
    return results


# Shard tasks write their result atomically and resume (finished shards and scored rows are kept),
# so retrying one after a lost worker or a crash is safe and redoes only what was unfinished.
SHARD_RETRIES = 2
SHARD_RETRY_DELAY_S = 10


def retry_unless_user_error(task: Any, task_run: Any, state: Any) -> bool:
    """Prefect `retry_condition_fn`, the one retry rule: retry unless the user must fix something.

    A failed DVC stage (`StageError`) is retried when its command crashed, not when it rejected a
    param or an input or DVC itself failed (`may_be_transient`). A `TaglensError` (bad input,
    param or model) fails the same way every time. Anything else (a killed worker, a full disk
    freed meanwhile, a flaky network store, an unreadable result) may pass on a retry.
    """
    from flows.stagerun import StageError
    from taglens.errors import TaglensError

    try:
        state.result(raise_on_failure=True)
    except StageError as error:
        return error.may_be_transient
    except TaglensError:
        return False
    except BaseException:  # noqa: BLE001 - any other failure is worth another attempt
        return True
    return False
