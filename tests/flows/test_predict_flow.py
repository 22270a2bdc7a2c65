"""The batch predict flow: local and Dask paths give the same rows; resume; bad runner."""

from __future__ import annotations

import pytest
from PIL import Image

from flows.predict import batch_predict_flow, cached_model
from taglens.batch_outputs import read_rows
from tests.conftest import FIXTURES

PARAMS = str(FIXTURES / "params.yaml")


def _photos(folder, count):
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        Image.new("RGB", (36 + i, 33), ((29 * i) % 256, 90, (200 - 13 * i) % 256)).save(
            folder / f"p{i:02d}.png")
    (folder / "p05.png").write_bytes(b"GIF89a but not really")  # a bad file mid-way


@pytest.mark.slow
def test_dask_path_gives_exactly_the_local_rows_and_resumes(tmp_path, tiny_models_dir,
                                                            prefect_server):
    _photos(tmp_path / "photos", 11)
    common = {"model_uri": str(tiny_models_dir), "params_path": PARAMS, "batch_size": 4,
              "shard_size": 3}
    local_out = tmp_path / "local.parquet"
    local = batch_predict_flow(str(tmp_path / "photos"), str(local_out), **common)
    assert (local["scored"], local["errors"], local["total"]) == (10, 1, 11)

    dask_out = tmp_path / "dask.parquet"
    # An earlier run got through the first four images: the Dask run must add only the rest.
    first = tmp_path / "first.txt"
    first.write_text("\n".join(f"photos/p{i:02d}.png" for i in range(4)))
    batch_predict_flow(str(first), str(dask_out), **common)
    assert len(list(read_rows(dask_out))) == 4

    summary = batch_predict_flow(str(tmp_path / "photos"), str(dask_out), task_runner="dask",
                                 **common)
    assert (summary["skipped"], summary["scored"], summary["errors"]) == (4, 6, 1)
    assert list(read_rows(dask_out)) == list(read_rows(local_out))
    assert not (tmp_path / "dask.parquet.shards").exists()
    assert not (tmp_path / "dask.parquet.parts").exists()


def test_unknown_task_runner_is_refused(tmp_path, tiny_models_dir):
    _photos(tmp_path / "photos", 6)
    with pytest.raises(ValueError, match="task_runner must be one of"):
        batch_predict_flow.fn(str(tmp_path / "photos"), str(tmp_path / "o.csv"),
                              str(tiny_models_dir), task_runner="ray", params_path=PARAMS)


def test_a_process_loads_each_model_once(tiny_models_dir):
    first = cached_model(str(tiny_models_dir), None)
    assert cached_model(str(tiny_models_dir), None) is first
    assert first.image_size == 32


@pytest.mark.slow
def test_an_empty_inbox_is_nothing_to_do(tmp_path, tiny_models_dir, prefect_server):
    (tmp_path / "inbox").mkdir()
    summary = batch_predict_flow(str(tmp_path / "inbox"), str(tmp_path / "o.parquet"),
                                 str(tiny_models_dir), params_path=PARAMS)
    assert (summary["total"], summary["scored"]) == (0, 0)
    assert not (tmp_path / "o.parquet").exists()
