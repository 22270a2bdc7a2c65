"""Batch predict killed with SIGKILL mid-output, then re-run: every image scored exactly once."""

from __future__ import annotations

import json
import random
import re

import numpy as np
import pytest
from PIL import Image
from reliability_kit import copy_repo, kill_when, ok, run_stage, start_stage, write_params

pytestmark = pytest.mark.slow

SEED = 3301
N_IMAGES = 480
BATCH = 4


def _photos(folder, n: int) -> list:
    rng = np.random.default_rng(0)
    folder.mkdir()
    paths = []
    for i in range(n):
        pixels = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(pixels).save(path, quality=80)
        paths.append(path)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")  # an error row
    return paths


def _complete_lines(path) -> int:
    if not path.exists():
        return 0
    return path.read_bytes().count(b"\n")


def test_killed_predict_resumes_without_rescoring_or_duplicates(tiny_models_dir, tmp_path):
    from taglens.model.predictor import HashtagPredictor
    from taglens.serving.batch.inputs import list_inputs
    from taglens.serving.batch.scoring import predict_to_file
    from taglens.serving.model_ref import ModelRef

    # Given a folder of photos and a batch predict run killed after a seeded number of rows
    repo = copy_repo(tmp_path / "repo")
    write_params(repo, {("predict", "batch_size"): BATCH})
    photos = tmp_path / "photos"
    _photos(photos, N_IMAGES)
    out = tmp_path / "scored.jsonl"
    args = [
        "--params",
        "params.yaml",
        "--input",
        str(photos),
        "--output",
        str(out),
        "--model-uri",
        str(tiny_models_dir),
    ]
    want = random.Random(SEED).randrange(BATCH * 4, N_IMAGES // 2)
    proc = start_stage(repo, "predict", *args, log=tmp_path / "killed.log")
    kill_when(proc, lambda: _complete_lines(out) >= want, seed=SEED, max_delay=0.05)

    # Then the output holds whole rows only (at most a torn last line), each image once
    text = out.read_bytes()
    whole = text[: text.rfind(b"\n") + 1].decode().splitlines()
    before = [json.loads(line) for line in whole]
    assert want <= len(before) < N_IMAGES + 1
    assert len({row["path"] for row in before}) == len(before)

    # When the same command runs again
    result = ok(run_stage(repo, "predict", *args))

    # Then the rows scored before the kill are kept as they were and not scored again
    summary = re.search(r"(\d+) scored, (\d+) already done, (\d+) errors", result.stdout)
    assert summary, result.stdout + result.stderr
    scored, skipped, errors = map(int, summary.groups())
    assert skipped == len(before)
    assert scored + errors + skipped == N_IMAGES + 1
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert rows[: len(before)] == before
    paths = [row["path"] for row in rows]
    assert len(paths) == len(set(paths)) == N_IMAGES + 1, "an image was scored twice or lost"
    assert [row["path"] for row in rows if row["error"]] == [str(photos / "broken.jpg")]

    # And every row equals the one an uninterrupted run writes
    reference = tmp_path / "reference.jsonl"
    predict_to_file(
        list_inputs(photos),
        reference,
        HashtagPredictor.from_dir(tiny_models_dir),
        ModelRef(str(tiny_models_dir), "local"),
        batch_size=BATCH,
        progress=False,
    )
    expected = {row["path"]: row for row in map(json.loads, reference.read_text().splitlines())}
    assert set(expected) == set(paths)
    for row in rows:
        ref = expected[row["path"]]
        assert (row["sha256"], row["top_class"], row["error"]) == (
            ref["sha256"],
            ref["top_class"],
            ref["error"],
        )
        if ref["top_probability"] is not None:
            assert row["top_probability"] == pytest.approx(ref["top_probability"], abs=1e-5)
        assert [h["tag"] for h in row["hashtags"]] == [h["tag"] for h in ref["hashtags"]]
