"""Resumable, streaming output files of the batch predict job: CSV, JSON lines and Parquet.

The rows and how they are read back are `taglens.serving.batch_rows`.

Every writer appends rows batch by batch, so memory stays flat, and can tell which inputs a
model version has already scored, so a re-run skips them:

- `.jsonl` / `.csv`: rows are appended and fsynced per batch. A run killed mid-write leaves at
  most a torn last line, which the next run cuts off before appending.
- `.parquet` (which cannot be appended to): rows go into part files under `<output>.parts/`,
  one row group per batch; a part is sealed (renamed from `.tmp`) every `part_rows` rows or
  `part_seconds` seconds. Closing the writer streams the previous output and all parts, row group
  by row group, into a new file that atomically replaces the output, then deletes the parts. A
  killed run loses at most the unsealed part. Finalizing is idempotent: a part row whose key
  (path, sha256, model) is in the output already is not added again, so a kill between the
  replace and the deletion of the parts cannot duplicate rows.
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

from taglens.atomic import atomic_open, cut_torn_tail, fsync_dir
from taglens.errors import TaglensError
from taglens.serving.batch_rows import (
    COLUMNS,
    KEY_COLUMNS,
    Key,
    check_format,
    csv_values,
    done_keys,
    existing_rows,
    parquet_schema,
    read_rows,
    sealed_parts,
)


class OutputWriter:
    """Append rows to an output file; `close()` finalizes, `abort()` keeps what was written."""

    def __init__(self, path: Path | str, part_rows: int = 4096, part_seconds: float = 60.0):
        self.path = Path(path)
        self.format = check_format(self.path)
        self.parts_dir = self.path.with_name(self.path.name + ".parts")
        self.part_rows = part_rows
        self.part_seconds = part_seconds
        self._handle = None
        self._csv = None
        self._part = None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.format == ".parquet":
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

    def done_keys(self, model_name: str, model_version: str) -> set[Key]:
        """Resume keys of the rows this model version has already written."""
        return done_keys(self.path, model_name, model_version)

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
                record = {key: row.get(key) for key in COLUMNS}
                self._handle.write(json.dumps(record, ensure_ascii=False) + "\n")
        self._handle.flush()
        os.fsync(self._handle.fileno())

    def _write_parquet(self, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._part is None:
            number = len(sealed_parts(self.parts_dir))
            tmp = self.parts_dir / f"part-{number:06d}.parquet.tmp"
            self._part = [pq.ParquetWriter(tmp, parquet_schema()), tmp, 0, time.monotonic()]
        table = pa.Table.from_pylist([{k: r.get(k) for k in COLUMNS} for r in rows],
                                     schema=parquet_schema())  # fmt: skip
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
        """Finish: for Parquet, merge the old output and the parts into one file atomically."""
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
        import pyarrow.parquet as pq

        parts = sealed_parts(self.parts_dir)
        if not parts and self.path.exists():
            shutil.rmtree(self.parts_dir, ignore_errors=True)
            return
        schema = parquet_schema()
        seen = {tuple(row[k] for k in KEY_COLUMNS)
                for row in read_rows(self.path, columns=list(KEY_COLUMNS))}  # fmt: skip
        with atomic_open(self.path, "wb") as handle:
            writer = pq.ParquetWriter(handle, schema)
            if self.path.exists():
                previous = pq.ParquetFile(self.path)
                for group in range(previous.num_row_groups):
                    writer.write_table(previous.read_row_group(group).cast(schema))
            for part in parts:
                parquet = pq.ParquetFile(part)
                for group in range(parquet.num_row_groups):
                    table = parquet.read_row_group(group).cast(schema)
                    table = table.filter(_new_rows(table, seen))
                    if table.num_rows:
                        writer.write_table(table)
            writer.close()
        shutil.rmtree(self.parts_dir, ignore_errors=True)
        fsync_dir(self.path.parent)


def _new_rows(table, seen: set[tuple]) -> list[bool]:
    """Which rows of `table` have a key not in `seen` (and add theirs): finalize's dedupe."""
    keys = zip(*(table.column(name).to_pylist() for name in KEY_COLUMNS), strict=True)
    mask = []
    for key in keys:
        mask.append(key not in seen)
        seen.add(key)
    return mask
