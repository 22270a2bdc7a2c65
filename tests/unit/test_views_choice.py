"""The views train uses: the colour view as head input, + crops when they win on validation."""

from __future__ import annotations

import numpy as np
import pytest

from taglens.errors import TaglensError
from taglens.training.head import HeadFit
from taglens.training.views_choice import PairedChoice, choose_colour, choose_crops, log_choice


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
    assert fit.crops and choice.used
    assert choice.val_accuracy == {"image": pytest.approx(0.8), "image+crops": 1.0}
    assert choice.difference_se == pytest.approx(np.sqrt(0.2 * 0.8 / 199), rel=1e-6)
    assert fit.val_accuracy == 1.0
    assert "raise validation accuracy" in choice.why
    # 1 photo of 200: +0.005 < its paired SE of 0.005 -> the cheaper views are served
    image, views, labels = views_data(200, 1)
    fit, choice = choose_crops(
        HeadFit(identity_head(), augmented=True), image, views, labels, "auto", "one_se"
    )
    assert not fit.crops and not choice.used
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


def test_head_input_balances_the_colour_block_with_the_vectors():
    """The colour block is scale * sqrt(histogram), its mean length the vectors' mean length."""
    from taglens.training.head import colour_scale, head_input, head_rows

    rng = np.random.default_rng(0)
    vectors = rng.normal(0.0, 3.0, (50, 20)).astype("float32")
    colour = rng.dirichlet(np.ones(8), 50).astype("float32")
    scale = colour_scale(vectors, colour)
    rows = head_input(vectors, colour, scale)
    assert rows.shape == (50, 28)
    np.testing.assert_array_equal(rows[:, :20], vectors)
    np.testing.assert_allclose(rows[:, 20:], scale * np.sqrt(colour), rtol=1e-6)
    np.testing.assert_allclose(
        np.linalg.norm(rows[:, 20:], axis=1).mean(), np.linalg.norm(vectors, axis=1).mean(), 1e-5
    )
    flip = vectors[:, ::-1].copy()
    x, mirrored = head_rows(vectors, {"flip": flip, "colour": colour}, scale)
    np.testing.assert_array_equal(x, rows)
    # the mirror image's histogram is the image's: the flip rows carry the same colour block
    np.testing.assert_array_equal(mirrored[:, 20:], rows[:, 20:])
    assert head_rows(vectors, {"flip": flip, "colour": colour}, None) == (vectors, flip)


