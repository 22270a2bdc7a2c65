"""The register stage: versions, the gate through MLflow, history, idempotence, races, admin CLI."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading

import mlflow
import pytest

from stages import register
from taglens import lineage
from taglens.lifecycle.gate import Evaluation, NotComparableError
from taglens.lifecycle.promotion import promote, register_model
from taglens.lifecycle.registry import Registry
from taglens.model.pyfunc import log_taglens_model, logged_model_uri
from taglens.tracking import configure_tracking
from taglens.training.metrics import split_fingerprint
from tests.helpers.params import tiny_params, tiny_params_path
from tests.helpers.tinymodels import build_tiny_models

CLASSES = [
    "animals",
    "art",
    "fashion",
    "fitness",
    "flowers",
    "food",
    "instagood",
    "nature",
    "selfie",
    "sports",
]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One MLflow store for this module (a fresh one costs seconds); tests use their own names."""
    path = tmp_path_factory.mktemp("register_store")
    before = os.environ["MLFLOW_TRACKING_URI"]
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{path / 'mlflow.db'}"
    configure_tracking(tiny_params().base.experiment, store=path)
    yield path
    os.environ["MLFLOW_TRACKING_URI"] = before
    mlflow.set_tracking_uri(before)
    mlflow.set_registry_uri(before)


@pytest.fixture(scope="module")
def models_template(tmp_path_factory):
    return build_tiny_models(tmp_path_factory.mktemp("tiny") / "models", tiny_params())


@pytest.fixture
def params(tiny_params, request):
    """The tiny params with a registered-model name of this test's own."""
    name = "t_" + request.node.name.removeprefix("test_")[:40]
    return tiny_params.model_copy(
        update={"register": tiny_params.register.model_copy(update={"model_name": name})}
    )


def evidence(accuracy: float, n_test: int, split: str, run_id: str) -> dict:
    """What evaluate writes for a model right on the first `accuracy * n_test` images of a split.

    The images of split `split` are named by it, so two splits share no image; the models are
    nested (a better one is right wherever a worse one is), so gains are clear-cut.
    """
    names = [hashlib.sha256(f"{split}-{i}".encode()).hexdigest() for i in range(n_test)]
    labels = [CLASSES[i % len(CLASSES)] for i in range(n_test)]
    right = round(accuracy * n_test)
    correct = {name: i < right for i, name in enumerate(names)}
    fingerprint = split_fingerprint(names, labels)
    rows = [
        {"sha256": name, "label": label, "correct": correct[name]}
        for name, label in sorted(zip(names, labels, strict=True))
    ]
    metrics = {
        "accuracy": right / n_test,
        "macro_f1": accuracy - 0.05,
        "n_test": n_test,
        "test_fingerprint": fingerprint,
        "model_run_id": run_id,
    }
    per_image = {"model_run_id": run_id, "test_fingerprint": fingerprint, "images": rows}
    return {"metrics": metrics, "per_image": per_image, "correct": correct}


# Each train run's model, right or wrong on each image of each split (what re-scoring finds)
SCORED: dict[str, dict] = {}


def rescore_from_scored(version, classes: list[str], split: str = "w1") -> Evaluation:
    """A ChampionRescorer: the registered version's model scored on `split` (as SCORED says)."""
    run = version.tags.get("lineage.run_id") or version.run_id
    accuracy, recall, n_test = SCORED[run]
    found = evidence(accuracy, n_test, split, run)
    return Evaluation(found["metrics"], dict.fromkeys(CLASSES, recall), found["correct"])


