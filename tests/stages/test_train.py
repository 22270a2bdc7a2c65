"""The train stage on small generated inputs: outputs, MLflow runs, sweeps, baseline, errors."""

from __future__ import annotations

import csv
import json
import logging

import mlflow
import numpy as np
import pytest

from stages import train as train_stage
from taglens.features.store import write_features
from taglens.model.predictor import HashtagPredictor
from taglens.tracking import configure_tracking
from tests.stages.train_fixtures import run_train, small_params, write_inputs


@pytest.fixture
def inputs(tmp_path, tiny_params, monkeypatch):
    monkeypatch.chdir(tmp_path)
    params = small_params(tiny_params, epochs=3)
    return params, write_inputs(tmp_path, params, per_class=10)


def _run(params, paths, **kwargs):
    configure_tracking(params.base.experiment)
    return run_train(params, paths, **kwargs)


@pytest.mark.slow
def test_train_writes_the_served_model_and_logs_the_run(inputs):
    params, paths = inputs
    params = params.model_copy(update={"train": params.train.model_copy(update={"baseline": True})})
    summary = _run(params, paths)

    info = json.loads((paths["out"] / "model_info.json").read_text())
    assert info["classes"] == ["animals", "food", "sports"]
    assert info["image_size"] == 32 and info["backbone"] == "vgg19"
    assert info["run_id"] == summary["run_id"] and info["experiment"] == "taglens"
    assert info["params"]["train.epochs"] == 3

    predictor = HashtagPredictor.from_dir(paths["out"])
    images = np.random.default_rng(0).uniform(0, 255, (5, 32, 32, 3)).astype("float32")
    probs = predictor.probabilities(images)
    assert probs.shape == (5, 3)
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)

    with open(paths["reports"] / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["1.0", "2.0", "3.0"]
    assert set(rows[0]) == {"epoch", "loss", "accuracy", "val_loss", "val_accuracy"}
    assert (paths["reports"] / "history.png").stat().st_size > 1000

    client = mlflow.tracking.MlflowClient()
    run = client.get_run(summary["run_id"])
    assert run.data.params["train.learning_rate"] == "0.001"
    # only the sections train reads (ingest: logged with the model, which checks images with
    # it), and the engine, precision and upload limit the logged model serves with (MLflow
    # shows the model's config as params)
    sections = {key.split(".")[0] for key in run.data.params}
    assert sections == {"base", "model", "train", "hashtags", "ingest", "featurize", "serve"}
    assert run.data.params["serve.max_upload_mb"] == str(params.serve.max_upload_mb)
    served = sorted(k for k in run.data.params if k.startswith("featurize."))
    assert served == ["featurize.engine", "featurize.precision"]
    assert run.data.params["featurize.precision"] == "fp32"
    assert set(info["params"]) <= set(run.data.params)
    tags = run.data.tags
    assert tags["lineage.backbone"] == "vgg19" and tags["lineage.image_size"] == "32"
    assert len(tags["lineage.data.raw"]) == 32 and len(tags["lineage.data_version"]) == 12
    assert {"lineage.data.features", "lineage.data.clean"} <= set(tags)
    assert "lineage.git_commit" not in tags  # MLflow records mlflow.source.git.commit itself
    # the logged model carries the engine it serves on (`mlflow models serve` reads it)
    from taglens.features.engines import ENGINE_PARAM
    from taglens.model.pyfunc import logged_model_uri

    flavor = mlflow.models.get_model_info(logged_model_uri(summary["run_id"])).flavors
    assert flavor["python_function"]["config"][ENGINE_PARAM] == params.featurize.engine
    # ... and the views its model averages, as model_info.json and train.json name them
    written = json.loads((paths["reports"] / "train.json").read_text())
    assert list(predictor.views) == info["views"] == written["views"]["served"]
    assert flavor["python_function"]["config"]["train.views"] == ",".join(info["views"])
    assert info["views"][0] == "image" and set(info["views"]) <= {"image", "flip", "crops"}
    assert ("crops" in info["views"]) == written["views"]["crops"]
    assert run.info.run_name == "train vgg19-32px lr=0.001"
    # The three splits are the run's dataset inputs, identified by the data version
    inputs = {i.dataset.name: i for i in run.inputs.dataset_inputs}
    assert set(inputs) == {"train", "val", "test"}
    contexts = {
        name: {t.key: t.value for t in i.tags}["mlflow.data.context"] for name, i in inputs.items()
    }
    assert contexts == {"train": "training", "val": "validation", "test": "testing"}
    assert {i.dataset.digest for i in inputs.values()} == {tags["lineage.data.clean"]}
    manifest_rows = sum(1 for _ in open(paths["clean"] / "manifest.csv")) - 1
    assert sum(json.loads(i.dataset.profile)["num_rows"] for i in inputs.values()) == manifest_rows
    assert len(client.get_metric_history(run.info.run_id, "val_accuracy")) == 3
    logged = mlflow.search_logged_models(
        filter_string=f"source_run_id = '{run.info.run_id}'", output_format="list"
    )
    assert len(logged) == 1

    baseline = mlflow.get_run(summary["baseline_run_id"])
    assert baseline.info.run_name == "baseline-logreg"
    assert baseline.data.tags["baseline_for"] == summary["run_id"]
    assert 0.0 <= baseline.data.metrics["val_accuracy"] <= 1.0
    # colour-coded classes are linearly separable even through random conv features
    assert summary["baseline_test_accuracy"] >= 0.8
    written = json.loads((paths["reports"] / "train.json").read_text())
    assert written["baseline_run_id"] == summary["baseline_run_id"]
    # train.json (a DVC metrics file) names the one setting that made the model
    assert (written["search"], written["sweep"], written["searched_keys"]) == (False, False, "")
    assert written["chosen"] == {
        "head": "dense",
        "hidden_units": params.train.hidden_units,
        "dropout": params.train.dropout,
        "learning_rate": 0.001,
        "weight_decay": params.train.weight_decay,
        "normalise": params.train.normalise,
        "augment": params.train.augment,
    }
    assert "search_val_accuracy" not in written


@pytest.mark.slow
def test_a_head_that_reads_the_colour_view_is_served_as_it_was_scored(inputs):
    """train.colour: true: the served model computes the colour block from the pixels and feeds
    the head what it was fitted on, so the photos' files give the validation accuracy train.json
    reports from the cached vectors and histograms."""
    import pandas as pd

    from taglens.data.images import load_batch

    params, paths = inputs
    params = params.model_copy(update={"train": params.train.model_copy(update={"colour": True})})
    summary = _run(params, paths)
    written = json.loads((paths["reports"] / "train.json").read_text())
    choice = written["head_colour"]
    assert choice["colour"] is True and choice["why"] == "train.colour is true"
    assert set(choice["val_accuracy"]) == {"vectors", "vectors+colour"}
    assert written["val_accuracy"] == pytest.approx(choice["val_accuracy"]["vectors+colour"])
    run = mlflow.get_run(summary["run_id"])
    assert run.data.params["train.head_colour"] == "True"
    assert run.data.tags["colour_why"] == "train.colour is true"
    assert "val_accuracy_head_vectors_colour" in run.data.metrics
    # the served head's curves: the refit's epochs, beside the chosen setting's
    refit = mlflow.MlflowClient().get_metric_history(summary["run_id"], "colour_refit_val_accuracy")
    with (paths["reports"] / "history.csv").open(newline="") as handle:
        served_curve = [float(row["val_accuracy"]) for row in csv.DictReader(handle)]
    assert [m.step for m in refit] == list(range(1, summary["epochs_run"] + 1))
    assert [m.value for m in refit] == pytest.approx(served_curve)

    predictor = HashtagPredictor.from_dir(paths["out"])
    names = {layer.name for layer in predictor.model.layers}
    assert {"colour", "colour_input", "head_input"} <= names
    manifest = pd.read_csv(paths["clean"] / "manifest.csv")
    val = manifest[manifest["split"] == "val"]
    classes = list(params.base.classes)
    images = load_batch([paths["raw"] / image for image in val["image"]], 32).numpy()
    predicted = predictor.probabilities(images).argmax(axis=1)
    truth = np.array([classes.index(label) for label in val["label"]])
    assert float(np.mean(predicted == truth)) == pytest.approx(written["val_accuracy"])


@pytest.mark.slow
def test_sweep_logs_one_child_per_setting_and_keeps_the_best(inputs):
    params, paths = inputs
    # 18 training images at batch 32 are one optimizer step an epoch: 3 steps leave lr 0.01
    # mid-transient (val loss above the untouched init); 30 let it converge.
    params = params.model_copy(update={"train": params.train.model_copy(update={"epochs": 30})})
    summary = _run(params, paths, sweep={"learning_rate": (1e-9, 0.01), "hidden_units": (0,)})

    children = mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{summary['run_id']}'", output_format="list"
    )
    assert len(children) == 2
    best = max(
        children,
        key=lambda r: (r.data.metrics["best_val_accuracy"], -r.data.metrics["best_val_loss"]),
    )
    parent = mlflow.get_run(summary["run_id"])
    assert parent.data.tags["best_child_run_id"] == best.info.run_id
    info = json.loads((paths["out"] / "model_info.json").read_text())
    assert info["params"]["train.learning_rate"] == float(best.data.params["train.learning_rate"])
    assert info["params"]["train.hidden_units"] == 0
    # a learning rate of 1e-9 cannot move the weights: the other setting must be at least as good
    assert best.data.params["train.learning_rate"] == "0.01"
    # The run holding the model carries the best setting's params, and says it was a sweep
    assert parent.data.params["train.learning_rate"] == "0.01"
    assert parent.data.params["train.hidden_units"] == "0"
    assert parent.info.run_name == "train vgg19-32px sweep of 2"
    # train.json says a sweep chose it, over which keys, and what it chose
    assert (summary["search"], summary["sweep"]) == (False, True)
    assert summary["searched_keys"] == "train.hidden_units,train.learning_rate"
    assert summary["chosen"]["learning_rate"] == 0.01 and summary["chosen"]["hidden_units"] == 0
    assert summary["search_val_accuracy"] == summary["val_accuracy"]


