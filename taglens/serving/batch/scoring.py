"""How images are scored in streaming batches into a resumable output, and how shards are merged.

Score images in streaming batches: one output row per input, in input order.

A `tf.data` pipeline reads each file once, in parallel, and decodes and resizes it with
`data.images.decode_and_resize`, the function training used, so pixels match; the file's bytes
come along so their sha256 (the resume key) costs no second read. Each element carries its input
index: a file that cannot be read or decoded is dropped by `ignore_errors()` and detected as a
gap in the indices, which keeps every row aligned with its path and turns the bad file into an
error row instead of a crash. Before any pixel is decoded, the file's header is read with Pillow
(limited to `data.images.ALLOWED_FORMATS`) and an image over `max_pixels` is refused the same
way: a decompression bomb in an inbox costs one error row, never the run. The header's EXIF
orientation turns the decoded, resized photo upright (`data.images.upright`), as ingest and the
page turn theirs; a format TensorFlow cannot decode faithfully (TIFF, BMP) is decoded by Pillow
into a PNG first. On resume, only files whose path is already in the output are looked at up
front to decide whether they can be skipped, and of those only the ones whose size or mtime
changed since they were hashed (or whose stat the output does not hold) are read and hashed
again. Every input is stat'ed before it is read, and its rows carry that size and mtime_ns for
the output's index.

The batch predict job: score a list of images into a resumable output file, or merge shards.

`batch.inputs` lists the images, `score_paths` scores them in streaming batches, and
`batch.outputs` appends the rows durably; a re-run skips the inputs this model version has
already scored in the output (see `batch.outputs` for the resume key).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from taglens.data.images import (
    TENSORFLOW_FORMATS,
    ImageHeader,
    decode_and_resize,
    upright,
    upright_png,
)
from taglens.model.drift import DriftReference, DriftReport, compare
from taglens.params import DriftParams
from taglens.progress import progress_bar
from taglens.serving.batch.inputs import check_header, pixel_cap
from taglens.serving.batch.outputs import (
    Key,
    OutputWriter,
    path_text,
    read_rows,
    resume_state,
    row_key,
    scored_row,
)
from taglens.serving.model_ref import ModelRef

logger = logging.getLogger(__name__)


class PixelPredictor(Protocol):
    """What the job needs from a model (taglens.model.predictor.HashtagPredictor provides it)."""

    image_size: int

    def predict_pixels(self, batch: np.ndarray) -> list[dict[str, Any]]:
        """Predict one dict per image of a float32 (N, S, S, 3) 0..255 batch."""


@dataclass
class ScoreReport:
    """What one scoring run did."""

    total: int = 0
    scored: int = 0
    skipped: int = 0
    errors: int = 0
    seconds: float = 0.0

    @property
    def images_per_second(self) -> float:
        """Images scored or failed per wall-clock second (skipped ones excluded)."""
        done = self.scored + self.errors
        return done / self.seconds if self.seconds > 0 else 0.0

    def add(self, other: ScoreReport) -> None:
        """Accumulate another report (shards of one job)."""
        for name in ("total", "scored", "skipped", "errors"):
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.seconds = max(self.seconds, other.seconds)


def _failure(path: Path, image_size: int, max_pixels: int) -> tuple[str, str]:
    """(sha256, reason) for a file the pipeline dropped: re-tried eagerly, which is rare."""
    import tensorflow as tf

    try:
        with open(path, "rb") as handle:
            sha = hashlib.file_digest(handle, "sha256").hexdigest()
    except OSError as exc:
        return "", f"cannot read file: {exc.strerror or exc}"
    try:
        header = check_header(path, max_pixels)
    except ValueError as exc:
        return sha, f"refused before decoding: {exc}"
    try:
        converted = _decode_plan(path, header)[1]
        decode_and_resize(tf.constant(converted or path.read_bytes()), image_size)
    except Exception as exc:  # noqa: BLE001 - any decoder failure is reported in the row
        message = (getattr(exc, "message", None) or str(exc) or "unknown error").splitlines()[0]
        message = re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:\w+\].*$", "", message)
        return sha, f"not a decodable image: {message.strip()}"
    # Read again, the file decodes: it changed meanwhile (still being copied in) or the first
    # read failed. No hash in the row, so the next run scores it instead of skipping it.
    return "", "failed while it was read (the file may have been changing); the next run retries it"


def _decode_plan(path: Path | str, header: ImageHeader) -> tuple[int, bytes]:
    """How a checked file is decoded: (EXIF orientation still to apply, bytes to decode instead).

    TensorFlow decodes the file itself (no bytes returned) unless it cannot do it faithfully
    (TIFF, BMP, and transparency, which it drops where the page and training put it on white):
    Pillow then decodes it, already upright, into a PNG.
    """
    if header.format in TENSORFLOW_FORMATS and not header.transparent:
        return header.orientation, b""
    return 1, upright_png(path)


def _stat(path: Path | str) -> tuple[int, int] | None:
    """(size, mtime_ns) of a file, None if it cannot be stat'ed."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_size, info.st_mtime_ns


