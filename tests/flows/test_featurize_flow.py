"""The featurize flow: the Dask path leaves exactly what the local stage leaves; re-runs free."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from flows.featurize import featurize_flow
from stages.featurize import run as run_stage
from taglens.errors import TaglensError
from taglens.features.store import FEATURES_FILE, META_FILE, STORE_DIR
from taglens.features.views import views_model_cached
from taglens.params import load_params
from tests.helpers.params import write_tiny_params
from tests.helpers.rawdata import solid_raw

COLOURS = {
    "art": [(200, 30, 30), (180, 60, 20), (150, 90, 10), (120, 120, 0)],
    "food": [(30, 200, 30), (60, 180, 20), (90, 150, 10), (30, 200, 30)],  # one duplicate image
    "sports": [(30, 30, 200), (20, 60, 180), (10, 90, 150), (0, 120, 120), (70, 70, 70)],
}
UNIQUE = 12  # 13 posts, 12 distinct images


def _repo(root, batch_size: int = 4):
    """A repo dir with data/raw and a params.yaml whose featurize batch is `batch_size`."""
    solid_raw(root / "data" / "raw", COLOURS)
    write_tiny_params(root / "params.yaml", {"featurize.batch_size": batch_size})
    return root


def _features(out):
    with np.load(out / FEATURES_FILE, allow_pickle=False) as data:
        return data["sha256"], data["vectors"]


@pytest.mark.slow
def test_dask_path_gives_exactly_the_local_stage_features(tmp_path, prefect_server):
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

    remote = _repo(tmp_path / "remote")
    summary = featurize_flow(str(remote), task_runner="dask", n_workers=2, shard_size=4)
    assert (summary["computed"], summary["cached"], summary["shards"]) == (UNIQUE, 0, 3)
    assert (summary["count"], summary["dim"]) == (13, 512)

    (shas, vectors), (local_shas, local_vectors) = (
        _features(remote / "data" / "features"),
        _features(local / "data" / "features"),
    )
    assert shas.tolist() == local_shas.tolist()
    assert vectors.shape == (13, 512) and vectors.dtype == np.float32
    assert vectors.tobytes() == local_vectors.tobytes()  # byte-identical, not merely close
    meta = (remote / "data" / "features" / META_FILE).read_bytes()
    assert meta == (local / "data" / "features" / META_FILE).read_bytes()
    store = remote / "data" / "features" / STORE_DIR / json.loads(meta)["store"]
    shards = sorted(store.glob("shard-*.npz"))
    assert len(shards) == 3

    # A second run finds everything in the store: no shard, no new file.
    again = featurize_flow(str(remote), task_runner="dask", n_workers=2, shard_size=4)
    assert (again["computed"], again["cached"], again["shards"]) == (0, UNIQUE, 0)
    assert sorted(store.glob("shard-*.npz")) == shards
    assert _features(remote / "data" / "features")[1].tobytes() == local_vectors.tobytes()

    # A run killed after one shard: the Dask run computes only the shards that are missing.
    shards[0].unlink()
    resumed = featurize_flow(str(remote), task_runner="dask", n_workers=2, shard_size=4)
    assert (resumed["computed"], resumed["shards"]) == (4, 1)
    assert _features(remote / "data" / "features")[1].tobytes() == local_vectors.tobytes()


@pytest.mark.slow
def test_local_runner_is_the_stage(tmp_path, prefect_server):
    repo, stage = _repo(tmp_path / "repo"), _repo(tmp_path / "stage")
    summary = featurize_flow(str(repo))
    assert (summary["computed"], summary["cached"], summary["shards"]) == (UNIQUE, 0, 0)
    params = load_params(stage / "params.yaml")
    run_stage(
        params.model,
        params.featurize,
        params.clean,
        seed=params.base.seed,
        raw=stage / "data" / "raw",
        out=stage / "data" / "features",
        progress=False,
    )
    vectors = _features(repo / "data" / "features")[1]
    assert vectors.shape == (13, 512)
    assert vectors.tobytes() == _features(stage / "data" / "features")[1].tobytes()


def test_bad_runner_and_missing_images_are_refused(tmp_path):
    repo = _repo(tmp_path / "repo")
    with pytest.raises(ValueError, match="task_runner must be one of"):
        featurize_flow.fn(str(repo), task_runner="ray")
    shutil.rmtree(repo / "data" / "raw" / "images")
    with pytest.raises(FileNotFoundError, match="re-run the scrape stage"):
        featurize_flow.fn(str(repo), task_runner="dask")


def test_a_process_builds_each_views_model_once(tiny_params):
    model = tiny_params.model.model_dump()
    first = views_model_cached(model, 42, ("vectors", "flip"))
    assert views_model_cached(model, 42, ("vectors", "flip")) is first
    assert {name: tuple(out.shape) for name, out in first.output.items()} == {
        "vectors": (None, 512),
        "flip": (None, 512),
    }
    assert views_model_cached(model, 42, ("colour",)) is not first


def test_the_dask_path_refuses_the_int8_engine(tmp_path):
    # Given a repo whose params ask for INT8 (quantized in the stage's one process)
    repo = _repo(tmp_path / "repo")
    write_tiny_params(repo / "params.yaml", {"featurize.engine": "openvino-int8"})
    # When the flow is asked to featurize on Dask, then it stops at once and says what to do
    with pytest.raises(TaglensError, match=r"openvino-int8 runs in the stage's process only"):
        featurize_flow.fn(repo=str(repo), task_runner="dask")
    assert not (repo / "data" / "features").exists()