@pytest.fixture
def make_run(store, models_template, tmp_path):
    """A train run with the tiny model logged, its models/ dir and evaluate's reports."""
    counter = iter(range(1000))

    def make(accuracy: float, recall: float = 0.8, n_test: int = 100, split: str = "w1"):
        n = next(counter)
        work = tmp_path / f"run{n}"
        models = work / "models"
        shutil.copytree(models_template, models)
        with mlflow.start_run() as run:
            log_taglens_model(
                models, ingest=tiny_params().ingest, max_upload_mb=tiny_params().serve.max_upload_mb
            )
            # what the train stage tags its run with (stages/train.py)
            mlflow.set_tags(
                lineage.as_tags(
                    {"backbone": "tiny", "data.raw": f"{n:032x}", "data_version": f"{n:012x}"}
                )
            )
        info = json.loads((models / "model_info.json").read_text())
        info["run_id"] = run.info.run_id
        (models / "model_info.json").write_text(json.dumps(info))
        SCORED[run.info.run_id] = (accuracy, recall, n_test)
        write_evidence(work / "reports", evidence(accuracy, n_test, split, run.info.run_id))
        per_class = {c: {"precision": 0.5, "recall": recall, "f1": 0.5} for c in CLASSES}
        (work / "reports" / "evaluate" / "per_class.json").write_text(json.dumps(per_class))
        return models, work / "reports"

    return make


def write_evidence(reports, found: dict) -> None:
    """metrics.json and evaluate/per_image.json in `reports`."""
    (reports / "evaluate").mkdir(parents=True, exist_ok=True)
    (reports / "metrics.json").write_text(json.dumps(found["metrics"]))
    (reports / "evaluate" / "per_image.json").write_text(json.dumps(found["per_image"]))


def _alias(alias: str, name: str = "taglens") -> str:
    return str(mlflow.MlflowClient().get_model_version_by_alias(name, alias).version)


def _register(params, models, reports, history):
    return register.run(
        params.register,
        models=models,
        metrics=reports / "metrics.json",
        out=reports / "register.json",
        history=history,
        rescorer=rescore_from_scored,
    )


def test_first_model_becomes_champion_and_rerun_adds_nothing(params, make_run, tmp_path):
    history = tmp_path / "promotions.jsonl"
    models, reports = make_run(0.5)

    first = _register(params, models, reports, history)
    again = _register(params, models, reports, history)

    assert first.version == "1" and first.decision == "champion" and first.record["created"]
    assert first.record["score"] == 0.5 and first.record["compared_with"] is None
    assert json.loads((reports / "register.json").read_text()) == again.record  # the last run
    assert first.summary() == f"{params.register.model_name} version 1: champion ({first.reason})"
    assert first.reason.startswith("first model: accuracy 0.5000 >= min_score")
    assert again.version == "1" and again.record["created"] is False
    assert again.decision == "champion"
    registry = Registry(params.register.model_name, history)
    assert [str(v.version) for v in registry.versions()] == ["1"]
    assert len(registry.history()) == 1
    tags = registry.version(1).tags
    assert tags["metric.accuracy"] == "0.5" and tags["recall.food"] == "0.8"
    assert tags["lineage.run_id"] == first.record["run_id"] and tags["lineage.backbone"] == "tiny"
    # the version carries its run's lineage record, under the same tag names
    run_id = first.record["run_id"]
    run_tags = mlflow.get_run(run_id).data.tags
    assert lineage.from_tags(tags) == {**lineage.from_tags(run_tags), "run_id": run_id}
    assert tags["lineage.data_version"] == run_tags["lineage.data_version"] == f"{0:012x}"
    run = mlflow.get_run(first.record["run_id"])
    assert run.data.tags["register.version"] == "1"


@pytest.mark.slow
def test_history_after_several_registrations(params, make_run, tmp_path):
    history = tmp_path / "promotions.jsonl"
    results = [
        _register(params, *make_run(accuracy, recall), history)
        for accuracy, recall in [(0.5, 0.8), (0.4, 0.8), (0.7, 0.8), (0.9, 0.3)]
    ]

    assert [r.decision for r in results] == ["champion", "challenger", "champion", "challenger"]
    assert [r.record["compared_with"] for r in results] == [None, "1", "1", "3"]
    assert "does not beat" in results[1].reason
    assert "recall drops" in results[3].reason and "food" in results[3].reason
    rows = Registry(params.register.model_name, history).history()
    assert [(r["event"], r["version"], r["champion"]) for r in rows] == [
        ("register", "1", "1"),
        ("register", "2", "1"),
        ("register", "3", "3"),
        ("register", "4", "3"),
    ]
    assert rows[2]["score"] == 0.7 and rows[2]["champion_score"] == 0.5
    assert all(r["time"] and r["reason"] for r in rows)
    client = mlflow.MlflowClient()
    assert _alias("champion", params.register.model_name) == "3"
    assert _alias("challenger", params.register.model_name) == "4"
    tags = client.get_model_version(params.register.model_name, "4").tags
    assert tags["decision"] == "challenger" and tags["decision.compared_with"] == "3"
    assert float(tags["decision.champion_score"]) == 0.7


