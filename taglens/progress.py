"""Progress that suits where output goes: a bar on a terminal, a log line every few seconds else.

In logs (dvc repro, Prefect, CI) a bar's carriage returns are noise and its redraws are many.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

logger = logging.getLogger("taglens.progress")
# Seconds between log lines when stderr is not a terminal; TAGLENS_PROGRESS_SECONDS overrides.
DEFAULT_INTERVAL_S = 10.0


class LogProgress:
    """The part of tqdm's interface taglens uses, reporting through `logging` at a fixed pace.

    Args:
        iterable: Items to pass through, counting each (or None to count with `update`).
        total: The expected count (taken from `len(iterable)` when absent).
        desc: What is counted, as the line's prefix ("featurize").
        unit: The unit's name ("img").
        initial: Work done before this run (resumed jobs), counted but not in the rate.
        disable: Report nothing.
        interval: Seconds between lines.
        clock: A monotonic clock (tests pass a fake one).
    """

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        *,
        total: int | None = None,
        desc: str = "progress",
        unit: str = "it",
        initial: int = 0,
        disable: bool = False,
        interval: float = DEFAULT_INTERVAL_S,
        clock: Callable[[], float] = time.monotonic,
        **_ignored: Any,
    ) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable = iterable
        self.total = total
        self.desc = desc
        self.unit = unit
        self.n = self.initial = initial
        self.disable = disable
        self.interval = interval
        self._clock = clock
        self._start = self._last = clock()
        self._closed = False

    def __iter__(self) -> Iterator[Any]:
        for item in self.iterable or ():
            yield item
            self.update(1)
        self.close()

    def __enter__(self) -> LogProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: int = 1) -> None:
        """Count `n` more; log a line if `interval` seconds passed since the last one."""
        self.n += n
        now = self._clock()
        if now - self._last >= self.interval:
            self._last = now
            self._log(now)

    def close(self) -> None:
        """Log the final count once."""
        if not self._closed:
            self._closed = True
            self._log(self._clock(), final=True)

    def line(self, now: float, final: bool = False) -> str:
        """The text of one report: count, share of the total, rate and time left."""
        elapsed = max(now - self._start, 1e-9)
        rate = (self.n - self.initial) / elapsed
        done = f"{self.n}/{self.total}" if self.total else f"{self.n}"
        text = f"{self.desc}: {done} {self.unit}"
        if self.total:
            text += f" ({100 * self.n / self.total:.0f}%)"
        text += f", {rate:.3g} {self.unit}/s"
        if final:
            return text + f", done in {elapsed:.1f} s"
        if self.total and rate > 0:
            text += f", about {(self.total - self.n) / rate:.0f} s left"
        return text

    def _log(self, now: float, final: bool = False) -> None:
        if not self.disable:
            logger.info(self.line(now, final))


def progress_bar(iterable: Iterable[Any] | None = None, **kwargs: Any) -> Any:
    """A tqdm bar when stderr is a terminal, else a `LogProgress` (same arguments).

    Takes tqdm's keyword arguments (`total`, `desc`, `unit`, `initial`, `disable`, ...).
    """
    if sys.stderr.isatty():
        from tqdm import tqdm

        return tqdm(iterable, **kwargs)
    interval = float(os.environ.get("TAGLENS_PROGRESS_SECONDS", DEFAULT_INTERVAL_S))
    return LogProgress(iterable, interval=interval, **kwargs)
