"""The head learns separable features; class weights scale the loss as documented."""

from __future__ import annotations

import numpy as np
import pytest

from taglens.training.baseline import fit_baseline
from taglens.training.head import build_head, class_weights, feature_scale, fit_head, one_hot
from tests.helpers.params import tiny_params


def _train_params(**update):
    return tiny_params().train.model_copy(update=update)


def _clusters(n_per_class: int, n_classes: int = 3, dim: int = 16, seed: int = 0):
    centres = np.random.default_rng(0).normal(0, 4, (n_classes, dim))  # the same in every split
    rng = np.random.default_rng(seed + 1)
    labels = np.repeat(np.arange(n_classes), n_per_class)
    return (centres[labels] + rng.normal(0, 0.5, (len(labels), dim))).astype("float32"), labels


@pytest.mark.parametrize(
    ("counts", "expected"),
    [([90, 10], {0: 100 / 180, 1: 100 / 20}), ([5, 0, 5], {0: 1.0, 1: 0.0, 2: 1.0})],
)
def test_balanced_class_weights_are_inverse_frequency(counts, expected):
    labels = np.repeat(np.arange(len(counts)), counts)
    weights = class_weights(labels, len(counts), "balanced")
    assert weights == pytest.approx(expected)
    assert class_weights(labels, len(counts), "none") is None


@pytest.mark.slow
def test_head_reaches_near_perfect_accuracy_on_separable_features():
    x, y = _clusters(40)
    xv, yv = _clusters(10, seed=1)
    fit = fit_head((x, y), (xv, yv), 3, _train_params(epochs=12, learning_rate=0.02), seed=0)
    assert fit.val_accuracy >= 0.95
    assert fit.history[-1]["accuracy"] >= 0.95
    assert [row["epoch"] for row in fit.history] == list(range(1, len(fit.history) + 1))
    predicted = fit.model.predict(xv, verbose=0).argmax(axis=1)
    assert np.mean(predicted == yv) == pytest.approx(fit.val_accuracy)


