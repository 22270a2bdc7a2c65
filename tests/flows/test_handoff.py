"""The weekly retrain's git hand-off: commit dvc.lock and params.yaml when they changed, push."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from flows.handoff import HandoffError, commit_and_push, team_settings
from taglens.params import ParamsError
from tests.helpers.params import write_tiny_params


def _git(cwd, *args) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, check=True, capture_output=True, text=True
    ).stdout


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    # A machine without a git identity of its own (a fresh worker)
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(tmp_path / "no-gitconfig"))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    origin = tmp_path / "origin.git"
    _git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    (repo / "params.yaml").write_text("a: 1\n")
    (repo / "notes.txt").write_text("not handed off\n")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "add", "params.yaml")
    _git(repo, "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    _git(repo, "remote", "add", "origin", str(origin))
    return repo, origin


def test_a_changed_lock_is_committed_alone_and_pushed_to_the_branch(checkout):
    repo, origin = checkout
    (repo / "dvc.lock").write_text("schema: '2.0'\nstages: {}\n")
    done = commit_and_push(repo, "retrain", "origin")
    assert done.commit == _git(origin, "rev-parse", "retrain").strip()
    assert _git(origin, "show", "--name-only", "--format=", "retrain").split() == ["dvc.lock"]
    assert _git(origin, "log", "-1", "--format=%an", "retrain").strip() == "taglens retrain"
    assert "?? notes.txt" in _git(repo, "status", "--porcelain")  # nothing else was committed

    # Nothing changed since: no new commit, the branch is still pushed
    again = commit_and_push(repo, "retrain", "origin")
    assert again.commit is None
    assert _git(origin, "rev-parse", "retrain").strip() == done.commit


def test_a_rejected_push_and_a_missing_repo_are_one_line_errors(checkout, tmp_path):
    repo, _ = checkout
    (repo / "dvc.lock").write_text("stages: {}\n")
    with pytest.raises(HandoffError, match="git push nowhere"):
        commit_and_push(repo, "main", "nowhere")
    plain = tmp_path / "plain"
    plain.mkdir()
    with pytest.raises(HandoffError, match="is not a git checkout"):
        commit_and_push(plain, "main", "origin")


def test_team_settings_are_read_and_checked(tmp_path):
    assert team_settings(write_tiny_params(tmp_path / "params.yaml")).git_branch is None
    (tmp_path / "other.yaml").write_text("version: 1\n")
    assert team_settings(tmp_path / "other.yaml") is None
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"team": {"git_branch": ""}}))
    with pytest.raises(ParamsError, match="invalid team section"):
        team_settings(tmp_path / "bad.yaml")


def test_without_a_dvc_remote_the_lock_is_not_handed_off(checkout):
    from flows.training import handoff_task

    # Given a checkout whose params name a hand-off branch, and a run whose data no remote got
    repo, origin = checkout
    write_tiny_params(repo / "params.yaml", {"team.git_branch": "retrain"})
    (repo / "dvc.lock").write_text("stages: {}\n")
    # When the hand-off runs after a push that pushed nothing, Then nothing is committed or
    # pushed: a clone could not pull the data that lock names
    from prefect.logging import disable_run_logger

    with disable_run_logger():
        assert handoff_task.fn(str(repo), None) is None
        assert "?? dvc.lock" in _git(repo, "status", "--porcelain")
        assert _git(origin, "branch", "--list", "retrain").strip() == ""
        # and with the data pushed, it is handed off
        done = handoff_task.fn(str(repo), "storage")
    assert done["branch"] == "retrain" and done["commit"]
    assert _git(origin, "rev-parse", "retrain").strip() == done["commit"]
