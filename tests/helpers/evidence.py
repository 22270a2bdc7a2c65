"""A test split of solid-colour photos and the evidence evaluate writes for one model on it.

Register's gate pairs a candidate with the re-scored champion image by image, so a test that
registers by hand needs what evaluate leaves: metrics.json with the test fingerprint and the
run id, per_class.json, and per_image.json on the same photos.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

from taglens.data.posts import Post
from taglens.training.metrics import split_fingerprint
from tests.helpers.params import tiny_params, write_tiny_params
from tests.helpers.rawdata import solid_raw
from tests.helpers.repocopy import copy_source_tree


def solid_test_split(raw: Path, clean: Path, classes) -> list[Post]:
    """data/raw and data/clean holding two solid-colour test photos per class."""
    colours = {
        c: [(20 * i, 90 + 60 * j, 250 - 20 * i) for j in range(2)] for i, c in enumerate(classes)
    }
    posts = solid_raw(raw, colours, size=32)
    clean.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "id": p.id,
            "sha256": p.sha256,
            "image": p.image,
            "label": p.label,
            "split": "test",
            "distance": 0.0,
        }
        for p in posts
    ]
    pd.DataFrame(rows).to_csv(clean / "manifest.csv", index=False)
    return posts


def write_evidence(reports: Path, run_id: str, posts: list[Post], classes, right: bool) -> None:
    """metrics.json and evaluate/{per_class,per_image}.json of a model right on every test
    photo (`right`) or on none."""
    (reports / "evaluate").mkdir(parents=True, exist_ok=True)
    accuracy = 1.0 if right else 0.0
    fingerprint = split_fingerprint([p.sha256 for p in posts], [p.label for p in posts])
    metrics = {
        "accuracy": accuracy,
        "top3_accuracy": accuracy,
        "macro_f1": accuracy,
        "n_test": len(posts),
        "test_fingerprint": fingerprint,
        "model_run_id": run_id,
    }
    (reports / "metrics.json").write_text(json.dumps(metrics))
    rows = [
        {"sha256": p.sha256, "label": p.label, "correct": right}
        for p in sorted(posts, key=lambda p: p.sha256)
    ]
    per_image = {"model_run_id": run_id, "test_fingerprint": fingerprint, "images": rows}
    (reports / "evaluate" / "per_image.json").write_text(json.dumps(per_image))
    per_class = {c: {"recall": accuracy} for c in classes}
    (reports / "evaluate" / "per_class.json").write_text(json.dumps(per_class))


def clone_with_trained_run(root, name, model_name, models_src, right, classes):
    """A checkout whose models/, reports/ and test split are what the pipeline wrote for one
    run: the model right on every test photo (`right`) or on none.

    The run is logged (with `models_src` as its model) to the tracking store MLflow is set to.
    Returns the checkout and the run id.
    """
    import mlflow

    from taglens.model.pyfunc import log_taglens_model

    clone = copy_source_tree(root / name)
    write_tiny_params(clone / "params.yaml", {"register.model_name": model_name})
    with mlflow.start_run(run_name=f"train-{name}") as run:
        log_taglens_model(
            models_src, ingest=tiny_params().ingest, max_upload_mb=tiny_params().serve.max_upload_mb
        )
    models = clone / "models"
    shutil.copytree(models_src, models)
    info = json.loads((models / "model_info.json").read_text())
    (models / "model_info.json").write_text(json.dumps({**info, "run_id": run.info.run_id}))
    posts = solid_test_split(clone / "data" / "raw", clone / "data" / "clean", classes)
    write_evidence(clone / "reports", run.info.run_id, posts, classes, right)
    return clone, run.info.run_id
