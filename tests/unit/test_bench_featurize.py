"""The featurize benchmark's turn-taking, arithmetic and table (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.featurize import relative_difference, take_turns, to_markdown


def test_contenders_take_turns_batch_by_batch_in_a_rotating_order():
    calls = []

    def contender(name, batches):
        for number in range(batches):
            calls.append(name)
            yield np.full((2, 3), number, dtype="float32")

    seconds, cpu, first = take_turns(
        {"a": contender("a", 3), "b": contender("b", 3), "c": contender("c", 2)}
    )
    assert calls == ["a", "b", "c", "b", "c", "a", "a", "b"]  # turn 3 starts at c: done
    assert {name: len(times) for name, times in seconds.items()} == {"a": 3, "b": 3, "c": 2}
    assert all(t >= 0 for times in seconds.values() for t in times)
    assert {name: len(times) for name, times in cpu.items()} == {"a": 3, "b": 3, "c": 2}
    assert set(first) == {"a", "b", "c"} and not first["a"].any()  # batch 0 kept


def test_relative_difference_is_row_wise():
    want = np.array([[3.0, 4.0], [1.0, 0.0]])
    got = np.array([[3.0, 4.5], [1.0, 0.0]])
    assert relative_difference(got, want) == pytest.approx(0.1)


def test_table_has_every_contender_and_both_ratios():
    result = {
        "cpus": 2,
        "loadavg_start": 1.0,
        "loadavg_end": 2.0,
        "image_size": 224,
        "batch_size": 16,
        "images": 64,
        "default_engine": "openvino",
        "backbone": "vgg19",
        "batch_seconds": {
            "taglens/openvino": [9.0, 3.6, 4.0, 3.8],
            "plain/tensorflow": [5.0, 4.8, 5.0, 5.2],
            "plain/openvino": [3.0, 4.0, 3.9, 4.1],
        },
        "best_img_s": {
            "taglens/openvino": 16 / 3.6,
            "plain/tensorflow": 16 / 4.8,
            "plain/openvino": 16 / 3.9,
        },
        "median_img_s": {
            "taglens/openvino": 16 / 3.8,
            "plain/tensorflow": 16 / 5.0,
            "plain/openvino": 16 / 4.0,
        },
        "img_per_cpu_s": {"taglens/openvino": 2.0, "plain/tensorflow": 1.6, "plain/openvino": 2.1},
        "cpu_other": "plain/openvino",
        "taglens_over_best_other_cpu": 2.0 / 2.1,
        "first_batch_s": {"taglens/openvino": 9.0, "plain/tensorflow": 5.0, "plain/openvino": 3.0},
        "relative_difference": {
            "taglens/openvino": 2e-7,
            "plain/tensorflow": 0.0,
            "plain/openvino": 3e-7,
        },
        "best_other": "plain/openvino",
        "median_other": "plain/openvino",
        "taglens_over_best_other_best": 3.9 / 3.6,
        "taglens_over_best_other_median": 4.0 / 3.8,
        "plain_convert_s": {"tensorflow": 0.0, "openvino": 2.1},
        "bf16_relative_difference": 9e-3,
    }
    table = to_markdown(result)
    assert "(4 batches per contender, taken in turns; the first left out)" in table
    assert (
        "| taglens featurize, `featurize.engine: openvino` (default) | 4.21 | 1.05 | 4.44 "
        "| 1.08 | 2.00 | 0.95 | 9.0 | 2.0e-07 |"
    ) in table
    assert (
        "| plain tensorflow loop | 3.20 | 0.80 | 3.33 | 0.81 | 1.60 | 0.76 | 5.0 | 0.0e+00 |"
        in table
    )
    assert (
        "**1.05** by median batch (plain/openvino), 1.08 by best batch (plain/openvino), "
        "0.95 per CPU-second (plain/openvino)"
    ) in table
    assert "differs from Keras by 9.0e-03 relative" in table
