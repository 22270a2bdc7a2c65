"""The test-time views train serves: image (and mirror), + crops when they win on validation."""

from __future__ import annotations

import numpy as np
import pytest

from taglens.errors import TaglensError
from taglens.training.head import HeadFit
from taglens.training.views_choice import choose_crops


def identity_head(dim: int = 2):
    """A head whose class probabilities are the softmax of 10 x the vector itself."""
    import keras

    inputs = keras.Input((dim,))
    layer = keras.layers.Dense(dim, activation="softmax", use_bias=False)
    model = keras.Model(inputs, layer(inputs))
    layer.set_weights([10.0 * np.eye(dim, dtype="float32")])
    return model


def views_data(n: int, fixed: int):
    """`n` photos of class 0 or 1: the image and mirror are wrong on the first `fixed` photos,
    where the crops view is right by a wide margin; elsewhere all three are right."""
    labels = np.arange(n) % 2
    right = np.eye(2, dtype="float32")[labels]
    image = right.copy()
    # wrong but unsure (0.73 for the wrong class), so that confident crops outweigh the two
    image[:fixed] = 0.55 - 0.1 * right[:fixed]
    crops = right.copy()
    crops[:fixed] *= 4.0
    return image, {"flip": image.copy(), "crops": crops}, labels


def test_fit_predicts_with_the_views_it_names():
    image, views, labels = views_data(10, 3)
    fit = HeadFit(identity_head(), augmented=True)
    assert fit.views == ("image", "flip")
    plain = fit.predict(image, views)
    assert (plain.argmax(axis=1) == labels).sum() == 7
    cropped = HeadFit(identity_head(), augmented=True, crops=True)
    assert cropped.views == ("image", "flip", "crops")
    assert (cropped.predict(image, views).argmax(axis=1) == labels).sum() == 10
    assert HeadFit(identity_head(), crops=True).views == ("image", "crops")
    with pytest.raises(TaglensError, match="featurize.views"):
        cropped.predict(image, {"flip": image})


def test_auto_keeps_the_crops_only_when_they_win_beyond_one_paired_se():
    # 40 of 200 photos fixed by the crops: +0.20, paired SE about 0.028 -> kept
    image, views, labels = views_data(200, 40)
    fit, choice = choose_crops(
        HeadFit(identity_head(), augmented=True), image, views, labels, "auto", "one_se"
    )
    assert fit.crops and choice.crops
    assert choice.val_accuracy == {"image": pytest.approx(0.8), "image+crops": 1.0}
    assert choice.difference_se == pytest.approx(np.sqrt(0.2 * 0.8 / 199), rel=1e-6)
    assert fit.val_accuracy == 1.0
    assert "raise validation accuracy" in choice.why
    # 1 photo of 200: +0.005 < its paired SE of 0.005 -> the cheaper views are served
    image, views, labels = views_data(200, 1)
    fit, choice = choose_crops(
        HeadFit(identity_head(), augmented=True), image, views, labels, "auto", "one_se"
    )
    assert not fit.crops and not choice.crops
    assert fit.val_accuracy == pytest.approx(199 / 200)
    assert choice.val_accuracy["image+crops"] == 1.0
    assert "cheaper views are served" in choice.why
    # ... but `best` takes any gain
    fit, choice = choose_crops(
        HeadFit(identity_head(), augmented=True), image, views, labels, "auto", "best"
    )
    assert fit.crops


def test_crops_true_false_and_a_missing_view():
    image, views, labels = views_data(20, 0)  # no gain at all
    fit, choice = choose_crops(HeadFit(identity_head()), image, views, labels, True, "one_se")
    assert fit.crops and choice.why == "train.crops is true"
    fit, choice = choose_crops(
        HeadFit(identity_head(), crops=True), image, views, labels, False, "one_se"
    )
    assert not fit.crops and choice.val_accuracy == {}
    no_crops = {"flip": views["flip"]}
    fit, choice = choose_crops(HeadFit(identity_head()), image, no_crops, labels, "auto", "one_se")
    assert not fit.crops and choice.why == "featurize.views has no crops view"
    with pytest.raises(TaglensError, match="add crops to featurize.views"):
        choose_crops(HeadFit(identity_head()), image, no_crops, labels, True, "one_se")


def test_served_model_averages_image_mirror_and_crops_probabilities():
    """assemble(crops=True): the mean of the head over the three views featurize caches."""
    import keras

    from taglens.features.views import IMAGE, views_model
    from taglens.model.full_model import assemble

    inputs = keras.Input((12, 12, 3))
    extractor = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs) / 255.0)
    keras.utils.set_random_seed(2)
    head_in = keras.Input((3,))
    head = keras.Model(head_in, keras.layers.Dense(4, activation="softmax")(head_in))
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 12, 12, 3)).astype("float32")
    pixels[:, :6] = 0.0  # an uneven image: its crops differ from it
    cached = {
        k: np.asarray(v)
        for k, v in views_model(extractor, (IMAGE, "flip", "crops"), 12)(pixels).items()
    }
    served = assemble(extractor, head, flip=True, crops=True)
    got = served(pixels)
    want = np.mean([np.asarray(head(cached[name])) for name in (IMAGE, "flip", "crops")], axis=0)
    np.testing.assert_allclose(np.asarray(got["probabilities"]), want, rtol=1e-5, atol=1e-7)
    # the rankers' features stay the image and mirror average
    np.testing.assert_allclose(
        np.asarray(got["features"]), (cached[IMAGE] + cached["flip"]) / 2, rtol=1e-5
    )
    without = np.asarray(assemble(extractor, head, flip=True)(pixels)["probabilities"])
    assert np.abs(without - want).max() > 1e-4
    fit = HeadFit(head, augmented=True, crops=True)
    np.testing.assert_allclose(fit.predict(cached[IMAGE], cached), want, rtol=1e-5, atol=1e-7)


def test_the_pyfunc_records_the_views_its_model_averages():
    from taglens.features.engines import ENGINE_PARAM
    from taglens.model.pyfunc import PRECISION_KEY, VIEWS_KEY, served_config

    info = {"views": ["image", "flip", "crops"]}
    assert served_config("openvino", info) == {
        ENGINE_PARAM: "openvino",
        PRECISION_KEY: "fp32",
        VIEWS_KEY: "image,flip,crops",
    }
    assert served_config(None, {"views": ["image"]}) == {VIEWS_KEY: "image"}
    assert served_config(None, {}) is None  # a model from before views were recorded
