"""Progress: a bar on a terminal, a log line every few seconds in logs."""

from __future__ import annotations

import logging

from taglens import progress
from taglens.progress import LogProgress, progress_bar


class FakeClock:
    def __init__(self):
        self.now = 100.0

    def __call__(self):
        return self.now


def test_logs_a_line_per_interval_and_one_at_the_end(caplog):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="taglens.progress")
    with LogProgress(total=100, desc="featurize", unit="img", interval=10, clock=clock) as bar:
        for _ in range(10):
            clock.now += 3  # 30 s of work in steps of 10 images
            bar.update(10)
    lines = [record.getMessage() for record in caplog.records]
    # a line at 12 s (after 40 images) and at 24 s (80), then the final one
    assert lines == [
        "featurize: 40/100 img (40%), 3.33 img/s, about 18 s left",
        "featurize: 80/100 img (80%), 3.33 img/s, about 6 s left",
        "featurize: 100/100 img (100%), 3.33 img/s, done in 30.0 s",
    ]


def test_iterating_counts_items_and_resumed_work_is_not_in_the_rate(caplog):
    clock = FakeClock()
    caplog.set_level(logging.INFO, logger="taglens.progress")
    items = []
    for item in LogProgress(
        iter(range(5)), total=10, initial=5, desc="#food", unit="post", interval=60, clock=clock
    ):
        clock.now += 1
        items.append(item)
    assert items == [0, 1, 2, 3, 4]
    assert [r.getMessage() for r in caplog.records] == [
        "#food: 10/10 post (100%), 1 post/s, done in 5.0 s"
    ]


def test_disabled_reports_nothing(caplog):
    caplog.set_level(logging.INFO, logger="taglens.progress")
    with LogProgress(total=3, disable=True) as bar:
        bar.update(3)
    assert caplog.records == []


def test_a_bar_only_on_a_terminal(monkeypatch):
    from tqdm import tqdm

    monkeypatch.setenv("TAGLENS_PROGRESS_SECONDS", "2.5")
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: False, raising=False)
    logged = progress_bar(total=3, desc="x")
    assert isinstance(logged, LogProgress) and logged.interval == 2.5
    monkeypatch.setattr(progress.sys.stderr, "isatty", lambda: True, raising=False)
    bar = progress_bar(total=3, desc="x", disable=True)
    assert isinstance(bar, tqdm)
    bar.close()
