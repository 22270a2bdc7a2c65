"""What a batch output row holds, and how CSV, JSON-lines and Parquet outputs are written, resumed.

The rows of a batch predict output: columns, formats, the resume key, and reading them back.

One row per input image: its path and sha256 (together the resume key), the ranked hashtags,
the top class, the model's registered name and version, and the error that kept it from being
scored (None when scored). `OutputWriter` writes them as CSV, JSON lines or
Parquet; every reader here streams any of the three. A `.parquet` output is a folder with one
part per run (below); an output written before that, one Parquet file, reads the same.

The Parquet output as a growing dataset: one part per run, and an index of what was scored.

A `.parquet` output is a folder (`pandas.read_parquet(folder)` and `pyarrow.dataset` read it as
one table) holding:

- `run-NNNNNN.parquet`: the rows one run added, in input order. A run adds a part; no run
  rewrites an earlier one, so a night's cost follows the night's new photos, not the history.
- `_index.parquet`: one row per output row: its resume key (path, sha256, model name and
  version), the part that holds it, and the file's size and mtime_ns when it was hashed. A run
  reads this small file, not the parts, to know what each model version has scored, and skips a
  photo whose path, size and mtime are unchanged without reading its bytes again. It is replaced
  atomically after each new part; a part the index does not list yet (a run killed between the
  two) is folded in from the part's own key columns when the index is next read.

Files whose names start with `_` or `.` (the index, temporary files) are invisible to pyarrow's
and pandas' dataset readers. An output written before the folder layout (one Parquet file) is
moved into a folder as its first part the first time a run writes to it.

Resumable, streaming output files of the batch predict job: CSV, JSON lines and Parquet.

Every writer appends rows batch by batch, so memory stays flat, and can tell which inputs a
model version has already scored, so a re-run skips them:

- `.jsonl` / `.csv`: rows are appended and fsynced per batch. A run killed mid-write leaves at
  most a torn last line, which the next run cuts off before appending.
- `.parquet`: the output is a folder with one part per run (below). Rows are staged
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
import logging
import os
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from taglens.atomic import atomic_open, cut_torn_tail, fsync_dir
from taglens.errors import TaglensError

if TYPE_CHECKING:
    from taglens.serving.model_ref import ModelRef


COLUMNS = (
    "path", "sha256", "hashtags", "top_class", "top_probability",
    "model_name", "model_version", "error",
)  # fmt: skip
FORMATS = (".csv", ".jsonl", ".parquet")
Key = tuple[str, str]  # (path, sha256)
KEY_COLUMNS = ("path", "sha256", "model_name", "model_version")
# The file's size and mtime when it was hashed: staged Parquet parts and the dataset's index
# carry them so that a later run recognises an unchanged file without reading it again.
STAT_COLUMNS = ("size", "mtime_ns")
RUN_GLOB = "run-*.parquet"  # the parts of a Parquet dataset output, one per run, in run order


def row_key(row: dict[str, Any]) -> Key:
    """The resume key of a row: the same file content at the same path."""
    return (str(row["path"]), str(row.get("sha256") or ""))


def check_format(path: Path) -> str:
    """The output's suffix, lower-cased, once it is known to be one of FORMATS."""
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise TaglensError(
            f"output {path} must end with one of {', '.join(FORMATS)} (the suffix picks the format)"
        )
    return suffix


def parquet_schema():
    """The Parquet schema of an output: COLUMNS with hashtags as a list of (tag, score)."""
    import pyarrow as pa

    tag = pa.struct([("tag", pa.string()), ("score", pa.float64())])
    return pa.schema(
        [
            ("path", pa.string()),
            ("sha256", pa.string()),
            ("hashtags", pa.list_(tag)),
            ("top_class", pa.string()),
            ("top_probability", pa.float64()),
            ("model_name", pa.string()),
            ("model_version", pa.string()),
            ("error", pa.string()),
        ]
    )


def staging_schema():
    """The schema of a staged Parquet part: the output's columns plus STAT_COLUMNS."""
    import pyarrow as pa

    schema = parquet_schema()
    for name in STAT_COLUMNS:
        schema = schema.append(pa.field(name, pa.int64()))
    return schema


