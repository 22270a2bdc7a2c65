"""The feature store: cache hits and misses, resume after an interruption, and the forward pass."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from taglens.features import store as features
from taglens.features.engines import TensorFlowForward
from taglens.features.featurize import featurize_paths
from taglens.features.store import FeatureKey, FeatureStore, feature_stores, fill_stores
from taglens.features.views import IMAGE, views_model
from tests.helpers.rawdata import solid_raw

SIZE = 32
KEY = FeatureKey("test", SIZE, "random-seed0", "fp32")


def mean_colour_extractor():
    """A weightless 'backbone': the mean RGB of the image, so the expected vectors are known."""
    import keras

    inputs = keras.Input((SIZE, SIZE, 3))
    return keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs))


COLOURS = [
    (200, 10, 10),
    (10, 200, 10),
    (10, 10, 200),
    (120, 120, 0),
    (0, 90, 160),
    (250, 250, 250),
    (30, 30, 30),
]


@pytest.fixture
def raw(tmp_path):
    posts = solid_raw(tmp_path / "raw", {"x": COLOURS})
    return [(post.sha256, tmp_path / "raw" / post.image) for post in posts]


class Factory:
    """Counts how often the stores asked for a model, and for which outputs."""

    def __init__(self):
        self.calls = 0
        self.outputs: list[tuple[str, ...]] = []

    def __call__(self, outputs):
        self.calls += 1
        self.outputs.append(tuple(outputs))
        return views_model(mean_colour_extractor(), outputs, SIZE)


def fill(store, items, factory, *, batch_size, shard_size):
    """fill_stores with the image's store alone: its vectors by sha256 and its update."""
    vectors, updates = fill_stores(
        {IMAGE: store},
        items,
        factory,
        batch_size=batch_size,
        shard_size=shard_size,
        jit_compile=False,
        engine="tensorflow",
        progress=False,
    )
    return vectors[IMAGE], updates[IMAGE]


@pytest.mark.parametrize("jit", [False, True])
def test_featurize_paths_keeps_order_and_values(raw, jit):
    vectors = featurize_paths(
        [path for _, path in raw],
        mean_colour_extractor(),
        image_size=SIZE,
        batch_size=3,
        jit_compile=jit,
        engine="tensorflow",
        progress=False,
    )
    assert vectors.shape == (7, 3) and vectors.dtype == np.float32
    np.testing.assert_allclose(vectors, np.array(COLOURS, dtype=np.float32), atol=3.0)


def test_featurize_paths_with_no_images_has_the_right_width():
    vectors = featurize_paths(
        [],
        mean_colour_extractor(),
        image_size=SIZE,
        batch_size=4,
        jit_compile=False,
        engine="tensorflow",
    )
    assert vectors.shape == (0, 3)


def test_second_run_computes_nothing_and_builds_no_model(tmp_path, raw):
    store = FeatureStore(tmp_path / "store", KEY)
    factory = Factory()
    first, update = fill(store, raw, factory, batch_size=2, shard_size=3)
    assert (update.computed, update.cached, update.shards_written) == (7, 0, 3)
    assert sorted(len(np.load(s)["sha256"]) for s in store.shards()) == [1, 3, 3]
    again, update = fill(store, raw, factory, batch_size=2, shard_size=3)
    assert (update.computed, update.cached, factory.calls) == (0, 7, 1)
    for sha, vector in first.items():
        np.testing.assert_array_equal(again[sha], vector)


def test_a_new_image_computes_one_vector(tmp_path, raw):
    store = FeatureStore(tmp_path / "store", KEY)
    fill(store, raw[:-1], Factory(), batch_size=4, shard_size=8)
    vectors, update = fill(store, raw, Factory(), batch_size=4, shard_size=8)
    assert (update.computed, update.cached) == (1, 6)
    np.testing.assert_allclose(vectors[raw[-1][0]], COLOURS[-1], atol=3.0)


