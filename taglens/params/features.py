"""Which values model, featurize and clean accept, with the one list of backbones and engines.

The backbone, engine and view names are declared here, below the code that uses them:
`taglens.features.backbones` builds a backbone named in `BACKBONES`, `taglens.features.engines`
and the logged pyfunc read what each engine needs from `ENGINES`, and `taglens.features.views`
computes the views named by `View`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from pydantic import Field, field_validator, model_validator

from taglens.params.section import Probability, Section


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and which preprocessing it was trained with.

    `mode` follows keras.applications: `caffe` (RGB->BGR, ImageNet mean subtracted), `tf`
    (scaled to [-1, 1]) or `none` (the model rescales itself, as EfficientNet does).
    `last_block` is the layer-name prefix unfrozen for fine-tuning. `xla_slow`: XLA runs its
    depthwise convolutions about 10x slower on CPU (BENCHMARKS.md): keep jit_compile off.
    """

    constructor: str
    mode: str
    last_block: str
    xla_slow: bool = False


# The one list of backbones: `model.backbone` in params.yaml is checked against its names.
BACKBONES: dict[str, BackboneSpec] = {
    "vgg19": BackboneSpec("VGG19", "caffe", "block5"),
    "vgg16": BackboneSpec("VGG16", "caffe", "block5"),
    "mobilenet": BackboneSpec("MobileNet", "tf", "conv_pw_13", xla_slow=True),
    "mobilenet_v2": BackboneSpec("MobileNetV2", "tf", "block_16", xla_slow=True),
    "resnet50": BackboneSpec("ResNet50", "caffe", "conv5"),
    "efficientnet_b0": BackboneSpec("EfficientNetB0", "none", "block7", xla_slow=True),
}


@dataclass(frozen=True)
class EngineSpec:
    """What one `featurize.engine` needs beyond TensorFlow (which builds every Keras model).

    `modules` are imported to run it (checked before use, so a missing one is a one-line
    error); `distributions` are the pip names logged with a model served on it. Without them an
    environment MLflow builds from the requirements serves on TensorFlow with only a warning.
    """

    modules: tuple[str, ...] = ()
    distributions: tuple[str, ...] = ()


# The one list of engines: `featurize.engine` is checked against its names. ONNX Runtime runs
# what tf2onnx converts, which needs onnx; openvino-int8 runs the INT8 model train wrote, so
# serving it needs no NNCF.
ENGINES: dict[str, EngineSpec] = {
    "tensorflow": EngineSpec(),
    "openvino": EngineSpec(("openvino",), ("openvino",)),
    "onnxruntime": EngineSpec(("onnxruntime", "tf2onnx"), ("onnxruntime", "tf2onnx", "onnx")),
    "openvino-int8": EngineSpec(("openvino",), ("openvino",)),
}

# The extra views featurize can cache beside the image's own vector (taglens.features.views).
View = Literal["flip", "colour", "crops"]


class ModelParams(Section):
    """The pretrained backbone and its input size."""

    backbone: str  # one of BACKBONES
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
    views: tuple[View, ...]  # extra views (taglens.features.views)
    engine: str  # one of ENGINES
    int8: Int8Params  # read when engine is openvino-int8

    @field_validator("engine")
    @classmethod
    def _known_engine(cls, name: str) -> str:
        if name not in ENGINES:
            *others, last = (repr(engine) for engine in ENGINES)
            known = f"{', '.join(others)} or {last}"
            raise ValueError(f"featurize.engine: Input should be {known}, got {name!r}")
        return name

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