def test_served_model_feeds_the_head_the_colour_block_it_was_fitted_on():
    """assemble(colour_scale=s): each view's vectors and the image's colour block, as cached."""
    import keras

    from taglens.features.views import IMAGE, views_model
    from taglens.model.full_model import assemble

    inputs = keras.Input((12, 12, 3))
    extractor = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs) / 255.0)
    keras.utils.set_random_seed(3)
    head_in = keras.Input((3 + 128,))
    head = keras.Model(head_in, keras.layers.Dense(4, activation="softmax")(head_in))
    pixels = np.random.default_rng(1).uniform(0, 255, (3, 12, 12, 3)).astype("float32")
    cached = {
        k: np.asarray(v)
        for k, v in views_model(extractor, (IMAGE, "flip", "colour"), 12)(pixels).items()
    }
    fit = HeadFit(head, augmented=True, colour_scale=7.5)
    want = fit.predict(cached[IMAGE], cached)
    served = assemble(extractor, head, flip=True, colour=True, colour_scale=7.5)
    got = served(pixels)
    np.testing.assert_allclose(np.asarray(got["probabilities"]), want, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(np.asarray(got["colour"]), cached["colour"], atol=1e-7)
    # the colour block moves the probabilities: the head does read it
    blind = HeadFit(head, augmented=True, colour_scale=0.0).predict(cached[IMAGE], cached)
    assert np.abs(blind - want).max() > 1e-3
    # the model survives saving and loading with its colour block
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.keras"
        served.save(path)
        loaded = keras.models.load_model(path)
        np.testing.assert_allclose(
            np.asarray(loaded(pixels)["probabilities"]), want, rtol=1e-5, atol=1e-7
        )
    with pytest.raises(TaglensError, match="colour"):
        fit.predict(cached[IMAGE], {"flip": cached["flip"]})


def colour_data(n: int, fixed: int):
    """Vectors that are right except on the first `fixed` photos, where the colour knows."""
    labels = np.arange(n) % 2
    right = np.eye(2, dtype="float32")[labels]
    vectors = right.copy()
    vectors[:fixed] = 1.0 - right[:fixed]
    return vectors, {"colour": right.copy()}, labels


def colour_head():
    """A head over [vectors (2), colour block (2)] that trusts the colour block only."""
    import keras

    inputs = keras.Input((4,))
    layer = keras.layers.Dense(2, activation="softmax", use_bias=False)
    model = keras.Model(inputs, layer(inputs))
    layer.set_weights([np.vstack([np.zeros((2, 2)), 10.0 * np.eye(2)]).astype("float32")])
    return model


def test_colour_is_kept_when_the_refit_wins_beyond_one_standard_error():
    vectors, views, labels = colour_data(40, 20)
    calls = []

    def refit(scale):
        calls.append(scale)
        return HeadFit(colour_head(), colour_scale=1.0)

    train_colour = {"colour": np.full((10, 2), 0.25, "float32")}
    train_vectors = np.ones((10, 2), "float32")  # length sqrt(2); sqrt(0.25) block: length 0.71
    fit, choice = choose_colour(
        HeadFit(identity_head()),
        refit,
        train_vectors,
        train_colour,
        (vectors, views, labels),
        "auto",
        "one_se",
    )
    assert calls == [pytest.approx(2.0)]
    assert choice.used is True and fit.colour_scale == 1.0
    assert choice.val_accuracy == {"vectors": 0.5, "vectors+colour": 1.0}
    assert fit.val_accuracy == 1.0
    assert "raises validation accuracy from 0.5000 to 1.0000" in choice.why
    assert choice.report()["colour"] is True


def test_colour_is_left_out_when_it_does_not_win():
    vectors, views, labels = colour_data(40, 1)  # the colour fixes one photo of 40
    args = (np.ones((4, 2), "float32"), {"colour": np.ones((4, 2), "float32")})
    fit, choice = choose_colour(
        HeadFit(identity_head()),
        lambda scale: HeadFit(colour_head(), colour_scale=scale),
        *args,
        (vectors, views, labels),
        "auto",
        "one_se",
    )
    assert choice.used is False and fit.colour_scale is None
    assert choice.val_accuracy == {"vectors": 0.975, "vectors+colour": 1.0}
    # `best` takes any gain; `true` always keeps it; `false` never fits it
    fit, choice = choose_colour(
        HeadFit(identity_head()),
        lambda scale: HeadFit(colour_head(), colour_scale=scale),
        *args,
        (vectors, views, labels),
        "auto",
        "best",
    )
    assert choice.used is True
    fit, choice = choose_colour(
        HeadFit(identity_head()),
        lambda scale: pytest.fail("train.colour: false must not refit"),
        *args,
        (vectors, views, labels),
        False,
        "one_se",
    )
    assert choice.used is False and choice.val_accuracy == {}


def test_colour_without_the_colour_view():
    vectors, _, labels = colour_data(10, 2)
    fit, choice = choose_colour(
        HeadFit(identity_head()),
        lambda scale: pytest.fail("nothing to refit on"),
        vectors,
        {},
        (vectors, {}, labels),
        "auto",
        "one_se",
    )
    assert choice.used is False and choice.why == "featurize.views has no colour view"
    with pytest.raises(TaglensError, match="add colour to featurize.views"):
        choose_colour(
            HeadFit(identity_head()),
            lambda scale: HeadFit(colour_head()),
            vectors,
            {},
            (vectors, {}, labels),
            True,
            "one_se",
        )


@pytest.mark.parametrize("engine", ["openvino", "onnxruntime"])
def test_a_colour_reading_model_gives_the_same_outputs_on_every_engine(engine):
    """The colour block is stock arithmetic (square root, scale, concatenation): the engines
    that serve the model compute what TensorFlow computes."""
    import keras

    from taglens.features.engines import EngineModel
    from taglens.model.full_model import assemble

    inputs = keras.Input((12, 12, 3))
    extractor = keras.Model(inputs, keras.layers.GlobalAveragePooling2D()(inputs) / 255.0)
    keras.utils.set_random_seed(4)
    head_in = keras.Input((3 + 128,))
    head = keras.Model(head_in, keras.layers.Dense(4, activation="softmax")(head_in))
    served = assemble(extractor, head, flip=True, colour=True, colour_scale=3.0)
    pixels = np.random.default_rng(2).uniform(0, 255, (5, 12, 12, 3)).astype("float32")
    want = {key: np.asarray(value) for key, value in served(pixels).items()}
    got = EngineModel(served, engine)(pixels)
    assert set(got) == set(want)
    for key, value in want.items():
        np.testing.assert_allclose(np.asarray(got[key]), value, atol=1e-4)


def test_a_paired_choice_is_logged_under_the_names_it_is_given(fresh_mlflow):
    import mlflow

    from taglens.tracking import configure_tracking

    choice = PairedChoice("crops", True, "the crops win", {"image": 0.5, "image+crops": 0.75}, 0.1)
    configure_tracking("paired-choice")
    with mlflow.start_run() as run:
        log_choice(choice, "train.views_crops", "views_why", "val_accuracy_views_")
    logged = mlflow.get_run(run.info.run_id).data
    assert logged.params == {"train.views_crops": "True"}
    assert logged.tags["views_why"] == "the crops win"
    assert logged.metrics == {
        "val_accuracy_views_image": 0.5,
        "val_accuracy_views_image_crops": 0.75,
    }
    assert choice.report() == {
        "crops": True,
        "why": "the crops win",
        "val_accuracy": {"image": 0.5, "image+crops": 0.75},
        "difference_se": 0.1,
    }
