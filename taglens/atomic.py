"""Atomic file writes: a crash leaves either the old file or the new one, never half of one."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import IO, Any

from taglens.errors import TaglensError


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
    except BaseException:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        raise


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


def append_jsonl(path: Path | str, row: dict[str, Any]) -> None:
    """Append one JSON line and fsync it: for logs that resumable jobs read back.

    A line is written with a single `write` call so a crash can cut at most the last line, which
    `read_jsonl` skips.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(row, sort_keys=True, default=str) + "\n"
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
            if number == len(lines):
                break  # a torn final line from an interrupted append
            raise TaglensError(f"{path}:{number} is not valid JSON: {exc.msg}") from None
        except RecursionError:  # hostile nesting: json's C parser gives up on the stack
            raise TaglensError(f"{path}:{number} nests too deeply to be a record") from None
    return rows
