"""A Dask worker killed in the middle of featurize: the job finishes, no shard lost or doubled.

The test's own scheduler and two `dask worker` processes (taglens.services, as on two worker
machines) compute the feature shards. Once the first shard is in the store, the worker busy with
a shard is killed with its nanny (SIGKILL to the whole `dask worker` process group: the machine
is gone, nothing restarts it). The scheduler hands the lost shard to the other worker; each shard
file's name comes from its images and is written atomically, so whatever the killed worker left
is either a whole shard or nothing. Then every store holds every image exactly once, with the
vectors of an uninterrupted local run.
"""

from __future__ import annotations

import os
import pprint
import signal
import threading
import time

import numpy as np
import psutil
import pytest
from distributed import Client

from flows.featurize import featurize_flow
from stages.featurize import run as run_stage
from taglens.features.store import FEATURES_FILE, STORE_DIR
from taglens.params import load_params
from tests.helpers.params import write_tiny_params
from tests.helpers.rawdata import solid_raw

pytestmark = [pytest.mark.slow]

IMAGES = 48
SHARD = 4  # images per shard: 12 shards, so the kill lands with most of them still to do


def _repo(root):
    colours = {
        label: [(base + 5 * i, 200 - 4 * i, (base * 3 + 7 * i) % 256) for i in range(IMAGES // 3)]
        for label, base in (("art", 10), ("food", 90), ("sports", 170))
    }
    solid_raw(root / "data" / "raw", colours)
    write_tiny_params(root / "params.yaml", {"featurize.batch_size": SHARD})
    return root


def _store_rows(features):
    """Each store (its folder name) -> every (sha256, vector) over all its shard files."""
    rows = {}
    for store in sorted((features / STORE_DIR).iterdir()):
        rows[store.name] = []
        for shard in sorted(store.glob("shard-*.npz")):
            with np.load(shard, allow_pickle=False) as data:
                rows[store.name] += list(zip(data["sha256"].tolist(), data["vectors"], strict=True))
    return rows


def _kill_a_busy_worker(client, store_dir, timeout=240):
    """SIGKILL the `dask worker` group whose worker is computing a shard, once one shard is done.

    Returns the number of shard files present at the kill.
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done = len(list(store_dir.glob("*/shard-*.npz"))) if store_dir.is_dir() else 0
        busy = [address for address, keys in client.processing().items() if keys]
        if done and busy:
            pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
            nanny = psutil.Process(pid).ppid()
            os.killpg(nanny, signal.SIGKILL)
            return done
        time.sleep(0.05)
    pytest.fail("featurize never had a finished shard and a busy worker at once")


def _cluster_state(client) -> str:
    """What the scheduler holds and the workers run: the message of a flow that never finished."""

    def task_states(dask_scheduler):
        return {
            str(key): (task.state, str(task.processing_on), task.suspicious)
            for key, task in dask_scheduler.tasks.items()
        }

    try:
        stacks = client.call_stack()
        return (
            f"processing {client.processing()}; tasks {client.run_on_scheduler(task_states)}; "
            f"worker stacks {pprint.pformat(stacks)[:6000]}"
        )
    except Exception as exc:  # noqa: BLE001 - the state is a diagnosis, the failure stands
        return f"the cluster did not answer: {exc!r}"


def test_a_dask_worker_killed_mid_featurize_loses_and_doubles_no_shard(
    tmp_path, own_services, team_services
):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    # Given the vectors of an uninterrupted local run, and a cluster of two worker processes
    local = _repo(tmp_path / "local")
    params = load_params(local / "params.yaml")
    run_stage(
        params.model,
        params.featurize,
        params.clean,
        seed=params.base.seed,
        raw=local / "data" / "raw",
        out=local / "data" / "features",
        progress=False,
    )
    expected = {name: dict(rows) for name, rows in _store_rows(local / "data" / "features").items()}
    _, endpoints = own_services("dask")
    shared = _repo(tmp_path / "shared")

    # When featurize runs on the cluster and a busy worker is killed after the first shard
    outcome = {}

    def run():
        with temporary_settings(updates={PREFECT_API_URL: team_services.prefect_api_url}):
            try:
                outcome["summary"] = featurize_flow(
                    str(shared),
                    task_runner="dask",
                    scheduler_address=endpoints.dask_address,
                    shard_size=SHARD,
                )
            except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
                outcome["error"] = exc

    flow = threading.Thread(target=run)
    flow.start()
    with Client(endpoints.dask_address, timeout=10) as client:
        done_at_kill = _kill_a_busy_worker(client, shared / "data" / "features" / STORE_DIR)
        flow.join(timeout=300)
        survivors = len(client.scheduler_info(n_workers=-1)["workers"])
        hung = _cluster_state(client) if flow.is_alive() else ""

    # Then the job finished on the surviving worker, killed mid-way (shards were still to do)
    assert not flow.is_alive(), f"featurize still running 300 s after the kill: {hung}"
    assert "error" not in outcome, outcome.get("error")
    summary = outcome["summary"]
    assert (summary["computed"], summary["shards"]) == (IMAGES, IMAGES // SHARD)
    assert survivors == 1
    assert done_at_kill < 3 * IMAGES // SHARD  # three stores (image, flip, colour) of 12 shards
    # And every store holds every image exactly once, with the uninterrupted run's vectors
    got = _store_rows(shared / "data" / "features")
    assert sorted(got) == sorted(expected)
    for name, rows in got.items():
        shas = [sha for sha, _ in rows]
        assert len(shas) == len(set(shas)) == IMAGES, name
        assert set(shas) == set(expected[name]), name
        for sha, vector in rows:
            assert vector.tobytes() == expected[name][sha].tobytes(), (name, sha)
    # And features.npz is the local run's
    with (
        np.load(shared / "data" / "features" / FEATURES_FILE) as ours,
        np.load(local / "data" / "features" / FEATURES_FILE) as theirs,
    ):
        assert ours["sha256"].tolist() == theirs["sha256"].tolist()
        assert ours["vectors"].tobytes() == theirs["vectors"].tobytes()
