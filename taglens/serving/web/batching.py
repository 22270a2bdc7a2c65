"""Dynamic batching: concurrent requests wait a few milliseconds and share one forward pass.

A forward pass of 32 images costs far less than 32 passes of one (the weights are read once,
the matrix kernels run on full tiles), so a server that answers each upload with its own pass
tops out at single-image speed however many clients wait. `MicroBatcher` collects the items
submitted while the model is busy, or within `max_wait_s` of the first one, and runs them
together in one worker thread, as TF Serving's and Triton's dynamic batchers do. Its queue is
bounded: past `max_queue` waiting items `submit` raises `Overloaded` at once.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)


class Overloaded(RuntimeError):
    """The queue is full: the caller should answer 503 and ask the client to retry later."""


@dataclass
class BatchStats:
    """What the batcher has run so far (for tests, logs and the load benchmark)."""

    batches: int = 0
    items: int = 0
    sizes: list[int] = field(default_factory=list)

    def record(self, size: int) -> None:
        """Count one forward pass of `size` items (the last 1,000 sizes are kept)."""
        self.batches += 1
        self.items += size
        self.sizes = [*self.sizes[-999:], size]


@dataclass
class _Waiting:
    item: Any
    future: asyncio.Future


class MicroBatcher:
    """Group concurrent `submit` calls into batches for `run_batch`, one batch at a time.

    `run_batch(items) -> results` must return one result per item, in order. It runs in one
    dedicated thread, so the model is never called from two threads at once (Keras models are
    not guaranteed thread-safe, and on a few cores parallel passes only compete). If a batch
    fails, each of its items is retried alone, so a bad item fails only its own request.

    Args:
        run_batch: the batched computation (a forward pass plus per-item post-processing).
        max_batch_size: most items per call of `run_batch`.
        max_wait_s: how long the first item of a batch waits for others (0: never waits; the
            items that arrive while a batch runs still form the next one).
        max_queue: most items waiting (not yet in a running batch); more raise `Overloaded`.
        upstream: how many more items are on their way (e.g. requests still decoding). When
            given, a batch waits only while some are (a lone request never waits), and stops
            waiting once none is left. Without it, a batch waits `max_wait_s` unless full.
        observe: called with the size of each batch run (from the worker thread), e.g. to feed
            a metrics histogram.
    """

    def __init__(
        self,
        run_batch: Callable[[Sequence[Any]], Sequence[Any]],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        upstream: Callable[[], int] | None = None,
        observe: Callable[[int], None] | None = None,
    ) -> None:
        if max_batch_size < 1 or max_queue < 1 or max_wait_s < 0:
            raise ValueError(
                f"need max_batch_size >= 1, max_queue >= 1, max_wait_s >= 0; got "
                f"{max_batch_size}, {max_queue}, {max_wait_s}"
            )
        self.run_batch = run_batch
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.upstream = upstream
        self.observe = observe
        self.stats = BatchStats()
        self._queue: list[_Waiting] = []
        self._draining = False
        self._filled: asyncio.Future | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="taglens-batch")

    @property
    def waiting(self) -> int:
        """Items submitted and not yet taken into a batch."""
        return len(self._queue)

    async def submit(self, item: Any) -> Any:
        """Queue `item`, wait for its batch to run, and return its own result.

        Raises:
            Overloaded: `max_queue` items are already waiting.
            Exception: whatever `run_batch` raised for this item when run alone.
        """
        if len(self._queue) >= self.max_queue:
            raise Overloaded(f"{len(self._queue)} requests are already waiting for the model")
        loop = asyncio.get_running_loop()
        waiting = _Waiting(item, loop.create_future())
        self._queue.append(waiting)
        if self._filled and not self._filled.done() and not self._worth_waiting():
            self._filled.set_result(None)  # full, or nobody else is coming: run it now
        if not self._draining:
            # The first caller starts the drain on its own event loop; it stops once the queue
            # is empty, so the batcher holds no task between bursts (and survives new loops).
            self._draining = True
            loop.create_task(self._drain())
        return await waiting.future

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while self._queue:
                if self.max_wait_s > 0 and self._worth_waiting():
                    self._filled = loop.create_future()
                    await asyncio.wait({self._filled}, timeout=self.max_wait_s)
                    self._filled = None
                taken = self._queue[: self.max_batch_size]
                del self._queue[: self.max_batch_size]
                batch = [waiting for waiting in taken if not waiting.future.done()]  # gone clients
                if not batch:
                    continue
                outcomes = await loop.run_in_executor(
                    self._executor, self._run_isolated, [waiting.item for waiting in batch]
                )
                for waiting, (ok, value) in zip(batch, outcomes, strict=True):
                    if waiting.future.done():
                        continue
                    if ok:
                        waiting.future.set_result(value)
                    else:
                        waiting.future.set_exception(value)
        except BaseException as exc:  # never leave a caller waiting forever
            for waiting in self._queue:
                if not waiting.future.done():
                    waiting.future.set_exception(exc)
            self._queue.clear()
            raise
        finally:
            self._draining = False

    def _worth_waiting(self) -> bool:
        """Whether the next batch has room and others may still join it."""
        if len(self._queue) >= self.max_batch_size:
            return False
        return self.upstream is None or self.upstream() > 0

    def _run_isolated(self, items: list[Any]) -> list[tuple[bool, Any]]:
        """Run one batch in the worker thread; on failure, run each item alone."""
        self.stats.record(len(items))
        if self.observe is not None:
            self.observe(len(items))
        try:
            results = list(self.run_batch(items))
            if len(results) != len(items):
                raise RuntimeError(f"run_batch returned {len(results)} results for {len(items)}")
            return [(True, result) for result in results]
        except Exception as exc:
            if len(items) == 1:
                return [(False, exc)]
            logger.warning("a batch of %d failed; retrying its items one by one", len(items))
            return [self._run_one(item) for item in items]

    def _run_one(self, item: Any) -> tuple[bool, Any]:
        try:
            return True, list(self.run_batch([item]))[0]
        except Exception as exc:
            return False, exc

    def close(self, *, wait: bool = True) -> None:
        """Stop the worker thread once the batch in progress (if any) has finished.

        Args:
            wait: block until it has; False returns at once (from the event loop, for a
                batcher with nothing left to run).
        """
        self._executor.shutdown(wait=wait, cancel_futures=True)
