"""Drift figures: PSI, the reference's bins, and the verdict on samples of known distributions."""

from __future__ import annotations

import math

import numpy as np
import pytest

from taglens.errors import TaglensError
from taglens.model.drift import BINS, DriftReference, compare, psi

CLASSES = ("cat", "dog", "fish")


def _probabilities(rng, n, mix=(0.5, 0.3, 0.2), sharpness=4.0):
    """Softmax outputs of a model whose predicted classes follow `mix`."""
    top = rng.choice(len(mix), size=n, p=mix)
    logits = rng.normal(0, 1, (n, len(mix)))
    logits[np.arange(n), top] += sharpness
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def _batch(probabilities):
    top = [CLASSES[i] for i in probabilities.argmax(axis=1)]
    return top, probabilities.max(axis=1).tolist()


def test_psi_of_known_histograms():
    assert psi([10, 20, 70], [10, 20, 70]) == 0.0
    assert psi([1, 1], [3, 1]) == pytest.approx(
        (0.75 - 0.5) * math.log(1.5) + (0.25 - 0.5) * math.log(0.5)
    )
    assert psi([5, 5], [10, 0]) > 1  # an empty bin counts as a 1e-4 share, not log(0)
    assert math.isnan(psi([1, 2], [0, 0]))


def test_the_reference_keeps_counts_decile_edges_and_a_sorted_sample():
    probabilities = _probabilities(np.random.default_rng(0), 500)
    reference = DriftReference.from_probabilities(probabilities, CLASSES)
    assert reference.n == 500 and sum(reference.confidence_counts) == 500
    assert len(reference.confidence_edges) == BINS - 1
    # deciles: each bin holds a tenth of the validation photos
    assert all(45 <= count <= 55 for count in reference.confidence_counts)
    assert list(reference.confidences) == sorted(reference.confidences)
    assert DriftReference.from_dict(reference.to_dict()) == reference
    with pytest.raises(TaglensError, match="re-run the train stage"):
        DriftReference.from_dict({"format": 99})


def test_a_fresh_sample_of_the_same_distribution_is_not_drift_and_a_shifted_one_is():
    rng = np.random.default_rng(1)
    reference = DriftReference.from_probabilities(_probabilities(rng, 1000), CLASSES)
    judge = {"psi_threshold": 0.2, "min_photos": 200}

    same = compare(reference, *_batch(_probabilities(rng, 1000)), **judge)
    assert same.judged and not same.drifted
    assert same.psi_class < 0.05 and same.psi_confidence < 0.1 and same.ks_pvalue > 0.001

    other_mix = compare(reference, *_batch(_probabilities(rng, 1000, mix=(0.1, 0.2, 0.7))), **judge)
    assert other_mix.drifted and other_mix.psi_class > 0.2
    assert other_mix.class_shares["fish"] > 0.6 and other_mix.reference_class_shares["fish"] < 0.3

    unsure = compare(reference, *_batch(_probabilities(rng, 1000, sharpness=1.0)), **judge)
    assert unsure.drifted and unsure.psi_confidence > 0.2 and unsure.ks_pvalue < 1e-6


def test_too_few_photos_are_not_judged_and_error_rows_are_left_out():
    rng = np.random.default_rng(2)
    reference = DriftReference.from_probabilities(_probabilities(rng, 300), CLASSES)
    top, confidence = _batch(_probabilities(rng, 50, mix=(0, 0, 1)))
    report = compare(
        reference, [*top, None], [*confidence, None], psi_threshold=0.2, min_photos=100
    )
    assert report.photos == 50 and not report.judged and not report.drifted
    assert report.psi_class > 0.2  # the figure is still reported
    assert "fewer than predict.drift.min_photos = 100" in report.line()
    assert report.metrics()["drift_flag"] == 0.0


def test_photos_of_another_model_are_refused():
    reference = DriftReference.from_probabilities(
        _probabilities(np.random.default_rng(3), 10), CLASSES
    )
    with pytest.raises(TaglensError, match="not the reference model's"):
        compare(reference, ["horse"], [0.9], psi_threshold=0.2, min_photos=1)


def test_confidences_that_differ_by_an_engine_rounding_are_not_drift():
    # Given a confident model: a third of the validation photos at a confidence of exactly 1.0,
    # which is then a decile edge
    rng = np.random.default_rng(3)
    probabilities = _probabilities(rng, 600, sharpness=6.0)
    probabilities[:200] = np.eye(len(CLASSES))[rng.integers(0, len(CLASSES), 200)]
    reference = DriftReference.from_probabilities(probabilities, CLASSES)
    assert max(reference.confidence_edges) == 1.0
    top, confidence = _batch(probabilities)
    # When the same photos come back from another engine, one float32 step below 1.0
    lower = [
        float(np.nextafter(np.float32(c), np.float32(0))) if c == 1.0 else c for c in confidence
    ]
    judge = {"psi_threshold": 0.2, "min_photos": 200}
    # Then neither is drift: the saturated photos stay in their bin
    assert compare(reference, top, confidence, **judge).psi_confidence == pytest.approx(0.0)
    assert compare(reference, top, lower, **judge).psi_confidence < 0.01
    assert not compare(reference, top, lower, **judge).drifted


@pytest.mark.parametrize("margin", [12.0, 14.0])
def test_a_reference_binned_by_earlier_code_still_sees_the_same_photos_as_no_drift(margin):
    import dataclasses

    # Given a confident model's validation outputs (float32 softmax: many near 1.0) and the
    # drift reference earlier code wrote of them, binned unrounded
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1, (1000, 10))
    logits[np.arange(1000), rng.integers(0, 10, 1000)] += rng.normal(margin, 3, 1000)
    p = np.exp(logits - logits.max(1, keepdims=True)).astype(np.float32)
    p = (p / p.sum(1, keepdims=True)).astype(np.float64)
    classes = [f"c{i}" for i in range(10)]
    current = DriftReference.from_probabilities(p, classes)
    edges = np.asarray(current.confidence_edges)
    unrounded = np.searchsorted(edges, p.max(1), side="right")
    old = dataclasses.replace(
        current, confidence_counts=tuple(np.bincount(unrounded, minlength=len(edges) + 1))
    )
    assert old.confidence_counts != current.confidence_counts  # the binning did differ
    # When the same photos are compared with it
    report = compare(
        old, [classes[i] for i in p.argmax(1)], p.max(1).tolist(), psi_threshold=0.2, min_photos=1
    )
    # Then they are no drift
    assert report.psi_confidence < 0.05 and not report.drifted
