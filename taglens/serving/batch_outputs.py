"""Resumable, streaming output files of the batch predict job: CSV, JSON lines and Parquet.

The rows and how they are read back are `taglens.serving.batch_rows`.

Every writer appends rows batch by batch, so memory stays flat, and can tell which inputs a
model version has already scored, so a re-run skips them:

- `.jsonl` / `.csv`: rows are appended and fsynced per batch. A run killed mid-write leaves at
  most a torn last line, which the next run cuts off before appending.
- `.parquet`: the output is a folder with one part per run (`batch_dataset`). Rows are staged
  in part files under `<output>.parts/`, one row group per batch, with each file's size and
  mtime; a part is sealed (renamed from `.tmp`) every `part_rows` rows or `part_seconds`
  seconds. Closing the writer streams the staged parts, row group by row group, into one new
  run part of the output and updates its index, then deletes the staged parts; earlier run
  parts are never rewritten. A killed run loses at most the unsealed part. The commit is
  idempotent: a staged row whose key (path, sha256, model) the output holds already is not
  added again, so a kill between the commit and the deletion of the staged parts cannot
  duplicate rows.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from taglens.atomic import cut_torn_tail, fsync_dir
from taglens.errors import TaglensError
from taglens.serving.batch_dataset import (
    ResumeState,
    Stat,
    commit_run,
    migrate_single_file,
    resume_state,
)
from taglens.serving.batch_rows import (
    COLUMNS,
    STAT_COLUMNS,
    Key,
    check_format,
    csv_values,
    existing_rows,
    sealed_parts,
    staging_schema,
)


class OutputWriter:
    """Append rows to an output file; `close()` finalizes, `abort()` keeps what was written."""

    def __init__(
        self,
        path: Path | str,
        part_rows: int = 4096,
        part_seconds: float = 60.0,
        keep_stat: bool = False,
    ):
        """Open an output for appending.

        Args:
            path: `.csv`, `.jsonl` or `.parquet` (a folder).
            part_rows: rows per sealed staged Parquet part.
            part_seconds: seconds after which a staged Parquet part is sealed anyway.
            keep_stat: JSON lines also record each file's `size` and `mtime_ns` (shards of the
                Dask path, whose rows a Parquet output then indexes with them).
        """
        self.path = Path(path)
        self.keep_stat = keep_stat
        self.format = check_format(self.path)
        self.parts_dir = self.path.with_name(self.path.name + ".parts")
        self.part_rows = part_rows
        self.part_seconds = part_seconds
        self._handle = None
        self._csv = None
        self._part = None
        self.rehashed: dict[Key, Stat] = {}
        self.added_part: Path | None = None  # the run part `close()` added, if any
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.format == ".parquet":
            migrate_single_file(self.path)  # an output of one file, from before the folder
            self.parts_dir.mkdir(exist_ok=True)
            for stale in self.parts_dir.glob("*.tmp"):
                stale.unlink()  # an unsealed part of a killed run: its rows are scored again
        elif self.path.exists():
            cut_torn_tail(self.path)
            self._check_header()

    def _check_header(self) -> None:
        if self.format != ".csv" or self.path.stat().st_size == 0:
            return
        with open(self.path, encoding="utf-8", newline="") as handle:
            header = next(csv.reader(handle), [])
        if tuple(header) != COLUMNS:
            raise TaglensError(
                f"{self.path} exists with columns {header}, not a batch predict output; "
                "give a new --output file"
            )

    def existing_rows(self) -> Iterator[dict[str, Any]]:
        """Rows already in the output, including sealed Parquet parts of an interrupted run."""
        return existing_rows(self.path)

    def resume_state(self, model_name: str, model_version: str) -> ResumeState:
        """What this model version has already written (keys, and the hashes of known files)."""
        return resume_state(self.path, model_name, model_version)

    def note_rehashed(self, rehashed: dict[Key, Stat]) -> None:
        """Files re-read and found scored: a Parquet output records their stat on close."""
        self.rehashed.update(rehashed)

    def write(self, rows: Iterable[dict[str, Any]]) -> None:
        """Append rows durably (fsynced text, or a Parquet row group)."""
        rows = list(rows)
        if not rows:
            return
        if self.format == ".parquet":
            self._write_parquet(rows)
            return
        if self._handle is None:
            new = not self.path.exists() or self.path.stat().st_size == 0
            self._handle = open(self.path, "a", encoding="utf-8", newline="")
            if self.format == ".csv":
                self._csv = csv.writer(self._handle, lineterminator="\n")
                if new:
                    self._csv.writerow(COLUMNS)
        for row in rows:
            if self._csv is not None:
                self._csv.writerow(csv_values(row))
            else:
                names = (*COLUMNS, *STAT_COLUMNS) if self.keep_stat else COLUMNS
                record = {key: row.get(key) for key in names}
                self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def _write_parquet(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._part is None:
            number = len(sealed_parts(self.parts_dir))
            tmp = self.parts_dir / f"part-{number:06d}.parquet.tmp"
            self._part = [pq.ParquetWriter(tmp, staging_schema()), tmp, 0, time.monotonic()]
        names = (*COLUMNS, *STAT_COLUMNS)
        records = [{k: r.get(k) for k in names} for r in rows]
        table = pa.Table.from_pylist(records, schema=staging_schema())
        self._part[0].write_table(table)
        self._part[2] += len(rows)
        if self._part[2] >= self.part_rows or time.monotonic() - self._part[3] >= self.part_seconds:
            self._seal_part()

    def _seal_part(self) -> None:
        if self._part is None:
            return
        writer, tmp, _, _ = self._part
        writer.close()
        os.replace(tmp, tmp.with_suffix(""))  # part-N.parquet.tmp -> part-N.parquet
        fsync_dir(self.parts_dir)
        self._part = None

    def abort(self) -> None:
        """Stop after an error: keep every written row for the next run, finalize nothing."""
        self._seal_part()
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def close(self) -> None:
        """Finish: for Parquet, add the staged rows to the output as one new run part."""
        self.abort()
        if self.format == ".csv" and not self.path.exists():
            # nothing was scored: still leave a valid, header-only file
            with open(self.path, "w", encoding="utf-8", newline="") as handle:
                csv.writer(handle, lineterminator="\n").writerow(COLUMNS)
        elif self.format == ".jsonl" and not self.path.exists():
            self.path.touch()
        elif self.format == ".parquet":
            self._finalize_parquet()

    def _finalize_parquet(self) -> None:
        parts = sealed_parts(self.parts_dir)
        if not parts and self.path.is_dir() and not self.rehashed:
            shutil.rmtree(self.parts_dir, ignore_errors=True)
            return
        self.added_part = commit_run(self.path, parts, self.rehashed)
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        fsync_dir(self.path.parent)