def _already_done(
    paths: Sequence[Path],
    done: set[Key] | frozenset[Key],
    hashes: Mapping[str, tuple[int, int, str]],
    rehashed: dict[Key, tuple[int, int]],
) -> tuple[np.ndarray, list[tuple[int, int] | None]]:
    """Which inputs are scored already, and every input's stat (taken before any read).

    Only files whose path is in `done` can be skipped. A file whose (size, mtime_ns) equals the
    one recorded with its hash in `hashes` is not read again; any other is hashed, and when it
    turns out scored already its current stat goes into `rehashed`.
    """
    skip = np.zeros(len(paths), dtype=bool)
    stats = [_stat(path) for path in paths]
    done_paths = {path for path, _ in done}
    for index, path in enumerate(paths):
        key = path_text(path)
        if key not in done_paths:
            continue
        stat = stats[index]
        known = hashes.get(key)
        if stat is not None and known is not None and known[:2] == stat:
            sha = known[2]
        else:
            try:
                sha = hashlib.sha256(Path(path).read_bytes()).hexdigest()
            except OSError:
                sha = ""  # unreadable before and now: its error row is there already
            if stat is not None and (key, sha) in done:
                rehashed[(key, sha)] = stat
        skip[index] = (key, sha) in done
    return skip, stats


