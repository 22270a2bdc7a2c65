"""Which lock guards a registry, and the MLflow-server lock's refusal, time-out and unlock."""

from __future__ import annotations

import pytest

from taglens.lifecycle import registry as rl


def test_the_lock_follows_where_the_registry_lives(tmp_path):
    history = tmp_path / "reports" / "promotions.jsonl"
    local = rl.registry_lock("sqlite:////srv/mlruns/mlflow.db", "taglens", history, environ={})
    remote = rl.registry_lock("http://mlflow.team:5000", "taglens", history, environ={})
    advisory = rl.registry_lock(
        "http://mlflow.team:5000",
        "taglens",
        history,
        environ={rl.LOCK_DB_ENV: "postgresql://db.team/mlflow"},
    )
    assert local.func.__name__ == "file_lock"
    assert local.args[0].as_posix() == "/srv/mlruns/registry.lock"
    assert remote.func.__name__ == "mlflow_lock" and remote.args[0] == "taglens"
    assert advisory.func.__name__ == "advisory_lock" and advisory.args[:2] == (
        "postgresql://db.team/mlflow",
        "taglens",
    )


def test_advisory_keys_are_stable_signed_64_bit_and_per_model():
    key = rl.advisory_key("taglens")
    assert key == rl.advisory_key("taglens") != rl.advisory_key("other")
    assert -(2**63) <= key < 2**63
    assert rl._psycopg_uri("postgresql+psycopg://u@h:5/db") == "postgresql://u@h:5/db"


@pytest.mark.slow
def test_a_left_lock_times_out_naming_its_holder_until_unlocked(fresh_mlflow):
    import mlflow

    client = mlflow.MlflowClient()
    # Given a lock whose holder was killed (the lock model is still there)
    client.create_registered_model("taglens.lock", tags={"host": "gone", "pid": "4242"})
    # Then taking it times out with the holder and the way out
    with pytest.raises(rl.RegistryError, match='"pid": "4242".*taglens registry unlock'):
        with rl.mlflow_lock("taglens", timeout=1.0):
            pass
    # And after unlock it is taken and released again
    assert rl.unlock("taglens") is True and rl.unlock("taglens") is False
    with rl.mlflow_lock("taglens", timeout=5.0):
        [held] = client.search_registered_models("name = 'taglens.lock'")
        assert held.tags["pid"].isdigit()
    assert not client.search_registered_models("name = 'taglens.lock'")


def test_runs_name_their_entry_point_and_sources_relative_to_the_checkout(tmp_path, monkeypatch):
    import sys

    from taglens import tracking

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "argv", [str(tmp_path / "stages" / "train.py"), "--x"])
    tracking._relative_source_name()
    assert sys.argv == ["stages/train.py", "--x"]
    monkeypatch.setattr(sys, "argv", ["/opt/venv/bin/taglens", "train"])
    tracking._relative_source_name()
    assert sys.argv[0] == "taglens"
    assert tracking.source_path(tmp_path / "data" / "clean" / "manifest.csv") == (
        "data/clean/manifest.csv"
    )
    assert tracking.source_path("data/clean/manifest.csv") == "data/clean/manifest.csv"
    assert tracking.source_path("/elsewhere/manifest.csv") == "manifest.csv"


def test_registry_errors_name_the_store_without_its_password(monkeypatch):
    import mlflow
    from mlflow.exceptions import MlflowException

    # Given a registry reached with a password in its URI, which the stage's stderr and the
    # training flow's run log would show
    monkeypatch.setattr(
        mlflow, "get_registry_uri", lambda: "postgresql://taglens:s3cret@db.team:5432/mlflow"
    )
    # When a read fails, or taking the lock fails for another reason than a holder
    unreadable = rl.Registry._unreadable("taglens@champion", RuntimeError("connection refused"))

    class Refusing:
        def create_registered_model(self, *args, **kwargs):
            raise MlflowException("permission denied", error_code="PERMISSION_DENIED")

    monkeypatch.setattr(mlflow, "MlflowClient", Refusing)
    with pytest.raises(rl.RegistryError) as refused:
        with rl.mlflow_lock("taglens", timeout=1.0):
            pass
    # Then both name the store, and neither its password
    for message in (str(unreadable), str(refused.value)):
        assert "postgresql://***@db.team:5432/mlflow" in message
        assert "s3cret" not in message
