"""featurize killed with SIGKILL between feature shards, then re-run: nothing lost or redone."""

from __future__ import annotations

import hashlib
import re
import shutil

import numpy as np
import pytest
from reliability_kit import (
    PIPELINE_OVERRIDES,
    copy_repo,
    kill_when,
    ok,
    run_stage,
    start_stage,
    write_params,
)

pytestmark = pytest.mark.slow

SEED = 1009  # the kill point; change it to explore another one, the test must still pass


def _shards(repo):
    """The image store's shards (the flip and colour views have stores of their own after it)."""
    return sorted(
        path
        for path in (repo / "data" / "features" / "store").glob("*/shard-*.npz")
        if not path.parent.name.endswith(("-flip", "-colour", "-crops"))
    )


def _store_rows(shards) -> list[str]:
    rows: list[str] = []
    for shard in shards:
        with np.load(shard, allow_pickle=False) as data:
            assert data["vectors"].shape == (len(data["sha256"]), 512)
            rows += data["sha256"].tolist()
    return rows


def test_killed_featurize_resumes_to_the_uninterrupted_result(pipeline, tmp_path):
    # Given the same raw data as the reference pipeline, and a featurize run killed at a seeded
    # random point after a seeded random number of finished shards
    repo = copy_repo(tmp_path / "repo", source=pipeline)
    write_params(repo, PIPELINE_OVERRIDES)
    shutil.copytree(pipeline / "data" / "raw", repo / "data" / "raw")
    n_images = len((pipeline / "data" / "raw" / "posts.jsonl").read_text().splitlines())
    shard_size = PIPELINE_OVERRIDES[("featurize", "shard_size")]
    n_shards = -(-n_images // shard_size)
    want = 1 + int.from_bytes(hashlib.sha256(str(SEED).encode()).digest()[:4]) % (n_shards // 2)
    proc = start_stage(repo, "featurize", log=tmp_path / "killed.log")
    kill_when(proc, lambda: len(_shards(repo)) >= want, seed=SEED, max_delay=0.2)

    # Then only whole shards are left, no features.npz, and no image is stored twice
    before = {path: path.read_bytes() for path in _shards(repo)}
    assert want <= len(before) < n_shards
    done = _store_rows(before)
    assert len(done) == len(set(done)) == len(before) * shard_size
    assert not (repo / "data" / "features" / "features.npz").exists()

    # When featurize runs again
    result = ok(run_stage(repo, "featurize"))

    # Then the finished shards are reused untouched and only the rest is computed
    log = result.stdout + result.stderr
    counts = re.search(r"(\d+) cached, (\d+) to compute", log)
    assert counts, log
    assert (int(counts.group(1)), int(counts.group(2))) == (len(done), n_images - len(done))
    for path, data in before.items():
        assert path.read_bytes() == data, f"{path.name} was rewritten"
    after = _store_rows(_shards(repo))
    assert len(after) == len(set(after)) == n_images, "an image's vector is stored twice"

    # And features.npz equals the uninterrupted run's, row for row
    with (
        np.load(repo / "data/features/features.npz") as got,
        np.load(pipeline / "data/features/features.npz") as ref,
    ):
        assert got["sha256"].tolist() == ref["sha256"].tolist()
        for name in ("vectors", "flip_vectors", "colour_vectors"):
            np.testing.assert_allclose(got[name], ref[name], rtol=1e-5, atol=1e-6)
    assert (repo / "data/features/meta.json").read_text() == (
        pipeline / "data/features/meta.json"
    ).read_text()
