"""The params sections the train stage reads, together: what it logs and stores with the model."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from taglens.params import (
    BaseParams,
    HashtagParams,
    IngestParams,
    Int8Params,
    ModelParams,
    TrainParams,
    flatten,
)


@dataclass(frozen=True)
class TrainConfig:
    """base, model, train, hashtags and ingest (logged with the model: it checks request images).

    Only these are logged to the train run and written to model_info.json: a change to another
    section (scrape, clean, register, ...) does not belong to the model.
    """

    base: BaseParams
    model: ModelParams
    train: TrainParams
    hashtags: HashtagParams
    ingest: IngestParams
    engine: str  # featurize.engine: the logged model serves on it (not a train param)
    int8: Int8Params  # featurize.int8: how the served model is quantized after INT8 features

    def flat(self) -> dict[str, Any]:
        """`section.key` pairs, as MLflow's compare view lines them up."""
        flat: dict[str, Any] = {}
        for name in ("base", "model", "train", "hashtags", "ingest"):
            flat.update(flatten(getattr(self, name), prefix=f"{name}."))
        return flat

    def with_train(self, train: TrainParams) -> TrainConfig:
        """The same sections with other train params (the best setting of a sweep)."""
        return replace(self, train=train)

    def run_name(self, sweep_size: int) -> str:
        """`train vgg19-224px lr=0.001` (or `... sweep of 4`): tells runs apart in MLflow's list."""
        model = f"{self.model.backbone}-{self.model.image_size}px"
        if sweep_size:
            return f"train {model} sweep of {sweep_size}"
        return f"train {model} lr={self.train.learning_rate:g}"
