"""Worker threads run nicer than the event loop, so the page answers under a full load."""

from __future__ import annotations

import os
import threading

import pytest

from taglens.serving.web import priority
from taglens.serving.web.batching import MicroBatcher

pytestmark = pytest.mark.skipif(not priority.supported(), reason="per-thread nice is Linux's")


def nice_of(native_id: int) -> int:
    return os.getpriority(os.PRIO_PROCESS, native_id)


def run_in_thread(fn) -> int:
    """Run fn in a new thread that then waits; return the nice value the thread ended with."""
    seen = []

    def body():
        fn()
        seen.append(nice_of(threading.get_native_id()))

    thread = threading.Thread(target=body)
    thread.start()
    thread.join()
    return seen[0]


def test_a_worker_thread_is_lowered_once_by_the_setting():
    base = nice_of(os.getpid())

    def twice():
        priority.lower_this_thread(3)
        priority.lower_this_thread(3)  # once per thread: not 6

    assert run_in_thread(twice) == min(19, base + 3)
    assert run_in_thread(lambda: priority.lower_this_thread(0)) == base  # 0: off
    assert nice_of(threading.get_native_id()) == base  # the caller is untouched


SWEEP = """
import os, threading
from taglens.serving.web import priority
release = threading.Event()
threads = [threading.Thread(target=release.wait) for _ in range(3)]
for thread in threads:
    thread.start()
lowered = priority.lower_other_threads(2)
nice = [os.getpriority(os.PRIO_PROCESS, t.native_id) for t in threads]
print(lowered, *nice, os.getpriority(os.PRIO_PROCESS, threading.get_native_id()))
release.set()
"""


def test_every_other_thread_is_lowered_but_the_callers():
    # In a child process: a sweep here would leave pytest's own threads lowered for good.
    import subprocess
    import sys

    base = nice_of(os.getpid())
    done = subprocess.run([sys.executable, "-c", SWEEP], capture_output=True, text=True,
                          check=True, timeout=60)  # fmt: skip
    lowered, *workers, caller = (int(word) for word in done.stdout.split())
    assert lowered >= 3 and workers == [min(19, base + 2)] * 3
    assert caller == base  # the thread that becomes the event loop keeps its place


def test_the_batch_thread_runs_its_initializer_first():
    import asyncio

    ran_in = []
    batcher = MicroBatcher(
        lambda items: [threading.get_native_id() for _ in items], max_batch_size=4,
        max_wait_s=0, max_queue=8,
        thread_initializer=lambda: ran_in.append(threading.get_native_id()),
    )  # fmt: skip
    try:
        worker_id = asyncio.run(batcher.submit("x"))
    finally:
        batcher.close()
    assert ran_in == [worker_id]
