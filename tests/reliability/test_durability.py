"""Durability on power loss: file contents and the directory entry of a rename reach the disk."""

from __future__ import annotations

import os
import stat

import pytest

from taglens import atomic


@pytest.fixture
def fsyncs(monkeypatch):
    """Every os.fsync call as (is a directory, inode), in order; the real fsync still runs."""
    calls: list[tuple[bool, int]] = []
    real = os.fsync

    def recording(fd):
        info = os.fstat(fd)
        calls.append((stat.S_ISDIR(info.st_mode), info.st_ino))
        return real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    return calls


@pytest.mark.parametrize("write", [atomic.atomic_write_text, atomic.atomic_write_json])
def test_an_atomic_write_fsyncs_the_file_and_then_its_directory(tmp_path, fsyncs, write):
    target = tmp_path / "out" / "report.json"
    write(target, {"a": 1} if write is atomic.atomic_write_json else "text\n")
    file_inode, dir_inode = target.stat().st_ino, target.parent.stat().st_ino
    assert (False, file_inode) in fsyncs
    assert (True, dir_inode) in fsyncs, "the rename was never made durable"
    assert fsyncs.index((True, dir_inode)) > fsyncs.index((False, file_inode))


def test_saved_model_file_and_its_directory_are_fsynced(tmp_path, fsyncs):
    import keras

    from taglens.model.full_model import save_model

    inputs = keras.Input((4,))
    model = keras.Model(inputs, keras.layers.Dense(2)(inputs))
    path = save_model(model, tmp_path / "models" / "model.keras")

    assert (False, path.stat().st_ino) in fsyncs, "model.keras was renamed in before reaching disk"
    assert (True, path.parent.stat().st_ino) in fsyncs
    assert [p.name for p in path.parent.iterdir()] == ["model.keras"]


def test_a_sealed_parquet_part_is_fsynced_in_its_folder(tmp_path, fsyncs):
    from taglens.serving.batch.outputs import OutputWriter

    writer = OutputWriter(tmp_path / "out.parquet", part_rows=1)
    writer.write(
        [
            {
                "path": "a.jpg",
                "sha256": "0" * 64,
                "hashtags": [],
                "model_name": "m",
                "model_version": "1",
            }
        ]
    )
    parts = sorted(writer.parts_dir.glob("part-*.parquet"))
    assert len(parts) == 1 and (True, writer.parts_dir.stat().st_ino) in fsyncs
    writer.close()
    assert (True, tmp_path.stat().st_ino) in fsyncs