@pytest.mark.slow
def test_fine_tune_trains_the_last_block_and_extends_the_history(inputs):
    params, paths = inputs
    fine = params.train.fine_tune.model_copy(
        update={"enabled": True, "epochs": 1, "learning_rate": 0.001}
    )
    params = params.model_copy(
        update={
            "train": params.train.model_copy(
                update={"fine_tune": fine, "epochs": 2, "early_stopping_patience": 0}
            )
        }
    )
    summary = _run(params, paths)

    with open(paths["reports"] / "history.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["epoch"] for r in rows] == ["1.0", "2.0", "3.0"]  # 2 head epochs + 1 fine-tune
    run = mlflow.get_run(summary["run_id"])
    assert {"fine_tune_loss", "fine_tune_val_accuracy"} <= set(run.data.metrics)

    import keras

    from taglens.features.backbones import build_feature_extractor, preprocess_layer
    from taglens.model.full_model import unfreeze_last_block

    preprocess_layer("none")
    saved = keras.saving.load_model(paths["out"] / "model.keras", compile=False)
    fresh = build_feature_extractor(params.model, params.base.seed)
    backbone = saved.get_layer("vgg19_features").get_layer("vgg19")
    original = fresh.get_layer("vgg19")
    changed = {
        layer.name
        for layer in backbone.layers
        if layer.weights
        and not np.allclose(
            layer.weights[0].numpy(), original.get_layer(layer.name).weights[0].numpy()
        )
    }
    assert changed == {"block5_conv1", "block5_conv2", "block5_conv3", "block5_conv4"}
    assert unfreeze_last_block(fresh, "vgg19") == 4


@pytest.mark.slow
def test_fine_tune_auto_keeps_the_head_when_fine_tuning_does_not_win(inputs):
    """enabled: auto fine-tunes a copy; a step too small to change anything leaves a tie on
    validation, so the head is served, untouched, with its image rankers and drift reference."""
    params, paths = inputs
    fine = params.train.fine_tune.model_copy(
        update={"enabled": "auto", "epochs": 1, "learning_rate": 1e-12}
    )
    params = params.model_copy(
        update={
            "train": params.train.model_copy(
                update={"fine_tune": fine, "epochs": 2, "early_stopping_patience": 0}
            )
        }
    )
    summary = _run(params, paths)

    tuning = summary["fine_tune"]
    assert tuning["served"] == "head"
    assert tuning["val_accuracy"]["fine_tuned"] == tuning["val_accuracy"]["head"]
    assert tuning["val_accuracy"]["head"] == pytest.approx(summary["val_accuracy"])
    assert "the head is served" in tuning["why"]
    with open(paths["reports"] / "history.csv") as handle:
        assert len(list(csv.DictReader(handle))) == 2  # the head's epochs only
    run = mlflow.get_run(summary["run_id"])
    assert run.data.params["train.fine_tune.served"] == "head"
    assert run.data.tags["fine_tune_why"] == tuning["why"]
    assert {"fine_tune_loss", "val_accuracy_head", "val_accuracy_fine_tuned"} <= set(
        run.data.metrics
    )
    assert (paths["out"] / "drift_reference.json").is_file()
    assert "neighbours" in summary["hashtags_val"]["rankers"]  # the image rankers competed

    import keras

    from taglens.features.backbones import build_feature_extractor, preprocess_layer

    preprocess_layer("none")
    saved = keras.saving.load_model(paths["out"] / "model.keras", compile=False)
    backbone = saved.get_layer("vgg19_features").get_layer("vgg19")
    original = build_feature_extractor(params.model, params.base.seed).get_layer("vgg19")
    for layer in (layer for layer in backbone.layers if layer.weights):
        for got, want in zip(layer.weights, original.get_layer(layer.name).weights, strict=True):
            np.testing.assert_array_equal(got.numpy(), want.numpy())


def test_features_from_another_backbone_are_refused(inputs):
    params, paths = inputs
    meta_path = paths["features"] / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["image_size"] = 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="re-run the featurize stage"):
        _run(params, paths)