@pytest.mark.slow
def test_rollback_and_promote_by_hand_record_reasons(tiny_params, make_run, tmp_path, capsys):
    history = tmp_path / "promotions.jsonl"
    for accuracy in (0.5, 0.6, 0.4):
        _register(tiny_params, *make_run(accuracy), history)
    cli = ["--params", str(tiny_params_path()), "--history", str(history)]
    client = mlflow.MlflowClient()

    assert register.main(["rollback", "--reason", "v2 misfires on selfies", *cli]) == 0
    assert _alias("champion") == "1"
    assert register.main(["rollback", "--reason", "again", *cli]) == 2
    assert "nothing to roll back to" in capsys.readouterr().err
    assert register.main(["promote", "3", "--reason", "better on new data", *cli]) == 0
    assert _alias("champion") == "3"
    assert register.main(["promote", "9", "--reason", "x", *cli]) == 2
    assert "has no version 9" in capsys.readouterr().err

    rows = Registry("taglens", history).history()
    assert [(r["event"], r["version"], r.get("previous")) for r in rows[3:]] == [
        ("rollback", "1", "2"),
        ("promote", "3", "1"),
    ]
    assert rows[3]["reason"] == "v2 misfires on selfies" and rows[4]["user"]
    assert client.get_model_version("taglens", "2").tags["rolled_back"] == "v2 misfires on selfies"
    capsys.readouterr()
    assert register.main(["list", *cli]) == 0
    listing = capsys.readouterr().out.splitlines()
    assert listing[0].split()[:3] == ["version", "aliases", "accuracy"]
    assert listing[3].split()[:3] == ["3", "champion", "0.4"]


@pytest.mark.slow
def test_racing_registrations_keep_the_best_champion(params, make_run, tmp_path):
    history = tmp_path / "promotions.jsonl"
    _register(params, *make_run(0.5), history)
    runs = [make_run(accuracy) for accuracy in (0.7, 0.9, 0.6)]
    errors: list[BaseException] = []

    def go(models, reports):
        try:
            _register(params, models, reports, history)
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=go, args=run) for run in runs]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)

    assert errors == []
    client = mlflow.MlflowClient()
    champion = client.get_model_version_by_alias(params.register.model_name, "champion")
    assert champion.tags["metric.accuracy"] == "0.9"
    rows = Registry(params.register.model_name, history).history()
    assert len(rows) == 4 and len({r["version"] for r in rows}) == 4
    # each decision saw the champion left by the one before it: the lock serialized them
    for before, after in zip(rows, rows[1:], strict=False):
        assert after.get("compared_with") == before["champion"]


