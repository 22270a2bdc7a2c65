"""Keep the event loop first in line for the CPU, so the page and /health answer under load.

Under a full upload load every core runs model or decode work, and Linux schedules threads, not
processes: the event-loop thread, which serves the page, answers /health and moves the upload
bytes, then waits behind the workers for its time slices (a page took over 200 ms at p99 with
32 clients). Giving the worker threads a higher nice value than the event loop lets the
scheduler run the loop as soon as it has work; the workers still get every cycle it leaves, so
throughput is the same. Raising one's own nice value needs no privilege. Elsewhere than Linux,
where a thread's nice value cannot be set this way, nothing changes.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path

logger = logging.getLogger(__name__)

_lowered = threading.local()


def supported() -> bool:
    """Whether threads can be given their own nice value here (Linux)."""
    return sys.platform.startswith("linux") and hasattr(os, "setpriority")


def lower_thread(native_id: int, nice: int) -> bool:
    """Raise one thread's nice value by `nice` (never lower it); whether that was done."""
    if nice <= 0 or not supported():
        return False
    try:
        current = os.getpriority(os.PRIO_PROCESS, native_id)
        os.setpriority(os.PRIO_PROCESS, native_id, min(19, max(current, _base() + nice)))
    except OSError as exc:  # the thread ended meanwhile, or a sandbox forbids it
        logger.debug("cannot lower thread %d's priority: %s", native_id, exc)
        return False
    return True


def lower_this_thread(nice: int) -> None:
    """Lower the calling worker thread's priority, once per thread (cheap to call per job)."""
    if getattr(_lowered, "done", False):
        return
    _lowered.done = True
    lower_thread(threading.get_native_id(), nice)


def lower_other_threads(nice: int) -> int:
    """Lower every thread of this process but the caller's (the model runtime's pools).

    Called from the event loop once the model is loaded: the inference runtimes start their
    worker threads while compiling, before the loop runs. Returns how many were lowered.
    """
    if nice <= 0 or not supported():
        return 0
    own = threading.get_native_id()
    tasks = Path(f"/proc/{os.getpid()}/task")
    ids = [int(entry.name) for entry in tasks.iterdir()] if tasks.is_dir() else []
    return sum(lower_thread(tid, nice) for tid in ids if tid != own)


def _base() -> int:
    """The process's own nice value: worker threads are placed relative to it."""
    return os.getpriority(os.PRIO_PROCESS, os.getpid())