def test_duplicates_are_computed_once(tmp_path, raw):
    store = FeatureStore(tmp_path / "store", KEY)
    vectors, update = fill(store, raw + raw[:2], Factory(), batch_size=4, shard_size=8)
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
        fill(store, raw, Factory(), batch_size=2, shard_size=3)
    # two batches (4 images) were done: one full shard of 3 is on disk, no temporary files left
    assert len(store.shards()) == 1
    assert sorted(p.name for p in store.dir.iterdir() if p.name.startswith(".")) == []
    monkeypatch.setattr(TensorFlowForward, "__call__", real_call)
    vectors, update = fill(store, raw, Factory(), batch_size=2, shard_size=3)
    assert (update.cached, update.computed) == (3, 4)
    np.testing.assert_allclose(np.stack([vectors[sha] for sha, _ in raw]), COLOURS, atol=3.0)


def test_an_unreadable_shard_is_ignored_and_recomputed(tmp_path, raw):
    store = FeatureStore(tmp_path / "store", KEY)
    fill(store, raw, Factory(), batch_size=4, shard_size=4)
    store.shards()[0].write_bytes(b"not a zip file")
    _, update = fill(store, raw, Factory(), batch_size=4, shard_size=4)
    assert update.computed in (3, 4) and update.cached == 7 - update.computed


@pytest.mark.parametrize(
    "other",
    [
        FeatureKey("test", 64, "random-seed0", "fp32"),
        FeatureKey("vgg19", SIZE, "random-seed0", "fp32"),
        FeatureKey("test", SIZE, "file-0123456789abcdef", "fp32"),
        FeatureKey("test", SIZE, "random-seed0", "int8"),
    ],
)
def test_changing_backbone_size_weights_or_precision_misses_the_cache(tmp_path, raw, other):
    fill(FeatureStore(tmp_path / "store", KEY), raw, Factory(), batch_size=4, shard_size=8)
    store = FeatureStore(tmp_path / "store", other)
    assert store.dir != FeatureStore(tmp_path / "store", KEY).dir
    assert store.load() == {}


def test_weights_identity_with_slashes_makes_a_single_directory(tmp_path):
    store = FeatureStore(tmp_path, FeatureKey("vgg19", 224, "a/b:c", "fp32"))
    assert store.dir.parent == tmp_path and store.dir.name == "vgg19-224px-a_b_c"


def test_int8_vectors_and_fp32_vectors_are_stored_apart(tmp_path):
    # Given an FP32 store and an INT8 store of the same backbone, weights and size, with a view
    fp32 = feature_stores(tmp_path, FeatureKey("vgg19", 224, "imagenet", "fp32"), ["flip"])
    int8 = feature_stores(tmp_path, FeatureKey("vgg19", 224, "imagenet", "int8"), ["flip"])
    # When each holds a different vector for the same image
    fp32[IMAGE].write_shard(["a" * 64], np.ones((1, 3), "float32"))
    int8[IMAGE].write_shard(["a" * 64], np.full((1, 3), 2, "float32"))
    # Then each reads back only its own, from a folder named for its precision (FP32's unchanged)
    assert fp32[IMAGE].load()["a" * 64].tolist() == [1, 1, 1]
    assert int8[IMAGE].load()["a" * 64].tolist() == [2, 2, 2]
    assert [store.dir.name for store in fp32.values()] == [
        "vgg19-224px-imagenet",
        "vgg19-224px-imagenet-flip",
    ]
    assert [store.dir.name for store in int8.values()] == [
        "vgg19-224px-imagenet-int8",
        "vgg19-224px-imagenet-int8-flip",
    ]
    assert int8["flip"].load() == {}


def test_missing_image_names_the_file_and_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jpg.*scrape"):
        featurize_paths(
            [tmp_path / "nope.jpg"],
            mean_colour_extractor(),
            image_size=SIZE,
            batch_size=2,
            jit_compile=False,
            engine="tensorflow",
        )


def test_undecodable_image_is_a_value_error(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match="cannot decode"):
        featurize_paths(
            [bad],
            mean_colour_extractor(),
            image_size=SIZE,
            batch_size=2,
            jit_compile=False,
            engine="tensorflow",
        )


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


def fill_views(root, items, factory, views, *, batch_size=3, shard_size=4):
    """fill_stores on the image's store and one store per view, as featurize fills them."""
    stores = feature_stores(root, KEY, views)
    vectors, updates = fill_stores(
        stores,
        items,
        factory,
        batch_size=batch_size,
        shard_size=shard_size,
        jit_compile=False,
        engine="tensorflow",
        progress=False,
    )
    return stores, vectors, updates


