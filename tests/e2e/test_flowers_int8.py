"""INT8 vectors of real photos stay close to FP32's (MobileNet 1.0 ImageNet weights, flowers)."""

from __future__ import annotations

import numpy as np
import pytest

from bench.int8 import flowers_posts
from taglens.params import load_params
from tests.helpers.paths import ROOT

# Measured here (calibration on 60 photos, 128 px, every layer quantized): mean cosine 0.965,
# the worst of the 40 photos 0.890. The bounds leave a margin for another CPU's INT8 kernels;
# bench/int8.py measures the mean on every flowers photo.
MEAN_COSINE = 0.90
WORST_COSINE = 0.70


@pytest.mark.slow
def test_int8_vectors_of_flowers_photos_are_close_to_fp32(flowers_dir, mobilenet_weights, tmp_path):
    from taglens.features import int8_backbone
    from taglens.features.engines import compile_forward

    # Given 30 photos of each class as posts, and MobileNet quantized on clean's training photos
    posts = flowers_posts(flowers_dir, per_class=30)
    params = load_params(
        ROOT / "params.yaml",
        {
            "model.backbone": "mobilenet",
            "model.image_size": 128,
            "model.weights": str(mobilenet_weights),
            "featurize.engine": "openvino-int8",
            "featurize.views": [],
            "featurize.int8.calibration_images": 60,
            "featurize.int8.validation_images": 20,
            "featurize.int8.max_drop": 0.99,
            "featurize.int8.max_iterations": 1,
        },
    )
    int8 = int8_backbone.prepare(
        params.model,
        params.featurize,
        params.clean,
        seed=0,
        weights_identity="test",
        posts=posts,
        raw=flowers_dir,
        cache_dir=tmp_path,
    )
    assert int8.decision.precision == "int8"
    model = int8.model_factory(params.model, 0)(())
    # When 40 photos go through both
    pixels = int8_backbone.pixels_of([flowers_dir / post.image for post in posts[::4][:40]], 128)
    fp32 = compile_forward(model, "openvino", jit_compile=False)(pixels.astype("float32"))
    got = compile_forward(model, "openvino-int8", jit_compile=False)(pixels.astype("float32"))
    # Then the INT8 vectors point where the FP32 ones do, within the measured bounds
    want, got = np.asarray(fp32["vectors"], "float64"), np.asarray(got["vectors"], "float64")
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    print(f"cosine mean {cosine.mean():.4f} min {cosine.min():.4f}")
    assert cosine.mean() > MEAN_COSINE and cosine.min() > WORST_COSINE
    assert not np.allclose(got, want)
