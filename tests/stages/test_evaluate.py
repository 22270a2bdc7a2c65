"""The evaluate stage on a model trained from small generated inputs."""

from __future__ import annotations

import csv
import json

import mlflow
import numpy as np
import pytest

from stages import evaluate as evaluate_stage
from taglens.data.images import load_batch
from taglens.model.predictor import HashtagPredictor
from taglens.tracking import configure_tracking
from tests.helpers.params import tiny_params, tiny_params_path
from tests.stages.train_fixtures import run_evaluate, run_train, small_params, write_inputs

REQUIRED = (
    "accuracy",
    "top3_accuracy",
    "macro_f1",
    "hashtag_precision_at_1",
    "hashtag_recall_at_5",
    "hashtag_accuracy_at_5",
    "n_test",
)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    params = small_params(tiny_params(), epochs=4)
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        paths = write_inputs(root, params, per_class=10)
        configure_tracking(params.base.experiment)
        summary = run_train(params, paths)
        scores = run_evaluate(params, paths)
    return params, paths, summary, scores


@pytest.mark.slow
def test_metrics_json_holds_every_required_score(evaluated):
    _, paths, _, scores = evaluated
    written = json.loads((paths["reports"] / "metrics.json").read_text())
    assert written == scores
    for key in REQUIRED:
        assert key in written, key
    assert written["n_test"] == 6  # 2 test images in each of 3 classes
    assert written["hashtag_n"] == 6  # every generated post has caption hashtags
    for key in REQUIRED[:-1]:
        assert 0.0 <= written[key] <= 1.0, key
    assert written["top3_accuracy"] == 1.0  # 3 classes: the true one is always in the top 3
    info = json.loads((paths["out"] / "model_info.json").read_text())
    assert written["model_run_id"] == info["run_id"] and len(info["run_id"]) == 32


@pytest.mark.slow
def test_popularity_baseline_and_split_fingerprint_are_reported(evaluated):
    import pandas as pd

    from taglens.training.metrics import split_fingerprint

    _, paths, _, scores = evaluated
    for key in ("hashtag_precision_at_1", "hashtag_recall_at_5", "hashtag_accuracy_at_5"):
        assert 0.0 <= scores[f"popularity_{key}"] <= 1.0, key
    test = pd.read_csv(paths["clean"] / "manifest.csv").query("split == 'test'")
    fingerprint = split_fingerprint(list(test["sha256"]), list(test["label"]))
    assert scores["test_fingerprint"] == fingerprint


@pytest.mark.slow
def test_accuracy_is_what_the_served_model_computes(evaluated):
    _, paths, _, scores = evaluated
    import pandas as pd

    test = pd.read_csv(paths["clean"] / "manifest.csv").query("split == 'test'")
    predictor = HashtagPredictor.from_dir(paths["out"])
    pixels = load_batch([paths["raw"] / image for image in test["image"]], 32).numpy()
    predicted = [predictor.classes[i] for i in predictor.probabilities(pixels).argmax(axis=1)]
    assert scores["accuracy"] == pytest.approx(np.mean(np.array(predicted) == test["label"]))
    with open(paths["reports"] / "confusion.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["actual"] for row in rows] == list(test["label"])
    assert [row["predicted"] for row in rows] == predicted


@pytest.mark.slow
def test_per_image_results_are_the_gates_evidence(evaluated):
    from taglens.lifecycle.evaluation import read_evaluation

    _, paths, _, scores = evaluated
    plots = paths["reports"] / "evaluate"
    record = json.loads((plots / "per_image.json").read_text())
    rows = record["images"]
    with open(paths["reports"] / "confusion.csv") as handle:
        confusion = list(csv.DictReader(handle))
    # one row per test image, ordered by sha256, right exactly where the prediction is the label
    assert len(rows) == scores["n_test"] == len(confusion)
    assert [row["sha256"] for row in rows] == sorted(row["sha256"] for row in rows)
    assert all(row["correct"] == (row["predicted"] == row["label"]) for row in rows)
    assert sorted((r["label"], r["predicted"]) for r in rows) == sorted(
        (r["actual"], r["predicted"]) for r in confusion
    )
    assert sum(row["correct"] for row in rows) / len(rows) == pytest.approx(scores["accuracy"])
    assert record["model_run_id"] == scores["model_run_id"]
    assert record["test_fingerprint"] == scores["test_fingerprint"]
    # register reads all of it back without finding anything amiss
    evaluation = read_evaluation(
        paths["reports"] / "metrics.json", plots / "per_class.json", plots / "per_image.json"
    )
    assert evaluation.correct == {row["sha256"]: row["correct"] for row in rows}


@pytest.mark.slow
def test_plots_and_per_class_scores_are_written_and_logged(evaluated):
    _, paths, summary, scores = evaluated
    plots = paths["reports"] / "evaluate"
    for name in ("confusion.png", "confusion_normalized.png", "curves.png", "misclassified.png"):
        assert (plots / name).stat().st_size > 2000, name
    per_class = json.loads((plots / "per_class.json").read_text())
    assert sorted(per_class) == ["animals", "food", "sports"]
    assert sum(row["support"] for row in per_class.values()) == 6
    assert np.mean([row["f1"] for row in per_class.values()]) == pytest.approx(scores["macro_f1"])

    run = mlflow.get_run(summary["run_id"])
    assert run.data.metrics["test_accuracy"] == pytest.approx(scores["accuracy"])
    assert "test_recall_food" in run.data.metrics
    artifacts = {
        a.path for a in mlflow.MlflowClient().list_artifacts(summary["run_id"], "evaluate")
    }
    assert "evaluate/confusion.png" in artifacts and "evaluate/per_class.json" in artifacts
    assert "evaluate/misclassified.png" not in artifacts  # photos stay out (base.log_photos)


def test_main_without_a_model_explains_what_to_run(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = evaluate_stage.main(["--params", str(tiny_params_path()), "--models", "none"])
    assert code == 2
    assert "run the train stage" in capsys.readouterr().err
