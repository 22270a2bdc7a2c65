"""DVC experiments as the README runs them: knobs that are used, a clean registry, promotion.

One repository copy with the tiny params and the default search on: a baseline `dvc repro`
(its search makes a deliberately weak champion: one dense setting at a learning rate that cannot
move the weights), two `dvc exp run` that turn the search off and set the learning rate, then
the README's path from the winning experiment to `@champion`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tests.helpers.params import write_tiny_params
from tests.helpers.repocopy import copy_source_tree
from tests.helpers.stages import dvc_ok as _dvc
from tests.helpers.stages import run_ok as _run

pytestmark = [pytest.mark.slow, pytest.mark.e2e, pytest.mark.timeout(1800)]

GIT = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
# The baseline's search: one dense setting whose learning rate cannot move the weights, so an
# experiment that trains at a real learning rate beats it and the promotion path has a winner.
BASELINE = {
    "train.epochs": 20,
    # what the experiments train with once the search is off (standardised random-conv features
    # separate the demo classes: test accuracy about 0.9 at learning rate 0.01)
    "train.normalise": "standardise",
    "train.search.enabled": True,
    "train.search.logreg_candidates": 0,
    "train.search.kernel_candidates": 0,
    "train.search.dense_candidates": 1,
    "train.search.learning_rate": [1e-7],
    "train.search.hidden_units": [32],
    "train.search.augment": [False],
    "train.search.normalise": ["none"],
    # a near-constant champion has recall 1 on one class: no class-recall veto in this test
    "register.max_recall_drop": 1.0,
}
EXPERIMENTS = {"lr-fast": 0.01, "lr-slow": 0.003}


def _commit(repo: Path, message: str) -> None:
    _run([*GIT, "add", "-A"], repo)
    _run([*GIT, "commit", "-qm", message], repo)


def _client(repo: Path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{repo / 'mlruns' / 'mlflow.db'}"
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _versions(repo: Path) -> list[str]:
    return sorted(str(v.version) for v in _client(repo).search_model_versions("name='taglens'"))


def _json(repo: Path, path: str) -> dict:
    return json.loads((repo / path).read_text())


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A repo copy after the baseline `dvc repro` (committed) and the two experiments."""
    repo = tmp_path_factory.mktemp("exp") / "repo"
    copy_source_tree(repo)
    write_tiny_params(repo / "params.yaml", BASELINE)
    _run(["git", "init", "-q"], repo)
    _commit(repo, "init")
    _dvc(repo, "repro")
    (repo / "baseline_train.json").write_text((repo / "reports/train.json").read_text())
    _commit(repo, "baseline")
    (repo / "versions_before.json").write_text(json.dumps(_versions(repo)))
    for name, rate in EXPERIMENTS.items():
        # the README's form: the search off, so the learning rate set here is the one trained
        search_off = ["-S", "train.search.enabled=false"]
        _dvc(repo, "exp", "run", "-n", name, *search_off, "-S", f"train.learning_rate={rate}")
    return repo


def _shown(repo: Path) -> dict[str, dict]:
    """`dvc exp show --json` experiments by name: {"params": train section, "train": train.json}."""
    found = {}
    for baseline in json.loads(_dvc(repo, "exp", "show", "--json").stdout):
        for experiment in baseline.get("experiments") or []:
            for rev in experiment.get("revs") or []:
                data = rev.get("data") or {}
                found[rev.get("name")] = {
                    "params": data["params"]["params.yaml"]["data"]["train"],
                    "train": data["metrics"]["reports/train.json"]["data"],
                }
    return found


def test_the_baseline_says_its_search_set_the_learning_rate(repo):
    # the search ran and train.json (a DVC metrics file) says which keys it set
    report = _json(repo, "baseline_train.json")
    assert report["search"] is True and "train.learning_rate" in report["searched_keys"]
    assert report["chosen"]["learning_rate"] == 1e-7  # the search's, not params.yaml's 0.001
    assert report["search_val_accuracy"] == report["val_accuracy"]
    assert _json(repo, "reports/register.json")["version"] is None  # the last experiment's


def test_two_experiments_train_the_learning_rates_they_set(repo):
    shown = _shown(repo)
    assert set(EXPERIMENTS) <= set(shown), shown
    client = _client(repo)
    for name, rate in EXPERIMENTS.items():
        params, report = shown[name]["params"], shown[name]["train"]
        # `dvc exp show` lists the params that made the model, and train.json agrees
        assert params["learning_rate"] == rate and params["search"]["enabled"] is False
        assert report["search"] is False and report["searched_keys"] == ""
        assert report["chosen"]["learning_rate"] == rate and report["chosen"]["head"] == "dense"
        # and the MLflow train run logged that learning rate
        logged = client.get_run(report["run_id"]).data.params
        assert float(logged["train.learning_rate"]) == rate
    assert shown["lr-fast"]["train"]["run_id"] != shown["lr-slow"]["train"]["run_id"]


def test_an_experiment_adds_no_registry_version(repo):
    # the baseline registered version 1; the two experiments registered nothing
    assert json.loads((repo / "versions_before.json").read_text()) == ["1"]
    assert _versions(repo) == ["1"]
    decision = _json(repo, "reports/register.json")
    assert decision["decision"] == "skipped" and decision["experiment"] == "lr-slow"
    assert "dvc repro -f -s register" in decision["reason"]
    train_run = _client(repo).get_run(decision["run_id"])
    assert "register.version" not in train_run.data.tags


def test_the_readme_path_promotes_the_winning_experiment(repo):
    # Given the better experiment, applied and committed as the README says
    _dvc(repo, "exp", "apply", "lr-fast")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["train"]["learning_rate"] == 0.01
    _commit(repo, "apply lr-fast")
    run_id = _json(repo, "models/model_info.json")["run_id"]

    # When register runs on it (plain `dvc repro` finds every stage up to date)
    assert "Running stage" not in _dvc(repo, "repro").stdout
    _dvc(repo, "repro", "-f", "-s", "register")

    # Then the experiment's model is a new version, gated against the champion, and wins
    decision = _json(repo, "reports/register.json")
    assert _versions(repo) == ["1", "2"]
    assert decision["version"] == "2" and decision["run_id"] == run_id
    assert decision["compared_with"] == "1"
    assert decision["decision"] == "champion", decision["reason"]
    champion = _client(repo).get_model_version_by_alias("taglens", "champion")
    assert str(champion.version) == "2" and champion.run_id == run_id
    # and the new dvc.lock, committed, leaves nothing to do
    _commit(repo, "register lr-fast")
    assert "Running stage" not in _dvc(repo, "repro").stdout


def test_params_set_by_hand_to_an_experiments_register_the_model_it_made(repo):
    # Given the other experiment's params typed into params.yaml by hand (not `dvc exp apply`):
    # every stage up to evaluate can come back from DVC's run-cache, as that experiment made it
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["search"]["enabled"] = False
    params["train"]["learning_rate"] = EXPERIMENTS["lr-slow"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _commit(repo, "lr-slow by hand")
    versions = _versions(repo)

    # When plain `dvc repro` runs
    _dvc(repo, "repro")

    # Then register ran on that model: a new version with a decision, not the experiment's
    # "skipped" record brought back from the run-cache (register.json is a persisted output)
    decision = _json(repo, "reports/register.json")
    assert decision["decision"] in ("champion", "challenger"), decision
    assert "experiment" not in decision or not decision["experiment"]
    assert _versions(repo) == [*versions, str(len(versions) + 1)]
    assert decision["run_id"] == _json(repo, "models/model_info.json")["run_id"]