def test_every_view_comes_from_one_model_and_lands_in_its_own_store(tmp_path, raw):
    factory = Factory()
    stores, vectors, updates = fill_views(tmp_path / "store", raw, factory, ["flip", "colour"])
    # one model for the image and both views, built once
    assert factory.outputs == [(IMAGE, "flip", "colour")]
    names = {name: store.dir.name for name, store in stores.items()}
    assert names == {
        IMAGE: "test-32px-random-seed0",
        "flip": "test-32px-random-seed0-flip",
        "colour": "test-32px-random-seed0-colour",
    }
    assert {name: update.computed for name, update in updates.items()} == {
        IMAGE: 7,
        "flip": 7,
        "colour": 7,
    }
    for name, store in stores.items():  # 7 vectors in shards of 4: 2 shards per store
        assert len(store.shards()) == 2 and len(store.load()) == 7
        np.testing.assert_array_equal(
            np.stack([store.load()[sha] for sha, _ in raw]),
            np.stack([vectors[name][sha] for sha, _ in raw]),
        )
    image = np.stack([vectors[IMAGE][sha] for sha, _ in raw])
    np.testing.assert_allclose(image, COLOURS, atol=3.0)  # solid colours: their own mirror
    np.testing.assert_allclose(np.stack([vectors["flip"][sha] for sha, _ in raw]), image)
    assert np.stack([vectors["colour"][sha] for sha, _ in raw]).shape == (7, 128)


def test_adding_a_view_computes_only_that_view(tmp_path, raw):
    root = tmp_path / "store"
    fill_views(root, raw, Factory(), [])
    image_shards = FeatureStore(root, KEY).shards()
    factory = Factory()
    # the colour histogram needs no backbone: a colour-only model
    _, _, updates = fill_views(root, raw, factory, ["colour"])
    assert factory.outputs == [("colour",)]
    assert (updates[IMAGE].computed, updates["colour"].computed) == (0, 7)
    # the mirror shares the image's forward pass (2B images), so both are computed together and
    # the image's store, which holds every vector already, gets no new shard
    _, _, updates = fill_views(root, raw, factory, ["flip", "colour"])
    assert factory.outputs[1] == (IMAGE, "flip")
    computed = {name: update.computed for name, update in updates.items()}
    assert computed == {IMAGE: 0, "flip": 7, "colour": 0}
    assert FeatureStore(root, KEY).shards() == image_shards
    # and everything cached: no model at all
    fill_views(root, raw, factory, ["flip", "colour"])
    assert factory.calls == 2


def test_a_fill_is_cut_into_whole_batches_and_rebuilt_on_the_worker(tmp_path):
    from taglens.features.store import FillPlan, shard_fill, shard_stores
    from tests.helpers.params import tiny_params

    params = tiny_params().featurize.model_copy(
        update={"shard_size": 5, "batch_size": 4, "views": ("flip",)}
    )
    stores = feature_stores(tmp_path / "store", KEY, params.views)
    items = [(f"{i:064x}", tmp_path / f"{i}.jpg") for i in range(10)]
    lacking = {IMAGE: {sha for sha, _ in items}, "flip": {items[1][0], items[9][0]}}
    plan = FillPlan((IMAGE, "flip"), items, lacking)

    sharded = shard_fill(stores, plan, params)

    # 5 images a shard rounds up to 2 whole batches of 4: shards of 8 and 2, in order
    assert sharded.size == 8 and [len(part) for part in sharded.items] == [8, 2]
    assert [sha for part in sharded.items for sha, _ in part] == [sha for sha, _ in items]
    assert sharded.lacking[0]["flip"] == [items[1][0]] and sharded.lacking[1]["flip"] == [
        items[9][0]
    ]
    assert sharded.lacking[1][IMAGE] == [items[8][0], items[9][0]]
    # what a worker rebuilds from the plain data: the same stores, and its shard's plan
    rebuilt, shard_plan = shard_stores(sharded.stores, sharded.items[1], sharded.lacking[1])
    assert {name: store.dir for name, store in rebuilt.items()} == {
        name: store.dir for name, store in stores.items()
    }
    assert shard_plan.items == items[8:] and shard_plan.outputs == (IMAGE, "flip")
    assert shard_plan.lacking == {IMAGE: {items[8][0], items[9][0]}, "flip": {items[9][0]}}
