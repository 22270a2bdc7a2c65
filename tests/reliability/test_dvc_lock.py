"""Two `dvc repro` at once in one repository: the second gets a lock error, the first completes."""

from __future__ import annotations

import subprocess
import time

import pytest
import yaml
from reliability_kit import copy_repo, stage_env, write_params

from tests.helpers.stages import BIN

pytestmark = pytest.mark.slow

IMAGES_PER_CLASS = 40


def _git(repo, *args):
    subprocess.run(
        ["git", "-c", "user.email=t@t", "-c", "user.name=t", *args],
        cwd=repo,
        check=True,
        capture_output=True,
    )


def test_second_repro_gets_the_lock_error_and_the_first_completes(tmp_path):
    # Given a repository copy with a committed pipeline
    repo = copy_repo(tmp_path / "repo")
    write_params(repo, {("scrape", "demo", "images_per_class"): IMAGES_PER_CLASS})
    _git(repo, "init", "-q")
    _git(repo, "add", "-A")
    _git(repo, "commit", "-qm", "init")
    env = stage_env(repo)
    dvc = str(BIN / "dvc")

    # When a second `dvc repro` starts while the first is running the scrape stage
    first = subprocess.Popen(
        [dvc, "repro", "scrape"],
        cwd=repo,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 120
    while not (repo / "data" / "raw").exists():  # the stage's command is running: lock held
        assert first.poll() is None, first.communicate()[0]
        assert time.monotonic() < deadline, "the first repro never started the stage"
        time.sleep(0.05)
    second = subprocess.run(
        [dvc, "repro", "scrape"], cwd=repo, env=env, capture_output=True, text=True, timeout=300
    )
    first_output = first.communicate(timeout=600)[0]

    # Then the second fails at once with DVC's lock error naming the first process. (DVC 3 holds
    # the repository lock only while it plans; during a stage it holds read/write locks on the
    # stage's outputs, so the error is the output's "is busy", not "Unable to acquire lock".)
    assert second.returncode != 0
    message = second.stdout + second.stderr
    assert "Unable to acquire lock" in message or (
        "is busy, it is being blocked by" in message and f"(PID {first.pid})" in message
    ), message
    # And the first completes and records its stage
    assert first.returncode == 0, first_output
    lock = yaml.safe_load((repo / "dvc.lock").read_text())
    assert set(lock["stages"]) == {"scrape"}
    posts = (repo / "data" / "raw" / "posts.jsonl").read_text().splitlines()
    assert len(posts) == 10 * IMAGES_PER_CLASS
    status = subprocess.run(
        [dvc, "status", "scrape"], cwd=repo, env=env, capture_output=True, text=True, timeout=120
    )
    assert status.returncode == 0 and "up to date" in status.stdout, status.stdout
