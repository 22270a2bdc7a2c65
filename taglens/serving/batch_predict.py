"""The batch predict job: score a list of images into a resumable output file, or merge shards.

`batch_inputs` lists the images, `batch_scoring` scores them in streaming batches, and
`batch_outputs` appends the rows durably; a re-run skips the inputs this model version has
already scored in the output (see `batch_rows` for the resume key).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from taglens.serving.batch_dataset import resume_state
from taglens.serving.batch_outputs import OutputWriter
from taglens.serving.batch_rows import read_rows, row_key
from taglens.serving.batch_scoring import PixelPredictor, ScoreReport, score_paths
from taglens.serving.model_ref import ModelRef

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class PredictResult:
    """What one batch predict job did: the model it used, where the rows went, and counts."""

    model: ModelRef
    output: Path
    report: ScoreReport

    def summary(self) -> str:
        """One line for the console: counts and speed."""
        r = self.report
        return (
            f"{self.output}: {r.scored} scored, {r.skipped} already done, {r.errors} errors "
            f"({r.images_per_second:.1f} img/s) with {self.model.name} version "
            f"{self.model.version}"
        )

    def to_dict(self) -> dict[str, Any]:
        """Counts, seconds, images_per_second, model_name, model_version and output."""
        return {
            **asdict(self.report),
            "images_per_second": self.report.images_per_second,
            "model_name": self.model.name,
            "model_version": self.model.version,
            "output": str(self.output),
        }


def predict_to_file(
    paths: Sequence[Path],
    output: Path,
    predictor: PixelPredictor,
    model: ModelRef,
    *,
    batch_size: int,
    also_done_in: Iterable[Path] = (),
    progress: bool = True,
    part_rows: int = 4096,
    max_pixels: int | None = None,
    keep_stat: bool = False,
    rehashed: dict | None = None,
) -> ScoreReport:
    """Score `paths` into `output`, skipping inputs this model version already scored there.

    Args:
        paths: the images, in output order.
        output: `.csv`, `.jsonl` or `.parquet` (a folder gaining one part per run); appended to
            if it exists.
        predictor: the model.
        model: its registered name and version (written into each row).
        batch_size: images per forward pass.
        also_done_in: other outputs whose rows count as done (a shard skips the final output's).
        progress: show a tqdm bar.
        part_rows: rows per sealed Parquet part (what a killed run can lose at most).
        max_pixels: larger images become error rows before decoding (default: Pillow's limit).
        keep_stat: a JSON-lines output also records each file's size and mtime_ns (a shard).
        rehashed: if given, receives (path, sha256) -> (size, mtime_ns) of the files that were
            read again to be recognised (a shard hands them to the merge, which records them).
    """
    writer = OutputWriter(output, part_rows=part_rows, keep_stat=keep_stat)
    state = writer.resume_state(model.name, model.version)
    for other in also_done_in:
        state.update(resume_state(other, model.name, model.version))
    report = ScoreReport()
    rehashed = {} if rehashed is None else rehashed
    rows = score_paths(
        paths,
        predictor,
        model,
        batch_size=batch_size,
        done=state.done,
        hashes=state.hashes,
        rehashed=rehashed,
        progress=progress,
        report=report,
        max_pixels=max_pixels,
    )
    try:
        for batch in rows:
            writer.write(batch)
    except BaseException:
        writer.abort()
        raise
    writer.note_rehashed(rehashed)
    writer.close()
    logger.info(
        "scored %d, skipped %d, errors %d of %d images into %s (%.1f img/s)",
        report.scored,
        report.skipped,
        report.errors,
        report.total,
        output,
        report.images_per_second,
    )
    return report


def merge_outputs(
    parts: Sequence[Path], output: Path, model: ModelRef, rehashed: dict | None = None
) -> int:
    """Append the rows of shard outputs to `output` in order, skipping rows already there.

    A merge interrupted half-way can be re-run: rows whose key is in the output are not added
    twice. `rehashed` (from the shards' `predict_to_file`) goes to a Parquet output's index.
    Returns the number of rows added; the shard files are left for the caller to delete.
    """
    writer = OutputWriter(output)
    writer.note_rehashed(rehashed or {})
    seen = writer.resume_state(model.name, model.version).done
    added = 0
    try:
        for part in parts:
            chunk = []
            for row in read_rows(part):
                key = row_key(row)
                if (row.get("model_name"), str(row.get("model_version"))) == (
                    model.name,
                    model.version,
                ) and key in seen:
                    continue
                seen.add(key)
                chunk.append(row)
                if len(chunk) >= 4096:
                    writer.write(chunk)
                    added += len(chunk)
                    chunk = []
            writer.write(chunk)
            added += len(chunk)
    except BaseException:
        writer.abort()
        raise
    writer.close()
    return added