def score_paths(
    paths: Sequence[Path],
    predictor: PixelPredictor,
    model: ModelRef,
    *,
    batch_size: int,
    done: set[Key] | frozenset[Key] = frozenset(),
    hashes: Mapping[str, tuple[int, int, str]] | None = None,
    rehashed: dict[Key, tuple[int, int]] | None = None,
    progress: bool = True,
    report: ScoreReport | None = None,
    max_pixels: int | None = None,
) -> Iterator[list[dict[str, Any]]]:
    """Score images batch by batch, yielding each batch's rows in input order.

    Inputs whose (path, sha256) is in `done` are skipped; `hashes` (path -> size, mtime_ns,
    sha256) spares reading the unchanged ones, and `rehashed`, if given, receives the stat of
    files that had to be read to be recognised. Unreadable or undecodable files, files not in
    an allowed format and images over `max_pixels` (default: Pillow's limit) give rows with
    `error` set. Each row carries the file's `size` and `mtime_ns` from before it was read.
    `report`, if given, is filled in as the generator runs.
    """
    import tensorflow as tf

    report = report if report is not None else ScoreReport()
    report.total = len(paths)
    skip, stats = _already_done(paths, done, hashes or {}, {} if rehashed is None else rehashed)
    todo = np.flatnonzero(~skip)
    size = predictor.image_size
    cap = pixel_cap(max_pixels)

    def decode_plan(path) -> tuple[int, bytes]:
        name = os.fsdecode(path.numpy())
        return _decode_plan(name, check_header(name, cap))  # raising drops it: an error row

    def load(index, path):
        orientation, converted = tf.py_function(decode_plan, [path], (tf.int32, tf.string))
        orientation.set_shape([])
        converted.set_shape([])
        with tf.control_dependencies([orientation]):
            data = tf.io.read_file(path)  # the file's own bytes: their sha256 is the resume key
        pixels = tf.where(tf.strings.length(converted) > 0, converted, data)
        return index, data, decode_and_resize(pixels, size), orientation

    dataset = tf.data.Dataset.from_tensor_slices(
        # the file system's bytes: a name that is not UTF-8 cannot be a text tensor
        (tf.constant(todo, tf.int64), tf.constant([os.fsencode(paths[i]) for i in todo], tf.string))
    )
    dataset = dataset.map(load, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    dataset = dataset.ignore_errors().batch(batch_size).prefetch(2)

    bar = progress_bar(
        total=len(paths), unit="img", desc="predict", disable=not progress, smoothing=0.1
    )
    start = time.monotonic()
    next_index = 0

    def flush(until: int, scored: dict[int, tuple[str, dict[str, Any]]]) -> list[dict[str, Any]]:
        nonlocal next_index
        rows = []
        report.skipped += int(skip[next_index:until].sum())
        for index in np.flatnonzero(~skip[next_index:until]) + next_index:
            path = Path(paths[index])
            if index in scored:
                sha, prediction = scored[index]
                rows.append(scored_row(path, sha, model, prediction=prediction))
                report.scored += 1
            else:
                sha, reason = _failure(path, size, cap)
                rows.append(scored_row(path, sha, model, error=reason))
                report.errors += 1
                logger.warning("%s: %s", path, reason)
            stat = stats[index] if sha else None  # an unreadable file has no hash to remember
            rows[-1]["size"], rows[-1]["mtime_ns"] = stat or (None, None)
        bar.update(until - next_index)
        next_index = until
        report.seconds = time.monotonic() - start
        return rows

    try:
        for indices, data, pixels, orientations in dataset:
            ids = indices.numpy().tolist()
            shas = [hashlib.sha256(item).hexdigest() for item in data.numpy()]
            batch, turns = pixels.numpy(), orientations.numpy()
            for row in np.flatnonzero(turns != 1):  # most photos are upright: nothing to copy
                batch[row] = upright(batch[row], turns[row])  # square: the shape holds
            predictions = predictor.predict_pixels(batch)
            scored = dict(zip(ids, zip(shas, predictions, strict=True), strict=True))
            yield flush(ids[-1] + 1, scored)
        tail = flush(len(paths), {})
        if tail:
            yield tail
    finally:
        bar.close()
        report.seconds = time.monotonic() - start


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


def log_batch_run(
    summary: dict[str, Any],
    input: str,  # noqa: A002 - the flow's parameter name
    task_runner: str,
    run_name: str,
) -> str:
    """Log a batch run as an MLflow run: what was scored with which model, and the drift.

    Returns:
        The MLflow run id.
    """
    import mlflow

    drift = summary.get("drift") or {}
    verdict = "not judged"
    if drift.get("judged"):
        verdict = "flagged" if drift.get("drifted") else "clear"
    tags = {
        "stage": "predict",
        "model_name": summary["model_name"],
        "model_version": summary["model_version"],
        "drift": verdict,
    }
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.set_tags(tags)
        mlflow.log_params({"input": input, "output": summary["output"], "task_runner": task_runner})
        counts = ("total", "scored", "skipped", "errors", "seconds", "images_per_second")
        metrics = {key: float(summary[key]) for key in counts}
        if "photos" in drift:
            figures = {key: value for key, value in drift.items() if key != "line"}
            metrics.update(DriftReport(**figures).metrics())
        mlflow.log_metrics(metrics)
        if drift:
            mlflow.log_dict(drift, "predict/drift.json")
    return run.info.run_id


def batch_drift(
    parts: list[str],
    reference: dict[str, Any],
    model: dict[str, str],
    settings: DriftParams,
) -> DriftReport:
    """Compare the rows `model` scored in a run's output parts with its validation outputs.

    Args:
        parts: the Parquet parts the run added.
        reference: the model's drift_reference.json.
        model: `name` and `version` of the model whose rows count (a part may hold others').
        settings: `predict.drift`.
    """
    classes = []
    confidences = []
    columns = ["top_class", "top_probability", "model_name", "model_version"]
    for part in parts:
        for row in read_rows(part, columns=columns):
            if (row["model_name"], row["model_version"]) == (model["name"], model["version"]):
                classes.append(row["top_class"])
                confidences.append(row["top_probability"])
    return compare(
        DriftReference.from_dict(reference),
        classes,
        confidences,
        psi_threshold=settings.psi_threshold,
        min_photos=settings.min_photos,
    )
