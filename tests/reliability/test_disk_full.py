"""The disk full while outputs are written: a clear error, and no corrupted output left behind.

Where the machine allows it (root, tmpfs), outputs go to a real size-limited file system;
elsewhere a patched writer runs out of space after a byte budget.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest
from reliability_kit import PIPELINE_OVERRIDES, copy_repo, ok, run_stage, write_params

from taglens import atomic

SMALL = 256 * 1024


def _mount_tmpfs(path, size: int) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    if os.environ.get("TAGLENS_NO_TMPFS"):  # exercise the patched-writer fallback on purpose
        return False
    if os.geteuid() != 0 or not shutil.which("mount"):
        return False
    result = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True
    )
    return result.returncode == 0


@pytest.fixture
def small_disk(tmp_path, monkeypatch):
    """A directory with SMALL bytes of space: a real tmpfs, or a patched writer as a fallback."""
    disk = tmp_path / "disk"
    if _mount_tmpfs(disk, SMALL):
        yield disk, True
        subprocess.run(["umount", "-l", str(disk)], check=False)
        return
    real_fdopen = os.fdopen
    budget = {"left": SMALL}

    class _Limited:
        def __init__(self, handle):
            self._handle = handle

        def write(self, data):
            budget["left"] -= len(data)
            if budget["left"] < 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return self._handle.write(data)

        def __getattr__(self, name):
            return getattr(self._handle, name)

        def __enter__(self):
            self._handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self._handle.__exit__(*exc)

    monkeypatch.setattr(atomic.os, "fdopen", lambda *a, **k: _Limited(real_fdopen(*a, **k)))
    yield disk, False


def _leftovers(folder) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if p.name.startswith(".") or "tmp" in p.name)


@pytest.mark.parametrize("writer", ["bytes", "text", "json", "jsonl"])
def test_atomic_write_on_a_full_disk_keeps_the_old_file(small_disk, writer):
    disk, _ = small_disk
    # Given an output written before, and a new version larger than the free space
    target = disk / "out.dat"
    atomic.atomic_write_text(target, "old contents\n")
    big = "x" * (2 * SMALL)
    write = {
        "bytes": lambda: atomic.atomic_write_bytes(target, big.encode()),
        "text": lambda: atomic.atomic_write_text(target, big),
        "json": lambda: atomic.atomic_write_json(target, {"x": big}),
        "jsonl": lambda: atomic.atomic_write_jsonl(target, [{"x": big[: SMALL // 4]}] * 8),
    }[writer]
    # When it is written
    with pytest.raises(OSError) as caught:
        write()
    # Then the error says the disk is full, the old file is intact and no temp file is left
    assert caught.value.errno == errno.ENOSPC
    assert target.read_text() == "old contents\n"
    assert _leftovers(disk) == []
    assert sorted(p.name for p in disk.iterdir()) == ["out.dat"]


@pytest.mark.slow
def test_featurize_on_a_full_disk_fails_clearly_and_resumes(small_disk, pipeline, tmp_path):
    disk, real = small_disk
    if not real:
        pytest.skip("needs root to mount a size-limited tmpfs (the writer tests above still run)")
    # Given raw data, and featurize writing its outputs to a disk too small for all of them
    repo = copy_repo(tmp_path / "repo", source=pipeline)
    write_params(repo, PIPELINE_OVERRIDES)
    shutil.copytree(pipeline / "data" / "raw", repo / "data" / "raw")
    out = disk / "features"
    args = ["--params", "params.yaml", "--raw", "data/raw", "--out", str(out)]

    # When featurize runs
    result = run_stage(repo, "featurize", *args)

    # Then it stops with a one-line error naming the cause and what to do, without a traceback
    assert result.returncode == 2, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0], result.stderr[-2000:]
    assert "free" in errors[0] and "Traceback" not in result.stderr
    # And every file it left is whole: finished shards load, no temp files, no features.npz (the
    # image's own store: the flip and colour views fill stores of their own beside it)
    views = ("-flip", "-colour", "-crops")
    shards = sorted(p for p in out.glob("store/*/shard-*.npz") if not p.parent.name.endswith(views))
    assert shards, "no shard fitted on the disk: make SMALL larger"
    done = 0
    for shard in shards:
        with np.load(shard) as data:
            assert data["vectors"].shape == (len(data["sha256"]), 512)
            done += len(data["sha256"])
    assert _leftovers(out) == []
    assert not (out / "features.npz").exists()

    # When space is freed and featurize runs again, it computes only what is missing
    subprocess.run(["mount", "-o", "remount,size=8m", str(disk)], check=True)
    log = ok(run_stage(repo, "featurize", *args)).stderr
    n_images = len((repo / "data/raw/posts.jsonl").read_text().splitlines())
    assert re.search(rf"{done} cached, {n_images - done} to compute", log), log
    reference = pipeline / "data/features/features.npz"
    with np.load(out / "features.npz") as got, np.load(reference) as ref:
        assert got["sha256"].tolist() == ref["sha256"].tolist()
        np.testing.assert_allclose(got["vectors"], ref["vectors"], rtol=1e-5, atol=1e-6)
    assert json.loads((out / "meta.json").read_text())["count"] == n_images


def test_stage_mains_turn_a_full_disk_into_one_line(capsys):
    from taglens.cli import run_main

    def body() -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), "data/features/features.npz")

    assert run_main(body) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: No space left on device while writing data/features/features.npz: free disk "
        "space and run again (outputs are written atomically, so finished work is kept and "
        "nothing half-written is left)\n"
    )


def test_other_os_errors_keep_their_traceback():
    from taglens.cli import run_main

    def body() -> int:
        raise OSError(errno.EIO, os.strerror(errno.EIO))

    with pytest.raises(OSError) as caught:
        run_main(body)
    assert caught.value.errno == errno.EIO
