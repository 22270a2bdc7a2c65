"""The batch predict flow: local and Dask paths give the same rows; resume; bad runner."""

from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from flows.predict import ARTIFACT_KEY, TIMEOUT_S, batch_predict_flow, cached_model, score_task
from taglens.serving.batch.outputs import read_rows
from tests.helpers.params import tiny_params_path, write_tiny_params

PARAMS = str(tiny_params_path())


# float32 inference is not bit-for-bit reproducible across batchings: the Dask shards group the
# images into different batches than the local run, and on some CPUs the oneDNN/Eigen kernels then
# sum in another order, which shows in about the 8th significant digit (seen: 0.1271117627620697
# against 0.1271117776632309). Scores therefore match to a relative 1e-5, far below any
# difference a user could act on; everything users rely on (which rows, their order, paths,
# hashes, the ranked hashtags, the top class, model, error rows) must match exactly.
SCORE_RTOL = 1e-5


def _exact_part(row):
    """A row without its float scores: compared exactly."""
    exact = {key: value for key, value in row.items() if key not in ("top_probability", "hashtags")}
    exact["hashtags"] = [tag["tag"] for tag in row["hashtags"] or []]
    return exact


def _scores(row):
    """A row's float scores, in order: the top probability, then each hashtag's score."""
    top = [] if row["top_probability"] is None else [row["top_probability"]]
    return top + [tag["score"] for tag in row["hashtags"] or []]


def _assert_same_rows(got, expected):
    assert [_exact_part(row) for row in got] == [_exact_part(row) for row in expected]
    for got_row, expected_row in zip(got, expected, strict=True):
        assert _scores(got_row) == pytest.approx(_scores(expected_row), rel=SCORE_RTOL, abs=0)


def _photos(folder, count):
    import os

    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        # p08's name is Latin-1 bytes, not UTF-8 (a Windows share): it must reach the Dask
        # subflow through the Prefect API's JSON too
        name = os.fsdecode(b"p08-caf\xe9.png") if i == 8 else f"p{i:02d}.png"
        Image.new("RGB", (36 + i, 33), ((29 * i) % 256, 90, (200 - 13 * i) % 256)).save(
            folder / name, format="PNG"
        )
    (folder / "p05.png").write_bytes(b"GIF89a but not really")  # a bad file mid-way


@pytest.mark.slow
def test_dask_path_gives_exactly_the_local_rows_and_resumes(tmp_path, tiny_models_dir, prefect_api):
    _photos(tmp_path / "photos", 11)
    common = {
        "model_uri": str(tiny_models_dir),
        "params_path": PARAMS,
        "batch_size": 4,
        "shard_size": 3,
    }
    local_out = tmp_path / "local.parquet"
    local = batch_predict_flow(str(tmp_path / "photos"), str(local_out), **common)
    assert (local["scored"], local["errors"], local["total"]) == (10, 1, 11)

    dask_out = tmp_path / "dask.parquet"
    # An earlier run got through the first four images: the Dask run must add only the rest.
    first = tmp_path / "first.txt"
    first.write_text("\n".join(f"photos/p{i:02d}.png" for i in range(4)))
    batch_predict_flow(str(first), str(dask_out), **common)
    assert len(list(read_rows(dask_out))) == 4

    state = batch_predict_flow(
        str(tmp_path / "photos"), str(dask_out), task_runner="dask", return_state=True, **common
    )
    summary = state.result()
    assert (summary["skipped"], summary["scored"], summary["errors"]) == (4, 6, 1)
    dask_rows, local_rows = list(read_rows(dask_out)), list(read_rows(local_out))
    assert len(local_rows) == 11 and sum(row["error"] is not None for row in local_rows) == 1
    _assert_same_rows(dask_rows, local_rows)
    assert not (tmp_path / "dask.parquet.shards").exists()
    assert not (tmp_path / "dask.parquet.parts").exists()
    # And the run publishes what it did, like the training flow
    [artifact] = prefect_api.artifacts(state.state_details.flow_run_id)
    assert artifact.key == ARTIFACT_KEY and artifact.type == "markdown"
    assert "| task runner | dask |" in artifact.data and "| scored | 6 |" in artifact.data
    assert "| skipped (already scored) | 4 |" in artifact.data and "| errors | 1 |" in artifact.data