@pytest.mark.slow
@pytest.mark.parametrize("head", ["dense", "logreg"])
def test_batches_per_call_fit_the_same_head_as_one_batch_per_call(head, monkeypatch):
    # HEAD_STEPS_PER_EXECUTION only saves Python overhead: the updates, their order, dropout and
    # early stopping must be those of one batch per call. 150 rows of batch 32 is 5 batches an
    # epoch, fewer than one call holds, so an epoch's last, short call is covered too.
    import taglens.training.head as head_module

    x, y = _clusters(50)
    xv, yv = _clusters(10, seed=1)
    params = _train_params(
        head=head, epochs=8, batch_size=32, learning_rate=0.01, hidden_units=8, dropout=0.3
    )
    fits = {}
    for steps in (1, head_module.HEAD_STEPS_PER_EXECUTION):
        monkeypatch.setattr(head_module, "HEAD_STEPS_PER_EXECUTION", steps)
        fits[steps] = fit_head((x, y), (xv, yv), 3, params, seed=0)
    one, batched = fits.values()
    assert head_module.HEAD_STEPS_PER_EXECUTION > len(x) // params.batch_size
    assert batched.model.steps_per_execution == head_module.HEAD_STEPS_PER_EXECUTION
    assert len(one.history) == len(batched.history) == 8
    for a, b in zip(one.history, batched.history, strict=True):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-6)
    for a, b in zip(one.model.get_weights(), batched.model.get_weights(), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_head_called_in_chunks_gives_what_predict_gives(monkeypatch):
    import taglens.training.head as head_module

    x, _ = _clusters(7)  # 21 rows: three chunks of 8, the last one short
    model = build_head(x.shape[1], 3, _train_params(hidden_units=8, dropout=0.5), seed=0, x_train=x)
    monkeypatch.setattr(head_module, "PREDICT_CHUNK", 8)
    got = head_module.call_in_chunks(model, x)
    assert got.shape == (21, 3)
    # dropout is off: the same rows give the same outputs, and they are predict's
    np.testing.assert_allclose(got, model.predict(x, verbose=0), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(got, head_module.call_in_chunks(model, x))
    assert head_module.call_in_chunks(model, x[:0]).shape == (0, 3)


def test_feature_scale_brings_vectors_to_unit_std():
    x, _ = _clusters(20)
    assert np.std(x * 0.01 * feature_scale(x * 0.01)) == pytest.approx(1.0, rel=1e-5)
    assert feature_scale(np.zeros((4, 3))) == 1.0


@pytest.mark.slow
def test_head_learns_tiny_features_like_random_backbones_give():
    # Random-weight backbones emit features ~100x smaller than ImageNet ones.
    x, y = _clusters(40)
    xv, yv = _clusters(10, seed=1)
    fit = fit_head((x * 0.002, y), (xv * 0.002, yv), 3, _train_params(epochs=12), seed=0)
    assert fit.val_accuracy >= 0.95
    scale = fit.model.get_layer("feature_scale").scale
    assert float(scale) == pytest.approx(feature_scale(x * 0.002), rel=1e-5)


@pytest.mark.slow
def test_class_weighting_scales_each_sample_loss_by_its_class_weight():
    x, y = _clusters(1)
    x, y = np.concatenate([x, x[:1], x[:1], x[:1]]), np.concatenate([y, [0, 0, 0]])  # 4:1:1
    # one full batch and a learning rate too small to move the weights: the reported loss is the
    # loss of the initial model, so it can be recomputed by hand
    settings = {
        "epochs": 1,
        "batch_size": 64,
        "learning_rate": 1e-12,
        "dropout": 0.0,
        "hidden_units": 0,
        "early_stopping_patience": 0,
    }
    plain = fit_head((x, y), (x, y), 3, _train_params(class_weight="none", **settings), seed=3)
    weighted = fit_head(
        (x, y), (x, y), 3, _train_params(class_weight="balanced", **settings), seed=3
    )
    probs = plain.model.predict(x, verbose=0)
    per_sample = -np.log(probs[np.arange(len(y)), y])
    weights = class_weights(y, 3, "balanced")
    assert weights == pytest.approx({0: 0.5, 1: 2.0, 2: 2.0})
    assert plain.history[0]["loss"] == pytest.approx(per_sample.mean(), rel=1e-4)
    expected = np.mean([weights[label] * loss for label, loss in zip(y, per_sample, strict=True)])
    assert weighted.history[0]["loss"] == pytest.approx(expected, rel=1e-4)
    assert weighted.history[0]["loss"] != pytest.approx(plain.history[0]["loss"], rel=1e-3)


@pytest.mark.parametrize(
    ("hidden", "dropout", "n_params"), [(0, 0.0, 16 * 3 + 3), (8, 0.5, 16 * 8 + 8 + 8 * 3 + 3)]
)
def test_head_layers_follow_the_params(hidden, dropout, n_params):
    x, _ = _clusters(5)
    head = build_head(16, 3, _train_params(hidden_units=hidden, dropout=dropout), seed=0)
    names = [layer.name for layer in head.layers]
    assert ("hidden" in names) == (hidden > 0) and ("dropout" in names) == (dropout > 0)
    assert head.count_params() == n_params
    probs = head.predict(x, verbose=0)
    assert probs.shape == (15, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_empty_validation_split_is_refused_with_a_hint():
    x, y = _clusters(5)
    with pytest.raises(ValueError, match="clean.val_fraction"):
        fit_head((x, y), (x[:0], y[:0]), 3, _train_params(), seed=0)


def test_baseline_separates_clusters_and_one_hot_is_exact():
    x, y = _clusters(20)
    assert fit_baseline(x, y, seed=0, class_weight="balanced").score(x, y) == 1.0
    np.testing.assert_array_equal(one_hot(np.array([2, 0]), 3), [[0, 0, 1], [1, 0, 0]])


@pytest.mark.slow
@pytest.mark.parametrize(
    "backbone", ["vgg19", "vgg16", "mobilenet", "mobilenet_v2", "resnet50", "efficientnet_b0"]
)
def test_every_backbone_can_unfreeze_its_last_block_or_last_layers(backbone):
    from taglens.features.backbones import build_feature_extractor
    from taglens.model.full_model import assemble, unfreeze_last_block
    from taglens.params import ModelParams

    extractor = build_feature_extractor(
        ModelParams(backbone=backbone, image_size=32, weights=None), seed=0
    )
    head = build_head(int(extractor.output_shape[-1]), 3, _train_params(), seed=0)
    model = assemble(extractor, head)
    assert unfreeze_last_block(model, backbone) >= 1
    assert unfreeze_last_block(model, backbone, layers=3) == 3
    backbone_model = [layer for layer in extractor.layers if layer.weights][-1]
    trainable = [layer for layer in backbone_model.layers if layer.trainable and layer.weights]
    assert (
        len(trainable) == 3
        and trainable[-1] is [layer for layer in backbone_model.layers if layer.weights][-1]
    )


def test_logreg_head_is_linear_with_sklearns_penalty_and_learns():
    x, y = _clusters(40)
    xv, yv = _clusters(20, seed=1)
    params = _train_params(
        head="logreg",
        logreg_c=0.5,
        epochs=60,
        normalise="standardise",
        hidden_units=64,
        dropout=0.5,
    )
    fit = fit_head((x, y), (xv, yv), 3, params, seed=0)
    dense = [layer for layer in fit.model.layers if layer.weights and "probabilities" in layer.name]
    names = [layer.name for layer in fit.model.layers]
    assert names == ["features", "normalise_standardise", "probabilities"]  # no hidden layer
    assert float(dense[0].kernel_regularizer.l2) == pytest.approx(1 / (2 * 0.5 * len(x)))
    assert fit.val_accuracy > 0.95


@pytest.mark.parametrize("normalise", ["none", "l2", "standardise"])
def test_augmented_head_trains_on_both_views_and_scores_their_average(normalise):
    x, y = _clusters(30)
    xv, yv = _clusters(10, seed=1)
    params = _train_params(normalise=normalise, augment=True, epochs=20)
    fit = fit_head((x, y), (xv, yv), 3, params, seed=0, flips=(x + 0.1, xv + 0.1))
    assert fit.augmented and fit.val_accuracy > 0.95
    without = fit_head((x, y), (xv, yv), 3, params, seed=0)  # no flip view: no augmentation
    assert not without.augmented


def _xor_on_sphere(n: int, seed: int):
    """Unit rows whose class is the sign of x0 * x1: no linear model gets far past chance."""
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, 6)).astype("float32")
    x[:, :2] = rng.choice([-1.0, 1.0], (n, 2)) * rng.uniform(0.6, 1.0, (n, 2))
    x[:, 2:] *= 0.2
    labels = (x[:, 0] * x[:, 1] > 0).astype(int)
    return x / np.linalg.norm(x, axis=1, keepdims=True), labels


def test_kernel_map_reproduces_the_rbf_kernel_and_its_layers_compute_it():
    from taglens.training.head import kernel_layers, kernel_map

    x, _ = _clusters(20, dim=8)
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    points, gamma, inverse_root = kernel_map(x, 1.0, landmarks=len(x), seed=0)
    assert points.shape == (60, 8) and inverse_root.shape == (60, 60)
    assert gamma == pytest.approx(1.0 / (8 * unit.astype("float64").var()))
    exact = np.exp(-gamma * ((unit[:, None, :] - unit[None, :, :]) ** 2).sum(-1))
    features = np.exp(-gamma * ((unit[:, None, :] - points[None, :, :]) ** 2).sum(-1))
    features = features @ inverse_root
    # with every row a landmark the map is exact: inner products are the kernel itself
    np.testing.assert_allclose(features @ features.T, exact, atol=2e-3)
    params = _train_params(head="kernel", kernel_gamma=1.0, kernel_landmarks=len(x))
    layers = kernel_layers(x, params, seed=0)
    out = x * 3.0  # the layers normalise rows to unit length first
    for layer in layers:
        out = layer(out)
    np.testing.assert_allclose(np.asarray(out), features, atol=2e-3)
    fewer, _, _ = kernel_map(x, 1.0, landmarks=10, seed=0)
    assert fewer.shape == (10, 8) and {tuple(row) for row in fewer} <= {tuple(r) for r in points}


def test_kernel_head_separates_what_a_linear_head_cannot():
    x, y = _xor_on_sphere(400, seed=0)
    xv, yv = _xor_on_sphere(200, seed=1)
    kernel_params = _train_params(
        head="kernel", kernel_c=10.0, kernel_gamma=1.0, kernel_landmarks=200
    )
    kernel = fit_head((x, y), (xv, yv), 2, kernel_params, seed=0)
    linear_params = _train_params(head="logreg", logreg_c=10.0, epochs=60, normalise="l2")
    linear = fit_head((x, y), (xv, yv), 2, linear_params, seed=0)
    assert kernel.val_accuracy > 0.9 and linear.val_accuracy < 0.7
    assert len(kernel.history) == 1 and kernel.history[0]["val_accuracy"] == pytest.approx(
        kernel.val_accuracy
    )
    names = [layer.name for layer in kernel.model.layers]
    assert names == ["features", "kernel_unit", "kernel_rbf", "kernel_map", "probabilities"]
    assert [layer.trainable for layer in kernel.model.layers[2:4]] == [False, False]


@pytest.mark.parametrize("n_classes", [2, 3])
def test_kernel_head_serves_sklearns_probabilities_and_survives_saving(n_classes, tmp_path):
    import keras
    from sklearn.linear_model import LogisticRegression

    x, y = _clusters(30, n_classes=n_classes)
    xv, yv = _clusters(10, n_classes=n_classes, seed=1)
    params = _train_params(head="kernel", kernel_c=1.0, kernel_landmarks=40, class_weight="none")
    fit = fit_head((x, y), (xv, yv), n_classes, params, seed=0)
    mapped = keras.Model(fit.model.inputs, fit.model.get_layer("kernel_map").output)
    z = mapped.predict(x, verbose=0)
    reference = LogisticRegression(C=1.0, max_iter=2000).fit(z, y)
    probs = fit.model.predict(xv, verbose=0)
    expected = reference.predict_proba(mapped.predict(xv, verbose=0))
    np.testing.assert_allclose(probs, expected, atol=1e-4)
    fit.model.save(tmp_path / "head.keras")
    loaded = keras.saving.load_model(tmp_path / "head.keras")
    np.testing.assert_allclose(loaded.predict(xv, verbose=0), probs, atol=1e-6)


def test_kernel_head_gives_the_same_probabilities_on_openvino():
    from taglens.features.engines import EngineModel

    x, y = _clusters(30)
    xv, yv = _clusters(10, seed=1)
    params = _train_params(head="kernel", kernel_c=10.0, kernel_landmarks=50)
    fit = fit_head((x, y), (xv, yv), 3, params, seed=0)
    reference = fit.model.predict(xv, verbose=0)
    served = np.asarray(EngineModel(fit.model, "openvino")(xv))
    assert served.shape == (30, 3)
    np.testing.assert_allclose(served, reference, atol=1e-4)
