"""Params of the feature stages: the backbone, the cached forward pass, the outlier rule."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from taglens.features.backbones import BACKBONES
from taglens.params.section import Probability, Section


class ModelParams(Section):
    """The pretrained backbone and its input size."""

    backbone: str  # one of taglens.features.backbones.BACKBONES
    image_size: int = Field(ge=32, le=1024)
    weights: str | None  # "imagenet", a local weights file, or null for random weights

    @field_validator("backbone")
    @classmethod
    def _known_backbone(cls, name: str) -> str:
        if name not in BACKBONES:
            raise ValueError(f"model.backbone must be one of {', '.join(BACKBONES)}, got {name!r}")
        return name


class Int8Params(Section):
    """The INT8 engine's quantization: calibration photos and the accuracy it may lose."""

    calibration_images: int = Field(ge=1, le=10000)  # training photos for activation statistics
    validation_images: int = Field(ge=1, le=10000)  # validation photos accuracy is checked on
    max_drop: float = Field(ge=0, lt=1)  # most validation accuracy (absolute) INT8 may lose
    max_iterations: int = Field(ge=1, le=1000)  # most layer groups reverted to FP32 (NNCF needs 1)


class FeaturizeParams(Section):
    """The batched, cached forward pass."""

    batch_size: int = Field(ge=1, le=1024)
    jit_compile: bool
    shard_size: int = Field(ge=1)
    views: tuple[Literal["flip", "colour", "crops"], ...]  # extra views (taglens.features.views)
    engine: Literal["tensorflow", "openvino", "onnxruntime", "openvino-int8"]
    int8: Int8Params  # read when engine is openvino-int8

    @model_validator(mode="after")
    def _xla_is_tensorflow_only(self) -> FeaturizeParams:
        if self.jit_compile and self.engine != "tensorflow":
            raise ValueError(
                f"featurize.jit_compile: true applies to featurize.engine: tensorflow only, got "
                f"engine {self.engine!r}: set jit_compile: false (the {self.engine} engine "
                "compiles by itself)"
            )
        return self


class CleanParams(Section):
    """The paper's outlier rule and the split."""

    enabled: bool
    k_std: float = Field(gt=0)
    distance: Literal["euclidean", "cosine"]
    val_fraction: Probability
    test_fraction: Probability
    contact_sheet_max: int = Field(ge=0)

    @model_validator(mode="after")
    def _fractions_leave_training_data(self) -> CleanParams:
        if self.val_fraction + self.test_fraction >= 0.9:
            raise ValueError(
                "clean.val_fraction + clean.test_fraction must be < 0.9, got "
                f"{self.val_fraction + self.test_fraction:g}"
            )
        return self
