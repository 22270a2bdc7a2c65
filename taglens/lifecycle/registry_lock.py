"""The registry lock: one registration or by-hand promotion at a time per MLflow store."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from taglens.errors import TaglensError

LOCK_TIMEOUT_S = 300.0


class RegistryError(TaglensError):
    """A registry operation that cannot be done as asked; the message says what to do."""


def lock_path_for(registry_uri: str, history_path: Path) -> Path:
    """Beside a local SQLite store, else (a remote tracking server) beside the history file."""
    if registry_uri.startswith("sqlite:///"):
        return Path(registry_uri.removeprefix("sqlite:///")).parent / "registry.lock"
    return history_path.parent / ".registry.lock"


@contextmanager
def file_lock(path: Path, timeout: float = LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold an exclusive lock on `path` (the `filelock` package's OS lock).

    Threads and processes exclude each other, and a lock left by a killed process is released
    with it.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with FileLock(path, timeout=timeout, thread_local=False):
            yield
    except Timeout:
        raise RegistryError(
            f"registry lock {path} held for over {timeout:.0f} s by another registration; wait "
            "for it to finish and run again"
        ) from None