def test_user_errors_are_one_line(tiny_params, make_run, tmp_path, capsys):
    models, reports = make_run(0.5)
    info = json.loads((models / "model_info.json").read_text())
    metrics = json.loads((reports / "metrics.json").read_text())
    args = [
        "--params",
        str(tiny_params_path()),
        "--models",
        str(models),
        "--metrics",
        str(reports / "metrics.json"),
        "--out",
        str(reports / "register.json"),
    ]

    (reports / "metrics.json").write_text(json.dumps({**metrics, "accuracy": None}))
    assert register.main(args) == 2
    assert "'accuracy' is not a number" in capsys.readouterr().err
    (models / "model_info.json").write_text(json.dumps({**info, "run_id": None}))
    assert register.main(args) == 2
    assert "has no run_id" in capsys.readouterr().err
    (models / "model_info.json").write_text(json.dumps({**info, "run_id": "0" * 32}))
    write_evidence(reports, evidence(0.9, 100, "w1", "0" * 32))
    assert register.main(args) == 2
    assert "not found" in capsys.readouterr().err
    assert not (reports / "register.json").exists()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"test_fingerprint": None}, "has no test_fingerprint"),
        ({"model_run_id": None}, "names no model_run_id"),
        ({"model_run_id": "f" * 32}, "holds the metrics of train run ffff"),
        ({"accuracy": 0.99}, "but accuracy is 0.99"),
    ],
    ids=["no-fingerprint", "no-run-id", "other-run", "edited"],
)
def test_unproven_metrics_refused(change, words, params, make_run, tmp_path, monkeypatch, capsys):
    """A hand-made, old or edited metrics.json registers nothing, against a champion or not."""
    history = tmp_path / "promotions.jsonl"
    _register(params, *make_run(0.5), history)
    models, reports = make_run(0.9)
    metrics = json.loads((reports / "metrics.json").read_text())
    metrics = {k: v for k, v in {**metrics, **change}.items() if v is not None}
    (reports / "metrics.json").write_text(json.dumps(metrics))
    monkeypatch.setattr("taglens.params.load_params", lambda _path: params)
    args = ["--params", str(tiny_params_path()), "--models", str(models)]
    args += ["--metrics", str(reports / "metrics.json"), "--out", str(reports / "register.json")]
    args += ["--history", str(history)]
    # the last run's decision, which DVC leaves in place (a persisted output)
    (reports / "register.json").write_text('{"decision": "champion", "version": "1"}')
    capsys.readouterr()

    assert register.main(args) == 2

    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and words in err and "evaluate" in err, err
    registry = Registry(params.register.model_name, history)
    assert [str(v.version) for v in registry.versions()] == ["1"]
    assert len(registry.history()) == 1 and not (reports / "register.json").exists()


def _second_killed_in(method: str, params, make_run, history, monkeypatch):
    """A champion scoring 0.5, then a run scoring 0.7 registered until the registry's `method`
    is called, where the process is killed; returns that run."""

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("killed")

    _register(params, *make_run(0.5), history)
    second = make_run(0.7)
    with monkeypatch.context() as patch:
        patch.setattr(Registry, method, crash)
        with pytest.raises(KeyboardInterrupt):
            _register(params, *second, history)
    return second


def test_crash_after_moving_the_alias_is_finished_by_the_rerun(
    params, make_run, tmp_path, monkeypatch
):
    history = tmp_path / "promotions.jsonl"
    better = _second_killed_in("record", params, make_run, history, monkeypatch)
    name = params.register.model_name
    assert _alias("champion", name) == "2"  # the alias moved, the decision is not committed
    assert "decision" not in mlflow.MlflowClient().get_model_version(name, "2").tags

    result = _register(params, *better, history)

    assert result.version == "2" and result.decision == "champion"
    assert result.record["compared_with"] == "1" and result.record["champion_score"] == 0.5
    rows = Registry(name, history).history()
    assert [(r["version"], r["compared_with"]) for r in rows] == [("1", None), ("2", "1")]


def test_a_decision_left_pending_is_made_again_once_a_later_model_took_the_champion(
    params, make_run, tmp_path, monkeypatch
):
    # Given version 2 decided champion against version 1, killed before the alias moved
    history = tmp_path / "promotions.jsonl"
    second = _second_killed_in("crown", params, make_run, history, monkeypatch)
    name = params.register.model_name
    tags = mlflow.MlflowClient().get_model_version(name, "2").tags
    assert tags["decision.alias"] == "champion" and "decision" not in tags
    # and version 3, better than both, crowned meanwhile
    assert _register(params, *make_run(0.95), history).decision == "champion"
    assert _alias("champion", name) == "3"

    # When version 2's register runs again
    result = _register(params, *second, history)

    # Then it is gated against the champion of now, not replayed against version 1
    assert result.version == "2" and result.decision == "challenger"
    assert result.record["compared_with"] == "3"
    assert _alias("champion", name) == "3"


