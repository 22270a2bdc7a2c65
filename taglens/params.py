"""Typed, frozen parameter models for params.yaml: a typo or an out-of-range value fails at once."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from taglens.errors import TaglensError

PAPER_CLASSES = (
    "animals", "art", "fashion", "fitness", "flowers",
    "food", "instagood", "nature", "selfie", "sports",
)  # fmt: skip

Backbone = Literal["vgg19", "vgg16", "mobilenet", "mobilenet_v2", "resnet50", "efficientnet_b0"]
Probability = Annotated[float, Field(gt=0, lt=1)]


class ParamsError(TaglensError):
    """A params file that cannot be used; the message names the offending key."""


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class BaseParams(_Section):
    """Settings shared by every stage."""

    seed: int = Field(ge=0, le=2**32 - 1)  # numpy and Keras accept 32-bit seeds
    # None: the classes the source finds (folder names, Instagram hashtags, the demo's ten).
    classes: Annotated[tuple[str, ...], Field(min_length=2)] | None
    experiment: str = Field(min_length=1)
    log_photos: bool  # contact sheets and misclassified-image grids go to MLflow only if true


class DemoSourceParams(_Section):
    """The synthetic demo image set."""

    images_per_class: int = Field(ge=3, le=10_000)
    image_size: int = Field(ge=32, le=1024)


class InstagramSourceParams(_Section):
    """Instagram collection through Instaloader (login comes from a session file, never here)."""

    hashtags: tuple[str, ...] = Field(min_length=1)
    posts_per_hashtag: int = Field(ge=1)  # per run: posts newer than the newest already held
    keep_days: Annotated[int, Field(ge=1)] | None  # rolling window; None keeps every post
    order: Literal["top", "recent"]
    skip_videos: bool
    since: str | None  # ISO date, inclusive
    until: str | None  # ISO date, exclusive
    max_wait_seconds: float = Field(ge=0)
    owner_salt_env: str = Field(min_length=1)


class ScrapeParams(_Section):
    """Where raw images and captions come from."""

    source: Literal["demo", "folder", "instagram"]
    folder: str | None
    demo: DemoSourceParams
    instagram: InstagramSourceParams

    @model_validator(mode="after")
    def _folder_needs_path(self) -> ScrapeParams:
        if self.source == "folder" and not self.folder:
            raise ValueError("scrape.folder must name a directory when scrape.source is 'folder'")
        return self


class IngestParams(_Section):
    """What an image must be to be accepted."""

    max_pixels: int = Field(ge=1024)
    min_side: int = Field(ge=1)
    max_side: int = Field(ge=32, le=65_500)
    animated: Literal["first_frame", "reject"]
    jpeg_quality: int = Field(ge=50, le=100)


class ModelParams(_Section):
    """The pretrained backbone and its input size."""

    backbone: Backbone
    image_size: int = Field(ge=32, le=1024)
    weights: str | None  # "imagenet", a local weights file, or null for random weights


class FeaturizeParams(_Section):
    """The batched, cached forward pass."""

    batch_size: int = Field(ge=1, le=1024)
    jit_compile: bool
    shard_size: int = Field(ge=1)
    views: tuple[Literal["flip", "colour"], ...]  # cheap extra views (taglens.features.views)
    engine: Literal["tensorflow", "openvino", "onnxruntime"]

    @model_validator(mode="after")
    def _xla_is_tensorflow_only(self) -> FeaturizeParams:
        if self.jit_compile and self.engine != "tensorflow":
            raise ValueError(
                f"featurize.jit_compile: true applies to featurize.engine: tensorflow only, got "
                f"engine {self.engine!r}: set jit_compile: false (the {self.engine} engine "
                "compiles by itself)"
            )
        return self


class CleanParams(_Section):
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


class FineTuneParams(_Section):
    """Optional end-to-end fine-tuning of the backbone's last block."""

    enabled: bool
    epochs: int = Field(ge=1)
    learning_rate: float = Field(gt=0)
    batch_size: int = Field(ge=1)
    layers: int = Field(ge=0)  # 0: the backbone's last block; N: its last N layers with weights


class SweepParams(_Section):
    """A grid of head hyperparameters; empty lists mean 'use the single value above'."""

    epochs: tuple[int, ...] = ()
    batch_size: tuple[int, ...] = ()
    learning_rate: tuple[float, ...] = ()
    hidden_units: tuple[int, ...] = ()
    dropout: tuple[float, ...] = ()


Normalise = Literal["none", "l2", "standardise"]


class SearchParams(_Section):
    """The default search on validation: random draws from a logistic and a dense grid."""

    enabled: bool
    logreg_candidates: int = Field(ge=0)
    dense_candidates: int = Field(ge=0)
    logreg_c: tuple[Annotated[float, Field(gt=0)], ...]
    normalise: tuple[Normalise, ...] = Field(min_length=1)
    augment: tuple[bool, ...] = Field(min_length=1)
    hidden_units: tuple[Annotated[int, Field(ge=0)], ...] = Field(min_length=1)
    dropout: tuple[Annotated[float, Field(ge=0, lt=1)], ...] = Field(min_length=1)
    learning_rate: tuple[Annotated[float, Field(gt=0, le=10)], ...] = Field(min_length=1)
    weight_decay: tuple[Annotated[float, Field(ge=0, lt=1)], ...] = Field(min_length=1)


