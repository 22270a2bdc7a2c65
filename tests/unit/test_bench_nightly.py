"""The nightly scoring benchmark's report (pure formatting)."""

from __future__ import annotations

from bench.nightly import to_markdown


def test_markdown_has_both_situations_and_the_ratio():
    result = {
        "new": 1000,
        "history": 10000,
        "side": 320,
        "image_size": 32,
        "batch_size": 32,
        "engine": "tensorflow",
        "repeats": 2,
        "cpus": 2,
        "loadavg_start": 1.0,
        "loadavg_end": 2.0,
        "seconds": {"alone": [10.0, 9.0], "after_history": [10.5, 9.9]},
        "counts": {
            "alone": {"scored": 1000, "skipped": 0, "total": 1000},
            "after_history": {"scored": 1000, "skipped": 10000, "total": 11000},
        },
        "ratio_best": 9.9 / 9.0,
        "ratio_by_repeat": [1.05, 1.1],
        "ratio_median": 1.06,
        "cpu_seconds": {"alone": [20.0, 19.0], "after_history": [21.0, 20.5]},
        "cpu_ratio_best": 20.5 / 19.0,
        "cpu_ratio_by_repeat": [1.05, 1.08],
        "cpu_ratio_median": 1.065,
    }
    text = to_markdown(result)
    assert (
        "| the new photos alone, new output | 1000 | 1000 | 0 | 10.00, 9.00 | 9.00 "
        "| 20.00, 19.00 | 19.00 |"
    ) in text
    assert (
        "| after 10000 scored | 11000 | 1000 | 10000 | 10.50, 9.90 | 9.90 | 21.00, 20.50 | 20.50 |"
    ) in text
    assert "wall: best 1.10; by repeat 1.05, 1.10; median 1.06" in text
    assert "CPU: best 1.08; by repeat 1.05, 1.08; median 1.06" in text