def run_parts(dataset: Path) -> list[Path]:
    """The run parts of a Parquet dataset output, oldest first (empty if it is no folder)."""
    return sorted(dataset.glob(RUN_GLOB)) if dataset.is_dir() else []


def _from_csv(record: dict[str, str]) -> dict[str, Any]:
    row: dict[str, Any] = {key: (record.get(key) or None) for key in COLUMNS}
    row["hashtags"] = json.loads(record["hashtags"]) if record.get("hashtags") else []
    prob = record.get("top_probability")
    row["top_probability"] = float(prob) if prob else None
    return row


def csv_values(row: dict[str, Any]) -> list[str]:
    """A row as CSV cells in COLUMNS order (hashtags as compact JSON)."""
    values = []
    for key in COLUMNS:
        value = row.get(key)
        if key == "hashtags":
            value = json.dumps(value or [], separators=(",", ":"))
        values.append("" if value is None else str(value))
    return values


def read_rows(
    path: Path | str, chunk_rows: int = 4096, columns: list[str] | None = None
) -> Iterator[dict[str, Any]]:
    """Stream the rows of an output file (any format) as dicts with `hashtags` as a list.

    `columns` limits what Parquet reads (the other formats always give every column).

    Raises:
        ValueError: the suffix is not a known format.
    """
    path = Path(path)
    suffix = check_format(path)
    if not path.exists():
        return
    if suffix == ".parquet":
        import pyarrow.parquet as pq

        for file in run_parts(path) if path.is_dir() else [path]:
            parquet = pq.ParquetFile(file)
            for batch in parquet.iter_batches(batch_size=chunk_rows, columns=columns):
                yield from batch.to_pylist()
        return
    with open(path, encoding="utf-8", newline="") as handle:
        if suffix == ".jsonl":
            for line in handle:
                if line.endswith("\n") and line.strip():
                    yield json.loads(line)
        else:
            yield from (_from_csv(record) for record in csv.DictReader(handle))


def sealed_parts(parts_dir: Path) -> list[Path]:
    """The sealed Parquet parts of an unfinished run, in the order they were written."""
    return sorted(parts_dir.glob("part-*.parquet")) if parts_dir.is_dir() else []


def existing_rows(path: Path | str, columns: list[str] | None = None) -> Iterator[dict[str, Any]]:
    """Rows of an output and, for Parquet, of the sealed parts of an unfinished run (read-only)."""
    path = Path(path)
    yield from read_rows(path, columns=columns)
    if path.suffix.lower() == ".parquet":
        for part in sealed_parts(path.with_name(path.name + ".parts")):
            yield from read_rows(part, columns=columns or list(COLUMNS))


def done_keys(path: Path | str, model_name: str, model_version: str) -> set[Key]:
    """Resume keys of the rows `model_name`/`model_version` has written to an output."""
    return {
        row_key(row)
        for row in existing_rows(path, columns=list(KEY_COLUMNS))
        if (row.get("model_name"), str(row.get("model_version"))) == (model_name, model_version)
    }


def path_text(path: Path | str) -> str:
    """A path as the output's `path` column holds it: its text, and the resume key.

    A name that is not UTF-8 (a Latin-1 file name from an old camera or a Windows share) is
    held with each odd byte written as a backslash escape (Python's `backslashreplace`): no
    output format can store the raw bytes as text.
    """
    return os.fsencode(path).decode("utf-8", "backslashreplace")


