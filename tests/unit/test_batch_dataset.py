"""The Parquet output as a dataset: a run adds a part, unchanged photos are not read again."""

from __future__ import annotations

import hashlib
import os

import pandas as pd
import pyarrow.parquet as pq
import pytest

from taglens.errors import TaglensError
from taglens.serving.batch import scoring as batch_scoring
from taglens.serving.batch.outputs import (
    INDEX_FILE,
    parquet_schema,
    read_rows,
    resume_state,
    run_parts,
    write_index,
)
from tests.unit.test_batch_predict import MODEL, FakePredictor, _images, _score


class _CountingHashlib:
    """Stands in for `hashlib` in batch_scoring: counts the files hashed to recognise them."""

    def __init__(self):
        self.sha256_calls = 0

    def sha256(self, data=b""):
        self.sha256_calls += 1
        return hashlib.sha256(data)

    def file_digest(self, handle, name):
        return hashlib.file_digest(handle, name)


@pytest.fixture
def counting(monkeypatch) -> _CountingHashlib:
    shim = _CountingHashlib()
    monkeypatch.setattr(batch_scoring, "hashlib", shim)
    return shim


def test_a_second_run_scores_only_new_photos_and_adds_a_part(tmp_path, counting):
    # Given a folder scored once into a Parquet dataset
    folder = tmp_path / "in"
    old = _images(folder, 10, bad_at=3)
    out = tmp_path / "out.parquet"
    _score(old, out)
    [first] = run_parts(out)
    first_bytes, first_mtime = first.read_bytes(), first.stat().st_mtime_ns
    counting.sha256_calls = 0

    # When new photos arrive and the job runs over the whole folder again
    new = _images(tmp_path / "more", 5)
    predictor = FakePredictor()
    report = _score([*old, *new], out, predictor)

    # Then only the new photos are scored, with their hashes taken from the pixels' read alone
    assert (report.skipped, report.scored, report.errors, predictor.seen) == (10, 5, 0, 5)
    assert counting.sha256_calls == 5  # the five new files; no old file was read to be skipped
    # and the earlier part is untouched: a second part holds the new rows
    parts = run_parts(out)
    assert [p.name for p in parts] == ["run-000000.parquet", "run-000001.parquet"]
    assert first.read_bytes() == first_bytes and first.stat().st_mtime_ns == first_mtime
    assert pq.read_metadata(parts[1]).num_rows == 5
    # and the union (as pandas reads the folder) holds every photo once
    table = pd.read_parquet(out)
    assert sorted(table["path"]) == sorted(str(p) for p in [*old, *new])
    assert list(table.columns) == parquet_schema().names
    assert [r["path"] for r in read_rows(out)] == [str(p) for p in [*old, *new]]
    # and a run with nothing new adds no part
    assert _score([*old, *new], out).skipped == 15 and len(run_parts(out)) == 2


def test_a_touched_photo_is_hashed_once_then_known_again(tmp_path, counting):
    paths = _images(tmp_path / "in", 4)
    out = tmp_path / "out.parquet"
    _score(paths, out)
    # Given a photo whose mtime changed but whose bytes did not
    stat = paths[1].stat()
    os.utime(paths[1], ns=(stat.st_atime_ns, stat.st_mtime_ns + 5_000_000_000))
    counting.sha256_calls = 0
    # When the job runs again, the photo is read to be recognised, not scored again
    predictor = FakePredictor()
    assert _score(paths, out, predictor).skipped == 4 and predictor.seen == 0
    assert counting.sha256_calls == 1
    # and its new stat is recorded: the next run does not read it
    state = resume_state(out, MODEL.name, MODEL.version)
    assert state.hashes[str(paths[1])][:2] == (paths[1].stat().st_size, paths[1].stat().st_mtime_ns)
    counting.sha256_calls = 0
    assert _score(paths, out).skipped == 4 and counting.sha256_calls == 0
    # A photo whose bytes changed is scored again under its new hash
    paths[2].write_bytes(paths[0].read_bytes())
    report = _score(paths, out)
    assert (report.skipped, report.scored) == (3, 1)


