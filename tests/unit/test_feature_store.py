"""The feature store: cache hits and misses, resume after an interruption, and the forward pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from taglens.features import store as features
from taglens.features.engines import TensorFlowForward
from taglens.features.extract import featurize_paths
from taglens.features.store import FeatureKey, FeatureStore, fill_store
from tests.helpers.rawdata import solid_raw

SIZE = 32
KEY = FeatureKey("test", SIZE, "random-seed0")


def mean_colour_extractor():
    """A weightless 'backbone': the mean RGB of the image, so the expected vectors are known."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))


COLOURS = [(200, 10, 10), (10, 200, 10), (10, 10, 200), (120, 120, 0), (0, 90, 160),
           (250, 250, 250), (30, 30, 30)]  # fmt: skip


@pytest.fixture
def raw(tmp_path):
    posts = solid_raw(tmp_path / "raw", {"x": COLOURS})
    return [(post.sha256, tmp_path / "raw" / post.image) for post in posts]


class Factory:
    """Counts how often the store asked for a model."""

    def __init__(self):
        self.calls = 0

    def __call__(self):
        self.calls += 1
        return mean_colour_extractor()


@pytest.mark.parametrize("jit", [False, True])
def test_featurize_paths_keeps_order_and_values(raw, jit):
    vectors = featurize_paths(
        [path for _, path in raw], mean_colour_extractor(), image_size=SIZE, batch_size=3,
        jit_compile=jit, progress=False,
    )  # fmt: skip
    assert vectors.shape == (7, 3) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, np.array(COLOURS, dtype=np.float32), atol=3.0)


def test_featurize_paths_with_no_images_has_the_right_width():
    vectors = featurize_paths([], mean_colour_extractor(), image_size=SIZE, batch_size=4)
    assert vectors.shape == (0, 3)


def test_second_run_computes_nothing_and_builds_no_model(tmp_path, raw):
    store = FeatureStore(tmp_path / "store", KEY)
    factory = Factory()
    first, update = fill_store(store, raw, factory, batch_size=2, shard_size=3, jit_compile=False)
    assert (update.computed, update.cached, update.shards_written) == (7, 0, 3)
    assert sorted(len(np.load(s)["sha256"]) for s in store.shards()) == [1, 3, 3]
    again, update = fill_store(store, raw, factory, batch_size=2, shard_size=3, jit_compile=False)
    assert (update.computed, update.cached, factory.calls) == (0, 7, 1)
    for sha, vector in first.items():
        np.testing.assert_array_equal(again[sha], vector)


def test_a_new_image_computes_one_vector(tmp_path, raw):
    store = FeatureStore(tmp_path / "store", KEY)
    fill_store(store, raw[:-1], Factory(), batch_size=4, shard_size=8, jit_compile=False)
    vectors, update = fill_store(store, raw, Factory(), batch_size=4, shard_size=8,
                                 jit_compile=False)  # fmt: skip
    assert (update.computed, update.cached) == (1, 6)
    np.testing.assert_allclose(vectors[raw[-1][0]], COLOURS[-1], atol=3.0)


def test_duplicates_are_computed_once(tmp_path, raw):
    store = FeatureStore(tmp_path / "store", KEY)
    vectors, update = fill_store(store, raw + raw[:2], Factory(), batch_size=4, shard_size=8,
                                 jit_compile=False)  # fmt: skip
    assert (update.requested, update.computed) == (7, 7)
    assert len(vectors) == 7


def test_resume_after_interruption_recomputes_only_unfinished_shards(tmp_path, raw, monkeypatch):
    store = FeatureStore(tmp_path / "store", KEY)
    real_call = TensorFlowForward.__call__
    calls = {"n": 0}

    def dies_on_third_batch(self, images):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("killed")
        return real_call(self, images)

    monkeypatch.setattr(TensorFlowForward, "__call__", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        fill_store(store, raw, Factory(), batch_size=2, shard_size=3, jit_compile=False)
    # two batches (4 images) were done: one full shard of 3 is on disk, no temporary files left
    assert len(store.shards()) == 1
    assert sorted(p.name for p in store.dir.iterdir() if p.name.startswith(".")) == []
    monkeypatch.setattr(TensorFlowForward, "__call__", real_call)
    vectors, update = fill_store(store, raw, Factory(), batch_size=2, shard_size=3,
                                 jit_compile=False)  # fmt: skip
    assert (update.cached, update.computed) == (3, 4)
    np.testing.assert_allclose(np.stack([vectors[sha] for sha, _ in raw]), COLOURS, atol=3.0)


def test_an_unreadable_shard_is_ignored_and_recomputed(tmp_path, raw):
    store = FeatureStore(tmp_path / "store", KEY)
    fill_store(store, raw, Factory(), batch_size=4, shard_size=4, jit_compile=False)
    store.shards()[0].write_bytes(b"not a zip file")
    _, update = fill_store(store, raw, Factory(), batch_size=4, shard_size=4, jit_compile=False)
    assert update.computed in (3, 4) and update.cached == 7 - update.computed


@pytest.mark.parametrize(
    "other",
    [FeatureKey("test", 64, "random-seed0"), FeatureKey("vgg19", SIZE, "random-seed0"),
     FeatureKey("test", SIZE, "file-0123456789abcdef")],
)  # fmt: skip
def test_changing_backbone_size_or_weights_misses_the_cache(tmp_path, raw, other):
    fill_store(FeatureStore(tmp_path / "store", KEY), raw, Factory(), batch_size=4,
               shard_size=8, jit_compile=False)  # fmt: skip
    store = FeatureStore(tmp_path / "store", other)
    assert store.dir != FeatureStore(tmp_path / "store", KEY).dir
    assert store.load() == {}


def test_weights_identity_with_slashes_makes_a_single_directory(tmp_path):
    store = FeatureStore(tmp_path, FeatureKey("vgg19", 224, "a/b:c"))
    assert store.dir.parent == tmp_path and store.dir.name == "vgg19-224px-a_b_c"


def test_missing_image_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg.*scrape"):
        featurize_paths([tmp_path / "nope.jpg"], mean_colour_extractor(), image_size=SIZE,
                        batch_size=2)  # fmt: skip


def test_undecodable_image_is_a_value_error(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="cannot decode"):
        featurize_paths([bad], mean_colour_extractor(), image_size=SIZE, batch_size=2)


def test_features_file_round_trip(tmp_path):
    shas = [f"{i:064x}" for i in range(3)]
    vectors = np.arange(6, dtype=np.float64).reshape(3, 2)
    features.write_features(tmp_path, shas, vectors, {"dim": 2})
    read_shas, read_vectors = features.read_features(tmp_path)
    assert read_shas.tolist() == shas and read_vectors.dtype == np.float32
    np.testing.assert_array_equal(read_vectors, vectors)
    assert (tmp_path / "meta.json").read_text().count('"dim": 2') == 1


def test_reading_missing_features_says_to_run_featurize(tmp_path: Path):
    with pytest.raises(FileNotFoundError, match="featurize"):
        features.read_features(tmp_path)
