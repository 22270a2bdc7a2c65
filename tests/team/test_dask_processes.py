"""Featurize through the team's Dask scheduler and its two separate worker processes.

The workers are `dask worker` processes started by taglens.services, not a LocalCluster: they
import the checkout's code themselves and read the images (and write the feature shards) through
the paths the flow ships, which the shared storage makes the same on every machine. The result
is byte-identical to the local stage's. (Batch predict through the same scheduler is held by
test_two_machines.py: machine B's scores equal machine A's.)
"""

from __future__ import annotations

import os
import sys

import cloudpickle
import numpy as np
import psutil
import pytest
from distributed import Client

from flows.featurize import featurize_flow
from stages.featurize import run as run_stage
from taglens.features.store import FEATURES_FILE, META_FILE
from taglens.params import load_params
from tests.helpers.params import write_tiny_params
from tests.helpers.rawdata import solid_raw

pytestmark = [pytest.mark.slow]

COLOURS = {
    "art": [(200, 30, 30), (180, 60, 20), (150, 90, 10), (120, 120, 0)],
    "food": [(30, 200, 30), (60, 180, 20), (90, 150, 10)],
    "sports": [(30, 30, 200), (20, 60, 180), (10, 90, 150), (0, 120, 120), (70, 70, 70)],
}


def _repo(root):
    solid_raw(root / "data" / "raw", COLOURS)
    write_tiny_params(root / "params.yaml", {"featurize.batch_size": 4})
    return root


def _features(out):
    with np.load(out / FEATURES_FILE, allow_pickle=False) as data:
        return data["sha256"], data["vectors"]


def test_featurize_on_separate_worker_processes_equals_the_local_stage(tmp_path, team_services):
    from prefect.settings import PREFECT_API_URL, temporary_settings

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

    shared = _repo(tmp_path / "shared")
    with temporary_settings(updates={PREFECT_API_URL: team_services.prefect_api_url}):
        summary = featurize_flow(
            str(shared),
            task_runner="dask",
            scheduler_address=team_services.dask_address,
            shard_size=4,
        )
    assert (summary["computed"], summary["cached"], summary["shards"]) == (12, 0, 3)
    (shas, vectors), (local_shas, local_vectors) = (
        _features(shared / "data" / "features"),
        _features(local / "data" / "features"),
    )
    assert shas.tolist() == local_shas.tolist()
    assert vectors.tobytes() == local_vectors.tobytes()
    assert (shared / "data" / "features" / META_FILE).read_bytes() == (
        local / "data" / "features" / META_FILE
    ).read_bytes()
    # And the shards ran in the separate worker processes (the services' own), each of
    # which built its extractor once
    # (this test module is not importable on the workers: ship its helper by value)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    with Client(team_services.dask_address, timeout=10) as client:
        pids = client.run(os.getpid)
        built = client.run(_extractors_built)
    # (`dask worker` runs a nanny that starts the worker process and restarts it if it dies)
    nannies = sorted(psutil.Process(pid).ppid() for pid in pids.values())
    assert nannies == sorted(team_services.pids["dask-worker"])
    assert os.getpid() not in pids.values()
    assert sum(built.values()) >= 1 and set(built.values()) <= {0, 1}


def _extractors_built() -> int:
    """Views models this process built for featurize shards (taglens.features.views' cache)."""
    module = sys.modules.get("taglens.features.views")
    return len(module._VIEW_MODELS) if module is not None else 0
