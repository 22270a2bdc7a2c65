"""MLflow set-up: the local SQLite store, the env override, artifacts beside the database."""

from pathlib import Path

import mlflow

from taglens.tracking import _artifact_location, configure_tracking, local_tracking_uri


def test_artifacts_go_beside_the_sqlite_database(tmp_path):
    uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    assert _artifact_location(uri) == (tmp_path / "store" / "artifacts").as_uri()
    assert _artifact_location("http://127.0.0.1:5000") is None


def test_env_uri_wins_and_the_experiment_is_created_there(tmp_path, monkeypatch, fresh_mlflow):
    workdir = tmp_path / "work"
    workdir.mkdir()
    monkeypatch.chdir(workdir)
    uri = configure_tracking("unit-tracking", store=workdir / "unused")
    assert uri == f"sqlite:///{fresh_mlflow / 'mlflow.db'}"
    experiment = mlflow.get_experiment_by_name("unit-tracking")
    assert experiment.artifact_location == (fresh_mlflow / "artifacts").as_uri()
    assert list(workdir.iterdir()) == []


def test_default_store_is_sqlite_under_mlruns(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.chdir(tmp_path)
    assert local_tracking_uri(Path("mlruns")) == f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