@pytest.mark.parametrize("failing", ["get_model_version_by_alias", "search_model_versions"])
def test_registry_error_promotes_nothing(failing, params, make_run, tmp_path, monkeypatch, capsys):
    """An MLflow error during register (here the store failing) promotes nothing."""
    from mlflow.exceptions import MlflowException
    from mlflow.store.model_registry.sqlalchemy_store import SqlAlchemyStore

    history = tmp_path / "promotions.jsonl"
    _register(params, *make_run(0.5), history)
    models, reports = make_run(0.9)  # would clearly win
    name = params.register.model_name
    args = [
        "--params",
        str(tiny_params_path()),
        "--models",
        str(models),
        "--metrics",
        str(reports / "metrics.json"),
        "--out",
        str(reports / "register.json"),
        "--history",
        str(history),
    ]
    monkeypatch.setattr("taglens.params.load_params", lambda _path: params)

    def store_down(self, *args, **kwargs):
        raise MlflowException("(sqlite3.OperationalError) database is locked", "INTERNAL_ERROR")

    capsys.readouterr()
    with monkeypatch.context() as patch:
        patch.setattr(SqlAlchemyStore, failing, store_down)
        assert register.main(args) == 2

    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "database is locked" in err
    assert "nothing was registered or promoted" in err
    registry = Registry(name, history)
    assert [str(v.version) for v in registry.versions()] == ["1"]
    assert _alias("champion", name) == "1"
    assert len(registry.history()) == 1
    assert not (reports / "register.json").exists()


def test_only_a_missing_alias_means_no_champion(params, make_run, tmp_path):
    registry = Registry(params.register.model_name, tmp_path / "promotions.jsonl")
    assert registry.alias("champion") is None  # no registered model yet
    _register(params, *make_run(0.5), tmp_path / "promotions.jsonl")
    assert registry.alias("challenger") is None  # a model, but no such alias
    assert str(registry.alias("champion").version) == "1"


def _rescoring(params, make_run, tmp_path, rescore):
    history = tmp_path / "promotions.jsonl"
    _register(params, *make_run(0.9, split="w1"), history)  # champion, on last week's test
    models, reports = make_run(0.7, recall=0.8, split="w2")
    info = json.loads((models / "model_info.json").read_text())
    candidate = Evaluation(
        json.loads((reports / "metrics.json").read_text()),
        dict.fromkeys(CLASSES, 0.8),
        evidence(0.7, 100, "w2", info["run_id"])["correct"],
    )
    registry = Registry(params.register.model_name, history)
    uri = logged_model_uri(info["run_id"])
    return register_model(
        registry, uri, info["run_id"], candidate, params.register, rescore=rescore
    )


def test_the_champion_is_rescored_on_this_test_set_and_paired(params, make_run, tmp_path):
    seen = []

    def rescore(version):
        seen.append(str(version.version))
        found = evidence(0.6, 100, "w2", "champion")
        return Evaluation(found["metrics"], dict.fromkeys(CLASSES, 0.75), found["correct"])

    result = _rescoring(params, make_run, tmp_path, rescore)

    # recorded 0.9 on other images would have won; on the same images the champion scores 0.6
    assert seen == ["1"]
    assert result["decision"] == "champion" and result["champion_score"] == 0.6
    assert result["score"] == 0.7 and result["champion_rescored"] is True
    fingerprint = evidence(0.7, 100, "w2", "")["metrics"]["test_fingerprint"]
    assert result["test_fingerprint"] == fingerprint
    # nested models: 10 images right only for the new one, none only for the champion
    # p = P(X >= 10 | 10, 1/2) = 2^-10
    assert (result["challenger_only"], result["champion_only"], result["n_paired"]) == (10, 0, 100)
    assert result["p_value"] == pytest.approx(2**-10) and result["difference"] == 0.1
    assert result["ci_low"] < 0.1 < result["ci_high"]
    assert "McNemar exact p = 0.000977" in result["reason"]
    tags = mlflow.MlflowClient().get_model_version(params.register.model_name, "2").tags
    assert tags["decision.test_fingerprint"] == str(fingerprint)
    assert tags["decision.champion_rescored"] == "True"
    assert float(tags["decision.champion_score"]) == 0.6 and float(tags["decision.score"]) == 0.7
    assert float(tags["decision.p_value"]) == pytest.approx(2**-10)
    assert tags["decision.challenger_only"] == "10" and tags["decision.champion_only"] == "0"
    row = Registry(params.register.model_name, tmp_path / "promotions.jsonl").history()[-1]
    assert (row["score"], row["champion_score"], row["test_fingerprint"]) == (0.7, 0.6, fingerprint)
    assert row["champion_rescored"] is True and row["compared_with"] == "1"
    assert row["p_value"] == result["p_value"] and row["ci_low"] == result["ci_low"]
    assert row["reason"] == result["reason"]


