"""The Dask task runner the scale-out flows share (batch predict, featurize)."""

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
    return DaskTaskRunner(cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1,
                                          "host": "127.0.0.1", "dashboard_address": "127.0.0.1:0"})