def test_an_index_missing_a_part_is_rebuilt_from_it(tmp_path):
    # Given a run killed after writing its part, before replacing the index
    paths = _images(tmp_path / "in", 6)
    out = tmp_path / "out.parquet"
    _score(paths[:3], out)
    index = pq.read_table(out / INDEX_FILE)
    _score(paths, out)
    write_index(out, index)  # the index as it was before the second run's part
    # When the job runs again, the second part's rows count as done: nothing is duplicated
    predictor = FakePredictor()
    report = _score(paths, out, predictor)
    assert (report.skipped, predictor.seen) == (6, 0)
    assert [r["path"] for r in read_rows(out)] == [str(p) for p in paths]
    assert len(pq.read_table(out / INDEX_FILE)) == 6


def test_an_output_of_one_parquet_file_is_refused_with_how_to_move_it(tmp_path):
    # Given an output written before the folder layout: one Parquet file
    paths = _images(tmp_path / "in", 5)
    reference = tmp_path / "ref.parquet"
    _score(paths[:3], reference)
    legacy = tmp_path / "legacy.parquet"
    pq.write_table(pq.read_table(run_parts(reference)[0]), legacy)
    # When the job runs on it, then it stops before scoring anything and says how to convert it
    predictor = FakePredictor()
    with pytest.raises(TaglensError, match="single Parquet file from an older taglens"):
        _score(paths, legacy, predictor)
    assert predictor.seen == 0 and legacy.is_file()


def test_the_folder_layout_is_read_after_the_move_the_message_asks_for(tmp_path):
    paths = _images(tmp_path / "in", 3)
    out = tmp_path / "out.parquet"
    _score(paths, out)
    # Given the file moved into the folder as the refusal says
    single = tmp_path / "single.parquet"
    os.replace(run_parts(out)[0], single)
    for leftover in out.iterdir():
        leftover.unlink()
    out.rmdir()
    out.mkdir()
    os.replace(single, out / "run-000000.parquet")
    # When the job runs, it finds every photo done
    assert _score(paths, out).skipped == 3
    assert len(list(read_rows(out))) == 3


def test_rows_merged_from_shards_keep_their_stats(tmp_path, counting):
    from taglens.serving.batch.inputs import shard
    from taglens.serving.batch.scoring import merge_outputs, predict_to_file

    # Given photos scored in shards (the Dask path: JSON lines keeping each file's stat)
    paths = _images(tmp_path / "in", 7)
    out = tmp_path / "out.parquet"
    parts = []
    for number, chunk in enumerate(shard(paths, 3)):
        part = tmp_path / f"shard-{number}.jsonl"
        predict_to_file(
            chunk,
            part,
            FakePredictor(),
            MODEL,
            batch_size=4,
            progress=False,
            also_done_in=[out],
            keep_stat=True,
        )
        parts.append(part)
    # When they are merged into the Parquet output
    assert merge_outputs(parts, out, MODEL) == 7
    # Then the index knows every file's stat: the next run reads none of them
    hashes = resume_state(out, MODEL.name, MODEL.version).hashes
    assert {path: stat[:2] for path, stat in hashes.items()} == {
        str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in paths
    }
    counting.sha256_calls = 0
    assert _score(paths, out).skipped == 7 and counting.sha256_calls == 0


def test_an_output_whose_every_run_part_was_removed_by_hand_starts_over(tmp_path):
    # Given a Parquet output whose run parts were all deleted ("start over"), its hidden index
    # left behind
    paths = _images(tmp_path / "in", 3)
    out = tmp_path / "out.parquet"
    _score(paths, out)
    for part in run_parts(out):
        part.unlink()
    # When the job runs into it again
    report = _score(paths, out)
    # Then it scores every photo again into a new part, which is the whole output
    assert (report.scored, report.skipped) == (3, 0)
    assert len(run_parts(out)) == 1
    assert sorted(row["path"] for row in read_rows(out)) == sorted(map(str, paths))