def test_a_one_photo_gain_is_recorded_and_refused(params, make_run, tmp_path):
    history = tmp_path / "promotions.jsonl"
    _register(params, *make_run(0.70, n_test=500), history)
    result = _register(params, *make_run(0.702, n_test=500), history)

    assert result.decision == "challenger" and result.record["champion"] == "1"
    assert result.reason.startswith("not significant: accuracy 0.7020 beats champion's 0.7000")
    assert result.record["p_value"] == 0.5 and result.record["challenger_only"] == 1
    registry = Registry(params.register.model_name, history)
    assert registry.history()[-1]["p_value"] == 0.5
    # promoting by hand still overrides the gate, recorded as a manual decision
    promote(registry, "2", "checked the 500 photos by hand")
    assert _alias("champion", params.register.model_name) == "2"
    tags = registry.version(2).tags
    assert tags["decision"] == "champion"
    assert tags["decision.reason"] == "manual: checked the 500 photos by hand"
    assert float(tags["decision.p_value"]) == 0.5  # the gate's verdict stays on the version
    last = registry.history()[-1]
    assert (last["event"], last["version"], last["previous"]) == ("promote", "2", "1")


def test_a_champion_that_cannot_be_scored_is_not_comparable(params, make_run, tmp_path):
    def rescore(version):
        raise NotComparableError(f"champion version {version.version} predicts other classes")

    result = _rescoring(params, make_run, tmp_path, rescore)

    assert result["decision"] == "challenger" and result["champion"] == "1"
    assert result["reason"].startswith("not comparable: champion version 1 predicts other")
    assert "promote by hand" in result["reason"]
    assert result["p_value"] is None


@pytest.mark.parametrize(
    ("failure", "expected"),
    [
        ("store down", "RegistryError"),
        (ConnectionError("the artifact store reset the connection"), "RegistryError"),
        (MemoryError(), "RegistryError"),
        ("engine missing", "RegistryError"),
        ("engine cannot convert", "NotComparableError"),
        ("format", "NotComparableError"),
    ],
    ids=["store down", "network", "memory", "engine missing", "unconvertible", "not taglens"],
)
def test_only_the_champion_itself_makes_it_not_comparable(
    failure, expected, params, make_run, tmp_path, monkeypatch
):
    from mlflow.exceptions import MlflowException
    from mlflow.protos.databricks_pb2 import TEMPORARILY_UNAVAILABLE

    from taglens.errors import TaglensError
    from taglens.features.engines import EngineError, EngineMissingError
    from taglens.lifecycle.registry import RegistryError
    from taglens.model import pyfunc

    def store_down(uri, *args, **kwargs):  # what MLflow raises when its store is unavailable
        raise MlflowException(
            "API request failed: Max retries exceeded", error_code=TEMPORARILY_UNAVAILABLE
        )

    failures = {
        "engine missing": EngineMissingError("featurize.engine openvino needs openvino"),
        "engine cannot convert": EngineError("featurize.engine openvino could not convert it"),
        "format": TaglensError("image_rankers.npz is a hashtag blend of an older version"),
    }

    def load(uri, engine):
        if failure == "store down":  # through the real loader, as register meets it
            return pyfunc.load_logged(uri)
        raise failures.get(failure, failure)

    import sys

    import mlflow.pyfunc  # noqa: F401 - the module itself, not mlflow's lazy attribute

    monkeypatch.setattr(sys.modules["mlflow.pyfunc"], "load_model", store_down)
    monkeypatch.setattr(register.model_ref, "load", load)
    clean = tmp_path / "clean"
    clean.mkdir()
    (clean / "manifest.csv").write_text("image,sha256,label,split\n")
    rescore = register.champion_rescorer(params, raw=tmp_path / "raw", clean=clean)
    version = type("Version", (), {"version": "1"})()
    errors = {"RegistryError": RegistryError, "NotComparableError": NotComparableError}
    with pytest.raises(errors[expected]) as raised:
        rescore(version, list(CLASSES))
    assert type(raised.value) is errors[expected]
    if expected == "RegistryError":  # may pass: nothing decided, register runs again
        assert "nothing was registered or promoted" in str(raised.value)
        # and in the registry: the champion is added, the candidate is not (nor any decision
        # on it), so the next run decides on the pair
        registry = Registry(params.register.model_name, tmp_path / "promotions.jsonl")
        before = len(registry.versions())
        with pytest.raises(RegistryError):
            _rescoring(params, make_run, tmp_path, lambda v: rescore(v, list(CLASSES)))
        versions = registry.versions()
        # (the store is the module's: an earlier case's champion may rank the first run lower)
        assert len(versions) == before + 1 and "decision" in versions[-1].tags


