"""The benchmark's FLOP count from layers, checked against hand-computed networks."""

from __future__ import annotations

import pytest

from bench.featurize import layer_flops, to_markdown


def test_counts_conv_depthwise_and_dense_layers():
    import keras

    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, padding="same")(inputs)  # 2*8*8*3*3*3*4 = 13,824
    x = keras.layers.DepthwiseConv2D(3, strides=2, padding="same")(x)  # 2*4*4*3*3*4 = 1,152
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(5)(x)  # 2*4*5 = 40
    assert layer_flops(keras.Model(inputs, outputs)) == 13_824 + 1_152 + 40


def test_vgg19_costs_39_gflop_at_224_px_scaled_to_32_px():
    # every VGG-19 conv is 'same'-padded, so its cost scales with pixels: 39.0 GFLOP x (32/224)^2
    from taglens.backbones import build_feature_extractor
    from taglens.params import ModelParams

    params = ModelParams(backbone="vgg19", image_size=32, weights=None)
    extractor = build_feature_extractor(params, 0)
    assert layer_flops(extractor) / 1e9 == pytest.approx(39.0168576 * (32 / 224) ** 2, rel=1e-6)


def test_markdown_table_reports_the_ratio():
    row = {"backbone": "vgg19", "jit_compile": True, "images": 8, "gflop_per_image": 39.0,
           "matmul_gflops": 130.0, "possible_img_s": 3.33, "achieved_img_s": 3.0,
           "achieved_over_possible": 0.9, "ratio_min": 0.8, "ratio_max": 0.95, "pairs": 4,
           "cpu_efficiency": 0.85, "first_batch_s": 9.0, "loadavg": 1.5}  # fmt: skip
    result = {"matmul_gflops": 131.0, "decode_img_s": 900.0, "decode_img_per_cpu_s": 500.0,
              "onednn": "0", "loadavg_start": 1.0, "loadavg_end": 2.0, "cpus": 2,
              "process_cpu_share": 0.9, "wall_s": 60.0, "models": [row]}  # fmt: skip
    table = to_markdown(result)
    row_text = "| vgg19 | yes | 8 | 39.00 | 1.5 | 130 | 3.33 | 3.00 | 90% (80-95%, 4 batches) "
    assert row_text in table
    assert "decode+resize alone 900 img/s (500 per CPU-second)" in table
