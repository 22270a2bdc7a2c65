"""Drift: do the photos a model scores still look like its validation photos?

The train stage writes the model's validation outputs as a reference (`drift_reference.json` in
models/, carried by the logged pyfunc): the predicted-class counts, and the confidences (top
probability) with decile bin edges fixed at that moment. A batch of newly scored photos is
compared with it on both:

- the population stability index (PSI), sum over bins of (a - e) * ln(a / e) for the shares
  a (now) and e (reference), on the predicted classes and on the confidence bins. Rule of
  thumb: below 0.1 stable, 0.1-0.25 a shift worth a look, above 0.25 a real change.
- the two-sample Kolmogorov-Smirnov test on the confidences (scipy), reported beside it.

The batch is flagged when either PSI exceeds `predict.drift.psi_threshold`, and only once it
holds at least `predict.drift.min_photos` photos (PSI on a handful of photos is noise).
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from taglens.atomic import atomic_write_json
from taglens.errors import TaglensError

BINS = 10  # confidence bins: deciles of the validation confidences, the usual PSI layout
MAX_SAMPLE = 2000  # validation confidences kept for the KS test (quantiles beyond that)
SHARE_FLOOR = 1e-4  # an empty bin counts as this share: ln(0) would make any PSI infinite
CONFIDENCE_DECIMALS = 6  # confidences are kept (the reference's sample) and binned at this
FORMAT = 1


@dataclass(frozen=True)
class DriftReference:
    """A model's validation outputs, summarised for drift checks.

    Attributes:
        classes: the model's classes, in output order.
        class_counts: validation photos predicted as each class (same order).
        confidence_edges: inner bin edges of the confidences (bin i is [edge i-1, edge i)).
        confidence_counts: validation photos per confidence bin (len(edges) + 1 bins).
        confidences: the validation confidences (or MAX_SAMPLE quantiles of them), sorted.
    """

    classes: tuple[str, ...]
    class_counts: tuple[int, ...]
    confidence_edges: tuple[float, ...]
    confidence_counts: tuple[int, ...]
    confidences: tuple[float, ...]

    @property
    def n(self) -> int:
        """Validation photos behind the reference."""
        return int(sum(self.class_counts))

    @classmethod
    def from_probabilities(
        cls, probabilities: np.ndarray, classes: Sequence[str]
    ) -> DriftReference:
        """The reference of a model's (N, classes) validation probabilities."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if probabilities.ndim != 2 or probabilities.shape[1] != len(classes):
            raise ValueError(
                f"expected (N, {len(classes)}) probabilities, got {probabilities.shape}"
            )
        top = probabilities.argmax(axis=1)
        confidence = np.sort(probabilities.max(axis=1))
        counts = np.bincount(top, minlength=len(classes))
        edges = ()
        if len(confidence):
            inner = np.quantile(confidence, np.arange(1, BINS) / BINS)
            edges = tuple(float(e) for e in np.unique(inner))
        sample = confidence
        if len(sample) > MAX_SAMPLE:
            sample = np.quantile(confidence, np.linspace(0, 1, MAX_SAMPLE))
        return cls(
            classes=tuple(classes),
            class_counts=tuple(int(c) for c in counts),
            confidence_edges=edges,
            confidence_counts=tuple(int(c) for c in _bin_counts(confidence, edges)),
            confidences=tuple(round(float(c), CONFIDENCE_DECIMALS) for c in sample),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (drift_reference.json)."""
        return {"format": FORMAT, **{key: list(value) for key, value in asdict(self).items()}}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> DriftReference:
        """Read the JSON form back.

        Raises:
            TaglensError: the data is not a drift reference this code can read.
        """
        try:
            if data.get("format") != FORMAT:
                raise ValueError(f"format {data.get('format')!r}, expected {FORMAT}")
            reference = cls(
                **{
                    key: tuple(data[key])
                    for key in (
                        "classes",
                        "class_counts",
                        "confidence_edges",
                        "confidence_counts",
                        "confidences",
                    )
                }
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise TaglensError(f"not a drift reference ({exc}): re-run the train stage") from None
        if len(reference.class_counts) != len(reference.classes):
            raise TaglensError("drift reference: class counts do not match the classes")
        return reference

    def save(self, path: Path | str) -> Path:
        """Write drift_reference.json atomically."""
        return atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: Path | str) -> DriftReference:
        """Read drift_reference.json."""
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


@dataclass(frozen=True)
class DriftReport:
    """One batch against the reference: the figures and the verdict."""

    photos: int
    reference_photos: int
    psi_class: float
    psi_confidence: float
    ks_statistic: float
    ks_pvalue: float
    psi_threshold: float
    min_photos: int
    judged: bool  # enough photos to say anything
    drifted: bool  # judged, and a PSI above the threshold
    class_shares: dict[str, float]
    reference_class_shares: dict[str, float]

    def metrics(self) -> dict[str, float]:
        """The figures as MLflow metrics (NaN figures left out)."""
        values = {
            "drift_photos": self.photos,
            "drift_psi_class": self.psi_class,
            "drift_psi_confidence": self.psi_confidence,
            "drift_ks_statistic": self.ks_statistic,
            "drift_ks_pvalue": self.ks_pvalue,
            "drift_flag": float(self.drifted),
        }
        return {key: float(value) for key, value in values.items() if not math.isnan(value)}

    def line(self) -> str:
        """One line for the log."""
        if not self.judged:
            return (
                f"drift not judged: {self.photos} photos scored, fewer than "
                f"predict.drift.min_photos = {self.min_photos}"
            )
        verdict = "DRIFT" if self.drifted else "no drift"
        return (
            f"{verdict}: PSI classes {self.psi_class:.3f}, confidence "
            f"{self.psi_confidence:.3f} (threshold {self.psi_threshold}); KS "
            f"{self.ks_statistic:.3f} (p {self.ks_pvalue:.3g}) on {self.photos} photos"
        )


def psi(expected: Sequence[float], actual: Sequence[float]) -> float:
    """Population stability index of two histograms over the same bins (counts or shares)."""
    e = np.asarray(expected, dtype=np.float64)
    a = np.asarray(actual, dtype=np.float64)
    if e.shape != a.shape or e.sum() <= 0 or a.sum() <= 0:
        return float("nan")
    e = np.maximum(e / e.sum(), SHARE_FLOOR)
    a = np.maximum(a / a.sum(), SHARE_FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def _bin_counts(values: np.ndarray, edges: Sequence[float]) -> np.ndarray:
    # Rounded as the reference's sample is kept: a confident model gives many photos a
    # confidence of exactly 1.0, which becomes a decile edge, and another engine's 0.99999994
    # for the same photos would otherwise put them all in the bin below (a PSI cliff).
    values = np.round(np.asarray(values, dtype=np.float64), CONFIDENCE_DECIMALS)
    bins = np.searchsorted(np.asarray(edges, dtype=np.float64), values, side="right")
    return np.bincount(bins, minlength=len(edges) + 1)


def _shares(counts: Sequence[int], classes: Sequence[str]) -> dict[str, float]:
    total = float(sum(counts)) or 1.0
    return {name: round(count / total, 4) for name, count in zip(classes, counts, strict=True)}


def compare(
    reference: DriftReference,
    top_classes: Sequence[str | None],
    confidences: Sequence[float | None],
    *,
    psi_threshold: float,
    min_photos: int,
) -> DriftReport:
    """Compare newly scored photos (their top class and confidence) with the reference.

    Rows without a prediction (error rows: None) are left out; a class the reference does not
    know is an error, since it means another model scored the photos.
    """
    from scipy.stats import ks_2samp

    pairs = [
        (c, float(p))
        for c, p in zip(top_classes, confidences, strict=True)
        if c is not None and p is not None
    ]
    index = {name: i for i, name in enumerate(reference.classes)}
    unknown = sorted({c for c, _ in pairs if c not in index})
    if unknown:
        raise TaglensError(
            f"classes {unknown} are not the reference model's "
            f"{list(reference.classes)}: compare photos scored by that model"
        )
    counts = np.bincount([index[c] for c, _ in pairs], minlength=len(index))
    values = np.array([p for _, p in pairs], dtype=np.float64)
    judged = len(pairs) >= min_photos and reference.n > 0 and len(pairs) > 0
    psi_class = psi(reference.class_counts, counts) if len(pairs) else float("nan")
    psi_conf = float("nan")
    ks_stat = ks_p = float("nan")
    if len(pairs) and reference.n:
        # the reference's own sample binned as the new photos are: its stored counts may come
        # from code that binned otherwise (unrounded)
        sample = np.asarray(reference.confidences, dtype=np.float64)
        expected = (
            _bin_counts(sample, reference.confidence_edges)
            if len(sample)
            else reference.confidence_counts
        )
        psi_conf = psi(expected, _bin_counts(values, reference.confidence_edges))
        with warnings.catch_warnings():  # ties make scipy fall back to the asymptotic p-value
            warnings.filterwarnings("ignore", "ks_2samp: Exact calculation", RuntimeWarning)
            result = ks_2samp(np.asarray(reference.confidences), values)
        ks_stat = float(result.statistic)
        ks_p = float(result.pvalue)
    drifted = judged and max(psi_class, psi_conf) > psi_threshold
    return DriftReport(
        photos=len(pairs),
        reference_photos=reference.n,
        psi_class=psi_class,
        psi_confidence=psi_conf,
        ks_statistic=ks_stat,
        ks_pvalue=ks_p,
        psi_threshold=psi_threshold,
        min_photos=min_photos,
        judged=judged,
        drifted=drifted,
        class_shares=_shares(counts.tolist(), reference.classes),
        reference_class_shares=_shares(reference.class_counts, reference.classes),
    )