def test_without_test_images_a_champion_is_not_comparable(params, make_run, tmp_path):
    result = _rescoring(params, make_run, tmp_path, None)
    assert result["decision"] == "challenger"
    assert "not comparable" in result["reason"] and "--clean" in result["reason"]


@pytest.mark.parametrize("how", ["dvc exp run", "register.promote false"], ids=["exp", "param"])
def test_exp_runs_and_promote_false_hold(how, params, make_run, tmp_path, monkeypatch):
    """Neither a `dvc exp run` nor register.promote: false ever moves @champion."""
    history = tmp_path / "promotions.jsonl"
    _register(params, *make_run(0.5), history)
    if how == "dvc exp run":
        monkeypatch.setenv("DVC_EXP_NAME", "ochre-tuna")  # what DVC sets for an experiment's stages
        asked = params.register.model_copy(update={"on_experiment": "challenger"})
        params = params.model_copy(update={"register": asked})
    else:
        params = params.model_copy(
            update={"register": params.register.model_copy(update={"promote": False})}
        )
    result = _register(params, *make_run(0.9), history)

    assert result.decision == "challenger" and result.record["champion"] == "1"
    assert result.reason.startswith("held: ")
    expected = "ochre-tuna" if how == "dvc exp run" else "register.promote is false"
    assert expected in result.reason
    assert "beats champion's 0.5000" in result.reason  # the gate's verdict is still shown
    assert _alias("champion", params.register.model_name) == "1"
    assert _alias("challenger", params.register.model_name) == "2"


def test_an_experiment_adds_no_version_by_default_and_main_registers_it_later(
    params, make_run, tmp_path, monkeypatch
):
    # Given a champion, and a better model trained inside `dvc exp run` (on_experiment: skip)
    history = tmp_path / "promotions.jsonl"
    _register(params, *make_run(0.5), history)
    assert params.register.on_experiment == "skip"  # the shipped default
    models, reports = make_run(0.9)
    monkeypatch.setenv("DVC_EXP_NAME", "ochre-tuna")
    before = len(Registry(params.register.model_name, history).versions())

    # When register runs in the experiment
    skipped = _register(params, models, reports, history)

    # Then the registry, the train run and the history are untouched, and register.json says why
    name = params.register.model_name
    assert len(Registry(name, history).versions()) == before == 1
    assert skipped.version is None and skipped.decision == "skipped"
    written = json.loads((reports / "register.json").read_text())
    assert written == skipped.record and written["version"] is None
    assert "ochre-tuna" in written["reason"] and "on_experiment: skip" in written["reason"]
    assert "dvc repro -f -s register" in written["reason"]
    run_id = json.loads((models / "model_info.json").read_text())["run_id"]
    assert written["run_id"] == run_id
    assert "register.decision" not in mlflow.get_run(run_id).data.tags
    assert [row["version"] for row in Registry(name, history).history()] == ["1"]
    assert skipped.summary().startswith(f"{name}: not registered (skipped: ")

    # And once applied on main (no experiment), the same run registers for real and wins
    monkeypatch.delenv("DVC_EXP_NAME")
    applied = _register(params, models, reports, history)
    assert applied.version == "2" and applied.decision == "champion"
    assert _alias("champion", name) == "2"
