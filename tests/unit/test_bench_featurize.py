"""The featurize benchmark's arithmetic and its table (pure functions)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.featurize import relative_difference, steady_rate, to_markdown


def test_steady_rate_leaves_the_first_batch_out():
    # batches done at t=10 (after compiling), 12 and 14: two batches of 16 in 4 s
    assert steady_rate(16, [10.0, 12.0, 14.0]) == pytest.approx(8.0)
    assert steady_rate(16, [10.0]) == 0.0


def test_relative_difference_is_row_wise():
    want = np.array([[3.0, 4.0], [1.0, 0.0]])
    got = np.array([[3.0, 4.5], [1.0, 0.0]])
    assert relative_difference(got, want) == pytest.approx(0.1)


def test_table_has_every_contender_and_the_ratio():
    result = {
        "cpus": 2, "loadavg_start": 1.0, "loadavg_end": 2.0, "image_size": 224,
        "batch_size": 16, "images": 64, "repeats": 2, "default_engine": "openvino",
        "rounds": {"taglens/tensorflow": [3.0, 3.2], "taglens/openvino": [4.4, 4.0],
                   "plain/tensorflow": [3.1, 3.3], "plain/openvino": [4.0, 4.2]},
        "best_img_s": {"taglens/tensorflow": 3.2, "taglens/openvino": 4.4,
                       "plain/tensorflow": 3.3, "plain/openvino": 4.2},
        "relative_difference": {"tensorflow": 0.0, "openvino": 2e-7},
        "best_other": "plain/openvino", "taglens_over_best_other": 4.4 / 4.2,
        "plain_convert_s": {"tensorflow": 0.0, "openvino": 2.1},
        "taglens_first_batch_s": {"tensorflow": 5.0, "openvino": 6.5},
        "bf16_relative_difference": 9e-3,
    }  # fmt: skip
    table = to_markdown(result)
    assert "| taglens featurize, `featurize.engine: openvino` (default) | 4.40 | 4.40, 4.00 " \
           "| 1.05 |  |" in table
    assert "| plain openvino loop | 4.20 | 4.00, 4.20 | 1.00 | 2.0e-07 |" in table
    assert "| plain tensorflow loop | 3.30 | 3.10, 3.30 | 0.79 | 0.0e+00 |" in table
    assert "/ best plain engine (plain/openvino): **1.05**" in table
    assert "differs from Keras by 9.0e-03 relative" in table
