"""Params of the model stages: the head and its search, evaluation, hashtag ranking."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from taglens.params.section import Section

# `auto`: try it and keep it only when it wins on validation beyond one standard error
Auto = Literal["auto"]


class FineTuneParams(Section):
    """Optional end-to-end fine-tuning of the backbone's last block."""

    enabled: Auto | bool
    epochs: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    layers: int = Field(ge=0)  # 0: the backbone's last block; N: its last N layers with weights


class SweepParams(Section):
    """A grid of head hyperparameters; empty lists mean 'use the single value above'."""

    epochs: tuple[int, ...] = ()
    batch_size: tuple[int, ...] = ()
    learning_rate: tuple[float, ...] = ()
    hidden_units: tuple[int, ...] = ()
    dropout: tuple[float, ...] = ()


Normalise = Literal["none", "l2", "standardise"]
# How a search picks among candidates scored on validation: the best score, or the simplest
# candidate within one standard error of the best (Breiman et al., 1984), which a few hundred
# validation photos call for: one photo is worth 0.2 points there.
SelectionRule = Literal["best", "one_se"]


class SearchParams(Section):
    """The default search on validation: random draws from a logistic, a kernel and a dense grid."""

    enabled: bool
    rule: SelectionRule
    logreg_candidates: int = Field(ge=0)
    kernel_candidates: int = Field(ge=0)
    dense_candidates: int = Field(ge=0)
    logreg_c: tuple[Annotated[float, Field(gt=0)], ...]
    logreg_learning_rate: float = Field(gt=0, le=10)  # Adam's step for the logistic settings
    kernel_c: tuple[Annotated[float, Field(gt=0)], ...] = Field(min_length=1)
    kernel_gamma: tuple[Annotated[float, Field(gt=0, le=100)], ...] = Field(min_length=1)
    normalise: tuple[Normalise, ...] = Field(min_length=1)
    augment: tuple[bool, ...] = Field(min_length=1)
    hidden_units: tuple[Annotated[int, Field(ge=0)], ...] = Field(min_length=1)
    dropout: tuple[Annotated[float, Field(ge=0, lt=1)], ...] = Field(min_length=1)
    learning_rate: tuple[Annotated[float, Field(gt=0, le=10)], ...] = Field(min_length=1)
    weight_decay: tuple[Annotated[float, Field(ge=0, lt=1)], ...] = Field(min_length=1)


class TrainParams(Section):
    """The classification head and how it is fitted."""

    head: Literal["dense", "logreg", "kernel"]
    epochs: int = Field(ge=1, le=10_000)
    batch_size: int = Field(ge=1, le=65_536)
    learning_rate: float = Field(gt=0, le=10)
    optimizer: Literal["adam", "sgd", "rmsprop", "adamw"]
    hidden_units: int = Field(ge=0)
    dropout: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0, lt=1)
    logreg_c: float = Field(gt=0)
    kernel_c: float = Field(gt=0)
    kernel_gamma: float = Field(gt=0, le=100)
    kernel_landmarks: int = Field(ge=1, le=20_000)
    normalise: Normalise
    augment: bool
    crops: Auto | bool  # average the crops view at prediction (when featurize made it)
    colour: Auto | bool  # the head reads the colour view beside the vectors
    label_smoothing: float = Field(ge=0, lt=1)
    class_weight: Literal["none", "balanced"]
    early_stopping_patience: int = Field(ge=0)
    baseline: bool
    fine_tune: FineTuneParams
    search: SearchParams
    sweep: SweepParams


class EvaluateParams(Section):
    """What evaluation reports."""

    top_k: int = Field(ge=1)
    misclassified_max: int = Field(ge=0)


class RankingSearchParams(Section):
    """The ranking settings tried on validation posts (each ranker's, then the blend's)."""

    rule: SelectionRule
    blend_rule: SelectionRule
    estimators: tuple[Literal["posts", "uses"], ...] = Field(min_length=1)
    sharpen: tuple[Annotated[float, Field(gt=0, le=20)], ...] = Field(min_length=1)
    neighbours_k: tuple[Annotated[int, Field(ge=1)], ...] = Field(min_length=1)
    neighbours_power: tuple[Annotated[float, Field(gt=0, le=100)], ...] = Field(min_length=1)


class HashtagParams(Section):
    """How class probabilities and image features become ranked hashtags."""

    top_k: int = Field(ge=1, le=30)
    min_support: int = Field(ge=1)
    smoothing: float = Field(ge=0)
    denylist: tuple[str, ...]
    generic: tuple[str, ...]
    generic_weight: float = Field(ge=0, le=1)
    image_rankers: bool
    max_image_tags: int = Field(ge=1)
    min_lift: float = Field(ge=1)
    low_lift_weight: float = Field(ge=0, le=1)
    blend_step: float = Field(gt=0, le=1)
    search: RankingSearchParams