@pytest.mark.slow
def test_vectors_the_extractor_does_not_reproduce_are_refused(inputs):
    params, paths = inputs
    with np.load(paths["features"] / "features.npz") as npz:
        shas, vectors = npz["sha256"], npz["vectors"]
    write_features(
        paths["features"],
        list(shas),
        vectors * 1.5 + 0.1,
        json.loads((paths["features"] / "meta.json").read_text()),
    )
    with pytest.raises(ValueError, match="does not reproduce the cached features"):
        _run(params, paths)
    assert not (paths["out"] / "model.keras").exists()


def test_main_reports_a_missing_manifest_without_traceback(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code = train_stage.main(
        ["--params", str(_fixture_params()), "--clean", "nowhere", "--features", "nowhere"]
    )
    assert code == 2
    assert "run the featurize stage" in capsys.readouterr().err


def test_main_rejects_a_bad_sweep_argument(capsys):
    assert train_stage.main(["--params", str(_fixture_params()), "--sweep", "colour=red"]) == 2
    assert "KEY one of" in capsys.readouterr().err


def _fixture_params():
    from tests.helpers.params import tiny_params_path

    return tiny_params_path()


@pytest.mark.slow
def test_default_search_picks_on_validation_and_the_served_model_blends_image_rankers(
    inputs, caplog
):
    # Given the default search turned on, one logistic, one kernel and one dense setting
    params, paths = inputs
    counts = {"logreg_candidates": 1, "kernel_candidates": 1, "dense_candidates": 1}
    search = params.train.search.model_copy(update={"enabled": True, **counts})
    params = params.model_copy(
        update={"train": params.train.model_copy(update={"search": search, "epochs": 5})}
    )
    with caplog.at_level(logging.INFO, logger="stages.train"):
        summary = _run(params, paths)

    # Then the log says plainly which train keys the search sets instead of params.yaml
    keys = (
        "augment dropout head hidden_units kernel_c kernel_gamma learning_rate logreg_c "
        "normalise weight_decay"
    )
    searched = ",".join(f"train.{key}" for key in keys.split())
    [note] = [r.getMessage() for r in caplog.records if "train.search is on" in r.getMessage()]
    assert searched.replace(",", ", ") in note and "train.search.enabled=false" in note

    # Then each setting is a child run, and the parent names the one the one-SE rule chose:
    # the simplest (logistic, then kernel, then dense) within one standard error of the best
    children = mlflow.search_runs(
        filter_string=f"tags.mlflow.parentRunId = '{summary['run_id']}'", output_format="list"
    )
    heads = sorted(c.data.params["train.head"] for c in children)
    assert heads == ["dense", "kernel", "logreg"]
    parent = mlflow.get_run(summary["run_id"])
    assert parent.data.tags["search_space"] == "default"
    assert parent.data.tags["selection_rule"] == "one_se"
    accuracy = {c.info.run_id: c.data.metrics["best_val_accuracy"] for c in children}
    top = max(accuracy.values())
    assert parent.data.metrics["search_val_accuracy_max"] == pytest.approx(top)
    se = parent.data.metrics["search_val_accuracy_se"]
    assert se == pytest.approx(np.sqrt(top * (1 - top) / summary["n_val"]))
    chosen = next(c for c in children if c.info.run_id == parent.data.tags["best_child_run_id"])
    assert accuracy[chosen.info.run_id] >= top - se - 1e-9
    near = [c for c in children if accuracy[c.info.run_id] >= top - se - 1e-9]
    near_heads = {c.data.params["train.head"] for c in near}
    simplest = next(head for head in ("logreg", "kernel", "dense") if head in near_heads)
    assert chosen.data.params["train.head"] == simplest
    info = json.loads((paths["out"] / "model_info.json").read_text())
    assert info["params"]["train.head"] == chosen.data.params["train.head"]
    # And train.json says the search ran, over which keys, what it chose and its val score
    assert (summary["search"], summary["sweep"]) == (True, False)
    assert summary["searched_keys"] == searched
    assert summary["chosen"]["head"] == chosen.data.params["train.head"]
    assert summary["search_val_accuracy"] == chosen.data.metrics["best_val_accuracy"]

    # And the hashtag ranking is chosen on validation with popularity and the class mixture as
    # floors, saved, logged and served
    ranking = summary["hashtags_val"]
    blend = ranking["blend_weights"]
    assert set(blend) == {"popularity", "class_mixture", "tag_model", "colour_tags", "neighbours"}
    assert sum(blend.values()) == pytest.approx(1.0)
    assert set(ranking["rankers"]) >= {
        "popularity",
        "class_mixture",
        "tag_model",
        "colour_tags",
        "neighbours",
        "blend",
    }
    choice = ranking["choice"]
    if choice["served"] == "blend":
        for key, floor in choice["floor"].items():
            assert ranking["rankers"]["blend"][key] >= floor - 1e-9, key
            assert parent.data.metrics[f"val_hashtag_blend_{key}"] == pytest.approx(
                ranking["rankers"]["blend"][key]
            )
    else:
        assert len(choice["rankers"]) == 1 and blend[choice["rankers"][0]] == 1.0
    assert parent.data.params["hashtags.served"] == choice["served"]
    predictor = HashtagPredictor.from_dir(paths["out"])
    assert predictor.rankers is not None and predictor.rankers.weights == pytest.approx(blend)
    assert predictor.rankers.choice["served"] == choice["served"]
    images = np.random.default_rng(0).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    outputs = predictor.outputs(images)
    assert outputs["features"].shape == (2, 512) and outputs["colour"].shape == (2, 128)
    result = predictor.predict_pixels(images)
    assert all(item["why"] in ("class", "image") for item in result[0]["hashtags"])


@pytest.mark.slow
def test_int8_features_give_an_int8_served_model_recorded_as_such(inputs):
    # Given features featurize marked INT8, and INT8 settings that keep any INT8 model
    params, paths = inputs
    meta_path = paths["features"] / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "precision": "int8", "engine": "openvino-int8"}))
    int8 = params.featurize.int8.model_copy(
        update={"calibration_images": 8, "validation_images": 8, "max_drop": 0.99}
    )
    featurize = params.featurize.model_copy(update={"engine": "openvino-int8", "int8": int8})
    params = params.model_copy(update={"featurize": featurize})
    # When train runs
    summary = _run(params, paths)
    # Then the served model was quantized, written beside model.keras and recorded as INT8
    assert summary["precision"] == "int8"
    assert (paths["out"] / "model-int8.xml").is_file()
    info = json.loads((paths["out"] / "model_info.json").read_text())
    assert (info["engine"], info["precision"]) == ("openvino-int8", "int8")
    assert info["int8"]["precision"] == "int8" and info["int8"]["max_drop"] == 0.99
    run = mlflow.tracking.MlflowClient().get_run(summary["run_id"])
    assert run.data.tags["precision"] == "int8"
    assert run.data.params["featurize.engine"] == "openvino-int8"
    assert run.data.params["featurize.precision"] == "int8"

    # When the features are FP32 again (INT8 not kept at featurize), with the same params
    meta_path.write_text(json.dumps({**meta, "precision": "fp32", "engine": "openvino"}))
    summary = _run(params, paths)
    # Then the model serves on openvino in FP32 and no stale INT8 model is left behind
    info = json.loads((paths["out"] / "model_info.json").read_text())
    assert (info["engine"], info["precision"], info["int8"]) == ("openvino", "fp32", None)
    assert summary["precision"] == "fp32"
    assert not (paths["out"] / "model-int8.xml").exists()
