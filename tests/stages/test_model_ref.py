"""The model reference: one set of rules for which model a job or server uses and reports."""

from __future__ import annotations

import json

import mlflow
import numpy as np
import pytest

from taglens.features.engines import EngineModel
from taglens.model.predictor import HashtagPredictor
from taglens.serving import model_ref
from taglens.serving.model_ref import ModelNotFoundError, ModelRef, ResolvedModel


def test_a_local_models_dir_is_used_as_is_and_reported_unregistered(tiny_models_dir, monkeypatch):
    # given a models/ directory, named relative to the working directory
    monkeypatch.chdir(tiny_models_dir.parent)
    # when it is resolved (no MLflow store is configured or needed)
    resolved = model_ref.resolve("models", "taglens")
    # then it is that directory, absolute, outside the registry
    local = str(tiny_models_dir.resolve())
    version = model_ref.local_version(tiny_models_dir)
    assert resolved == ResolvedModel(local, ModelRef(local, version))
    assert resolved.is_local and version.startswith("unregistered@") and len(version) == 25


def test_a_retrained_models_dir_is_another_version(tiny_models_dir, tmp_path):
    # given a models/ directory as train writes it, and the same folder after a retrain
    import shutil

    folder = shutil.copytree(tiny_models_dir, tmp_path / "retrained")
    before = model_ref.resolve(str(folder), "taglens").ref
    info = json.loads((folder / "model_info.json").read_text())
    (folder / "model_info.json").write_text(json.dumps({**info, "run_id": "f" * 32}))
    # then batch predict's resume key and the page see another version
    after = model_ref.resolve(str(folder), "taglens").ref
    assert after == ModelRef(str(folder.resolve()), "unregistered@ffffffffffff") != before
    # and a folder whose model_info.json names no run is told apart by its content
    del info["run_id"]
    (folder / "model_info.json").write_text(json.dumps(info))
    assert model_ref.resolve(str(folder), "taglens").ref.version.startswith("unregistered@")


def test_a_folder_without_a_model_or_another_uri_is_not_local(tmp_path):
    assert model_ref.local_models_dir(str(tmp_path)) is None
    assert model_ref.local_models_dir(None) is None
    resolved = model_ref.resolve("runs:/abc/model", "taglens")
    assert resolved == ResolvedModel("runs:/abc/model", ModelRef("runs:/abc/model", "unregistered"))
    assert not resolved.is_local


def test_the_champion_alias_is_pinned_to_its_version_when_resolved(tiny_champion):
    # given the champion is version 1
    name, version, _ = tiny_champion
    resolved = model_ref.resolve(None, name)
    # when another version is promoted while a job runs
    client = mlflow.MlflowClient()
    second = mlflow.register_model(f"models:/{name}/{version}", name)
    client.set_registered_model_alias(name, "champion", second.version)
    # then the job keeps the version it resolved; a new job gets the new champion
    assert resolved == ResolvedModel(f"models:/{name}/1", ModelRef(name, "1"))
    assert model_ref.resolve(f"models:/{name}@champion", name).ref == ModelRef(name, "2")
    assert model_ref.resolve(f"models:/{name}/1", name).uri == f"models:/{name}/1"


def test_missing_versions_and_aliases_say_what_to_do(tiny_champion):
    name, _, _ = tiny_champion
    with pytest.raises(ModelNotFoundError, match=rf"no version 99 for registered model '{name}'"):
        model_ref.resolve(f"models:/{name}/99", name)
    with pytest.raises(ModelNotFoundError, match=r"no challenger yet .* run `dvc repro`"):
        model_ref.resolve(f"models:/{name}@challenger", name)


@pytest.mark.parametrize("engine", ["tensorflow", "openvino"])
def test_load_runs_the_model_on_the_engine(engine, tiny_champion, tiny_models_dir):
    name, version, _ = tiny_champion
    pixels = np.random.default_rng(0).uniform(0, 255, (3, 32, 32, 3)).astype(np.float32)
    reference = HashtagPredictor.from_dir(tiny_models_dir).probabilities(pixels)
    for uri in (str(tiny_models_dir), f"models:/{name}/{version}"):
        predictor = model_ref.load(uri, engine)
        assert isinstance(predictor.model, EngineModel) and predictor.model.engine == engine
        assert np.allclose(predictor.probabilities(pixels), reference, atol=1e-4)


@pytest.mark.parametrize(
    ("uri", "follows"),
    [
        (None, True),
        ("models:/taglens@champion", True),
        ("models:/taglens@challenger", True),
        ("models:/taglens/3", False),
        ("models:/m-0123abcd", False),
        ("runs:/abc/model", False),
        ("models", False),
    ],
)
def test_only_an_alias_can_come_to_name_another_model(uri, follows):
    assert model_ref.follows_alias(uri) is follows
