"""What the train run records: the sections it reads, its lineage and datasets, its curves.

`TrainConfig` is the params sections the train stage reads, together: what it logs and stores
with the model. `log_data` tags the run with its lineage record and logs the splits as dataset
inputs; `write_history` writes history.csv/png; `TrainResult` is train.json's contents.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from taglens import artifacts
from taglens.atomic import atomic_write_csv
from taglens.params import (
    BaseParams,
    HashtagParams,
    IngestParams,
    Int8Params,
    ModelParams,
    TrainParams,
    flatten,
)
from taglens.training import plots
from taglens.training.head import HISTORY_COLUMNS
from taglens.training.splits import Split


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
        # what clean and evaluate upload, not what the model is (dvc.yaml: train skips it)
        flat.pop("base.log_photos", None)
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


@dataclass(frozen=True)
class TrainResult:
    """reports/train.json's contents (run ids, validation scores, baseline) and the model dir."""

    summary: dict[str, Any]
    models: Path

    @property
    def run_id(self) -> str:
        """The MLflow run that holds the model."""
        return str(self.summary["run_id"])

    def line(self) -> str:
        """One line for the terminal."""
        return f"trained: val_accuracy {self.summary['val_accuracy']:.4f} (run {self.run_id})"


def log_data(
    config: TrainConfig, meta: dict, splits: dict[str, Split], data: dict[str, Path]
) -> None:
    """Tag the active run with its lineage record and log the splits as its dataset inputs.

    Args:
        config: the sections the run trains with.
        meta: the cached features' meta.json (their weights identity).
        splits: the manifest's splits.
        data: raw, features and clean by name -> folder.
    """
    import mlflow

    from taglens import lineage
    from taglens.tracking import log_split_datasets

    record = lineage.record(
        Path.cwd(),
        data,
        {
            "backbone": config.model.backbone,
            "image_size": config.model.image_size,
            "weights_identity": meta["weights_identity"],
            "experiment": config.base.experiment,
        },
    )
    mlflow.set_tags({"stage": "train", **lineage.as_tags(record)})
    log_split_datasets(
        {name: split.rows for name, split in splits.items()},
        digest=record.get("data.clean", "unknown"),
        source=str(artifacts.MANIFEST.at(data["clean"])),
    )


def write_history(history: list[dict], reports: Path) -> None:
    """Write reports/history.csv and history.png (the loss and accuracy curves); log both."""
    import mlflow

    csv_path = atomic_write_csv(artifacts.HISTORY.at(reports), history, HISTORY_COLUMNS)
    png = plots.plot_history(history, artifacts.HISTORY_PLOT.at(reports))
    for path in (csv_path, png):
        mlflow.log_artifact(str(path), artifact_path="train")
