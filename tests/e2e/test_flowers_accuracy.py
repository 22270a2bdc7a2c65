"""Transfer learning really learns: real photos and pretrained MobileNet, train to evaluate."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest

from stages import evaluate as evaluate_stage
from stages import train as train_stage
from tests.stages.train_fixtures import small_params, write_inputs

# The settings docs/training.md recommends for small pretrained backbones (measured on this set).
HEAD = {"epochs": 60, "batch_size": 32, "learning_rate": 0.0003, "hidden_units": 512,
        "dropout": 0.5, "label_smoothing": 0.1, "early_stopping_patience": 8,
        "baseline": True}  # fmt: skip


@pytest.mark.slow
def test_flowers_head_beats_070_and_the_logistic_baseline(
    flowers_dir, mobilenet_weights, tiny_params, tmp_path, monkeypatch
):
    monkeypatch.chdir(tmp_path)
    classes = sorted(p.name for p in flowers_dir.iterdir() if p.is_dir())
    rng = np.random.default_rng(0)
    sources = {name: list(rng.permutation(sorted((flowers_dir / name).glob("*.jpg"))))
               for name in classes}  # fmt: skip
    params = small_params(tiny_params, classes, **HEAD)
    params = params.model_copy(update={"model": params.model.model_copy(update={
        "backbone": "mobilenet", "image_size": 128, "weights": str(mobilenet_weights)})})
    paths = write_inputs(tmp_path, params, sources=sources)

    mlflow.set_experiment(params.base.experiment)
    summary = train_stage.run(params, raw=paths["raw"], features=paths["features"],
                              clean=paths["clean"], out=paths["out"], reports=paths["reports"])
    scores = evaluate_stage.run(params, raw=paths["raw"], clean=paths["clean"],
                                models=paths["out"], out=paths["reports"])  # fmt: skip

    print(json.dumps({"test_accuracy": scores["accuracy"], **summary}, indent=1))
    assert scores["n_test"] > 800
    assert scores["accuracy"] >= 0.70
    assert scores["accuracy"] > summary["baseline_test_accuracy"]
    assert scores["top3_accuracy"] > scores["accuracy"]