def scored_row(
    path: Path,
    sha: str,
    model: ModelRef,
    error: str | None = None,
    prediction: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The output row of one input: its prediction, or the error that kept it from one."""
    prediction = prediction or {}
    return {
        "path": path_text(path),
        "sha256": sha,
        "hashtags": [
            {"tag": h["tag"], "score": float(h["score"])} for h in prediction.get("hashtags", [])
        ],
        "top_class": prediction.get("top_class"),
        "top_probability": prediction.get("top_probability"),
        "model_name": model.name,
        "model_version": model.version,
        "error": error,
    }


logger = logging.getLogger(__name__)

INDEX_FILE = "_index.parquet"
INDEX_COLUMNS = ("part", *KEY_COLUMNS, *STAT_COLUMNS)
Stat = tuple[int, int]  # (size, mtime_ns)


def index_schema():
    """The index's schema: INDEX_COLUMNS, sizes and mtimes as int64 (null when unknown)."""
    import pyarrow as pa

    strings = [(name, pa.string()) for name in ("part", *KEY_COLUMNS)]
    return pa.schema(strings + [(name, pa.int64()) for name in STAT_COLUMNS])


@dataclass
class ResumeState:
    """What one model version has scored already in an output.

    Attributes:
        done: the resume keys (path, sha256) it has written.
        hashes: path -> (size, mtime_ns, sha256) of files whose stat was recorded when hashed.
    """

    done: set[Key] = field(default_factory=set)
    hashes: dict[str, tuple[int, int, str]] = field(default_factory=dict)

    def update(self, other: ResumeState) -> None:
        """Add another output's state (a shard also skips what the final output holds)."""
        self.done |= other.done
        self.hashes.update(other.hashes)


def refuse_single_file(path: Path) -> None:
    """Refuse a `.parquet` output written as one file, the layout before one part per run.

    Raises:
        TaglensError: `path` is a file (the message says how to turn it into the folder layout).
    """
    if path.is_file():
        raise TaglensError(
            f"{path} is a single Parquet file from an older taglens: rename it, make {path} a "
            f"folder and move the file into it as {path}/run-000000.parquet"
        )


def _index_table(dataset: Path):
    """The index as a pyarrow table, reconciled with the parts on disk (nothing is written)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = index_schema()
    index_path = dataset / INDEX_FILE
    table = pq.read_table(index_path).cast(schema) if index_path.is_file() else schema.empty_table()
    parts = {part.name for part in run_parts(dataset)}
    listed = set(table.column("part").unique().to_pylist())
    if listed - parts:  # a part removed by hand: its rows are no longer in the output
        table = table.filter(
            pc.is_in(table.column("part"), value_set=pa.array(sorted(parts), pa.string()))
        )
    missing = []
    for name in sorted(parts - listed):  # written by a run killed before its index update
        keys = pq.read_table(dataset / name, columns=list(KEY_COLUMNS))
        count = keys.num_rows
        columns = {"part": pa.array([name] * count, pa.string())}
        columns.update({key: keys.column(key).cast(pa.string()) for key in KEY_COLUMNS})
        columns.update({stat: pa.nulls(count, pa.int64()) for stat in STAT_COLUMNS})
        missing.append(pa.table(columns, schema=schema))
    return pa.concat_tables([table, *missing]) if missing else table


def resume_state(output: Path | str, model_name: str, model_version: str) -> ResumeState:
    """What `model_name`/`model_version` has scored in an output of any format.

    For a Parquet dataset this reads its index (plus the staged parts of an unfinished run),
    never the run parts; for CSV and JSON lines it reads the rows.
    """
    output = Path(output)
    if output.suffix.lower() != ".parquet" or not output.is_dir():
        return ResumeState(done=done_keys(output, model_name, model_version))
    import pyarrow.compute as pc

    table = _index_table(output)
    mine = pc.and_(
        pc.equal(table.column("model_name"), model_name),
        pc.equal(table.column("model_version"), model_version),
    )
    table = table.filter(mine)
    paths = table.column("path").to_pylist()
    shas = [sha or "" for sha in table.column("sha256").to_pylist()]
    sizes = table.column("size").to_pylist()
    mtimes = table.column("mtime_ns").to_pylist()
    state = ResumeState(done=set(zip(paths, shas, strict=True)))
    for path, sha, size, mtime in zip(paths, shas, sizes, mtimes, strict=True):
        if size is not None and mtime is not None:
            state.hashes[path] = (size, mtime, sha)
    model = (model_name, model_version)
    # a killed run's sealed parts, committed by the next run that finishes
    state.done |= _staged_rows_done(output.with_name(output.name + ".parts"), model)
    return state


def _staged_rows_done(staged: Path, model: tuple[str, str]) -> set[Key]:
    return {
        (str(row["path"]), str(row.get("sha256") or ""))
        for part in sealed_parts(staged)
        for row in read_rows(part, columns=list(KEY_COLUMNS))
        if (row["model_name"], str(row["model_version"])) == model
    }


def _next_part(dataset: Path, indexed: Sequence[str]) -> Path:
    """The next run part's path: after every part on disk or named in the index."""
    names = [part.name for part in run_parts(dataset)] + list(indexed)
    numbers = [int(Path(name).stem.split("-")[1]) for name in names]
    return dataset / f"run-{max(numbers, default=-1) + 1:06d}.parquet"


def commit_run(
    output: Path,
    staged: Iterable[Path],
    rehashed: Mapping[Key, Stat] | None = None,
) -> Path | None:
    """Add the staged parts' new rows to the dataset as one run part, then update the index.

    Rows whose key (path, sha256, model) the dataset holds already are dropped, so committing
    the same staged parts twice (a run killed after the commit, before the parts were deleted)
    adds nothing. `rehashed` records the current stat of files a run re-read and found already
    scored (touched, or indexed without a stat), so the next run skips them unread.

    Returns:
        The new part, or None when no row was new (no part is written then, unless the dataset
        did not exist: it gets an empty part, so that it can be read as a table).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    refuse_single_file(output)
    created = not output.is_dir()
    output.mkdir(parents=True, exist_ok=True)
    if created:
        fsync_dir(output.parent)
    index = _index_table(output)
    seen = set(zip(*(index.column(name).to_pylist() for name in KEY_COLUMNS), strict=True))
    target = _next_part(output, index.column("part").unique().to_pylist())
    tmp = output / f".{target.name}.tmp"  # hidden from dataset readers until renamed
    schema = parquet_schema()
    writer = None
    added: list[dict[str, Any]] = []
    try:
        for part in staged:
            parquet = pq.ParquetFile(part)
            for group in range(parquet.num_row_groups):
                table = parquet.read_row_group(group)
                keep = _new_rows(table, seen)
                table = table.filter(pa.array(keep, pa.bool_()))
                if not table.num_rows:
                    continue
                stats = {
                    name: table.column(name).to_pylist()
                    if name in table.column_names
                    else [None] * table.num_rows
                    for name in STAT_COLUMNS
                }
                keys = [table.column(name).to_pylist() for name in KEY_COLUMNS]
                for i, key in enumerate(zip(*keys, strict=True)):
                    added.append(
                        {
                            "part": target.name,
                            **dict(zip(KEY_COLUMNS, key, strict=True)),
                            **{name: stats[name][i] for name in STAT_COLUMNS},
                        }
                    )
                if writer is None:
                    writer = pq.ParquetWriter(tmp, schema)
                writer.write_table(table.select(list(COLUMNS)).cast(schema))
        if writer is None and created:
            writer = pq.ParquetWriter(tmp, schema)  # an empty first part: the table exists
        if writer is not None:
            writer.close()
            with open(tmp, "rb") as handle:
                os.fsync(handle.fileno())
            os.replace(tmp, target)
            fsync_dir(output)
    except BaseException:
        if writer is not None:
            writer.close()
        tmp.unlink(missing_ok=True)
        raise
    if rehashed:
        index = _refresh(index, rehashed)
    if added or rehashed or not (output / INDEX_FILE).is_file():
        new = pa.Table.from_pylist(added, schema=index_schema())
        write_index(output, pa.concat_tables([index, new]))
    return target if writer is not None else None


def _new_rows(table, seen: set[tuple]) -> list[bool]:
    """Which rows of `table` have a key not in `seen` (and add theirs): the commit's dedupe."""
    keys = zip(*(table.column(name).to_pylist() for name in KEY_COLUMNS), strict=True)
    mask = []
    for key in keys:
        mask.append(key not in seen)
        seen.add(key)
    return mask


def _refresh(index, rehashed: Mapping[Key, Stat]):
    """The index with the current stat of re-read files recorded in their rows (every model's)."""
    import pyarrow as pa

    rows = index.to_pylist()
    for row in rows:
        stat = rehashed.get((row["path"], row["sha256"] or ""))
        if stat is not None:
            row["size"], row["mtime_ns"] = stat
    return pa.Table.from_pylist(rows, schema=index_schema())


def write_index(dataset: Path, table) -> Path:
    """Replace the dataset's index atomically with `table` (INDEX_COLUMNS)."""
    import pyarrow.parquet as pq

    path = dataset / INDEX_FILE
    with atomic_open(path, "wb") as handle:
        pq.write_table(table.select(list(INDEX_COLUMNS)), handle)
    return path


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
            refuse_single_file(self.path)
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
