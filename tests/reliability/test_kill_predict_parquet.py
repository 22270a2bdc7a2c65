"""Batch predict to Parquet (the nightly default) killed with SIGKILL, then re-run.

Two kill points: at a seeded random moment while parts are sealed, and exactly between the
finalize's replace of the output and its deletion of the parts (the window where a non-idempotent
finalize merged the parts a second time).
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image
from reliability_kit import ROOT, kill_when

pytestmark = pytest.mark.slow

SEED = 4409
N_IMAGES = 240
BATCH = 4
PART_ROWS = 8

_WORKER = (
    textwrap.dedent(
        """
    import os, signal, sys
    from pathlib import Path
    from taglens.serving.batch import outputs as batch_outputs
    from taglens.serving.batch.inputs import list_inputs
    from taglens.serving.batch.scoring import predict_to_file
    from taglens.serving.model_ref import ModelRef
    from taglens.model.predictor import HashtagPredictor

    photos, output, models, kill_at = sys.argv[1:5]
    if kill_at == "finalize":
        def killed_rmtree(path, *args, **kwargs):  # the output was replaced; parts not yet gone
            assert Path(output).exists()
            os.kill(os.getpid(), signal.SIGKILL)
        batch_outputs.shutil.rmtree = killed_rmtree
    predict_to_file(list_inputs(photos), Path(output), HashtagPredictor.from_dir(models),
                    ModelRef("taglens", "7"), batch_size=BATCH, progress=False, part_rows=PART_ROWS)
    """
    )
    .replace("BATCH", str(BATCH))
    .replace("PART_ROWS", str(PART_ROWS))
)


def _photos(folder, n: int) -> None:
    rng = np.random.default_rng(7)
    folder.mkdir()
    for i in range(n):
        pixels = rng.integers(0, 256, (36, 36, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:04d}.jpg")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not a jpeg")


def _start(tmp_path, photos, output, models, kill_at: str) -> subprocess.Popen:
    script = tmp_path / "worker.py"
    script.write_text(_WORKER)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, str(script), str(photos), str(output), str(models), kill_at],
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def _rows(output) -> list[dict]:
    from taglens.serving.batch.outputs import read_rows

    return list(read_rows(output))


def _assert_complete(output, photos) -> None:
    rows = _rows(output)
    paths = [row["path"] for row in rows]
    assert len(paths) == len(set(paths)) == N_IMAGES + 1, "an image was scored twice or lost"
    assert [row["path"] for row in rows if row["error"]] == [str(photos / "broken.jpg")]
    assert not output.with_name(output.name + ".parts").exists()


def _rerun(tmp_path, photos, output, models) -> None:
    proc = _start(tmp_path, photos, output, models, "none")
    assert proc.wait(timeout=600) == 0


def test_killed_while_parts_are_sealed_then_rerun_scores_each_image_once(tiny_models_dir, tmp_path):
    # Given a Parquet run killed after a seeded number of sealed parts
    photos, output = tmp_path / "photos", tmp_path / "scored.parquet"
    _photos(photos, N_IMAGES)
    parts = output.with_name(output.name + ".parts")
    want = random.Random(SEED).randrange(2, N_IMAGES // PART_ROWS // 2)
    proc = _start(tmp_path, photos, output, tiny_models_dir, "none")
    kill_when(
        proc, lambda: len(list(parts.glob("part-*.parquet"))) >= want, seed=SEED, max_delay=0.2
    )
    sealed = sorted(parts.glob("part-*.parquet"))
    assert len(sealed) >= want and not output.exists()

    # When it runs again, to the end
    _rerun(tmp_path, photos, output, tiny_models_dir)

    # Then the output holds every input exactly once, and the parts are gone
    _assert_complete(output, photos)


def test_killed_between_finalize_replace_and_part_removal_adds_no_duplicate(
    tiny_models_dir, tmp_path
):
    # Given a run killed right after the finalized output replaced the old one, parts still there
    photos, output = tmp_path / "photos", tmp_path / "scored.parquet"
    _photos(photos, N_IMAGES)
    proc = _start(tmp_path, photos, output, tiny_models_dir, "finalize")
    assert proc.wait(timeout=600) == -9
    parts = output.with_name(output.name + ".parts")
    assert len(_rows(output)) == N_IMAGES + 1 and list(parts.glob("part-*.parquet"))
    first = _rows(output)

    # When the job runs again (it finds every row done, and finalizes the leftover parts)
    _rerun(tmp_path, photos, output, tiny_models_dir)

    # Then no row was merged twice, and the rows are those of the killed run
    _assert_complete(output, photos)
    assert _rows(output) == first