def test_unknown_task_runner_is_refused(tmp_path, tiny_models_dir):
    _photos(tmp_path / "photos", 6)
    with pytest.raises(ValueError, match="task_runner must be one of"):
        batch_predict_flow.fn(
            str(tmp_path / "photos"),
            str(tmp_path / "o.csv"),
            str(tiny_models_dir),
            task_runner="ray",
            params_path=PARAMS,
        )


def test_a_process_loads_each_model_once(tiny_models_dir):
    first = cached_model(str(tiny_models_dir), None, "tensorflow")
    assert cached_model(str(tiny_models_dir), None, "tensorflow") is first
    assert first.image_size == 32


@pytest.mark.slow
def test_an_empty_inbox_is_nothing_to_do(tmp_path, tiny_models_dir, prefect_server):
    (tmp_path / "inbox").mkdir()
    summary = batch_predict_flow(
        str(tmp_path / "inbox"),
        str(tmp_path / "o.parquet"),
        str(tiny_models_dir),
        params_path=PARAMS,
    )
    assert (summary["total"], summary["scored"]) == (0, 0)
    assert not (tmp_path / "o.parquet").exists()


def test_shards_retry_and_the_nightly_flow_has_a_timeout():
    # A shard resumes where it stopped, so a retry after a lost worker redoes only the rest
    assert score_task.retries == 2
    assert batch_predict_flow.timeout_seconds == TIMEOUT_S


@pytest.mark.slow
def test_a_failed_shard_is_retried_and_finishes(
    tmp_path, tiny_models_dir, prefect_server, monkeypatch
):
    import flows.predict as predict_flow

    # Given a worker that is lost the first time it loads the model
    _photos(tmp_path / "photos", 7)
    calls = []
    real = predict_flow.cached_model

    def flaky(uri, tracking_uri, engine):
        calls.append(uri)
        if len(calls) == 1:
            raise OSError("worker lost")
        return real(uri, tracking_uri, engine)

    monkeypatch.setattr(predict_flow, "cached_model", flaky)
    monkeypatch.setattr(
        predict_flow, "score_task", predict_flow.score_task.with_options(retry_delay_seconds=0)
    )
    # When the flow scores the photos
    summary = batch_predict_flow(
        str(tmp_path / "photos"),
        str(tmp_path / "o.jsonl"),
        str(tiny_models_dir),
        params_path=PARAMS,
    )
    # Then the task was retried once and every photo has its row
    assert len(calls) == 2
    assert (summary["scored"], summary["errors"], summary["total"]) == (6, 1, 7)
    assert len(list(read_rows(tmp_path / "o.jsonl"))) == 7


@pytest.mark.slow
def test_the_flow_refuses_images_over_ingest_max_pixels(tmp_path, tiny_models_dir, prefect_server):
    # Given photos of 36x33 = 1188 pixels and up (and _photos' bad file), and a pixel limit
    # between the first two
    _photos(tmp_path / "photos", 4)
    params = write_tiny_params(tmp_path / "params.yaml", {"ingest.max_pixels": 1200})
    # When the flow scores them, locally and on Dask
    local = batch_predict_flow(
        str(tmp_path / "photos"),
        str(tmp_path / "local.jsonl"),
        str(tiny_models_dir),
        params_path=str(params),
    )
    sharded = batch_predict_flow(
        str(tmp_path / "photos"),
        str(tmp_path / "dask.jsonl"),
        str(tiny_models_dir),
        params_path=str(params),
        task_runner="dask",
        shard_size=2,
        n_workers=1,
    )
    # Then only the first photo is scored; the larger ones are refused by the limit, by name
    for summary, output in ((local, "local.jsonl"), (sharded, "dask.jsonl")):
        assert (summary["scored"], summary["errors"], summary["total"]) == (1, 4, 5)
        rows = {Path(row["path"]).name: row["error"] for row in read_rows(tmp_path / output)}
        assert rows["p00.png"] is None
        for name in ("p01.png", "p02.png", "p03.png"):
            assert "ingest.max_pixels" in rows[name]
