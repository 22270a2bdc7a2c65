"""The Parquet output as a growing dataset: one part per run, and an index of what was scored.

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
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from taglens.atomic import atomic_open, fsync_dir
from taglens.serving.batch_rows import (
    COLUMNS,
    KEY_COLUMNS,
    STAT_COLUMNS,
    Key,
    done_keys,
    parquet_schema,
    read_rows,
    run_parts,
    sealed_parts,
)

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


def migrate_single_file(path: Path) -> None:
    """Move an output written as one Parquet file into a folder, as its first run part.

    Crash-safe: the file is renamed into `<output>.migrating/` which is then renamed to the
    output; a run killed in between finds the `.migrating` folder and finishes the move.
    """
    staging = path.with_name(path.name + ".migrating")
    if path.is_file():
        staging.mkdir(exist_ok=True)
        os.replace(path, staging / "run-000000.parquet")
        fsync_dir(staging)
        logger.warning("%s was one Parquet file: moved into a folder as its first part", path)
    if staging.is_dir() and not path.exists():
        os.replace(staging, path)
        fsync_dir(path.parent)


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
        table = table.filter(pc.is_in(table.column("part"), value_set=pa.array(sorted(parts))))
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

    migrate_single_file(output)
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
