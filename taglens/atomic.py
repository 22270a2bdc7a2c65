"""Atomic file writes: a crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import csv
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import IO, Any

from taglens.errors import TaglensError

logger = logging.getLogger(__name__)


@cache
def _current_umask() -> int:
    # Linux reports the umask without changing it; os.umask(0) would briefly affect other threads.
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextmanager
def atomic_open(path: Path | str, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open a temporary file beside `path` and move it into place only if the block succeeds.

    The temporary file lives in the same directory so the final `os.replace` is atomic, and it is
    fsynced first so a power cut cannot leave an empty file under the final name.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    # mkstemp makes the file owner-only; give it the mode a plain open() would have.
    os.fchmod(fd, 0o666 & ~_current_umask())
    try:
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
        fsync_dir(path.parent)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


def fsync_dir(path: Path | str) -> None:
    """Flush a directory's entries to disk, so a rename or a new file in it survives a power cut.

    `os.replace` is atomic but lives in the directory's metadata: until the directory is fsynced,
    a power cut can bring back the old name (or no file at all).
    """
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(path: Path | str) -> None:
    """Fsync every file under `path` (or the file itself) and every directory holding them."""
    path = Path(path)
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
    folders = {file.parent for file in files} | ({path} if path.is_dir() else set())
    for folder in sorted(folders, key=lambda p: len(p.parts), reverse=True):
        fsync_dir(folder)
    fsync_dir(path.parent)


def cut_torn_tail(path: Path | str) -> int:
    """Drop a last line left incomplete by a killed writer, so appending starts on a fresh line.

    Returns:
        The number of bytes cut (0 when the file ends with a newline or is empty).
    """
    with open(path, "rb+") as handle:
        size = handle.seek(0, os.SEEK_END)
        if size == 0:
            return 0
        position = size
        while position > 0:
            step = min(65536, position)
            handle.seek(position - step)
            block = handle.read(step)
            newline = block.rfind(b"\n")
            if newline >= 0:
                end = position - step + newline + 1
                break
            position -= step
        else:
            end = 0
        if end != size:
            handle.truncate(end)
            handle.flush()
            os.fsync(handle.fileno())
        return size - end


def atomic_write_bytes(path: Path | str, data: bytes) -> Path:
    """Write bytes atomically and return the path."""
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(path: Path | str, text: str) -> Path:
    """Write UTF-8 text atomically and return the path."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        handle.write(text)
    return Path(path)


def atomic_write_json(path: Path | str, obj: Any) -> Path:
    """Write JSON (sorted keys, indented, so diffs and DVC metrics read well) atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def atomic_write_jsonl(path: Path | str, rows: Iterable[dict[str, Any]]) -> Path:
    """Write JSON lines atomically and return the path."""
    with atomic_open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, sort_keys=True, default=str) + "\n")
    return Path(path)


def atomic_write_csv(
    path: Path | str, rows: Iterable[dict[str, Any]], columns: Sequence[str]
) -> Path:
    """Write rows as CSV with a header atomically; keys outside `columns` are left out.

    A column a row lacks is written empty.
    """
    with atomic_open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.DictWriter(
            handle, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n"
        )
        writer.writeheader()
        writer.writerows(rows)
    return Path(path)


def append_jsonl(path: Path | str, row: dict[str, Any]) -> None:
    """Append one JSON line and fsync it: for logs that resumable jobs read back.

    A line is written with a single `write` call so a crash can cut at most the last line. Such a
    torn line is cut off (with a warning) before appending: glued to the new line it would make
    the file unreadable. `read_jsonl` skips it too.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(row, sort_keys=True, default=str) + "\n"
    if path.exists() and (cut := cut_torn_tail(path)):
        logger.warning(
            "%s ended with a torn line (%d bytes, from an interrupted write): "
            "removed it before appending",
            path,
            cut,
        )
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl(path: Path | str) -> list[dict[str, Any]]:
    """Read JSON lines, skipping a last line cut short by a crash.

    Raises:
        ValueError: a line other than the last one is not valid JSON (the file is corrupt).

    """
    path = Path(path)
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as exc:
        raise TaglensError(f"{path} is not UTF-8 text (byte {exc.start}): it is corrupt") from None
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError as exc:
            if number == len(lines):  # a torn final line from an interrupted append
                logger.warning(
                    "%s:%d is a torn last line (an interrupted write): skipped it", path, number
                )
                break
            raise TaglensError(f"{path}:{number} is not valid JSON: {exc.msg}") from None
        except RecursionError:  # hostile nesting: json's C parser gives up on the stack
            raise TaglensError(f"{path}:{number} nests too deeply to be a record") from None
    return rows