class TrainParams(_Section):
    """The classification head and how it is fitted."""

    head: Literal["dense", "logreg"]
    epochs: int = Field(ge=1, le=10_000)
    batch_size: int = Field(ge=1, le=65_536)
    learning_rate: float = Field(gt=0, le=10)
    optimizer: Literal["adam", "sgd", "rmsprop", "adamw"]
    hidden_units: int = Field(ge=0)
    dropout: float = Field(ge=0, lt=1)
    weight_decay: float = Field(ge=0, lt=1)
    logreg_c: float = Field(gt=0)
    normalise: Normalise
    augment: bool
    label_smoothing: float = Field(ge=0, lt=1)
    class_weight: Literal["none", "balanced"]
    early_stopping_patience: int = Field(ge=0)
    baseline: bool
    fine_tune: FineTuneParams
    search: SearchParams
    sweep: SweepParams


class EvaluateParams(_Section):
    """What evaluation reports."""

    top_k: int = Field(ge=1)
    misclassified_max: int = Field(ge=0)


class HashtagParams(_Section):
    """How class probabilities become ranked hashtags."""

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


class RegisterParams(_Section):
    """The registry and the promotion gate."""

    model_name: str = Field(min_length=1)
    primary_metric: str = Field(min_length=1)
    min_margin: float = Field(ge=0)
    max_recall_drop: float = Field(ge=0, le=1)
    min_score: float = Field(ge=0, le=1)
    promote: bool  # false: every version stays challenger; `dvc exp run` never promotes anyway


class PredictParams(_Section):
    """The batch predict job."""

    batch_size: int = Field(ge=1)
    shard_size: int = Field(ge=1)


class ServeParams(_Section):
    """The web page."""

    host: str
    port: int = Field(ge=1, le=65_535)
    max_upload_mb: float = Field(gt=0)
    allowed_hosts: tuple[str, ...] = Field(min_length=1)
    batch_max_size: int = Field(ge=1, le=256)
    batch_max_wait_ms: float = Field(ge=0, le=1000)
    max_pending: int = Field(ge=1, le=10_000)
    decode_threads: int = Field(ge=1, le=64)
    retry_after_s: int = Field(ge=1, le=3600)
    limit_concurrency: int = Field(ge=2, le=100_000)
    timeout_keep_alive_s: int = Field(ge=1, le=600)
    upload_timeout_s: float = Field(gt=0, le=3600)
    timeout_graceful_shutdown_s: int = Field(ge=0, le=600)

    @model_validator(mode="after")
    def _room_for_the_page(self) -> ServeParams:
        if self.limit_concurrency <= self.max_pending:
            raise ValueError(
                f"limit_concurrency ({self.limit_concurrency}) must be above max_pending "
                f"({self.max_pending}), or the page stops answering while uploads queue"
            )
        return self


with warnings.catch_warnings():
    # `register` shadows ABCMeta.register on the class only; instances read the field as usual.
    warnings.filterwarnings("ignore", message='Field name "register"')

    class Params(_Section):
        """The whole params.yaml."""

        base: BaseParams
        scrape: ScrapeParams
        ingest: IngestParams
        model: ModelParams
        featurize: FeaturizeParams
        clean: CleanParams
        train: TrainParams
        evaluate: EvaluateParams
        hashtags: HashtagParams
        register: RegisterParams
        predict: PredictParams
        serve: ServeParams


def _describe(error: dict[str, Any]) -> str:
    key = ".".join(str(part) for part in error["loc"]) or "params"
    ctx = error.get("ctx") or {}
    got = error.get("input")
    kind = error["type"]
    if kind == "extra_forbidden":
        return f"{key} is not a known key (check its spelling)"
    if kind == "missing":
        return f"{key} is missing"
    bounds = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
              "less_than_equal": "<="}  # fmt: skip
    if kind in bounds:
        limit = next(iter(ctx.values()))
        return f"{key} must be {bounds[kind]} {limit}, got {got!r}"
    if kind == "value_error":
        return str(ctx.get("error", error["msg"]))
    return f"{key}: {error['msg']}, got {got!r}"


def parse_params(raw: Any) -> Params:
    """Validate a parsed params mapping.

    Raises:
        ParamsError: naming every offending key.

    """
    if not isinstance(raw, dict):
        raise ParamsError(f"params must be a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(error) for error in exc.errors()]
        raise ParamsError("invalid params: " + "; ".join(lines)) from None


def load_params(
    path: Path | str = "params.yaml", overrides: dict[str, Any] | None = None
) -> Params:
    """Read and validate a params file, optionally overriding dotted keys (`train.epochs`).

    Raises:
        ParamsError: the file is missing, is not YAML, or holds a bad value.

    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"params file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise ParamsError(f"{path} is not valid YAML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ParamsError(f"{path} is not UTF-8 (byte {exc.start}): save it as UTF-8") from None
    except RecursionError:
        raise ParamsError(f"{path} nests too deeply to be a params file") from None
    for dotted, value in (overrides or {}).items():
        _set_dotted(raw, dotted, value)
    return parse_params(raw)


def _set_dotted(raw: Any, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = raw
    for part in parents:
        if not isinstance(node, dict) or part not in node:
            raise ParamsError(f"cannot override {dotted}: {part} is not a section")
        node = node[part]
    node[leaf] = value


def flatten(params: BaseModel, prefix: str = "") -> dict[str, Any]:
    """Flatten a params model to `section.key` pairs, as MLflow's compare view lines them up."""
    flat: dict[str, Any] = {}
    for name, value in params:
        key = f"{prefix}{name}"
        if isinstance(value, BaseModel):
            flat.update(flatten(value, prefix=f"{key}."))
        elif isinstance(value, tuple):
            flat[key] = ",".join(str(item) for item in value)
        else:
            flat[key] = value
    return flat
